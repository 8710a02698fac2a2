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

/// Sessions of a real client from one source in the client namespace,
/// each pinging (back to back, or with a pause) until stopped; a broken
/// session reconnects with a backoff (200 ms doubling to 2 s), as a client
/// would.
pub struct Sessions {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Pings answered, sessions that broke (and were made again), and
    /// sessions open now.
    pub answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub broken: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub connected: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What each session task shares with the test.
#[derive(Clone)]
struct SessionCounters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    broken: std::sync::Arc<std::sync::atomic::AtomicU64>,
    connected: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Testbed {
    /// `n` sessions from `source` (an address of the client side) to the
    /// server's IPv4 address, with `config`'s keys, pausing `pause`
    /// between pings.
    pub fn sessions(
        &self,
        source: &str,
        config: protocol::ClientConfig,
        n: usize,
        pause: std::time::Duration,
    ) -> Sessions {
        let counters = SessionCounters {
            stop: Default::default(),
            answered: Default::default(),
            broken: Default::default(),
            connected: Default::default(),
        };
        let ns = self.pair.client_ns.clone();
        let mut config = config;
        config.bind = Some(source.parse().unwrap());
        let addr: std::net::SocketAddr = format!("{SERVER_V4}:5000").parse().unwrap();
        let shared = counters.clone();
        let thread = std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        tokio::spawn(session_loop(addr, config.clone(), shared.clone(), pause))
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        let SessionCounters {
            stop,
            answered,
            broken,
            connected,
        } = counters;
        Sessions {
            stop,
            answered,
            broken,
            connected,
            thread: Some(thread),
        }
    }
}

async fn session_loop(
    addr: std::net::SocketAddr,
    config: protocol::ClientConfig,
    counters: SessionCounters,
    pause: std::time::Duration,
) {
    let mut backoff = std::time::Duration::from_millis(200);
    let mut nonce = 0u64;
    while !counters.stop.load(Ordering::Relaxed) {
        let Ok(mut client) = protocol::Client::connect_addr(addr, &config).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            continue;
        };
        backoff = std::time::Duration::from_millis(200);
        counters.connected.fetch_add(1, Ordering::Relaxed);
        while !counters.stop.load(Ordering::Relaxed) {
            nonce += 1;
            match client.call(&protocol::Request::Ping { nonce }).await {
                Ok(_) => counters.answered.fetch_add(1, Ordering::Relaxed),
                Err(_) => {
                    counters.broken.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Testbed {
    /// `n` sessions in a row from `source`: connect, ping, close. Answers
    /// how many were served.
    pub fn short_sessions(&self, source: &str, config: protocol::ClientConfig, n: usize) -> usize {
        let ns = self.pair.client_ns.clone();
        let mut config = config;
        config.bind = Some(source.parse().unwrap());
        let addr: std::net::SocketAddr = format!("{SERVER_V4}:5000").parse().unwrap();
        std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut served = 0;
                for nonce in 0..n as u64 {
                    let Ok(mut client) = protocol::Client::connect_addr(addr, &config).await else {
                        continue;
                    };
                    if client
                        .call(&protocol::Request::Ping { nonce })
                        .await
                        .is_ok()
                    {
                        served += 1;
                    }
                }
                served
            })
        })
        .join()
        .unwrap()
    }
}

impl Sessions {
    /// Waits until `n` sessions are open (bounded).
    pub fn wait_connected(&self, n: u64, timeout: std::time::Duration) -> bool {
        eventually(timeout, || self.connected.load(Ordering::Relaxed) >= n)
    }

    /// Waits until `more` pings past now have been answered (bounded).
    pub fn wait_answered(&self, more: u64, timeout: std::time::Duration) -> bool {
        let target = self.answered.load(Ordering::Relaxed) + more;
        eventually(timeout, || self.answered.load(Ordering::Relaxed) >= target)
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Testbed {
    /// The MAC address of a veth end (`ip -n NS link show IF`).
    pub fn mac(&self, ns: &str, iface: &str) -> String {
        let output = run("ip", &["-n", ns, "-o", "link", "show", iface]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.split("link/ether ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no MAC in {text}"))
            .to_owned()
    }

    /// A fixture capture's client side (segments to port 5000), rewritten
    /// to come from `source` on the client side of this bed and to go to
    /// the server, replayed `loops` times with tcpreplay.
    pub fn replay_capture(&self, capture: &str, source: &str, loops: u32) -> String {
        let dir = tempfile::tempdir().unwrap();
        let client_side = dir.path().join("client.pcap");
        let rewritten = dir.path().join("rewritten.pcap");
        let fixture = format!("{}/../fixtures/{capture}", env!("CARGO_MANIFEST_DIR"));
        let filtered = run(
            "tcpdump",
            &[
                "-r",
                &fixture,
                "-w",
                client_side.to_str().unwrap(),
                "tcp dst port 5000",
            ],
        );
        assert!(filtered.status.success(), "{filtered:?}");
        let rewrite = run(
            "tcprewrite",
            &[
                "--infile",
                client_side.to_str().unwrap(),
                "--outfile",
                rewritten.to_str().unwrap(),
                &format!("--srcipmap=127.0.0.1/32:{source}/32"),
                &format!("--dstipmap=127.0.0.1/32:{SERVER_V4}/32"),
                &format!(
                    "--enet-smac={}",
                    self.mac(&self.pair.client_ns, &self.pair.client_if)
                ),
                &format!(
                    "--enet-dmac={}",
                    self.mac(&self.pair.server_ns, &self.pair.server_if)
                ),
                "--fixcsum",
            ],
        );
        assert!(rewrite.status.success(), "{rewrite:?}");
        self.in_client(
            60,
            &[
                "tcpreplay",
                "-i",
                &self.pair.client_if,
                "--loop",
                &loops.to_string(),
                "--pps",
                "2000",
                rewritten.to_str().unwrap(),
            ],
        )
    }

    /// Kills the server's sockets to `peer` (`ss -K`, in the server's
    /// namespace), as an admin or a crash of the kernel's own making would.
    pub fn kill_sockets_to(&self, peer: &str) -> String {
        let output = run(
            "nsenter",
            &[
                &format!("--net=/run/netns/{}", self.pair.server_ns),
                "ss",
                "-K",
                "dst",
                peer,
            ],
        );
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Testbed {
    /// Sends Ethernet frames, as they are, on the client's end of the veth
    /// (an AF_PACKET socket in the client namespace): what a crafting tool
    /// would put on the wire. The server's end receives them, the XDP
    /// program first.
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) {
        let ns = self.pair.client_ns.clone();
        let iface = self.pair.client_if.clone();
        std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let name = std::ffi::CString::new(iface.clone()).unwrap();
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(index, 0, "no interface {iface}");
            // SAFETY: a plain socket call; the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            // SAFETY: all zeroes is a valid sockaddr_ll; the fields that
            // matter are set next.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = index as i32;
            to.sll_halen = 6;
            for frame in &frames {
                // SAFETY: the frame and the address outlive the call.
                let sent = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
        })
        .join()
        .unwrap();
    }
}
