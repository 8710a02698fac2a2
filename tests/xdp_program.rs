//! The XDP program on packets made byte by byte, through BPF_PROG_TEST_RUN:
//! loaded by the real verifier, its maps written by the real `PinnedMaps`
//! and its events read by the real `EventReader`, attached to nothing. Each
//! case checks the verdict and the event (or that there is none). Needs
//! root; skips loudly without it, and fails under CI=true.

mod common;

#[path = "common/packets.rs"]
mod packets;
#[path = "common/program.rs"]
mod program;

use std::path::PathBuf;

use common::{is_root, skip_or_fail};
use packets::*;
use program::*;
use xdp::{Detection, Detector, EventReader, PinnedMaps, TestProgram};

#[test]
fn malformed_flag_sets_are_reported_once_and_passed() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    let cases: [(&str, u8, u8, u32); 6] = [
        ("198.18.1.1", 0, 5, 0),                  // NULL
        ("198.18.1.2", FIN, 5, 0x01),             // FIN without ACK
        ("198.18.1.3", FIN | PSH | URG, 5, 0x29), // Xmas
        ("198.18.1.4", SYN | FIN, 5, 0x03),       // SYN+FIN
        ("198.18.1.5", SYN | RST, 5, 0x06),       // SYN+RST
        ("198.18.1.6", SYN, 4, 0x02 | (4 << 8)),  // data offset < 5
    ];
    for (source, flags, data_offset, figure) in cases {
        let mut segment = Segment::new(source, 5000, flags);
        segment.data_offset = data_offset;
        // Dropped: to a service port, and its sender is reported.
        assert_eq!(prog.verdict(&segment.frame()), XDP_DROP, "{source}");
        assert_eq!(
            prog.events(),
            vec![event(source, Detector::BadTcpFlags, figure, 5000)],
            "{source}: flags {flags:#04x}, data offset {data_offset}"
        );
        // The same again in this window: dropped, no second event.
        assert_eq!(prog.verdict(&segment.frame()), XDP_DROP);
        assert_eq!(prog.events(), vec![], "{source}: once per window");
    }
    // Its clean SYN to the service, too, until its time-out comes (or the
    // window ends); to another port it passes (drop_scope = service).
    let syn = Segment::new("198.18.1.1", 5000, SYN).frame();
    assert_eq!(prog.verdict(&syn), XDP_DROP);
    let elsewhere = Segment::new("198.18.1.1", 22, SYN).frame();
    assert_eq!(prog.verdict(&elsewhere), XDP_PASS);
    let status = prog.status();
    assert_eq!(status.detectors.probes_dropped, 13);
    assert_eq!(status.detectors.malformed, 6);
    assert_eq!(status.detectors.events_sent, 6);
    assert_eq!(status.detectors.events_lost, 0);
}

#[test]
fn established_traffic_and_clean_syns_raise_nothing() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    for flags in [ACK, ACK | PSH, ACK | FIN, RST, RST | ACK, SYN | ACK, SYN] {
        let frame = Segment::new("198.18.2.1", 5000, flags).frame();
        assert_eq!(prog.verdict(&frame), XDP_PASS, "flags {flags:#04x}");
    }
    assert_eq!(prog.events(), vec![]);
    // Only the plain SYN is a connection-opening probe.
    assert_eq!(prog.status().detectors.syns_seen, 1);
}

#[test]
fn headers_are_found_where_they_are_and_not_looked_for_where_they_are_not() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    // IPv4 with options: the TCP header is after them (NOP bytes where a
    // fixed offset would read flags would not be a NULL scan).
    let mut with_options = Segment::new("198.18.3.1", 5000, 0);
    with_options.ipv4_option_words = 3;
    assert_eq!(prog.verdict(&with_options.frame()), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("198.18.3.1", Detector::BadTcpFlags, 0, 5000)]
    );

    // IPv6, TCP as the next header.
    let v6 = Segment::new("2001:db8:1::7", 5000, FIN);
    assert_eq!(prog.verdict(&v6.frame()), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("2001:db8:1::7", Detector::BadTcpFlags, 0x01, 5000)]
    );

    // IPv6 behind an extension header: followed to TCP.
    let hop_by_hop = Segment::new("2001:db8:1::8", 5000, 0).with_extensions(&[0]);
    assert_eq!(prog.verdict(&hop_by_hop.frame()), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("2001:db8:1::8", Detector::BadTcpFlags, 0, 5000)]
    );

    // No TCP header to look into, counted: a TCP fragment after the first.
    let mut fragment = Segment::new("198.18.3.2", 5000, 0);
    fragment.fragment_offset = 185;
    assert_eq!(prog.verdict(&fragment.frame()), XDP_PASS);
    assert_eq!(prog.events(), vec![]);
    assert_eq!(prog.status().detectors.unparsed, 1);

    // Truncated anywhere, UDP, not IP at all: passed, nothing reported.
    let full = Segment::new("198.18.3.3", 5000, 0).frame();
    // (BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.)
    for cut in [14, 20, 33, 34, 40, 47] {
        assert_eq!(prog.verdict(&full[..cut]), XDP_PASS, "cut at {cut}");
    }
    assert_eq!(prog.verdict(&udp_frame([198, 18, 3, 4], 5000)), XDP_PASS);
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(prog.verdict(&arp), XDP_PASS);
    assert_eq!(prog.events(), vec![]);
}

#[test]
fn a_port_scan_is_reported_at_the_threshold_and_a_trap_port_at_once() {
    let detection = Detection {
        trap_ports: vec![23],
        ..Detection::default()
    };
    let Some(mut prog) = Loaded::new(&detection) else {
        return;
    };
    let ports = [21, 22, 25, 80, 110, 443, 3306, 8080, 8443];
    for (i, port) in ports.iter().enumerate() {
        let frame = Segment::new("198.18.4.1", *port, SYN).frame();
        assert_eq!(prog.verdict(&frame), XDP_PASS);
        // A repeat of a port seen is not a new port.
        assert_eq!(prog.verdict(&frame), XDP_PASS);
        let events = prog.events();
        if i + 1 == detection.scan_ports as usize {
            assert_eq!(
                events,
                vec![event("198.18.4.1", Detector::PortScan, 8, *port)]
            );
        } else {
            assert_eq!(events, vec![], "port {} of the scan", i + 1);
        }
    }
    let trap = Segment::new("198.18.4.2", 23, SYN).frame();
    assert_eq!(prog.verdict(&trap), XDP_PASS);
    assert_eq!(
        prog.events(),
        vec![event("198.18.4.2", Detector::PortScan, 1, 23)]
    );
    let status = prog.status();
    assert_eq!(status.detectors.scans, 2);
    // Reported, but none of these ports is the service's (drop_scope =
    // service): passed. With drop_scope = all, its next probe is dropped.
    assert_eq!(status.detectors.probes_dropped, 0);
    prog.table
        .set_detection(&Detection {
            drop_service_only: false,
            ..detection
        })
        .unwrap();
    let next = Segment::new("198.18.4.1", 9999, SYN).frame();
    assert_eq!(prog.verdict(&next), XDP_DROP);
    assert_eq!(prog.events(), vec![]);
}

#[test]
fn a_syn_flood_passes_the_burst_then_is_dropped_and_reported_once_past_a_second_burst() {
    let detection = Detection {
        syn_rate: 1, // no refill worth a SYN while the test runs
        syn_burst: 100,
        ..Detection::default()
    };
    let Some(mut prog) = Loaded::new(&detection) else {
        return;
    };
    let frame = Segment::new("198.18.5.1", 5000, SYN).frame();
    for i in 0..100 {
        assert_eq!(prog.verdict(&frame), XDP_PASS, "SYN {} of the burst", i + 1);
    }
    assert_eq!(prog.events(), vec![]);
    // Over the limit: dropped at once; a flood once it keeps sending past
    // the limit by another burst (a fast reconnecting client never does).
    for _ in 0..99 {
        assert_eq!(prog.verdict(&frame), XDP_DROP);
    }
    assert_eq!(prog.events(), vec![]);
    assert_eq!(prog.verdict(&frame), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("198.18.5.1", Detector::SynFlood, 200, 5000)]
    );
    for _ in 0..50 {
        assert_eq!(prog.verdict(&frame), XDP_DROP);
    }
    assert_eq!(prog.events(), vec![], "once per window");
    // Not to a service port: not rate limited.
    let other = Segment::new("198.18.5.1", 22, SYN).frame();
    assert_eq!(prog.verdict(&other), XDP_PASS);
    let status = prog.status();
    assert_eq!(status.detectors.syns_dropped, 150);
    assert_eq!(status.detectors.floods, 1);
}

#[test]
fn a_ban_drops_by_scope_and_the_allow_list_wins_everywhere() {
    let Some(mut prog) = Loaded::new(&Detection::default()) else {
        return;
    };
    prog.ban("198.18.6.1/32");
    prog.ban("198.18.7.0/24");
    let to_service = Segment::new("198.18.6.1", 5000, ACK).frame();
    let to_ssh = Segment::new("198.18.6.1", 22, SYN).frame();
    let in_prefix = Segment::new("198.18.7.9", 5000, SYN).frame();
    // drop_scope = service: only TCP to the listen ports is dropped.
    assert_eq!(prog.verdict(&to_service), XDP_DROP);
    assert_eq!(prog.verdict(&to_ssh), XDP_PASS);
    assert_eq!(prog.verdict(&udp_frame([198, 18, 6, 1], 5000)), XDP_PASS);
    assert_eq!(prog.verdict(&in_prefix), XDP_DROP);
    // A banned source's probes are not reported again.
    assert_eq!(prog.events(), vec![]);

    // drop_scope = all: everything from it.
    prog.table
        .set_detection(&Detection {
            drop_service_only: false,
            ..Detection::default()
        })
        .unwrap();
    assert_eq!(prog.verdict(&to_ssh), XDP_DROP);
    assert_eq!(prog.verdict(&udp_frame([198, 18, 6, 1], 5000)), XDP_DROP);

    // The allow-list: never dropped, counted, limited or reported.
    prog.table
        .set_allowed(&["198.18.6.0/24".parse().unwrap()])
        .unwrap();
    assert_eq!(prog.verdict(&to_service), XDP_PASS);
    for port in 1..=20 {
        let probe = Segment::new("198.18.6.2", port, 0).frame();
        assert_eq!(prog.verdict(&probe), XDP_PASS);
    }
    let syn = Segment::new("198.18.6.3", 5000, SYN).frame();
    for _ in 0..200 {
        assert_eq!(prog.verdict(&syn), XDP_PASS);
    }
    assert_eq!(prog.events(), vec![]);
    let status = prog.status();
    assert_eq!(
        status.detectors.syns_seen, 0,
        "allow-listed SYNs are not counted"
    );
    assert_eq!(status.dropped_by_address, 3);
    assert_eq!(status.dropped_by_prefix, 1);

    // An unban forgets what the detectors knew: a fresh scan is news.
    prog.table.set_allowed(&[]).unwrap();
    prog.table
        .remove(&"198.18.6.1/32".parse().unwrap())
        .unwrap();
    prog.table
        .remove(&"198.18.7.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(prog.verdict(&in_prefix), XDP_PASS);
    let null = Segment::new("198.18.6.1", 5000, 0).frame();
    assert_eq!(prog.verdict(&null), XDP_DROP);
    assert_eq!(
        prog.events(),
        vec![event("198.18.6.1", Detector::BadTcpFlags, 0, 5000)]
    );
}

#[test]
fn an_unconfigured_program_only_drops_bans() {
    if !is_root() {
        skip_or_fail("BPF_PROG_TEST_RUN needs root (CAP_BPF)");
        return;
    }
    // What `xdp attach` leaves until a server writes the configuration.
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/penaltybox-prog-test-{}-bare",
        std::process::id()
    ));
    let program = TestProgram::load(&pin_dir).unwrap();
    let mut table = PinnedMaps::open(&pin_dir).unwrap();
    let mut events = EventReader::open(&pin_dir).unwrap();
    assert_eq!(table.detection().unwrap(), None);
    let now = actors::now_ms();
    table
        .insert(&"198.18.8.0/24".parse().unwrap(), now + 60_000, now)
        .unwrap();
    let udp = udp_frame([198, 18, 8, 1], 53);
    assert_eq!(
        program.run(&udp, 1).unwrap().0,
        XDP_DROP,
        "all scope, tries looked in"
    );
    let null = Segment::new("198.18.9.1", 5000, 0).frame();
    assert_eq!(program.run(&null, 1).unwrap().0, XDP_PASS);
    assert!(events.next().is_none(), "detectors off");
}
