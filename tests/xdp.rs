//! The kernel tier against the real kernel: two network namespaces joined by
//! a veth pair (made here, removed afterwards, also on failure), the XDP
//! program attached on the server side, the server in one namespace and the
//! client in the other. This file: the drop path, the pinned table, attach
//! and detach, the watchdog; `detectors.rs` has the detectors against real
//! scanners. Needs root; skips loudly without it, and fails under CI=true.

mod common;

use std::time::Duration;

use common::*;

#[path = "common/netns.rs"]
mod netns;
#[path = "common/testbed.rs"]
mod testbed;

use netns::{CLIENT_V4, NetnsPair, SERVER_V4, SERVER_V6};
use testbed::*;

#[test]
fn banned_sources_are_dropped_in_the_kernel_until_unban_or_expiry() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach(); // the loader exits; the pinned link keeps the program attached
    let dir = tempfile::tempdir().unwrap();
    let server = bed.start_server(&dir.path().join("data"), "[bans]\nnon_protocol = \"3s\"\n");
    let admin_key = server.admin_key.clone();
    assert!(
        server
            .wait_log("kernel tier on", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
    let server_pub = server.data_dir.join("server.pub");

    bed.ping(SERVER_V4, &server_pub)
        .expect("a clean client is served");
    bed.send_garbage(SERVER_V4);
    assert!(
        server
            .wait_log(&format!("timed out {CLIENT_V4}/32"), Duration::from_secs(3))
            .is_some()
    );
    let accepted = bed.accepted(&server);
    let dropped_before = drops(&bed.status());

    let error = bed
        .ping(SERVER_V4, &server_pub)
        .expect_err("banned in the kernel");
    assert!(
        error.contains("no answer within"),
        "the SYN must never reach the server: {error}"
    );
    let status = bed.status();
    assert!(bed.entry(&format!("{CLIENT_V4}/32")).is_some(), "{status}");
    assert!(drops(&status) > dropped_before, "{status}");
    // The only new connection the server saw is this stats request itself.
    assert_eq!(
        bed.accepted(&server),
        accepted + 1,
        "a banned SYN reached the server"
    );
    // `bans show` says so, with the entry's own drop count.
    let (code, out, err) = bed.admin(&admin_key, &server_pub, &["show", CLIENT_V4]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kernel: in the map, "), "{out}");
    assert!(!out.contains("in the map, 0 packets"), "{out}");

    // Unban: passes again, and the kernel entry is gone.
    let (code, _, err) = bed.admin(&admin_key, &server_pub, &["remove", CLIENT_V4]);
    assert_eq!(code, 0, "{err}");
    bed.ping(SERVER_V4, &server_pub).expect("unbanned");
    assert!(bed.entry(&format!("{CLIENT_V4}/32")).is_none());

    // IPv6: the /64 goes into the prefix trie; expiry releases it.
    bed.send_garbage(SERVER_V6);
    assert!(
        server
            .wait_log("timed out 2001:db8:77::/64", Duration::from_secs(3))
            .is_some()
    );
    assert!(bed.entry("2001:db8:77::/64").is_some());
    let error = bed.ping(SERVER_V6, &server_pub).expect_err("banned /64");
    assert!(error.contains("no answer within"), "{error}");
    assert!(
        eventually(Duration::from_secs(6), || bed
            .ping(SERVER_V6, &server_pub)
            .is_ok()),
        "expiry releases"
    );
    assert!(
        server
            .wait_log("released 2001:db8:77::/64", Duration::from_secs(2))
            .is_some()
    );
    assert!(bed.entry("2001:db8:77::/64").is_none());
}

#[test]
fn restart_replays_live_bans_removes_stale_ones_and_detach_lets_traffic_through() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = bed.start_server(&data, "");
    let server_pub = server.data_dir.join("server.pub");
    bed.send_garbage(SERVER_V4);
    assert!(
        server
            .wait_log(&format!("timed out {CLIENT_V4}/32"), Duration::from_secs(3))
            .is_some()
    );
    assert!(server.stop().success());

    // While stopped: storage forgets the client's ban (the map still has
    // it) and gains one the map does not have.
    let data_arg = data.display().to_string();
    assert!(bed.entry(&format!("{CLIENT_V4}/32")).is_some());
    let (code, _, err) = cli(&["bans", "--data-dir", &data_arg, "remove", CLIENT_V4]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["bans", "--data-dir", &data_arg, "add", "198.18.77.99"]);
    assert_eq!(code, 0, "{err}");

    let server = bed.start_server(&data, "");
    let log = server.log_text();
    assert!(
        log.contains("kernel table: 1 bans replayed, 1 stale entries removed, 0 failed"),
        "{log}"
    );
    assert!(bed.entry("198.18.77.99/32").is_some(), "{}", bed.status());
    assert!(
        bed.entry(&format!("{CLIENT_V4}/32")).is_none(),
        "{}",
        bed.status()
    );
    bed.ping(SERVER_V4, &server_pub).expect("no longer banned");

    // Banned again; then detach: the SYN reaches the server again, which
    // refuses it at accept (the userspace tier alone).
    bed.send_garbage(SERVER_V4);
    assert!(
        server
            .wait_log(&format!("timed out {CLIENT_V4}/32"), Duration::from_secs(3))
            .is_some()
    );
    assert!(
        bed.ping(SERVER_V4, &server_pub)
            .unwrap_err()
            .contains("no answer within")
    );
    let pin = bed.pin_dir.display().to_string();
    let (code, _, err) = bed.penaltybox(&bed.pair.server_ns, &["xdp", "detach", "--pin-dir", &pin]);
    assert_eq!(code, 0, "{err}");
    let error = bed.ping(SERVER_V4, &server_pub).unwrap_err();
    assert!(
        error.contains("closed the connection during the handshake"),
        "{error}"
    );
}

#[test]
fn a_missing_table_is_one_clear_line_and_the_userspace_tier_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .args(&["-B", "/sys/fs/bpf/penaltybox-no-such-table"])
        .start();
    let warning = server
        .wait_log("kernel tier off", Duration::from_secs(2))
        .expect("a warning");
    assert!(
        warning.contains("no pinned ban table at /sys/fs/bpf/penaltybox-no-such-table"),
        "{warning}"
    );
    assert!(warning.contains("penaltybox xdp attach"), "{warning}");
    assert_eq!(
        server.call_from("127.0.0.2", None, protocol::Request::Ping { nonce: 1 }),
        protocol::Response::Pong { nonce: 1 }
    );
    send_raw("127.0.0.3", server.addr, b"GET /", Duration::from_secs(2));
    assert!(eventually(Duration::from_secs(2), || refused_at_accept(
        "127.0.0.3",
        server.addr
    )));
}

#[test]
fn a_table_path_that_is_not_a_ban_map_is_one_clear_line() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let counters = bed.pin_dir.join("counters").display().to_string();
    let server = ServerSpec::new(&dir.path().join("data"))
        .netns(&bed.pair.server_ns)
        .listen(&[&format!("{SERVER_V4}:5000")])
        .args(&["-B", &counters])
        .start();
    let warning = server
        .wait_log("kernel tier off", Duration::from_secs(2))
        .expect("a warning");
    assert!(
        warning.contains("is not a penaltybox ban table: a per-CPU array map, not a hash map"),
        "{warning}"
    );
    let server_pub = server.data_dir.join("server.pub");
    bed.ping(SERVER_V4, &server_pub)
        .expect("the userspace tier serves");
}

#[test]
fn the_per_entry_drop_count_is_exact_when_two_cpus_drop_for_one_source() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    // UDP is dropped only when a time-out drops everything from a source.
    let server = bed.start_server(&dir.path().join("data"), "[kernel]\ndrop_scope = \"all\"\n");
    let server_pub = server.data_dir.join("server.pub");
    let (code, _, err) = bed.admin(&server.admin_key, &server_pub, &["add", CLIENT_V4]);
    assert_eq!(code, 0, "{err}");
    let entry = format!("{CLIENT_V4}/32");
    let counts = || {
        let status = bed.status();
        let per_entry = status["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == entry.as_str())
            .map(|e| e["drops"].as_u64().unwrap())
            .expect("the banned entry");
        let per_cpu: Vec<u64> = status["dropped_by_address_per_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        (
            per_entry,
            status["dropped_by_address"].as_u64().unwrap(),
            per_cpu,
        )
    };
    let (entry_before, total_before, cpus_before) = counts();

    // Two senders in the client namespace, one pinned to each CPU: veth
    // runs XDP on the sending CPU, so both CPUs drop for this one entry.
    const PER_SENDER: u64 = 50_000;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let senders: Vec<_> = (0..2)
        .map(|i| {
            let ns = bed.pair.client_ns.clone();
            std::thread::spawn(move || {
                NetnsPair::enter(&ns);
                // SAFETY: a cpu_set_t we own, for this thread only.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(i % cpus, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                let socket = std::net::UdpSocket::bind(format!("{CLIENT_V4}:0")).unwrap();
                let target = format!("{SERVER_V4}:9");
                for _ in 0..PER_SENDER {
                    // A full queue (ENOBUFS) loses the packet before XDP:
                    // it is in neither count.
                    let _ = socket.send_to(b"penaltybox drop-count test", &target);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    // The per-CPU total is exact by construction; the entry's own count,
    // shared by both CPUs, must match it once the queues have drained.
    let mut last = (0, 0, Vec::new());
    let settled = eventually(Duration::from_secs(10), || {
        let (entry_now, total_now, cpus_now) = counts();
        last = (entry_now - entry_before, total_now - total_before, cpus_now);
        last.0 == last.1 && last.1 >= PER_SENDER
    });
    assert!(
        settled,
        "per-entry drops {} vs per-CPU drops {} (sent {})",
        last.0,
        last.1,
        2 * PER_SENDER
    );
    if cpus >= 2 {
        let busy = last
            .2
            .iter()
            .zip(cpus_before.iter().chain(std::iter::repeat(&0)))
            .filter(|(now, before)| *now > *before)
            .count();
        assert!(busy >= 2, "only {busy} CPU dropped: {:?}", last.2);
    }
}

#[test]
fn an_allow_listed_source_inside_a_forced_time_out_is_never_dropped() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[bans]\nallow = [\"{CLIENT_V4}/32\"]\n");
    let server = bed.start_server(&dir.path().join("data"), &config);
    let server_pub = server.data_dir.join("server.pub");
    let status = bed.status();
    assert_eq!(
        status["allowed"],
        serde_json::json!([format!("{CLIENT_V4}/32")]),
        "{status}"
    );
    let prefix = "198.18.77.0/24".to_owned();
    let (code, _, err) = bed.admin(&server.admin_key, &server_pub, &["add", &prefix]);
    assert_eq!(code, 1, "refused without --force");
    assert!(err.contains("covers the allow-list entry"), "{err}");
    let (code, _, err) = bed.admin(&server.admin_key, &server_pub, &["add", &prefix, "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(bed.entry("198.18.77.0/24").is_some(), "{}", bed.status());
    // The ban is in the kernel, and the allow-listed client inside it still
    // gets through the program and the acceptor.
    bed.ping(SERVER_V4, &server_pub)
        .expect("the allow-listed client is served");
    let status = bed.status();
    assert!(status["passed_allowed"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn a_reload_releases_a_newly_allow_listed_source_from_the_kernel_map() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = bed.start_server(&data, "[bans]\nallow = []\n");
    let server_pub = server.data_dir.join("server.pub");
    bed.send_garbage(SERVER_V4);
    assert!(
        server
            .wait_log(&format!("timed out {CLIENT_V4}/32"), Duration::from_secs(3))
            .is_some()
    );
    assert!(bed.entry(&format!("{CLIENT_V4}/32")).is_some());
    bed.ping(SERVER_V4, &server_pub)
        .expect_err("dropped in the kernel");

    std::fs::write(
        data.with_extension("toml"),
        format!("[bans]\nallow = [\"{CLIENT_V4}/32\"]\n"),
    )
    .unwrap();
    server.signal("-HUP");
    assert!(
        server
            .wait_log("SIGHUP: reloaded", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || bed
            .entry(&format!("{CLIENT_V4}/32"))
            .is_none()),
        "still in the kernel map: {}",
        bed.status()
    );
    assert_eq!(
        bed.status()["allowed"],
        serde_json::json!([format!("{CLIENT_V4}/32")])
    );
    bed.ping(SERVER_V4, &server_pub)
        .expect("released and allow-listed: served");
}

#[test]
fn the_program_loads_with_cap_bpf_and_cap_net_admin_alone() {
    // Without CAP_PERFMON the verifier is strict (no packet or map pointer
    // moved by a variable, speculative paths walked too): what a container
    // run with --cap-add BPF --cap-add NET_ADMIN as a non-root user gets.
    let Some(bed) = Testbed::new() else { return };
    let pin = bed.pin_dir.display().to_string();
    let output = run(
        "nsenter",
        &[
            &format!("--net=/run/netns/{}", bed.pair.server_ns),
            "setpriv",
            "--reuid",
            "10001",
            "--regid",
            "10001",
            "--clear-groups",
            "--inh-caps",
            "-all,+bpf,+net_admin",
            "--ambient-caps",
            "+bpf,+net_admin",
            BIN,
            "xdp",
            "attach",
            "--iface",
            &bed.pair.server_if,
            "--pin-dir",
            &pin,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(bed.status()["detectors"].is_object());
    // The egress program (the stray detector) too, with no warning.
    assert_eq!(bed.status()["egress_attached"], true, "{stderr}");
    assert!(
        !stderr.contains("stray-segment detector is off"),
        "{stderr}"
    );
}

#[test]
fn xdp_attach_under_ip_netns_exec_fails_and_says_to_use_nsenter() {
    // `ip netns exec` gives the command a mount namespace of its own: pins
    // made there would vanish when it exits, with a success message.
    let Some(bed) = Testbed::new() else { return };
    let pin = bed.pin_dir.display().to_string();
    let output = run(
        "ip",
        &[
            "netns",
            "exec",
            &bed.pair.server_ns,
            BIN,
            "xdp",
            "attach",
            "--iface",
            &bed.pair.server_if,
            "--pin-dir",
            &pin,
        ],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("mount namespace of its own") && err.contains("nsenter --net="),
        "{err}"
    );
    assert!(!bed.pin_dir.exists(), "nothing pinned on the host");
    // The way it says works.
    bed.attach();
    assert!(bed.status()["detectors"].is_object());
}

#[test]
fn the_watchdog_reattaches_a_detached_program_and_replays_the_bans() {
    let Some(bed) = Testbed::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pin = bed.pin_dir.display().to_string();
    // One-step mode: the server attaches the program itself.
    let server = ServerSpec::new(&dir.path().join("data"))
        .netns(&bed.pair.server_ns)
        .listen(&[&format!("{SERVER_V4}:5000")])
        .args(&["--xdp-iface", &bed.pair.server_if, "-B", &pin])
        .start();
    let server_pub = server.data_dir.join("server.pub");
    let (code, _, err) = bed.admin(&server.admin_key, &server_pub, &["add", "198.18.99.0/24"]);
    assert_eq!(code, 0, "{err}");
    assert!(bed.entry("198.18.99.0/24").is_some());

    // Someone detaches it under the running server.
    let (code, out, err) =
        bed.penaltybox(&bed.pair.server_ns, &["xdp", "detach", "--pin-dir", &pin]);
    assert_eq!(code, 0, "{out}{err}");
    let lost = server
        .wait_log("kernel tier lost", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no error line: {}", server.log_text()));
    assert!(
        lost.contains("ERROR") && lost.contains("attaching the program again"),
        "{lost}"
    );
    let back = server
        .wait_log("kernel tier back", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not re-attached: {}", server.log_text()));
    assert!(back.contains("1 time-outs replayed"), "{back}");
    assert!(
        bed.entry("198.18.99.0/24").is_some(),
        "the time-out is back in the new map"
    );
    // And the program drops again: a banned prefix's ping finds no answer.
    let status = bed.status();
    assert_eq!(status["detectors"]["enabled"], true, "{status}");
    assert_eq!(
        server.log_text().matches("kernel tier lost").count(),
        1,
        "one error line"
    );
}
