//! The XDP program against the headers an evader puts in front of TCP, on
//! packets made byte by byte (BPF_PROG_TEST_RUN): IPv6 extension headers
//! (each kind, a chain of three, a chain over the bound), fragments (the
//! first carries TCP, later ones do not), VLAN tags. A scan behind them is
//! still a scan; a timed-out source is dropped behind them, and where its
//! port cannot be told, whatever the drop scope; a flood of what cannot be
//! parsed is reported. Needs root; skips loudly without it, and fails under
//! CI=true.

mod common;

#[path = "common/packets.rs"]
mod packets;
#[path = "common/program.rs"]
mod program;

use packets::*;
use program::*;
use xdp::{Detection, Detector};

/// Hop-by-hop, routing, destination options, a first fragment, AH.
const EXTENSIONS: [u8; 5] = [0, 43, 60, 44, 51];

/// A SYN to each port in turn from `source`, dressed by `dress`: the scan
/// is reported at the threshold (8 ports) and its later probes dropped.
fn scan_is_caught(prog: &mut Loaded, source: &str, dress: impl Fn(Segment) -> Segment) {
    let ports = [21, 22, 25, 80, 110, 443, 3306, 8080, 8443];
    for (i, port) in ports.iter().enumerate() {
        let frame = dress(Segment::new(source, *port, SYN)).frame();
        let verdict = prog.verdict(&frame);
        if i + 1 < 8 {
            assert_eq!(verdict, XDP_PASS, "{source}: probe {i} to {port}");
            assert_eq!(prog.events(), vec![], "{source}: probe {i}");
        } else if i + 1 == 8 {
            assert_eq!(
                prog.events(),
                vec![event(source, Detector::PortScan, 8, *port)],
                "{source}: the 8th port makes it a scan"
            );
        }
    }
}

#[test]
fn a_scan_behind_any_extension_header_or_a_chain_of_three_is_a_port_scan() {
    let Some(mut prog) = Loaded::new(&Detection {
        drop_service_only: false,
        ..Detection::default()
    }) else {
        return;
    };
    for (i, kind) in EXTENSIONS.iter().enumerate() {
        let source = format!("2001:db8:a:{i}::1");
        scan_is_caught(&mut prog, &source, |s| s.with_extensions(&[*kind]));
    }
    scan_is_caught(&mut prog, "2001:db8:a:9::1", |s| {
        s.with_extensions(&[0, 60, 43])
    });
    // Six is the bound: a scan behind six headers is still seen.
    scan_is_caught(&mut prog, "2001:db8:a:a::1", |s| {
        s.with_extensions(&[0, 60, 43, 44, 51, 60])
    });
    assert_eq!(prog.status().detectors.unparsed, 0);
}

#[test]
fn a_timed_out_source_is_dropped_behind_every_header_under_both_drop_scopes() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    prog.ban("2001:db8:b::/64");
    prog.ban("198.18.20.0/24");
    let service_scope_drops = |prog: &Loaded, segment: Segment| prog.verdict(&segment.frame());
    for kind in EXTENSIONS {
        let to_service = Segment::new("2001:db8:b::5", 5000, SYN).with_extensions(&[kind]);
        let elsewhere = Segment::new("2001:db8:b::5", 22, SYN).with_extensions(&[kind]);
        // drop_scope = service: the port is known behind the header.
        assert_eq!(service_scope_drops(&prog, to_service), XDP_DROP, "{kind}");
        assert_eq!(service_scope_drops(&prog, elsewhere), XDP_PASS, "{kind}");
    }
    // What hides its port is dropped whatever the scope: a chain over the
    // bound, ESP, a TCP fragment after the first (IPv6 and IPv4).
    let over_bound = Segment::new("2001:db8:b::5", 22, SYN).with_extensions(&[60; 7]);
    let esp = Segment::new("2001:db8:b::5", 22, SYN).with_extensions(&[50]);
    let mut v6_later = Segment::new("2001:db8:b::5", 22, ACK).with_extensions(&[44]);
    v6_later.fragment_offset = 2;
    let mut v4_later = Segment::new("198.18.20.7", 22, ACK);
    v4_later.fragment_offset = 2;
    for segment in [&over_bound, &esp, &v6_later, &v4_later] {
        assert_eq!(prog.verdict(&segment.frame()), XDP_DROP, "{segment:?}");
    }
    let status = prog.status();
    assert_eq!(status.dropped_unparsed, 4);
    assert_eq!(status.dropped_by_prefix, EXTENSIONS.len() as u64);

    // drop_scope = all: behind every header, to any port.
    prog.table
        .set_detection(&Detection {
            drop_service_only: false,
            ..Detection::default()
        })
        .unwrap();
    for kind in EXTENSIONS {
        let elsewhere = Segment::new("2001:db8:b::5", 22, SYN).with_extensions(&[kind]);
        assert_eq!(prog.verdict(&elsewhere.frame()), XDP_DROP, "{kind}");
    }
    assert_eq!(prog.verdict(&over_bound.frame()), XDP_DROP);
    assert_eq!(prog.events(), vec![], "a timed-out source is not news");
}

#[test]
fn a_first_fragment_is_inspected_and_fragments_without_tcp_pass_untouched() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    // The first fragment carries the TCP header: a NULL probe in it is one.
    let mut v4_first = Segment::new("198.18.21.1", 5000, 0);
    v4_first.fragment_offset = 0;
    let v6_first = Segment::new("2001:db8:c::1", 5000, 0).with_extensions(&[44]);
    for (segment, source) in [(v4_first, "198.18.21.1"), (v6_first, "2001:db8:c::1")] {
        assert_eq!(prog.verdict(&segment.frame()), XDP_DROP);
        assert_eq!(
            prog.events(),
            vec![event(source, Detector::BadTcpFlags, 0, 5000)]
        );
    }
    // Later fragments of UDP are no TCP at all: passed, not counted.
    let mut udp_later = Segment::new("2001:db8:c::2", 53, 0).with_extensions(&[44]);
    udp_later.fragment_offset = 20;
    udp_later.ipv6_upper = 17;
    assert_eq!(prog.verdict(&udp_later.frame()), XDP_PASS);
    // UDP behind a destination-options header: no TCP either.
    let mut udp_behind = Segment::new("2001:db8:c::3", 53, 0).with_extensions(&[60]);
    udp_behind.ipv6_upper = 17;
    assert_eq!(prog.verdict(&udp_behind.frame()), XDP_PASS);
    assert_eq!(prog.status().detectors.unparsed, 0);
    assert_eq!(prog.events(), vec![]);
}

#[test]
fn a_flood_of_what_cannot_be_parsed_is_reported_once_then_dropped() {
    let detection = Detection {
        unparsed_burst: 4,
        ..Detection::default()
    };
    let Some(mut prog) = Loaded::new(&detection) else {
        return;
    };
    let over_bound = Segment::new("2001:db8:d::1", 5000, SYN)
        .with_extensions(&[60; 7])
        .frame();
    for i in 0..4 {
        assert_eq!(prog.verdict(&over_bound), XDP_PASS, "packet {i}");
    }
    assert_eq!(prog.events(), vec![]);
    // The fifth is over the burst: reported, and dropped from then on.
    assert_eq!(prog.verdict(&over_bound), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("2001:db8:d::1", Detector::UnparsedFlood, 5, 0)]
    );
    assert_eq!(prog.verdict(&over_bound), XDP_DROP);
    assert_eq!(prog.events(), vec![], "once per window");
    let status = prog.status();
    assert_eq!(status.detectors.unparsed, 6);
    assert_eq!(status.detectors.unparsed_floods, 1);

    // In monitor mode it is reported and nothing is dropped.
    prog.table
        .set_detection(&Detection {
            monitor: true,
            ..detection.clone()
        })
        .unwrap();
    let other = Segment::new("2001:db8:d::2", 5000, SYN)
        .with_extensions(&[50])
        .frame();
    for _ in 0..6 {
        assert_eq!(prog.verdict(&other), XDP_PASS);
    }
    assert_eq!(
        prog.events(),
        vec![event("2001:db8:d::2", Detector::UnparsedFlood, 5, 0)]
    );
}

#[test]
fn an_allow_listed_source_with_headers_is_never_dropped_counted_or_reported() {
    let Some(mut prog) = Loaded::new(&Detection {
        unparsed_burst: 2,
        ..Detection::default()
    }) else {
        return;
    };
    prog.ban("2001:db8:e::/48");
    prog.table
        .set_allowed(&["2001:db8:e:1::/64".parse().unwrap()])
        .unwrap();
    for kind in EXTENSIONS.iter().chain(&[50]) {
        let segment = Segment::new("2001:db8:e:1::9", 5000, 0).with_extensions(&[*kind]);
        for _ in 0..5 {
            assert_eq!(prog.verdict(&segment.frame()), XDP_PASS, "{kind}");
        }
    }
    let chain = Segment::new("2001:db8:e:1::9", 5000, 0).with_extensions(&[60; 7]);
    for _ in 0..5 {
        assert_eq!(prog.verdict(&chain.frame()), XDP_PASS);
    }
    assert_eq!(prog.events(), vec![]);
    // Its neighbour in the time-out, not allow-listed, is dropped.
    let neighbour = Segment::new("2001:db8:e:2::9", 5000, 0).with_extensions(&[60; 7]);
    assert_eq!(prog.verdict(&neighbour.frame()), XDP_DROP);
}

#[test]
fn vlan_tagged_frames_are_parsed_behind_one_or_two_tags() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    prog.ban("198.18.22.1/32");
    for tags in [1, 2] {
        let mut banned = Segment::new("198.18.22.1", 5000, ACK);
        banned.vlan_tags = tags;
        assert_eq!(prog.verdict(&banned.frame()), XDP_DROP, "{tags} tags");
        let mut v6 = Segment::new("2001:db8:f::1", 5000, FIN).with_extensions(&[0]);
        v6.vlan_tags = tags;
        assert_eq!(prog.verdict(&v6.frame()), XDP_DROP, "{tags} tags");
        assert_eq!(
            prog.events(),
            vec![event("2001:db8:f::1", Detector::BadTcpFlags, 0x01, 5000)]
        );
        prog.table
            .remove(&"2001:db8:f::1/128".parse().unwrap())
            .unwrap();
    }
    // Three tags: not parsed, passed (no ban can be told).
    let mut deep = Segment::new("198.18.22.1", 5000, ACK).frame();
    deep.splice(
        12..12,
        [0x81, 0x00, 0, 9, 0x81, 0x00, 0, 9, 0x88, 0xa8, 0, 9],
    );
    assert_eq!(prog.verdict(&deep), XDP_PASS);
}
