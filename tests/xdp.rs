//! The kernel tier against the real kernel: two network namespaces joined by
//! a veth pair (made here, removed afterwards, also on failure), the XDP
//! program attached on the server side, the server in one namespace and the
//! client in the other. Needs root; skips loudly without it, and fails
//! under CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

#[path = "common/netns.rs"]
mod netns;

use netns::{CLIENT_V4, NetnsPair, SERVER_V4, SERVER_V6};

/// A namespace pair whose server side has the XDP program pinned under
/// `pin_dir`; detached and removed on drop.
struct Testbed {
    pair: NetnsPair,
    pin_dir: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

impl Testbed {
    fn new() -> Option<Testbed> {
        if !is_root() {
            skip_or_fail("network namespaces, veth pairs and XDP need root");
            return None;
        }
        let pair = NetnsPair::create();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/penaltybox-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Some(Testbed { pair, pin_dir })
    }

    /// Runs penaltybox inside a namespace.
    fn penaltybox(&self, ns: &str, args: &[&str]) -> (i32, String, String) {
        let mut all = vec![format!("--net=/run/netns/{ns}"), BIN.to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let output = Command::new("nsenter").args(&all).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn attach(&self) {
        let pin = self.pin_dir.display().to_string();
        let (code, out, err) = self.penaltybox(
            &self.pair.server_ns,
            &[
                "xdp",
                "attach",
                "--iface",
                &self.pair.server_if,
                "--pin-dir",
                &pin,
            ],
        );
        assert_eq!(code, 0, "xdp attach: {out}{err}");
    }

    /// `xdp status --json`.
    fn status(&self) -> serde_json::Value {
        let pin = self.pin_dir.display().to_string();
        let (code, out, err) = self.penaltybox(
            &self.pair.server_ns,
            &["xdp", "status", "--pin-dir", &pin, "--json"],
        );
        assert_eq!(code, 0, "xdp status: {err}");
        serde_json::from_str(out.trim()).unwrap()
    }

    /// The kernel map's entry for `prefix`, if it has one.
    fn entry(&self, prefix: &str) -> Option<serde_json::Value> {
        self.status()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == prefix)
            .cloned()
    }

    /// Sends bytes that are not penaltybox from the client namespace.
    fn send_garbage(&self, server: &str) {
        let script = format!(
            "exec 3<>/dev/tcp/{server}/5000; printf 'GET / HTTP/1.1\\r\\n\\r\\n' >&3; cat <&3 >/dev/null 2>&1; true"
        );
        let output = run(
            "nsenter",
            &[
                &format!("--net=/run/netns/{}", self.pair.client_ns),
                "bash",
                "-c",
                &script,
            ],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A ping from the client namespace: Ok, or the client's error line.
    fn ping(&self, server: &str, key: &Path) -> Result<(), String> {
        self.ping_within(server, key, "1")
    }

    /// [`Testbed::ping`] with the client's timeout, in seconds.
    fn ping_within(&self, server: &str, key: &Path, timeout_s: &str) -> Result<(), String> {
        let addr = if server.contains(':') {
            format!("[{server}]:5000")
        } else {
            format!("{server}:5000")
        };
        let key = key.display().to_string();
        let (code, _, err) = self.penaltybox(
            &self.pair.client_ns,
            &[
                "client",
                "--server",
                &addr,
                "--server-key",
                &key,
                "--timeout",
                timeout_s,
                "ping",
            ],
        );
        if code == 0 { Ok(()) } else { Err(err) }
    }

    fn start_server(&self, data: &Path, config: &str) -> Server {
        let pin = self.pin_dir.display().to_string();
        ServerSpec::new(data)
            .netns(&self.pair.server_ns)
            .listen(&[&format!("{SERVER_V4}:5000"), &format!("[{SERVER_V6}]:5000")])
            .args(&["-B", &pin])
            .config(config)
            .start()
    }

    fn admin(&self, admin_key: &Path, server_pub: &Path, args: &[&str]) -> (i32, String, String) {
        let key = admin_key.display().to_string();
        let server_key = server_pub.display().to_string();
        let addr = format!("{SERVER_V4}:5000");
        let mut all = vec![
            "bans",
            "--server",
            &addr,
            "--server-key",
            &server_key,
            "--key",
            &key,
        ];
        all.extend_from_slice(args);
        self.penaltybox(&self.pair.server_ns, &all)
    }

    fn accepted(&self, server: &Server) -> u64 {
        let server_pub = server.data_dir.join("server.pub");
        let (code, out, err) = self.admin(&server.admin_key, &server_pub, &["stats"]);
        assert_eq!(code, 0, "{err}");
        let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        stats["connections_accepted"].as_u64().unwrap()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let pin = self.pin_dir.display().to_string();
        let _ = self.penaltybox(&self.pair.server_ns, &["xdp", "detach", "--pin-dir", &pin]);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // self.pair drops next and removes the namespaces and the veth pair.
    }
}

/// Packets the program dropped, by address and by prefix (per-CPU sums).
fn drops(status: &serde_json::Value) -> u64 {
    status["dropped_by_address"].as_u64().unwrap() + status["dropped_by_prefix"].as_u64().unwrap()
}

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
    let prefix = format!("{SERVER_V4}/24");
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

// ---- The detectors against real scanners (nmap, hping3) ----

/// Is `tool` installed? If not, the test skips loudly (fails under CI).
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_or_fail(&format!(
            "{tool} is not installed (apt-get install nmap hping3)"
        ));
    }
    found
}

/// Runs a tool in network namespace `ns`, bounded by `timeout_s` seconds
/// (running past it fails the test); returns its stdout and stderr.
fn run_in_bounded(ns: &str, timeout_s: u32, args: &[&str]) -> String {
    let mut all = vec![
        format!("--net=/run/netns/{ns}"),
        "timeout".to_owned(),
        timeout_s.to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let output = run(
        "nsenter",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.code() != Some(124),
        "{args:?} ran past {timeout_s}s: {text}"
    );
    text
}

impl Testbed {
    /// Adds addresses to the client side (each scanner gets its own).
    fn add_client_addresses(&self, addrs: &[&str]) {
        for addr in addrs {
            let output = run(
                "ip",
                &[
                    "-n",
                    &self.pair.client_ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &self.pair.client_if,
                ],
            );
            assert!(output.status.success(), "{output:?}");
        }
    }

    /// Runs a tool in the client namespace, bounded by `timeout` seconds;
    /// returns its stdout and stderr.
    fn in_client(&self, timeout_s: u32, args: &[&str]) -> String {
        run_in_bounded(&self.pair.client_ns, timeout_s, args)
    }

    fn nmap(&self, scan: &str, source: &str, ports: &str) -> String {
        self.in_client(
            120,
            &[
                "nmap",
                scan,
                "-S",
                source,
                "-e",
                &self.pair.client_if,
                "-Pn",
                "-n",
                "-p",
                ports,
                "--max-retries",
                "0",
                "--max-rtt-timeout",
                "100ms",
                "--host-timeout",
                "20s",
                SERVER_V4,
            ],
        )
    }

    /// 5,000 SYNs to the server's port at about 10,000/s from `flooder`
    /// (hping3): its report, and how many answers came back (its line
    /// "5000 packets transmitted, N packets received").
    fn syn_flood(&self, flooder: &str) -> (String, u64) {
        let report = self.in_client(
            60,
            &[
                "hping3", "-S", "-p", "5000", "-a", flooder, "-i", "u100", "-c", "5000", SERVER_V4,
            ],
        );
        let received = report
            .split(" packets received")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no statistics line: {report}"));
        (report, received)
    }

    fn detectors(&self) -> serde_json::Value {
        self.status()["detectors"].clone()
    }
}

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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(bed.status()["detectors"].is_object());
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
