//! The stray-segment detector at program level (BPF_PROG_TEST_RUN): the
//! egress program on the resets this host sends, the XDP program on what
//! the reported source sends next. A test run hands the egress program no
//! socket, so every reset it sees is one the stack sent for no connection;
//! the socket cases (an orphan's reset, a connection reset by its socket)
//! are end to end in tests/strays.rs. Needs root; skips loudly without it,
//! and fails under CI=true.

mod common;

#[path = "common/packets.rs"]
mod packets;
#[path = "common/program.rs"]
mod program;

use packets::*;
use program::*;
use xdp::{Detection, Detector};

fn detection(stray_segments: u32) -> Detection {
    Detection {
        stray_segments,
        ..Detection::default()
    }
}

#[test]
fn resets_without_ack_are_strays_counted_and_reported_once_at_the_threshold() {
    let Some(mut prog) = Loaded::new(&detection(4)) else {
        return;
    };
    let reset = reset_frame("198.18.30.1", 5000, RST);
    for i in 0..3 {
        assert_eq!(prog.egress(&reset), TC_ACT_OK, "reset {i}");
    }
    assert_eq!(prog.events(), vec![]);
    // The fourth makes the source a stray sender (the port is ours, the
    // one its last stray went to).
    let last = reset_frame("198.18.30.1", 8080, RST);
    assert_eq!(prog.egress(&last), TC_ACT_OK, "never drops its own resets");
    assert_eq!(
        prog.events(),
        vec![event("198.18.30.1", Detector::StraySegments, 4, 8080)]
    );
    assert_eq!(prog.egress(&reset), TC_ACT_OK);
    assert_eq!(prog.events(), vec![], "once per stray window");
    // IPv6 likewise, counted apart per source.
    let v6 = reset_frame("2001:db8:30::1", 5000, RST);
    for _ in 0..4 {
        prog.egress(&v6);
    }
    assert_eq!(
        prog.events(),
        vec![event("2001:db8:30::1", Detector::StraySegments, 4, 5000)]
    );
    let status = prog.status();
    assert_eq!(status.detectors.strays, 9);
    assert_eq!(status.detectors.stray_reports, 2);
}

#[test]
fn resets_with_ack_other_packets_and_allow_listed_peers_are_not_strays() {
    let Some(mut prog) = Loaded::new(&detection(2)) else {
        return;
    };
    prog.table
        .set_allowed(&["198.18.31.0/24".parse().unwrap()])
        .unwrap();
    for _ in 0..10 {
        // The stack's answer to a SYN or a NULL probe (the other
        // detectors' business) carries ACK.
        prog.egress(&reset_frame("198.18.32.1", 5000, RST | ACK));
        // Not a reset at all.
        prog.egress(&reset_frame("198.18.32.2", 5000, ACK));
        prog.egress(&reset_frame("198.18.32.3", 5000, ACK | FIN));
        // Allow-listed: never counted.
        prog.egress(&reset_frame("198.18.31.9", 5000, RST));
    }
    assert_eq!(prog.events(), vec![]);
    assert_eq!(prog.status().detectors.strays, 0);

    // Detectors off: nothing counted either.
    prog.table
        .set_detection(&Detection {
            enabled: false,
            ..detection(2)
        })
        .unwrap();
    for _ in 0..10 {
        prog.egress(&reset_frame("198.18.32.4", 5000, RST));
    }
    assert_eq!(prog.events(), vec![]);
    assert_eq!(prog.status().detectors.strays, 0);
}

#[test]
fn a_reported_sources_further_segments_with_ack_are_dropped_within_the_scope() {
    let Some(mut prog) = Loaded::new(&detection(3)) else {
        return;
    };
    let ack_to_service = Segment::new("198.18.33.1", 5000, ACK).frame();
    let ack_elsewhere = Segment::new("198.18.33.1", 22, ACK).frame();
    let other_source = Segment::new("198.18.33.2", 5000, ACK).frame();
    assert_eq!(prog.verdict(&ack_to_service), XDP_PASS, "not reported yet");
    for _ in 0..3 {
        prog.egress(&reset_frame("198.18.33.1", 5000, RST));
    }
    assert_eq!(prog.events().len(), 1);
    assert_eq!(prog.verdict(&ack_to_service), XDP_DROP);
    assert_eq!(
        prog.verdict(&ack_elsewhere),
        XDP_PASS,
        "drop_scope = service"
    );
    assert_eq!(prog.verdict(&other_source), XDP_PASS);
    // A SYN is not a stray: the other detectors judge it.
    let syn = Segment::new("198.18.33.1", 5000, SYN).frame();
    assert_eq!(prog.verdict(&syn), XDP_PASS);
    assert_eq!(prog.status().detectors.strays_dropped, 1);

    // drop_scope = all: everywhere. Monitor mode: nowhere.
    prog.table
        .set_detection(&Detection {
            drop_service_only: false,
            ..detection(3)
        })
        .unwrap();
    assert_eq!(prog.verdict(&ack_elsewhere), XDP_DROP);
    prog.table
        .set_detection(&Detection {
            monitor: true,
            ..detection(3)
        })
        .unwrap();
    assert_eq!(prog.verdict(&ack_to_service), XDP_PASS);
    // Monitor mode still reports a new stray sender.
    for _ in 0..3 {
        prog.egress(&reset_frame("198.18.33.3", 5000, RST));
    }
    assert_eq!(
        prog.events(),
        vec![event("198.18.33.3", Detector::StraySegments, 3, 5000)]
    );
    assert_eq!(
        prog.verdict(&Segment::new("198.18.33.3", 5000, ACK).frame()),
        XDP_PASS
    );

    // Once its time-out ends (an unban), what the detectors knew of it is
    // forgotten: its segments pass again.
    prog.table.set_detection(&detection(3)).unwrap();
    prog.table
        .remove(&"198.18.33.1/32".parse().unwrap())
        .unwrap();
    assert_eq!(prog.verdict(&ack_to_service), XDP_PASS);
}
