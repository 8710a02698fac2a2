//! The server's cost under a scanner flood, each figure beside its baseline
//! measured in the same run, printed as a table (docs/BENCHMARKS.md).
//!
//! Run: `cargo bench -p penaltybox --bench server` (add `-- --quick` for a
//! smaller run). Everything is on loopback; the load generator shares the
//! machine's cores with the server, as it would on a 2-core box.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::{BanCore, BanPolicy, BanView, RunningServer, ServerConfig, ServerHandle};
use model::Cidr;
use penaltybox::metrics;
use protocol::message::{BanInfo, Cause, FirstBytes};
use protocol::{AccessPolicy, Client, ClientConfig, PrivateKey, PublicKey, Request};
use storage::{Store, StoreOptions};

struct Options {
    flood: Duration,
    samples: usize,
    restore_entries: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let options = if quick {
        Options {
            flood: Duration::from_secs(1),
            samples: 100,
            restore_entries: 100_000,
        }
    } else {
        Options {
            flood: Duration::from_secs(3),
            samples: 400,
            restore_entries: 1_000_000,
        }
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    // The memory figures each run in a process of their own (this binary
    // again, `--section NAME`): in a shared process the allocator hands a
    // section the memory an earlier one freed, and RSS growth hides it.
    if let Some(section) = section_arg() {
        match section.as_str() {
            "restore" => restore(&options, &mut rows),
            "live" => live_memory(&options, 64, &mut rows),
            "live-small-cache" => live_memory(&options, 16, &mut rows),
            "attacks" => attacks(&options, &mut rows),
            "flood" => flood_and_latency(&options, &mut rows),
            "flush" => flush_cost(&options, &mut rows),
            other => panic!("no section {other}"),
        }
        for (name, value) in rows {
            println!("ROW\t{name}\t{value}");
        }
        return;
    }
    flood_and_latency(&options, &mut rows);
    for section in ["attacks", "restore", "live", "live-small-cache", "flush"] {
        rows.extend(run_section(section, quick));
    }
    println!("\n{:<58} value", "measure");
    println!("{}", "-".repeat(100));
    for (name, value) in rows {
        println!("{name:<58} {value}");
    }
}

fn section_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--section")?;
    args.get(at + 1).cloned()
}

/// Runs one section in a child process; its rows.
fn run_section(section: &str, quick: bool) -> Vec<(String, String)> {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--bench", "--section", section]);
    if quick {
        command.arg("--quick");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "section {section}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("ROW\t")?.splitn(2, '\t');
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect()
}

/// Starts the real server (actors) in its own actix System thread.
/// The admin key of every bench server (the `top` poller's).
fn bench_admin() -> &'static PrivateKey {
    static KEY: std::sync::OnceLock<PrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(PrivateKey::generate)
}

fn start_server(dir: &std::path::Path) -> (SocketAddr, PublicKey, ServerHandle) {
    let (addrs, public, handle) = start_server_on(dir, vec!["127.0.0.1:0".parse().unwrap()]);
    (addrs[0], public, handle)
}

fn start_server_on(
    dir: &std::path::Path,
    listen: Vec<SocketAddr>,
) -> (Vec<SocketAddr>, PublicKey, ServerHandle) {
    let key = PrivateKey::generate();
    let public = key.public_key();
    let store = Store::open(&dir.join("db"), &StoreOptions::default()).unwrap();
    let config = ServerConfig {
        listen,
        server_key: key,
        access: AccessPolicy {
            authorized: None,
            admins: [bench_admin().public_key()].into(),
        },
        // Every attacker source its own time-out, as before widening: the
        // sections measure the per-source path (loopback sources share a /24).
        policy: BanPolicy {
            widen: actors::WidenPolicy {
                enabled: false,
                ..Default::default()
            },
            ..BanPolicy::default()
        },
        limits: Default::default(),
        deadlines: actors::Deadlines {
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(10),
        },
        service: Default::default(),
        workers: 1,
        kernel: None,
        fleet: None,
        allow: Vec::new(),
        proxy_trusted: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running: RunningServer = actors::start(config, store).unwrap();
            tx.send((running.local_addrs.clone(), running.handle()))
                .unwrap();
            std::future::pending::<()>().await;
        })
    });
    let (addrs, context) = rx.recv().unwrap();
    (addrs, public, context)
}

/// An admin session asking `Top` every 200 ms until `stop`, from an
/// address of its own; how many answers it got.
fn top_poller(
    addr: SocketAddr,
    key: PublicKey,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut config = ClientConfig::new(key);
            config.client_key = Some(bench_admin().clone());
            config.bind = Some("127.0.10.2".parse().unwrap());
            let mut client = Client::connect(&addr.to_string(), &config).await.unwrap();
            let request = Request::Admin(protocol::AdminRequest::Top { recent: 100 });
            let mut answers = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(protocol::Response::Top(_)) = client.call(&request).await {
                    answers += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answers
        })
    })
}

/// Fresh-session connect + NK handshake + ping, `n` times; the sorted
/// latencies of those that succeeded, and how many did not.
fn legit_latencies(addr: SocketAddr, key: PublicKey, n: usize) -> (Vec<Duration>, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = ClientConfig::new(key);
    config.bind = Some(if addr.is_ipv4() {
        "127.0.10.1".parse().unwrap()
    } else {
        "::1".parse().unwrap()
    });
    config.connect_deadline = Duration::from_secs(3);
    config.handshake_deadline = Duration::from_secs(3);
    let mut failed = 0;
    let mut samples = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let ok = runtime.block_on(async {
            let mut client = Client::connect_addr(addr, &config).await.ok()?;
            client.call(&Request::Ping { nonce: i as u64 }).await.ok()
        });
        match ok {
            Some(_) => samples.push(started.elapsed()),
            None => failed += 1,
        }
    }
    samples.sort();
    (samples, failed)
}

/// What an attacker thread does until told to stop (each bounded).
#[derive(Clone, Copy)]
enum Attack {
    /// 10,000 idle connections, each from its own address.
    Idle,
    /// Idle connections from fresh addresses all along at 2,000 a second,
    /// the newest 3,000 held (three times the pending table).
    Rotating,
    /// One captured NK first message, sent again and again, each time from
    /// a fresh source (a source is timed out at its first refused replay),
    /// 2,000 a second.
    Replay,
    /// Idle connections from 2,000 addresses of one IPv6 /64, 2,000 a second.
    OneSlash64,
}

fn run_attack(
    attack: Attack,
    target: SocketAddr,
    key: PublicKey,
    stop: &AtomicBool,
    ready: &AtomicBool,
) {
    use std::io::Write;
    let v4 = |n: usize| -> IpAddr {
        format!("127.2.{}.{}", n / 250 % 250, 1 + n % 250)
            .parse()
            .unwrap()
    };
    let v6 = |n: usize| -> IpAddr { format!("2001:db8:64::{:x}", n + 1).parse().unwrap() };
    let (_, first) = protocol::handshake::Initiator::start(&key, None).unwrap();
    let connect = |source: IpAddr| -> Option<TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(target),
            socket2::Type::STREAM,
            None,
        )
        .ok()?;
        socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
        socket
            .connect_timeout(&target.into(), Duration::from_secs(1))
            .ok()?;
        Some(socket.into())
    };
    let started = Instant::now();
    let mut held = std::collections::VecDeque::new();
    let mut n = 0usize;
    let bounded = |n: usize| n < 200_000 && started.elapsed() < Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && bounded(n) {
        let (source, keep, fill) = match attack {
            Attack::Idle => (v4(n), 10_000, 10_000),
            Attack::Rotating => (v4(n % 60_000), 3_000, 3_000),
            Attack::Replay => (v4(n % 60_000), 2_000, 2_000),
            Attack::OneSlash64 => (v6(n % 2_000), 2_000, 2_000),
        };
        if matches!(attack, Attack::Idle) && n >= fill {
            ready.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if let Some(mut stream) = connect(source) {
            if matches!(attack, Attack::Replay) {
                let _ = stream.write_all(&first);
            }
            held.push_back(stream);
            if held.len() > keep {
                held.pop_front();
            }
        }
        n += 1;
        if n >= fill {
            ready.store(true, Ordering::Relaxed);
        }
        if !matches!(attack, Attack::Idle) {
            // Paced: an attacker that only burns our shared CPU measures
            // the CPU, not the admission policy.
            let due = started + Duration::from_micros(500 * n as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    ready.store(true, Ordering::Relaxed);
}

/// Legit handshake latency while each attack runs, against idle, all in
/// one process with one server (default limits).
fn attacks(options: &Options, rows: &mut Vec<(String, String)>) {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    // The /64 case binds any address of 2001:db8:64::/64: a local route
    // makes them all this host's (removed at the end).
    let slash64 = is_root
        && std::process::Command::new("ip")
            .args([
                "-6",
                "route",
                "add",
                "local",
                "2001:db8:64::/64",
                "dev",
                "lo",
            ])
            .status()
            .is_ok_and(|s| s.success());
    let dir = tempfile::tempdir().unwrap();
    let (addrs, key, handle) = start_server_on(
        dir.path(),
        vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
    );
    let (v4, v6) = (addrs[0], addrs[1]);
    let (idle, _) = legit_latencies(v4, key, options.samples);
    let idle_p99 = percentile(&idle, 0.99);
    rows.push((
        "attacks: legit fresh session + ping, idle (p50 / p99)".into(),
        format!("{} / {}", ms(percentile(&idle, 0.5)), ms(idle_p99)),
    ));
    let mut cases = vec![
        (
            "10,000 idle connections, distinct sources",
            Attack::Idle,
            v4,
        ),
        (
            "fresh sources rotating at 2,000/s, 3,000 held",
            Attack::Rotating,
            v4,
        ),
        (
            "a replayed first message, fresh sources, 2,000/s",
            Attack::Replay,
            v4,
        ),
    ];
    if slash64 {
        cases.push(("2,000 idle from one IPv6 /64", Attack::OneSlash64, v6));
    }
    for (name, attack, target) in cases {
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (stop, ready) = (stop.clone(), ready.clone());
            std::thread::spawn(move || run_attack(attack, target, key, &stop, &ready))
        };
        while !ready.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Measure the steady state: once the server has worked off the
        // burst (no eviction for 200 ms) or after 10 s.
        let settle = Instant::now();
        let mut last = handle.stats().pending_evicted;
        while settle.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            let now = handle.stats().pending_evicted;
            if now == last && matches!(attack, Attack::Idle) {
                break;
            }
            if !matches!(attack, Attack::Idle) && settle.elapsed() >= Duration::from_secs(1) {
                break;
            }
            last = now;
        }
        let (loaded, failed) = legit_latencies(v4, key, options.samples);
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        let p99 = loaded
            .get(((loaded.len().max(1) - 1) as f64 * 0.99) as usize)
            .copied();
        rows.push((
            format!("  during {name} (p50 / p99)"),
            match p99 {
                Some(p99) => format!(
                    "{} / {}  (p99 {:.2}x idle; {} of {} served)",
                    ms(percentile(&loaded, 0.5)),
                    ms(p99),
                    p99.as_secs_f64() / idle_p99.as_secs_f64(),
                    options.samples - failed,
                    options.samples
                ),
                None => format!("none of {} served", options.samples),
            },
        ));
    }
    if !slash64 {
        rows.push((
            "  during 2,000 idle from one IPv6 /64".into(),
            "not run (needs root for a local route)".into(),
        ));
    }
    if slash64 {
        let _ = std::process::Command::new("ip")
            .args([
                "-6",
                "route",
                "del",
                "local",
                "2001:db8:64::/64",
                "dev",
                "lo",
            ])
            .status();
    }
}

/// A bare tokio accept loop that resets every connection: the floor.
fn start_bare_rst_loop() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_zero_linger();
                }
            }
        })
    });
    rx.recv().unwrap()
}

/// Connects from `sources` in a loop on `threads` threads for `duration`;
/// each connection waits for the server's close. Returns connections/s.
fn flood(
    target: SocketAddr,
    sources: &[IpAddr],
    threads: usize,
    duration: Duration,
    stop: Option<Arc<AtomicBool>>,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let done = done.clone();
            let sources = sources.to_vec();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while Instant::now() < deadline
                    && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    let source = sources[i % sources.len()];
                    i += threads;
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
                    if socket.connect(&target.into()).is_ok() {
                        let mut stream: TcpStream = socket.into();
                        let _ = stream.read(&mut [0u8; 1]);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Connect + Noise NK handshake + one ping, `n` times in a row.
fn handshake_latencies(addr: SocketAddr, key: PublicKey, n: usize) -> Vec<Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = ClientConfig::new(key);
    config.bind = Some("127.0.10.1".parse().unwrap());
    let mut samples: Vec<Duration> = (0..n)
        .map(|i| {
            runtime.block_on(async {
                let started = Instant::now();
                let mut client = Client::connect_addr(addr, &config).await.unwrap();
                client
                    .call(&Request::Ping { nonce: i as u64 })
                    .await
                    .unwrap();
                started.elapsed()
            })
        })
        .collect();
    samples.sort();
    samples
}

fn flood_and_latency(options: &Options, rows: &mut Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, key, context) = start_server(dir.path());
    let flooders: Vec<IpAddr> = (1..=16)
        .map(|i| format!("127.0.9.{i}").parse().unwrap())
        .collect();
    // Time-to-ban: bad first bytes from a fresh source until the view has it.
    let mut to_ban: Vec<Duration> = (0..options.samples)
        .map(|i| {
            let source = format!("127.3.{}.{}", i / 250, i % 250 + 1);
            let ip: IpAddr = source.parse().unwrap();
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            socket.connect(&addr.into()).unwrap();
            let mut stream: TcpStream = socket.into();
            let started = Instant::now();
            std::io::Write::write_all(&mut stream, b"\x16\x03\x01\x00\xf4").unwrap();
            // Yield rather than spin: on 2 cores a spinning poller would
            // take the core the server needs.
            while !context.is_timed_out(ip) {
                std::thread::yield_now();
            }
            started.elapsed()
        })
        .collect();
    to_ban.sort();
    rows.push((
        "time to ban: bad first bytes -> entry live (p50 / p99)".into(),
        format!(
            "{} / {}",
            ms(percentile(&to_ban, 0.5)),
            ms(percentile(&to_ban, 0.99))
        ),
    ));

    // Ban the flooders, as a scanner's later connections would be.
    for source in &flooders {
        let ban = BanInfo {
            prefix: Cidr::host(*source),
            cause: Cause::new("bench").unwrap(),
            first_bytes: FirstBytes::default(),
            banned_at_ms: actors::now_ms(),
            expires_at_ms: actors::now_ms() + 3_600_000,
            repeat: 1,
            origin: Default::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(context.admin_ban(actors::AdminBan {
                prefix: ban.prefix,
                duration: Some(Duration::from_secs(3600)),
                cause: ban.cause,
                force: true,
                requester: None,
            }))
            .unwrap();
    }
    let bare = start_bare_rst_loop();
    let bare_rate = flood(bare, &flooders, 2, options.flood, None);
    let accepted_before = context.stats().connections_refused;
    let ours = flood(addr, &flooders, 2, options.flood, None);
    let refused = context.stats().connections_refused - accepted_before;

    // The same flood with the metrics endpoint scraped ten times a second
    // (Prometheus' default is every 15 s), alternating with none, 5 rounds.
    let endpoint = metrics::MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.ready(context.clone(), None, None);
    let metrics_addr = endpoint.local_addr();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        off.push(flood(addr, &flooders, 2, options.flood, None));
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut scrapes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut stream) = TcpStream::connect(metrics_addr) {
                        let _ = std::io::Write::write_all(
                            &mut stream,
                            b"GET /metrics HTTP/1.0\r\n\r\n",
                        );
                        let mut body = Vec::new();
                        let _ = stream.read_to_end(&mut body);
                        scrapes += 1;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                scrapes
            })
        };
        on.push(flood(addr, &flooders, 2, options.flood, None));
        stop.store(true, Ordering::Relaxed);
        assert!(scraper.join().unwrap() > 0, "the scraper got nothing");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(off), median(on));
    rows.push((
        "banned-source rejections/s, metrics scraped 10/s vs not".into(),
        format!("{on:.0} vs {off:.0}  ({:.1} %)", 100.0 * (on - off) / off),
    ));

    // The same flood with `penaltybox top` asking every 200 ms (five
    // times its default), alternating with none, 5 rounds.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        off.push(flood(addr, &flooders, 2, options.flood, None));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = top_poller(addr, key, stop.clone());
        on.push(flood(addr, &flooders, 2, options.flood, None));
        stop.store(true, Ordering::Relaxed);
        assert!(poller.join().unwrap() > 0, "the top poller got nothing");
    }
    let (off, on) = (median(off), median(on));
    rows.push((
        "banned-source rejections/s, top polling every 200 ms vs not".into(),
        format!("{on:.0} vs {off:.0}  ({:.1} %)", 100.0 * (on - off) / off),
    ));
    rows.push((
        "bare tokio accept+RST loop (connections/s)".into(),
        format!("{bare_rate:.0}"),
    ));
    rows.push((
        "penaltybox, banned sources (rejections/s)".into(),
        format!(
            "{ours:.0}  ({:.0} % of bare; {refused} refused at accept)",
            100.0 * ours / bare_rate
        ),
    ));

    let idle = handshake_latencies(addr, key, options.samples);
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = stop.clone();
    let flooders_bg = flooders.clone();
    let background = std::thread::spawn(move || {
        flood(
            addr,
            &flooders_bg,
            1,
            Duration::from_secs(600),
            Some(flood_stop),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let loaded = handshake_latencies(addr, key, options.samples);
    stop.store(true, Ordering::Relaxed);
    let background_rate = background.join().unwrap();
    rows.push((
        "legit connect+handshake+ping, idle (p50 / p99)".into(),
        format!(
            "{} / {}",
            ms(percentile(&idle, 0.5)),
            ms(percentile(&idle, 0.99))
        ),
    ));
    rows.push((
        format!("  same during a banned flood of {background_rate:.0}/s (p50 / p99)"),
        format!(
            "{} / {}  (p99 {:.2}x idle)",
            ms(percentile(&loaded, 0.5)),
            ms(percentile(&loaded, 0.99)),
            percentile(&loaded, 0.99).as_secs_f64() / percentile(&idle, 0.99).as_secs_f64()
        ),
    ));
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// RSS per live time-out: `restore_entries` distinct IPv6 /64s timed out
/// through the ban core (view, expiry heap, sled table), as a scanner sweep
/// would leave them, with a sled cache of `cache_mb` (sled counts its cache
/// in on-disk bytes; what it holds in memory is a few times that).
fn live_memory(options: &Options, cache_mb: u64, rows: &mut Vec<(String, String)>) {
    let n = options.restore_entries;
    let dir = tempfile::tempdir().unwrap();
    let store_options = StoreOptions {
        cache_bytes: cache_mb << 20,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("db"), &store_options).unwrap();
    let (mut core, _) = BanCore::restore(
        BanPolicy::default(),
        actors::CoreParts {
            allow: Default::default(),
            store: store.clone(),
            view: Arc::new(BanView::default()),
            stats: Default::default(),
            kernel: None,
        },
        actors::now_ms(),
    )
    .unwrap();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let now = actors::now_ms();
    for i in 0..n {
        // 2001:db8:XXXX:XXXX::1, one /64 each.
        let mut octets = [0u8; 16];
        octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        octets[4..8].copy_from_slice(&(i as u32).to_be_bytes());
        octets[15] = 1;
        core.ban(
            IpAddr::from(octets),
            model::BanCause::BadMagic,
            FirstBytes::truncated(b"\x16\x03\x01\x00\xf4"),
            now,
        );
    }
    store.flush().unwrap();
    let elapsed = started.elapsed();
    let grown = rss_bytes().saturating_sub(rss_before);
    assert_eq!(core.len(), n);
    rows.push((
        format!("live time-outs: {n} /64s via the ban core, {cache_mb} MiB cache"),
        format!(
            "{:.0} MiB RSS, {:.0} bytes per time-out; {:.0} k bans/s",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / n as f64,
            n as f64 / elapsed.as_secs_f64() / 1e3
        ),
    ));
}

/// The `i`-th host of 11.0.0.0/8 timed out at `now` for an hour (bad magic,
/// a TLS hello's first bytes): the restore and flush sections' time-outs.
fn hour_ban(i: u32, now: u64) -> BanInfo {
    BanInfo {
        prefix: Cidr::host(IpAddr::from((0x0b00_0000u32 + i).to_be_bytes())),
        cause: Cause::new("bad-magic").unwrap(),
        first_bytes: FirstBytes::truncated(b"\x16\x03\x01\x00\xf4\x01\x00\x00"),
        banned_at_ms: now,
        expires_at_ms: now + 3_600_000,
        repeat: 1,
        origin: Default::default(),
    }
}

/// What numbering each flush costs (storage's `watermark.rs`: a sled insert
/// before it and a 16-byte write of a file after it): a group
/// commit of 100 time-outs, through the store, against bare sled doing the
/// same inserts and flush, alternately, on the same disk.
fn flush_cost(options: &Options, rows: &mut Vec<(String, String)>) {
    let rounds = options.samples / 2;
    let dir = tempfile::tempdir().unwrap();
    // The store's own timer never fires: every flush here is ours.
    let store_options = StoreOptions {
        flush_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("store"), &store_options).unwrap();
    // Bare sled as the store configures it, flushed only by us.
    let bare_sled = |name: &str| {
        sled::Config::new()
            .path(dir.path().join(name))
            .cache_capacity(store_options.cache_bytes)
            .flush_every_ms(None)
            .open()
            .unwrap()
    };
    let bare = bare_sled("bare");
    let bare_bans = bare.open_tree("bans").unwrap();
    // The same bare sled, numbering its flushes by hand as the store does:
    // what the numbering itself costs.
    let numbered = bare_sled("numbered");
    let numbered_bans = numbered.open_tree("bans").unwrap();
    let numbered_meta = numbered.open_tree("meta").unwrap();
    let numbered_file = std::fs::File::create(dir.path().join("flushed")).unwrap();
    let now = actors::now_ms();
    let ban = |i: u32| hour_ban(i, now);
    let insert = |tree: &sled::Tree, i: u32| {
        let ban = ban(i);
        tree.insert(
            storage::codec::encode_prefix(&ban.prefix),
            storage::codec::encode_ban(&ban),
        )
        .unwrap();
    };
    let (mut ours, mut theirs, mut by_hand) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds as u32 {
        let batch = round * 100..round * 100 + 100;
        let started = Instant::now();
        for i in batch.clone() {
            insert(&bare_bans, i);
        }
        bare.flush().unwrap();
        theirs.push(started.elapsed());
        let started = Instant::now();
        for i in batch.clone() {
            insert(&numbered_bans, i);
        }
        numbered_meta
            .insert(b"flush", &u64::from(round).to_be_bytes())
            .unwrap();
        numbered.flush().unwrap();
        {
            use std::os::unix::fs::FileExt;
            numbered_file.write_all_at(&[round as u8; 16], 0).unwrap();
        }
        by_hand.push(started.elapsed());
        let started = Instant::now();
        for i in batch {
            store.bans().put(&ban(i)).unwrap();
        }
        store.flush().unwrap();
        ours.push(started.elapsed());
    }
    ours.sort();
    theirs.sort();
    by_hand.sort();
    let (ours, theirs, by_hand) = (
        percentile(&ours, 0.5),
        percentile(&theirs, 0.5),
        percentile(&by_hand, 0.5),
    );
    rows.push(("bare sled: 100 inserts + flush (median)".into(), ms(theirs)));
    rows.push((
        "bare sled, flush numbered by hand (median)".into(),
        format!(
            "{} -> {:.2}x bare",
            ms(by_hand),
            by_hand.as_secs_f64() / theirs.as_secs_f64()
        ),
    ));
    rows.push((
        "penaltybox store: 100 time-outs + numbered flush (median)".into(),
        format!(
            "{} -> {:.2}x bare",
            ms(ours),
            ours.as_secs_f64() / theirs.as_secs_f64()
        ),
    ));
}

fn restore(options: &Options, rows: &mut Vec<(String, String)>) {
    let n = options.restore_entries;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let store = Store::open(&db, &StoreOptions::default()).unwrap();
        let now = actors::now_ms();
        for i in 0..n as u32 {
            store.bans().put(&hour_ban(i, now)).unwrap();
        }
        store.flush().unwrap();
    }
    // Bare: open sled and scan the same tree, nothing else.
    let started = Instant::now();
    {
        let sled = sled::Config::new()
            .path(&db)
            .cache_capacity(StoreOptions::default().cache_bytes)
            .open()
            .unwrap();
        let tree = sled.open_tree("bans").unwrap();
        let mut count = 0usize;
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            count += key.len().min(1) + value.len().min(1) - 1;
        }
        assert_eq!(count, n);
    }
    let bare = started.elapsed();

    let rss_before = rss_bytes();
    let started = Instant::now();
    let store = Store::open(&db, &StoreOptions::default()).unwrap();
    let view = Arc::new(BanView::default());
    let (_core, report) = BanCore::restore(
        BanPolicy::default(),
        actors::CoreParts {
            allow: Default::default(),
            store: store.clone(),
            view: view.clone(),
            stats: Default::default(),
            kernel: None,
        },
        actors::now_ms(),
    )
    .unwrap();
    let ours = started.elapsed();
    let rss_after = rss_bytes();
    assert_eq!(report.restored, n);
    rows.push((
        format!("bare sled open + full scan of {n} bans"),
        format!("{:.0} ms", bare.as_secs_f64() * 1e3),
    ));
    rows.push((
        format!("penaltybox restore of {n} bans (open, load, view)"),
        format!(
            "{:.0} ms  ({:.2}x bare)",
            ours.as_secs_f64() * 1e3,
            ours.as_secs_f64() / bare.as_secs_f64()
        ),
    ));
    let grown = rss_after.saturating_sub(rss_before);
    rows.push((
        format!("RSS growth restoring {n} bans (incl. sled cache)"),
        format!(
            "{:.0} MiB  ({:.0} bytes/ban)",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / n as f64
        ),
    ));
}
