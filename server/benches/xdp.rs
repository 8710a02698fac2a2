//! The kernel tier, measured in namespaces this bench makes (and removes):
//!
//! 1. replaying 1,000,000 live bans from sled into the pinned map on boot
//!    (the real `BanRegistry::restore` path), the map part timed alone;
//! 2. a UDP flood from a banned source across a veth pair: drops/s of the
//!    penaltybox program vs a minimal always-drop program in the same setup,
//!    and connections a listener behind it accepted from that source (goal 0).
//!
//! Run as root: `cargo bench -p penaltybox --bench xdp` (`-- --quick` for a
//! smaller run). Prints a table.

#[path = "../../tests/common/netns.rs"]
mod netns;
#[path = "../src/pinned_table.rs"]
mod pinned_table;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::{BanCore, BanPolicy, BanView, KernelSync};
use netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use pinned_table::PinnedTable;
use protocol::Cidr;
use protocol::message::{BanInfo, Cause, FirstBytes};
use storage::{Store, StoreOptions};
use xdp::{AttachMode, KernelTable};

/// The bench object: the production program plus `drop_all` (build.sh).
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
    let mut table = KernelTable::open(&pin_dir).unwrap();
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
        move || xdp::attach_object(&iface, AttachMode::Driver, &pin, BASELINE, "drop_all").unwrap()
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

    println!("\n{:<66} value", "measure");
    println!("{}", "-".repeat(100));
    for (name, value) in rows {
        println!("{name:<66} {value}");
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
    {
        let store = Store::open(&db, &StoreOptions::default()).unwrap();
        let now = actors::now_ms();
        for i in 0..n as u32 {
            let prefix = Cidr::host(std::net::IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()));
            store
                .bans()
                .put(&BanInfo {
                    prefix,
                    cause: Cause::new("bad-magic").unwrap(),
                    first_bytes: FirstBytes::default(),
                    banned_at_ms: now,
                    expires_at_ms: now + 3_600_000,
                    repeat: 1,
                })
                .unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(&db, &StoreOptions::default()).unwrap();
    let kernel: Box<dyn KernelSync> = Box::new(PinnedTable(KernelTable::open(pin_dir).unwrap()));
    let started = Instant::now();
    let (_core, report) = BanCore::restore(
        BanPolicy::default(),
        store,
        Arc::new(BanView::default()),
        Default::default(),
        Some(kernel),
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
    let mut table = KernelTable::open(pin_dir).unwrap();
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
