//! The kernel-tier test bed: two network namespaces joined by a veth pair
//! (made here, removed on drop, also on failure), the XDP program pinned on
//! the server side, and the tools the tests drive from the client side
//! (the penaltybox CLI, nmap, hping3). Shared by `xdp.rs` and
//! `detectors.rs`; needs root.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use crate::netns::{NetnsPair, SERVER_V4, SERVER_V6};

/// A namespace pair whose server side has the XDP program pinned under
/// `pin_dir`; detached and removed on drop.
pub struct Testbed {
    pub pair: NetnsPair,
    pub pin_dir: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

impl Testbed {
    pub fn new() -> Option<Testbed> {
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
    pub fn penaltybox(&self, ns: &str, args: &[&str]) -> (i32, String, String) {
        let mut all = vec![format!("--net=/run/netns/{ns}"), BIN.to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        let output = Command::new("nsenter").args(&all).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn attach(&self) {
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
    pub fn status(&self) -> serde_json::Value {
        let pin = self.pin_dir.display().to_string();
        let (code, out, err) = self.penaltybox(
            &self.pair.server_ns,
            &["xdp", "status", "--pin-dir", &pin, "--json"],
        );
        assert_eq!(code, 0, "xdp status: {err}");
        serde_json::from_str(out.trim()).unwrap()
    }

    /// The kernel map's entry for `prefix`, if it has one.
    pub fn entry(&self, prefix: &str) -> Option<serde_json::Value> {
        self.status()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == prefix)
            .cloned()
    }

    /// Sends bytes that are not penaltybox from the client namespace.
    pub fn send_garbage(&self, server: &str) {
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
    pub fn ping(&self, server: &str, key: &Path) -> Result<(), String> {
        self.ping_within(server, key, "1")
    }

    /// [`Testbed::ping`] with the client's timeout, in seconds.
    pub fn ping_within(&self, server: &str, key: &Path, timeout_s: &str) -> Result<(), String> {
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

    pub fn start_server(&self, data: &Path, config: &str) -> Server {
        let pin = self.pin_dir.display().to_string();
        ServerSpec::new(data)
            .netns(&self.pair.server_ns)
            .listen(&[&format!("{SERVER_V4}:5000"), &format!("[{SERVER_V6}]:5000")])
            .args(&["-B", &pin])
            .config(config)
            .start()
    }

    pub fn admin(
        &self,
        admin_key: &Path,
        server_pub: &Path,
        args: &[&str],
    ) -> (i32, String, String) {
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

    pub fn accepted(&self, server: &Server) -> u64 {
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
pub fn drops(status: &serde_json::Value) -> u64 {
    status["dropped_by_address"].as_u64().unwrap() + status["dropped_by_prefix"].as_u64().unwrap()
}

/// Is `tool` installed? If not, the test skips loudly (fails under CI).
pub fn have(tool: &str) -> bool {
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
pub fn run_in_bounded(ns: &str, timeout_s: u32, args: &[&str]) -> String {
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
    pub fn add_client_addresses(&self, addrs: &[&str]) {
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
    pub fn in_client(&self, timeout_s: u32, args: &[&str]) -> String {
        run_in_bounded(&self.pair.client_ns, timeout_s, args)
    }

    pub fn nmap(&self, scan: &str, source: &str, ports: &str) -> String {
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
    pub fn syn_flood(&self, flooder: &str) -> (String, u64) {
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

    pub fn detectors(&self) -> serde_json::Value {
        self.status()["detectors"].clone()
    }
}
