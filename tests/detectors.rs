//! The kernel detectors against real scanners and floods (nmap, hping3)
//! in the test bed's namespaces: each is timed out with its cause and the
//! rest of it dropped in the kernel, and nothing legitimate is reported.
//! Needs root; skips loudly without it, and fails under CI=true.

mod common;

use std::time::Duration;

#[path = "common/netns.rs"]
mod netns;
#[path = "common/testbed.rs"]
mod testbed;

use netns::{NetnsPair, SERVER_V4};
use testbed::*;

#[test]
fn nmap_scans_are_timed_out_with_their_cause_and_the_rest_dropped_in_the_kernel() {
    let Some(bed) = Testbed::new() else { return };
    if !have("nmap") {
        return;
    }
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "[kernel]\ndrop_scope = \"all\"\n");
    let scans = [
        ("-sS", "198.18.77.21", "port-scan"),
        ("-sT", "198.18.77.22", "port-scan"),
        ("-sN", "198.18.77.23", "bad-tcp-flags"),
        ("-sF", "198.18.77.24", "bad-tcp-flags"),
        ("-sX", "198.18.77.25", "bad-tcp-flags"),
    ];
    bed.add_client_addresses(&scans.map(|(_, source, _)| source));
    let counter = |detectors: &serde_json::Value, name: &str| detectors[name].as_u64().unwrap();
    for (scan, source, cause) in scans {
        let before = bed.detectors();
        let report = bed.nmap(scan, source, "1-300,5000");
        let line = server
            .wait_log(&format!("timed out {source}/32"), Duration::from_secs(5))
            .unwrap_or_else(|| panic!("nmap {scan} from {source} was not timed out: {report}"));
        assert!(line.contains(&format!("cause {cause}")), "{scan}: {line}");
        let after = bed.detectors();
        let probes_dropped = counter(&after, "probes_dropped") - counter(&before, "probes_dropped");
        if cause == "port-scan" {
            // Reported at exactly scan_ports distinct ports; from that
            // probe on, the kernel dropped the rest.
            assert!(line.contains("probes to 8 distinct ports"), "{line}");
            let syns = counter(&after, "syns_seen") - counter(&before, "syns_seen");
            assert!(
                syns - probes_dropped < 8,
                "nmap {scan}: {} probes passed the detectors ({after})",
                syns - probes_dropped
            );
        }
        let entry = bed
            .entry(&format!("{source}/32"))
            .unwrap_or_else(|| panic!("{source} is not in the kernel map"));
        // nmap sent about 300 probes: what the detectors did not drop, the
        // time-out in the map did.
        let banned_drops = entry["drops"].as_u64().unwrap();
        assert!(
            probes_dropped + banned_drops >= 250,
            "nmap {scan}: {probes_dropped} probes dropped by the detectors, {banned_drops} by the time-out: {report}"
        );
        eprintln!(
            "nmap {scan} from {source}: {probes_dropped} probes dropped by the detectors, {banned_drops} by its time-out"
        );
    }
    let detectors = bed.detectors();
    assert_eq!(detectors["scans"], 2, "{detectors}");
    assert_eq!(detectors["malformed"], 3, "{detectors}");
    assert_eq!(detectors["events_lost"], 0, "{detectors}");
}

/// `bans.mode = "monitor"` reaches the kernel: the detectors still see and
/// report the flood (a "would time out" line), and drop none of it.
#[test]
fn in_monitor_mode_the_kernel_reports_a_syn_flood_and_drops_none_of_it() {
    let Some(bed) = Testbed::new() else { return };
    if !have("hping3") {
        return;
    }
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "[bans]\nmode = \"monitor\"\n");
    let flooder = "198.18.77.32";
    bed.add_client_addresses(&[flooder]);
    let (report, received) = bed.syn_flood(flooder);
    let line = server
        .wait_log(
            &format!("would time out {flooder}/32"),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| {
            panic!(
                "the flood was not reported: {report}\n{}",
                server.log_text()
            )
        });
    assert!(line.contains("cause syn-flood"), "{line}");
    let detectors = bed.detectors();
    assert_eq!(detectors["monitor"], true, "{detectors}");
    assert_eq!(detectors["floods"], 1, "{detectors}");
    assert_eq!(detectors["syns_dropped"], 0, "{detectors}");
    assert!(bed.entry(&format!("{flooder}/32")).is_none());
    // Enforcing, at most 150 come back (see the test below); here the
    // listening socket answers what reaches it.
    assert!(received > 1000, "{received} SYN-ACKs came back: {report}");
    eprintln!("hping3 in monitor mode: {received} SYN-ACKs");
    server.stop();
}

#[test]
fn an_hping3_syn_flood_is_limited_in_the_kernel_and_timed_out_but_its_ssh_still_answers() {
    let Some(bed) = Testbed::new() else { return };
    if !have("hping3") {
        return;
    }
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "");
    let flooder = "198.18.77.31";
    bed.add_client_addresses(&[flooder]);
    // Another service on the host (think sshd): not the server's port.
    let ssh = {
        let ns = bed.pair.server_ns.clone();
        std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let listener = std::net::TcpListener::bind((SERVER_V4, 2222)).unwrap();
            let _ = listener.accept();
        })
    };
    let (report, received) = bed.syn_flood(flooder);
    let line = server
        .wait_log(&format!("timed out {flooder}/32"), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the flood was not timed out: {report}"));
    assert!(line.contains("cause syn-flood"), "{line}");
    // The burst (100) and what the rate (50/s) refills in the ~0.5 s the
    // flood lasts; every other SYN was dropped in XDP.
    assert!(
        received <= 100 + 50,
        "{received} SYN-ACKs came back: {report}"
    );
    // Dropped by the rate limit until the time-out, by the time-out after.
    let detectors = bed.detectors();
    let by_limit = detectors["syns_dropped"].as_u64().unwrap();
    let entry = bed
        .entry(&format!("{flooder}/32"))
        .expect("in the kernel map");
    let by_ban = entry["drops"].as_u64().unwrap();
    assert!(
        by_limit + by_ban >= 4800,
        "{by_limit} SYNs dropped by the limit, {by_ban} by the time-out"
    );
    eprintln!(
        "hping3: {received} SYN-ACKs; {by_limit} SYNs dropped by the limit, {by_ban} by the time-out"
    );
    assert_eq!(detectors["floods"], 1, "{detectors}");
    // drop_scope = service: the flooder's packets to another port pass.
    let out = bed.in_client(
        10,
        &[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{SERVER_V4}/2222 && echo connected"),
        ],
    );
    // (bash picks the source address by route; the flooder's own address
    // is checked with nmap, which binds it.)
    assert!(out.contains("connected"), "{out}");
    ssh.join().unwrap();
    let report = bed.nmap("-sT", flooder, "2222,5000");
    assert!(report.contains("5000/tcp filtered"), "{report}");
    server.stop();
}

#[test]
fn a_random_source_flood_neither_locks_out_a_client_nor_fills_the_table() {
    let Some(bed) = Testbed::new() else { return };
    if !have("hping3") {
        return;
    }
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "");
    let server_pub = server.data_dir.join("server.pub");
    let flood = {
        let ns = bed.pair.client_ns.clone();
        std::thread::spawn(move || {
            // 20,000 SYNs, each from a random address, at about 5,000/s;
            // their SYN-ACKs have no route out of the server namespace.
            run_in_bounded(
                &ns,
                60,
                &[
                    "hping3",
                    "-S",
                    "-p",
                    "5000",
                    "--rand-source",
                    "-i",
                    "u200",
                    "-c",
                    "20000",
                    SERVER_V4,
                ],
            )
        })
    };
    let mut served = 0;
    while !flood.is_finished() && served < 20 {
        bed.ping(SERVER_V4, &server_pub)
            .expect("a client is served during the flood");
        served += 1;
    }
    let output = flood.join().unwrap();
    assert!(served >= 1, "the flood ended before a ping: {output}");
    let (code, out, err) = bed.admin(&server.admin_key, &server_pub, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| !l.trim().is_empty()).count(),
        0,
        "no time-outs: {out}"
    );
    let detectors = bed.detectors();
    assert_eq!(detectors["floods"], 0, "{detectors}");
    assert!(
        detectors["syns_seen"].as_u64().unwrap() >= 10_000,
        "{detectors}"
    );
}

#[test]
fn legit_reconnects_and_an_allow_listed_nmap_are_never_reported() {
    let Some(bed) = Testbed::new() else { return };
    if !have("nmap") {
        return;
    }
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let admin_host = "198.18.77.40";
    let server = bed.start_server(
        &dir.path().join("data"),
        &format!("[bans]\nallow = [\"{admin_host}/32\"]\n"),
    );
    let server_pub = server.data_dir.join("server.pub");
    let started = std::time::Instant::now();
    // Faster than syn_rate: now and then a SYN is dropped by the limit and
    // retransmitted a second later (hence the 3 s timeout); never a flood.
    for i in 0..200 {
        bed.ping_within(SERVER_V4, &server_pub, "3")
            .unwrap_or_else(|e| panic!("reconnect {i}: {e}"));
    }
    eprintln!(
        "200 connect+ping+close in {:?}; {}",
        started.elapsed(),
        bed.detectors()
    );
    let before = bed.detectors();
    for counter in ["scans", "floods", "malformed", "events_sent"] {
        assert_eq!(before[counter], 0, "{counter}: {before}");
    }
    // The allow-listed admin host scans: not counted, limited or reported.
    bed.add_client_addresses(&[admin_host]);
    let report = bed.nmap("-sS", admin_host, "1-2000,5000");
    assert!(report.contains("5000/tcp open"), "{report}");
    let after = bed.detectors();
    for counter in [
        "syns_seen",
        "syns_dropped",
        "scans",
        "floods",
        "malformed",
        "events_sent",
        "probes_dropped",
    ] {
        assert_eq!(after[counter], before[counter], "{counter}: {after}");
    }
    let (code, out, err) = bed.admin(&server.admin_key, &server_pub, &["stats"]);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stats["kernel_detections"], 0, "{stats}");
    assert_eq!(stats["bans_total"], 0, "{stats}");
    assert_eq!(drops(&bed.status()), 0);
}
