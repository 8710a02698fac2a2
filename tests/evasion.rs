//! The evasions of the kernel tier end to end: frames crafted byte by byte
//! (tests/common/packets.rs) put on the wire of the test bed's veth from
//! the client namespace, as a crafting tool would, with a real server and
//! the real XDP program on the other end. An IPv6 extension header (or a
//! chain of them) in front of TCP hides neither a scan nor a timed-out
//! source; what hides its port is dropped whatever the drop scope; VLAN
//! tags are looked behind. A legitimate IPv6 client is served throughout.
//! Needs root; skips loudly without it, and fails under CI=true.

mod common;

#[path = "common/netns.rs"]
mod netns;
#[path = "common/packets.rs"]
mod packets;
#[path = "common/testbed.rs"]
mod testbed;

use std::time::Duration;

use common::*;
use netns::SERVER_V6;
use packets::*;
use testbed::*;

/// Hop-by-hop, routing, destination options, a first fragment, AH.
const EXTENSIONS: [u8; 5] = [0, 43, 60, 44, 51];

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: {status}"))
}

/// A SYN scan of 20 ports from `source`, each SYN behind `extensions`.
fn scan(source: &str, extensions: &[u8]) -> Vec<Vec<u8>> {
    (1..=20)
        .map(|port| {
            Segment::new(source, port, SYN)
                .with_extensions(extensions)
                .frame()
        })
        .collect()
}

fn legit_v6_is_served(bed: &Testbed, server: &Server) {
    let key = server.data_dir.join("server.pub");
    bed.ping_within(SERVER_V6, &key, "3")
        .unwrap_or_else(|e| panic!("the IPv6 client was not served: {e}"));
}

#[test]
fn scans_behind_extension_headers_are_timed_out_and_the_source_dropped_behind_any_header() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "");
    legit_v6_is_served(&bed, &server);
    // Each scanner in a /64 of its own (not the legit client's).
    let chains: [&[u8]; 6] = [&[0], &[43], &[60], &[44], &[51], &[0, 60, 43]];
    for (i, chain) in chains.iter().enumerate() {
        let source = format!("2001:db8:90:{}::1", i + 1);
        bed.send_frames(scan(&source, chain));
        let line = server
            .wait_log(
                &format!("timed out 2001:db8:90:{}::/64", i + 1),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("a scan behind {chain:?} was not timed out"));
        assert!(line.contains("cause port-scan"), "{chain:?}: {line}");
    }
    legit_v6_is_served(&bed, &server);

    // Timed out: its SYNs to the service are dropped behind every header
    // (the port is known there), its SYNs elsewhere pass (the drop scope
    // keeps an admin's SSH), and what hides its port is dropped anyway.
    let source = "2001:db8:90:1::1";
    let before = bed.status();
    let to_service: Vec<Vec<u8>> = EXTENSIONS
        .iter()
        .map(|kind| {
            Segment::new(source, 5000, SYN)
                .with_extensions(&[*kind])
                .frame()
        })
        .collect();
    bed.send_frames(to_service);
    let hidden = vec![
        Segment::new(source, 22, SYN)
            .with_extensions(&[60; 7])
            .frame(),
        Segment::new(source, 22, SYN).with_extensions(&[50]).frame(),
        {
            let mut later = Segment::new(source, 22, ACK).with_extensions(&[44]);
            later.fragment_offset = 3;
            later.frame()
        },
    ];
    bed.send_frames(hidden);
    let after = bed.status();
    assert!(
        eventually(Duration::from_secs(2), || {
            let now = bed.status();
            counter(&now, "dropped_by_prefix") - counter(&before, "dropped_by_prefix") == 5
                && counter(&now, "dropped_unparsed") - counter(&before, "dropped_unparsed") == 3
        }),
        "before {before}\nafter {after}"
    );
    server.stop();
}

#[test]
fn under_drop_scope_all_a_timed_out_source_is_dropped_behind_every_header_to_any_port() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "[kernel]\ndrop_scope = \"all\"\n");
    let source = "2001:db8:91::1";
    bed.send_frames(scan(source, &[60, 43, 0]));
    server
        .wait_log("timed out 2001:db8:91::/64", Duration::from_secs(5))
        .expect("the scan behind a chain of three was not timed out");
    let before = bed.status();
    let frames: Vec<Vec<u8>> = EXTENSIONS
        .iter()
        .map(|kind| {
            Segment::new(source, 22, SYN)
                .with_extensions(&[*kind])
                .frame()
        })
        .collect();
    bed.send_frames(frames);
    assert!(eventually(Duration::from_secs(2), || {
        counter(&bed.status(), "dropped_by_prefix") - counter(&before, "dropped_by_prefix") == 5
    }));
    legit_v6_is_served(&bed, &server);
    server.stop();
}

#[test]
fn a_first_fragment_is_inspected_and_later_ones_of_a_timed_out_source_are_dropped() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "");
    // A SYN scan in first fragments (offset 0, more fragments to come):
    // the TCP header is there, and the scan is seen.
    let source = "198.18.92.1";
    let first_fragments: Vec<Vec<u8>> = (1..=20)
        .map(|port| {
            let mut frame = Segment::new(source, port, SYN).frame();
            frame[14 + 6] |= 0x20; // IPv4 flags: MF
            frame
        })
        .collect();
    bed.send_frames(first_fragments);
    let line = server
        .wait_log("timed out 198.18.92.1/32", Duration::from_secs(5))
        .expect("the scan in first fragments was not seen");
    assert!(line.contains("cause port-scan"), "{line}");
    // Its later fragments carry no TCP header: dropped all the same.
    let before = bed.status();
    let later: Vec<Vec<u8>> = (1..=4)
        .map(|i| {
            let mut fragment = Segment::new(source, 22, ACK);
            fragment.fragment_offset = i * 185;
            fragment.frame()
        })
        .collect();
    bed.send_frames(later);
    assert!(eventually(Duration::from_secs(2), || {
        counter(&bed.status(), "dropped_unparsed") - counter(&before, "dropped_unparsed") == 4
    }));
    server.stop();
}

#[test]
fn a_flood_of_what_cannot_be_parsed_is_timed_out_and_an_allow_listed_source_never_is() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(
        &dir.path().join("data"),
        "[bans]\nallow = [\"2001:db8:94::/64\"]\n",
    );
    let flooder = "2001:db8:93::1";
    let over_bound = Segment::new(flooder, 5000, SYN)
        .with_extensions(&[60; 7])
        .frame();
    bed.send_frames(vec![over_bound; 40]);
    let line = server
        .wait_log("timed out 2001:db8:93::/64", Duration::from_secs(5))
        .expect("the unparseable flood was not timed out");
    assert!(line.contains("cause unparsed-flood"), "{line}");
    // The allow-listed source: headers, chains over the bound, a scan.
    let allowed = "2001:db8:94::7";
    let mut frames = scan(allowed, &[60]);
    frames.extend(std::iter::repeat_n(
        Segment::new(allowed, 5000, SYN)
            .with_extensions(&[60; 7])
            .frame(),
        40,
    ));
    bed.send_frames(frames);
    assert!(
        server
            .wait_log("timed out 2001:db8:94::/64", Duration::from_millis(500))
            .is_none(),
        "{}",
        server.log_text()
    );
    assert!(bed.entry("2001:db8:94::/64").is_none());
    legit_v6_is_served(&bed, &server);
    server.stop();
}

/// The kernel here has no 802.1Q interfaces (CONFIG_VLAN_8021Q is off), so
/// tagged frames are crafted and sent on the veth, as a trunk would carry
/// them: the program looks behind one or two tags.
#[test]
fn vlan_tagged_frames_of_a_timed_out_source_are_dropped_and_a_tagged_scan_is_seen() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "");
    for (tags, source) in [(1u8, "198.18.95.1"), (2, "198.18.95.2")] {
        let frames: Vec<Vec<u8>> = (1..=20)
            .map(|port| {
                let mut probe = Segment::new(source, port, SYN);
                probe.vlan_tags = tags;
                probe.frame()
            })
            .collect();
        bed.send_frames(frames);
        let line = server
            .wait_log(&format!("timed out {source}/32"), Duration::from_secs(5))
            .unwrap_or_else(|| panic!("a scan behind {tags} tags was not timed out"));
        assert!(line.contains("cause port-scan"), "{line}");
        let before = bed.entry(&format!("{source}/32")).unwrap()["drops"]
            .as_u64()
            .unwrap();
        let mut tagged = Segment::new(source, 5000, ACK);
        tagged.vlan_tags = tags;
        bed.send_frames(vec![tagged.frame(); 5]);
        assert!(
            eventually(Duration::from_secs(2), || {
                bed.entry(&format!("{source}/32")).unwrap()["drops"]
                    .as_u64()
                    .unwrap()
                    >= before + 5
            }),
            "{tags} tags: {}",
            bed.status()
        );
    }
    server.stop();
}
