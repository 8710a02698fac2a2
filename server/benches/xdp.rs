//! The kernel tier, measured in namespaces this bench makes (and removes):
//!
//! 1. replaying 1,000,000 live bans from sled into the pinned map on boot
//!    (the real `BanRegistry::restore` path), the map part timed alone;
//! 2. a UDP flood from a banned source across a veth pair: drops/s of the
//!    penaltybox program vs a minimal always-drop program in the same setup,
//!    and connections a listener behind it accepted from that source (goal 0);
//! 3. per-packet cost through BPF_PROG_TEST_RUN (5 M repeats, median of 5
//!    rounds) on a banned source, a clean SYN and a clean ACK, against
//!    Debian's `xdp-filter` (allow mode, default features and `-f
//!    ipv4,ipv6`, address filtering for both families, the same job as
//!    penaltybox's drop path) loaded in a namespace, both holding the same
//!    9,000 banned IPv4 sources; the SYN path with every detector on and
//!    the SYN limit raised out of reach (else a repeated SYN is a flood);
//!    an IPv6 ACK plain and behind one and three extension headers; and
//!    the egress program on a packet that is not a reset (and on a reset)
//!    against a classifier that only passes;
//! 4. detection to drop, through a real `serve -B` on the program's pinned
//!    maps: a scanner's probes until its time-out is in the kernel map (in
//!    probes and in time, p50/p99 over 200 scanners), the same for stray
//!    senders (the stack's resets fed to the egress program), and the
//!    share of a one-source SYN flood dropped in XDP after its detection.
//!
//! Run as root: `cargo bench -p penaltybox --bench xdp` (`-- --quick` for a
//! smaller run; `-- per-packet` or `-- detection` for that part alone).
//! Prints a table.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/netns.rs"]
mod netns;
#[path = "../../tests/common/packets.rs"]
mod packets;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::{BanCore, BanPolicy, BanView, KernelTable};
use model::Cidr;
use netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use penaltybox::kernel_table::Pinned;
use storage::{Store, StoreOptions};
use xdp::{AttachMode, PinnedMaps};

/// The bench object: the production programs plus `drop_all` and
/// `pass_all` (build.sh).
static BASELINE: &[u8] = aya::include_bytes_aligned!("../../ebpf-prog/penaltybox-xdp-bench.bpf.o");

fn main() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !is_root {
        eprintln!("the XDP bench needs root (namespaces, veth, BPF); not run");
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (entries, flood) = if quick {
        (100_000, Duration::from_secs(2))
    } else {
        (1_000_000, Duration::from_secs(5))
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| matches!(a.as_str(), "per-packet" | "detection" | "feeds"))
        .collect();
    if !only.is_empty() {
        if only.iter().any(|a| a == "per-packet") {
            per_packet(&mut rows, quick);
        }
        if only.iter().any(|a| a == "detection") {
            detection_to_drop(&mut rows, quick);
        }
        if only.iter().any(|a| a == "feeds") {
            feeds_at_scale(&mut rows, quick);
        }
        print_table(rows);
        return;
    }

    let pair = NetnsPair::create();
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/penaltybox-bench-{}",
        std::process::id()
    ));
    in_namespace(&pair.server_ns, {
        let (iface, pin) = (pair.server_if.clone(), pin_dir.clone());
        move || xdp::attach(&iface, AttachMode::Driver, &pin).unwrap()
    });

    replay(entries, &pin_dir, &mut rows);

    // Flood from a banned source, with a listener behind the program.
    let mut table = PinnedMaps::open(&pin_dir).unwrap();
    let now = actors::now_ms();
    table
        .insert(
            &Cidr::host(CLIENT_V4.parse().unwrap()),
            now + 3_600_000,
            now,
        )
        .unwrap();
    let (ours, accepted) = flood_rate(&pair, &pin_dir, flood);
    in_namespace(&pair.server_ns, {
        let pin = pin_dir.clone();
        move || assert!(xdp::detach(&pin).unwrap())
    });
    in_namespace(&pair.server_ns, {
        let (iface, pin) = (pair.server_if.clone(), pin_dir.clone());
        move || {
            xdp::attach_object(
                &iface,
                AttachMode::Driver,
                &pin,
                BASELINE,
                "drop_all",
                xdp::MapSizes::default(),
            )
            .unwrap()
        }
    });
    let (baseline, _) = flood_rate(&pair, &pin_dir, flood);
    in_namespace(&pair.server_ns, {
        let pin = pin_dir.clone();
        move || assert!(xdp::detach(&pin).unwrap())
    });
    rows.push((
        "always-drop XDP program (baseline), packets dropped/s".into(),
        format!("{baseline:.0}"),
    ));
    rows.push((
        "penaltybox XDP program, banned source, packets dropped/s".into(),
        format!("{ours:.0}  ({:.0} % of baseline)", 100.0 * ours / baseline),
    ));
    rows.push((
        "connections accepted from the banned source during the flood".into(),
        accepted.to_string(),
    ));

    per_packet(&mut rows, quick);
    detection_to_drop(&mut rows, quick);
    print_table(rows);
}

fn print_table(rows: Vec<(String, String)>) {
    println!("\n{:<76} value", "measure");
    println!("{}", "-".repeat(110));
    for (name, value) in rows {
        println!("{name:<76} {value}");
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        NetnsPair::enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

fn replay(n: usize, pin_dir: &Path, rows: &mut Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    common::write_live_bans(&db, n as u32);
    let store = Store::open(&db, &StoreOptions::default()).unwrap();
    let kernel: Box<dyn KernelTable> = Box::new(Pinned(PinnedMaps::open(pin_dir).unwrap()));
    let started = Instant::now();
    let (_core, report) = BanCore::restore(
        BanPolicy::default(),
        actors::CoreParts {
            allow: Default::default(),
            store,
            view: Arc::new(BanView::default()),
            stats: Default::default(),
            kernel: Some(kernel),
        },
        actors::now_ms(),
    )
    .unwrap();
    let total = started.elapsed();
    let kernel = report.kernel.unwrap();
    assert_eq!((kernel.replayed, kernel.failed), (n, 0));
    rows.push((
        format!("boot: restore {n} bans, total (sled + view + kernel map)"),
        format!("{:.0} ms", total.as_secs_f64() * 1e3),
    ));
    rows.push((
        format!("boot: replay of {n} bans into the kernel map alone"),
        format!(
            "{:.0} ms  ({:.2} M entries/s)",
            kernel.elapsed.as_secs_f64() * 1e3,
            n as f64 / kernel.elapsed.as_secs_f64() / 1e6
        ),
    ));
    // Every ban is really in the map; then leave it empty for the flood.
    let mut table = PinnedMaps::open(pin_dir).unwrap();
    let entries = table.entries().unwrap();
    assert_eq!(
        entries.len(),
        n,
        "the kernel map holds {} of {n} replayed bans",
        entries.len()
    );
    for (prefix, _) in entries {
        table.remove(&prefix).unwrap();
    }
}

/// UDP flood from the client namespace for `duration`; returns the drop
/// rate the program's counters saw and the connections a listener on the
/// server side accepted (the flood also tries TCP connects).
fn flood_rate(pair: &NetnsPair, pin_dir: &Path, duration: Duration) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = {
        let (stop, accepted, ns) = (stop.clone(), accepted.clone(), pair.server_ns.clone());
        std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let listener = TcpListener::bind((SERVER_V4, 5000)).unwrap();
            listener.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let before = dropped(pin_dir);
    let started = Instant::now();
    let sender = {
        let ns = pair.client_ns.clone();
        std::thread::spawn(move || {
            NetnsPair::enter(&ns);
            let socket = UdpSocket::bind((CLIENT_V4, 0)).unwrap();
            let target: SocketAddr = format!("{SERVER_V4}:5000").parse().unwrap();
            let payload = [0x42u8; 64];
            let deadline = Instant::now() + duration;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                for _ in 0..1000 {
                    if socket.send_to(&payload, target).is_ok() {
                        sent += 1;
                    }
                }
                // Now and then a TCP connect: its SYN must never get through.
                let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(1));
            }
            sent
        })
    };
    let sent = sender.join().unwrap();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let drops = dropped(pin_dir) - before;
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();
    eprintln!("sent {sent} datagrams in {elapsed:?}, {drops} dropped");
    (
        drops as f64 / elapsed.as_secs_f64(),
        accepted.load(Ordering::Relaxed),
    )
}

fn dropped(pin_dir: &Path) -> u64 {
    let status = xdp::status(pin_dir).unwrap();
    status.dropped_by_address + status.dropped_by_prefix
}

/// The banned sources of the per-packet comparison: 198.18.{32..67}.x.
fn banned_sources(n: usize) -> Vec<[u8; 4]> {
    (0..n)
        .map(|i| [198, 18, 32 + (i / 250) as u8, 1 + (i % 250) as u8])
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `bpftool prog run id ID data_in FILE repeat N`: the kernel's average ns.
fn bpftool_run(id: u64, frame: &[u8], repeat: u32) -> f64 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), frame).unwrap();
    let output = std::process::Command::new("bpftool")
        .args(["prog", "run", "id", &id.to_string(), "data_in"])
        .arg(file.path())
        .args(["repeat", &repeat.to_string()])
        .output()
        .expect("run bpftool (apt-get install bpftool)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.split("duration (average): ")
        .nth(1)
        .and_then(|rest| rest.split("ns").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("bpftool prog run: {text}"))
}

/// An xdp-filter in allow mode on a namespace's veth, `features` as its
/// `-f` (none: its defaults), with `banned` in its IPv4 deny map. Returns
/// the id of its filter program; unloaded when the namespace goes.
fn load_xdp_filter(ns: &str, iface: &str, features: Option<&str>, banned: &[[u8; 4]]) -> u64 {
    let mut args = vec![
        format!("--net=/run/netns/{ns}"),
        "xdp-filter".into(),
        "load".into(),
        iface.into(),
        "-m".into(),
        "skb".into(),
        "-p".into(),
        "allow".into(),
    ];
    if let Some(features) = features {
        args.extend(["-f".into(), features.into()]);
    }
    let status = std::process::Command::new("nsenter")
        .args(&args)
        .status()
        .expect("run xdp-filter (apt-get install xdp-tools)");
    assert!(status.success(), "xdp-filter load {features:?}");
    // Its map of IPv4 addresses (per-CPU hash, value: the src/dst mode
    // bits; 1 = match the source), filled in one bpftool batch.
    let batch = tempfile::NamedTempFile::new().unwrap();
    let lines: String = banned
        .iter()
        .map(|[a, b, c, d]| {
            format!(
                "map update pinned /sys/fs/bpf/xdp-filter/filter_ipv4 key {a} {b} {c} {d} value 1 0 0 0 0 0 0 0\n"
            )
        })
        .collect();
    std::fs::write(batch.path(), lines).unwrap();
    let status = std::process::Command::new("bpftool")
        .args(["batch", "file"])
        .arg(batch.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "bpftool batch");
    let output = std::process::Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .unwrap();
    let programs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    programs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("xdpfilt_alw"))
        })
        .filter_map(|p| p["id"].as_u64())
        .max()
        .expect("xdp-filter's program")
}

fn unload_xdp_filter(ns: &str, iface: &str) {
    let _ = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{ns}"),
            "xdp-filter",
            "unload",
            iface,
        ])
        .status();
}

fn per_packet(rows: &mut Vec<(String, String)>, quick: bool) {
    use packets::{ACK, SYN, Segment};
    let (repeat, rounds) = if quick {
        (1_000_000, 3)
    } else {
        (5_000_000, 5)
    };
    let banned = banned_sources(9_000);
    let frames = [
        (
            "banned source",
            Segment::new("198.18.32.1", 5000, ACK).frame(),
        ),
        ("clean SYN", Segment::new("198.18.200.1", 5000, SYN).frame()),
        ("clean ACK", Segment::new("198.18.200.1", 5000, ACK).frame()),
        (
            "clean IPv6 ACK",
            Segment::new("2001:db8:200::1", 5000, ACK).frame(),
        ),
        (
            "clean IPv6 ACK, 1 extension header",
            Segment::new("2001:db8:200::1", 5000, ACK)
                .with_extensions(&[60])
                .frame(),
        ),
        (
            "clean IPv6 ACK, 3 extension headers",
            Segment::new("2001:db8:200::1", 5000, ACK)
                .with_extensions(&[0, 60, 43])
                .frame(),
        ),
    ];

    // Ours: the embedded program, its maps written by the real table.
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/penaltybox-pkt-{}", std::process::id()));
    let program = xdp::TestProgram::load(&pin_dir).unwrap();
    let mut table = PinnedMaps::open(&pin_dir).unwrap();
    let now = actors::now_ms();
    let entries: Vec<(Cidr, u64)> = banned
        .iter()
        .map(|o| (Cidr::host(std::net::IpAddr::from(*o)), now + 3_600_000))
        .collect();
    assert!(table.insert_all(&entries, now, 1).is_empty());
    table
        .set_detection(&xdp::Detection {
            // Every detector on; the SYN limit out of reach of one source
            // repeating one SYN 5 M times.
            syn_rate: 1_000_000_000,
            syn_burst: 1_000_000_000,
            ..xdp::Detection::default()
        })
        .unwrap();
    let verdicts: Vec<u32> = frames
        .iter()
        .map(|(_, f)| program.run(f, 1).unwrap().0)
        .collect();
    assert_eq!(verdicts, [1, 2, 2, 2, 2, 2], "drop, then passes");

    let pair = NetnsPair::create();
    let mut results: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for (name, features) in [
        ("xdp-filter -f ipv4,ipv6", Some("ipv4,ipv6")),
        ("xdp-filter (default features)", None),
    ] {
        let id = load_xdp_filter(&pair.server_ns, &pair.server_if, features, &banned);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for (_, frame) in &frames {
            let mut a = Vec::new();
            let mut b = Vec::new();
            // Alternating, so that drift on a noisy machine hits both.
            for _ in 0..rounds {
                a.push(program.run(frame, repeat).unwrap().1.as_nanos() as f64);
                b.push(bpftool_run(id, frame, repeat));
            }
            ours.push(median(a));
            theirs.push(median(b));
        }
        unload_xdp_filter(&pair.server_ns, &pair.server_if);
        results.push((name.to_owned(), ours, theirs));
    }
    drop(pair);
    for (baseline, ours, theirs) in results {
        for (i, (path, _)) in frames.iter().enumerate() {
            rows.push((
                format!("per packet, {path}: penaltybox vs {baseline}"),
                format!(
                    "{:.0} ns vs {:.0} ns = {:.2}x",
                    ours[i],
                    theirs[i],
                    ours[i] / theirs[i]
                ),
            ));
        }
    }
    egress_cost(rows, repeat, rounds);
}

/// The egress program on what the host sends: a data segment (not a
/// reset: its common path) and a reset (counted), against a classifier of
/// the bench object that only passes, alternating.
fn egress_cost(rows: &mut Vec<(String, String)>, repeat: u32, rounds: usize) {
    use packets::{ACK, RST, reset_frame};
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/penaltybox-egr-{}", std::process::id()));
    let mut program =
        xdp::TestProgram::load_object(&pin_dir, BASELINE, "drop_all", xdp::MapSizes::default())
            .unwrap();
    program.load_classifier("pass_all").unwrap();
    program.load_xdp("socket_lookup").unwrap();
    program.load_xdp("parse_only").unwrap();
    let mut table = PinnedMaps::open(&pin_dir).unwrap();
    table.set_detection(&xdp::Detection::default()).unwrap();
    for (path, frame) in [
        (
            "a data segment (not a reset)",
            reset_frame("198.18.201.1", 5000, ACK),
        ),
        (
            "a reset for no connection",
            reset_frame("198.18.201.2", 5000, RST),
        ),
    ] {
        let mut ours = Vec::new();
        let mut pass = Vec::new();
        for _ in 0..rounds {
            ours.push(
                program
                    .run_egress(xdp::EGRESS_PROGRAM, &frame, repeat)
                    .unwrap()
                    .1
                    .as_nanos() as f64,
            );
            pass.push(
                program
                    .run_egress("pass_all", &frame, repeat)
                    .unwrap()
                    .1
                    .as_nanos() as f64,
            );
        }
        let (ours, pass) = (median(ours), median(pass));
        rows.push((
            format!("egress, {path}: stray detector vs a pass-only classifier"),
            format!("{ours:.1} ns vs {pass:.1} ns = {:+.1} ns", ours - pass),
        ));
    }
    // Design (b), which was not built: a socket lookup in XDP for every
    // segment with ACK (an ACK of a clean source, to a port nothing here
    // listens on), against the same parse without it.
    let ack = packets::Segment::new("198.18.202.1", 5000, ACK).frame();
    let mut lookup = Vec::new();
    let mut parse = Vec::new();
    for _ in 0..rounds {
        let run = |name| program.run_xdp(name, &ack, repeat).unwrap().1.as_nanos() as f64;
        lookup.push(run("socket_lookup"));
        parse.push(run("parse_only"));
    }
    let (lookup, parse) = (median(lookup), median(parse));
    rows.push((
        "design (b): a socket lookup in XDP per segment with ACK".into(),
        format!(
            "{lookup:.1} ns vs {parse:.1} ns without it = {:+.1} ns",
            lookup - parse
        ),
    ));
}

/// A real `serve -B` on a test-run program's pinned maps: scanners' probes
/// go in through BPF_PROG_TEST_RUN, the detections come out through the
/// ring buffer to the server, and its time-outs land back in the map.
fn detection_to_drop(rows: &mut Vec<(String, String)>, quick: bool) {
    use packets::{ACK, SYN, Segment};
    const XDP_DROP: u32 = 1;
    let scanners = if quick { 50 } else { 200 };
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/penaltybox-d2d-{}", std::process::id()));
    let program = xdp::TestProgram::load(&pin_dir).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_dir.display().to_string();
    let server = common::ServerSpec::new(&dir.path().join("data"))
        .listen(&["127.0.0.1:0"])
        .args(&["-B", &pin])
        .config("[kernel]\nscan_window = \"10m\"\ndrop_scope = \"all\"\n")
        .start();
    let scan_ports = xdp::Detection::default().scan_ports;
    let mut probes_passed = Vec::new();
    let mut micros = Vec::new();
    for i in 0..scanners {
        let source = format!("198.19.{}.{}", i / 250, 1 + i % 250);
        // Its probes, one port after another, until the detectors drop them.
        let mut passed = 0;
        let mut detected_at = None;
        for port in 1..=100u16 {
            let probe = Segment::new(&source, port, SYN).frame();
            let started = Instant::now();
            let verdict = program.run(&probe, 1).unwrap().0;
            if verdict == XDP_DROP {
                detected_at = Some(started);
                break;
            }
            passed += 1;
        }
        let detected_at = detected_at.expect("a scan is detected");
        // Then until its time-out is in the map: an ACK is not a probe, so
        // only the time-out drops it.
        let ack = Segment::new(&source, 5000, ACK).frame();
        let deadline = detected_at + Duration::from_secs(5);
        while program.run(&ack, 1).unwrap().0 != XDP_DROP {
            assert!(Instant::now() < deadline, "{source} was never timed out");
        }
        micros.push(detected_at.elapsed().as_secs_f64() * 1e6);
        probes_passed.push(passed as f64);
    }
    let p99 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * 99).div_ceil(100).saturating_sub(1)]
    };
    rows.push((
        format!(
            "detection to drop: probes a scanner got past the detectors (scan_ports {scan_ports})"
        ),
        format!(
            "max {:.0}",
            probes_passed.iter().copied().fold(0.0, f64::max)
        ),
    ));
    rows.push((
        format!("detection to drop: ring buffer -> registry -> map, {scanners} scanners"),
        format!(
            "p50 {:.0} us, p99 {:.0} us",
            median(micros.clone()),
            p99(micros)
        ),
    ));

    strays_to_drop(&program, &pin_dir, scanners, rows);

    // One source floods SYNs at the service port (the one it bound).
    let flood = Segment::new("198.19.99.1", server.addr.port(), SYN).frame();
    let n = if quick { 20_000 } else { 100_000 };
    let mut passed_after_burst = 0u64;
    let burst = xdp::Detection::default().syn_burst as usize;
    for i in 0..n {
        let verdict = program.run(&flood, 1).unwrap().0;
        if i >= 2 * burst && verdict != XDP_DROP {
            passed_after_burst += 1;
        }
    }
    let after = (n - 2 * burst) as f64;
    rows.push((
        format!("SYN flood, {n} SYNs from one source: dropped in XDP after its detection"),
        format!(
            "{:.3} %",
            100.0 * (after - passed_after_burst as f64) / after
        ),
    ));
    assert!(
        server
            .wait_log("timed out 198.19.99.1/32", Duration::from_secs(5))
            .is_some_and(|line| line.contains("cause syn-flood")),
        "the flood was not timed out: {}",
        server.log_text()
    );
    drop(server);
}

/// Stray senders: the resets the stack would send a source's strays fed
/// to the egress program until it reports the source; then how many of
/// its segments with ACK still pass XDP, and the time from the report to
/// its time-out in the kernel map (through the same running server).
fn strays_to_drop(
    program: &xdp::TestProgram,
    pin_dir: &Path,
    senders: usize,
    rows: &mut Vec<(String, String)>,
) {
    use packets::{ACK, RST, Segment, reset_frame};
    const XDP_DROP: u32 = 1;
    let table = PinnedMaps::open(pin_dir).unwrap();
    let threshold = xdp::Detection::default().stray_segments;
    let mut passed_after = Vec::new();
    let mut micros = Vec::new();
    for i in 0..senders {
        let source = format!("198.20.{}.{}", i / 250, 1 + i % 250);
        let prefix = Cidr::host(source.parse().unwrap());
        let mut reported_at = None;
        for stray in 1..=threshold {
            let started = Instant::now();
            program
                .run_egress(xdp::EGRESS_PROGRAM, &reset_frame(&source, 5000, RST), 1)
                .unwrap();
            if stray == threshold {
                reported_at = Some(started);
            }
        }
        let reported_at = reported_at.unwrap();
        let ack = Segment::new(&source, 5000, ACK).frame();
        let mut passed = 0;
        if program.run(&ack, 1).unwrap().0 != XDP_DROP {
            passed += 1;
        }
        let deadline = reported_at + Duration::from_secs(5);
        while table.get(&prefix).unwrap().is_none() {
            assert!(Instant::now() < deadline, "{source} was never timed out");
        }
        micros.push(reported_at.elapsed().as_secs_f64() * 1e6);
        passed_after.push(passed as f64);
    }
    let p99 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * 99).div_ceil(100).saturating_sub(1)]
    };
    rows.push((
        format!(
            "strays to drop: segments with ACK passed after the report (stray_segments {threshold})"
        ),
        format!(
            "max {:.0}",
            passed_after.iter().copied().fold(0.0, f64::max)
        ),
    ));
    rows.push((
        format!("strays to drop: report -> registry -> map, {senders} stray senders"),
        format!(
            "p50 {:.0} us, p99 {:.0} us",
            median(micros.clone()),
            p99(micros)
        ),
    ));
}

/// `n` distinct IPv6 /56s of 2001:db8::/32 (the documentation prefix has
/// 16 M of them), in a scattered order: index `i` maps to /56 number
/// `i * 7919 mod 2^24`, a bijection, so any range of indices is distinct.
fn feed_prefixes(range: std::ops::Range<usize>) -> Vec<Cidr> {
    let mut prefixes: Vec<Cidr> = range
        .map(|i| {
            let slot = (i as u128).wrapping_mul(7919) & 0xff_ffff;
            let addr = (0x2001_0db8u128 << 96) | (slot << 72);
            Cidr::new(std::net::IpAddr::from(addr.to_be_bytes()), 56).unwrap()
        })
        .collect();
    prefixes.sort_unstable();
    prefixes
}

/// A feed's text: one prefix a line, with a header comment.
fn feed_text(prefixes: &[Cidr]) -> String {
    let mut text = String::from("# documentation prefixes\n");
    for prefix in prefixes {
        text.push_str(&prefix.to_string());
        text.push('\n');
    }
    text
}

/// Loads the prefixes of `text` into an nftables interval set in a network
/// namespace of its own (removed after), as a firewall bouncer would; how
/// long `nft -f` took, or `None` without nft.
fn nft_interval_set_load(text: &str) -> Option<Duration> {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v nft"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        return None;
    }
    let ns = format!("pb-nft-{}", std::process::id());
    let file = std::env::temp_dir().join(format!("{ns}.nft"));
    let elements: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let script = format!(
        "table inet pb {{\n set feed {{ type ipv6_addr; flags interval; }}\n}}\nadd element inet pb feed {{ {} }}\n",
        elements.join(", ")
    );
    std::fs::write(&file, script).unwrap();
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
    };
    assert!(ip(&["netns", "add", &ns]).success());
    let started = Instant::now();
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f"])
        .arg(&file)
        .status()
        .unwrap();
    let took = started.elapsed();
    ip(&["netns", "del", &ns]);
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "nft -f failed");
    Some(took)
}

/// A ban core over a fresh database and the program at `pin_dir`.
fn feed_core(pin_dir: &Path, db: &Path) -> BanCore {
    let store = Store::open(db, &StoreOptions::default()).unwrap();
    let kernel: Box<dyn KernelTable> = Box::new(Pinned(PinnedMaps::open(pin_dir).unwrap()));
    BanCore::restore(
        BanPolicy::default(),
        actors::CoreParts {
            allow: Default::default(),
            store,
            view: Arc::new(BanView::default()),
            stats: Default::default(),
            kernel: Some(kernel),
        },
        actors::now_ms(),
    )
    .unwrap()
    .0
}

fn feed_list(entries: Vec<Cidr>) -> actors::FeedList {
    actors::FeedList {
        name: "bench".into(),
        entries,
        refresh: Duration::from_secs(3600),
        bad_lines: 0,
    }
}

/// Blocklist feeds at scale (issue "network scale"): the import of 100,000
/// and of 1,000,000 prefixes into the table, sled and the kernel's prefix
/// trie through the real path (`BanCore::apply_feed`), a refresh with 10 %
/// changed while a listed-in-both source is probed without pause, and the
/// per-packet cost with the trie full against empty, alternating.
fn feeds_at_scale(rows: &mut Vec<(String, String)>, quick: bool) {
    use packets::{ACK, Segment};
    let n = if quick { 100_000 } else { 1_000_000 };
    let sizes = xdp::MapSizes {
        prefixes: (2 * n + 65_536) as u32,
    };
    let dir = tempfile::tempdir().unwrap();
    let counts: &[usize] = if n > 100_000 { &[100_000, n] } else { &[n] };
    for &count in counts {
        let pin = PathBuf::from(format!(
            "/sys/fs/bpf/penaltybox-feed-{count}-{}",
            std::process::id()
        ));
        let program = xdp::TestProgram::load_sized(&pin, sizes).unwrap();
        let mut core = feed_core(&pin, &dir.path().join(format!("db-{count}")));
        let text = feed_text(&feed_prefixes(0..count));
        let started = Instant::now();
        let parsed = feeds::parse(text.as_bytes(), count).unwrap();
        let parse_took = started.elapsed();
        let list = feed_list(parsed.entries);
        let started = Instant::now();
        let applied = core.apply_feed(list, actors::now_ms());
        let took = started.elapsed();
        assert_eq!(applied.added, count, "{applied:?}");
        let whole = parse_took + took;
        rows.push((
            format!("feed: import of {count} prefixes (parse; table, sled, kernel trie)"),
            format!(
                "{:.0} ms; {:.0} ms  ({:.2} M prefixes/s in all)",
                parse_took.as_secs_f64() * 1e3,
                took.as_secs_f64() * 1e3,
                count as f64 / whole.as_secs_f64() / 1e6
            ),
        ));
        if count == 100_000 {
            // The peer's way: the same list as an nftables interval set.
            rows.push((
                format!("peer: nftables interval set, `nft -f` of the same {count}"),
                match nft_interval_set_load(&text) {
                    Some(peer) => format!(
                        "{:.0} ms  (penaltybox in all {:.2}x faster)",
                        peer.as_secs_f64() * 1e3,
                        peer.as_secs_f64() / whole.as_secs_f64()
                    ),
                    None => "nft not installed (apt install nftables)".into(),
                },
            ));
        }
        // Its parts alone: the kernel trie, and sled.
        let part_pin = PathBuf::from(format!(
            "/sys/fs/bpf/penaltybox-feed-part-{}",
            std::process::id()
        ));
        let part = xdp::TestProgram::load_sized(&part_pin, sizes).unwrap();
        let now = actors::now_ms();
        let entries: Vec<(Cidr, u64)> = feed_prefixes(0..count)
            .into_iter()
            .map(|prefix| (prefix, now + 3_600_000))
            .collect();
        let table = PinnedMaps::open(&part_pin).unwrap();
        let started = Instant::now();
        assert!(table.insert_all(&entries, now, 2).is_empty());
        let kernel_took = started.elapsed();
        drop(part);
        let store = Store::open(
            &dir.path().join(format!("part-{count}")),
            &StoreOptions::default(),
        )
        .unwrap();
        let prefixes: Vec<Cidr> = entries.iter().map(|(prefix, _)| *prefix).collect();
        let started = Instant::now();
        store
            .feeds()
            .put("bench", now, 3_600_000, &prefixes)
            .unwrap();
        store.flush().unwrap();
        let sled_took = started.elapsed();
        rows.push((
            format!("feed: of which kernel trie alone ({count}, 2 threads) / sled alone"),
            format!(
                "{:.0} ms / {:.0} ms",
                kernel_took.as_secs_f64() * 1e3,
                sled_took.as_secs_f64() * 1e3
            ),
        ));
        if count < n {
            continue;
        }
        // A refresh with 10 % changed, a source listed in both probed
        // throughout through the program itself.
        let kept = feed_prefixes(0..1)[0];
        let probe_frame = Segment::new(&kept.addr().to_string(), 5000, ACK).frame();
        assert_eq!(
            program.run(&probe_frame, 1).unwrap().0,
            1,
            "listed: dropped"
        );
        let changed = n / 10;
        let mut next = feed_prefixes(changed..n + changed);
        if next.binary_search(&kept).is_err() {
            next.push(kept);
            next.sort_unstable();
        }
        let probing = Arc::new(AtomicBool::new(true));
        let (passed, probes) = std::thread::scope(|scope| {
            let probing_flag = probing.clone();
            let program = &program;
            let frame = &probe_frame;
            let probe = scope.spawn(move || {
                let (mut passed, mut probes) = (0u64, 0u64);
                while probing_flag.load(Ordering::Relaxed) && probes < 10_000_000 {
                    if program.run(frame, 1).unwrap().0 != 1 {
                        passed += 1;
                    }
                    probes += 1;
                }
                (passed, probes)
            });
            let started = Instant::now();
            let applied = core.apply_feed(feed_list(next), actors::now_ms());
            let took = started.elapsed();
            probing.store(false, Ordering::Relaxed);
            // Index 0 stays listed: `changed` new, `changed - 1` gone.
            assert_eq!((applied.added, applied.released), (changed, changed - 1));
            rows.push((
                format!(
                    "feed: refresh of {n} with {changed} changed (add, move expiries, release; {} written to the kernel)",
                    applied.written
                ),
                format!("{:.0} ms", took.as_secs_f64() * 1e3),
            ));
            probe.join().unwrap()
        });
        // The same change back, nothing probing: the refresh's own cost
        // (the probe above keeps one of the two cores busy).
        let started = Instant::now();
        let applied = core.apply_feed(feed_list(feed_prefixes(0..n)), actors::now_ms());
        assert_eq!((applied.added, applied.released), (changed - 1, changed));
        rows.push((
            format!("feed: the same refresh back, nothing probing ({changed} changed)"),
            format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3),
        ));
        // Two refresh intervals after the import: every entry is written
        // to the kernel again, once in two refreshes.
        let started = Instant::now();
        let applied = core.apply_feed(
            feed_list(feed_prefixes(0..n)),
            actors::now_ms() + 2 * 3_600_000,
        );
        assert_eq!((applied.added, applied.released), (0, 0));
        rows.push((
            format!(
                "feed: refresh of {n}, none changed, the kernel write due ({} written)",
                applied.written
            ),
            format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3),
        ));
        rows.push((
            "feed: a source listed in both lists, probed during the refresh".into(),
            format!("{passed} of {probes} probes passed (0 = never out of force)"),
        ));
        // Per packet: the trie full against an empty one, alternating.
        let empty_pin = PathBuf::from(format!(
            "/sys/fs/bpf/penaltybox-feed-empty-{}",
            std::process::id()
        ));
        let empty = xdp::TestProgram::load_sized(&empty_pin, sizes).unwrap();
        // The same detector settings in both; the empty one's trie hint
        // says empty, as a server's does with no prefix time-out.
        for pin in [&pin, &empty_pin] {
            PinnedMaps::open(pin)
                .unwrap()
                .set_detection(&xdp::Detection::default())
                .unwrap();
        }
        let mut clean_v6 = None;
        for i in 0..1000u128 {
            let addr = (0x2001_0db8u128 << 96) | ((0xff_ff00 + i) << 72) | 1;
            let prefix = Cidr::new(std::net::IpAddr::from(addr.to_be_bytes()), 56).unwrap();
            if !core.view().is_banned(prefix.addr(), actors::now_ms()) {
                clean_v6 = Some(prefix.addr().to_string());
                break;
            }
        }
        let clean_v6 = clean_v6.expect("an unlisted /56");
        let frames = [
            (
                "clean IPv4 ACK",
                Segment::new("198.18.200.1", 5000, ACK).frame(),
            ),
            ("clean IPv6 ACK", Segment::new(&clean_v6, 5000, ACK).frame()),
        ];
        let (repeat, rounds) = if quick {
            (1_000_000, 3)
        } else {
            (5_000_000, 5)
        };
        for (path, frame) in &frames {
            let (mut full_ns, mut empty_ns) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                full_ns.push(program.run(frame, repeat).unwrap().1.as_nanos() as f64);
                empty_ns.push(empty.run(frame, repeat).unwrap().1.as_nanos() as f64);
            }
            let (full_ns, empty_ns) = (median(full_ns), median(empty_ns));
            rows.push((
                format!("per packet, {path}: trie of {n} prefixes vs empty"),
                format!(
                    "{full_ns:.0} ns vs {empty_ns:.0} ns = {:.2}x",
                    full_ns / empty_ns
                ),
            ));
        }
    }
}
