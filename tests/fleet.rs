//! The fleet against a real engine: a 3-node NATS JetStream cluster on
//! loopback (tests/common/nats.rs) and two penaltybox nodes sharing a
//! bucket with 3 replicas. Every wait polls (a refusal at accept, a table,
//! a log line), bounded; none sleeps a fixed time.

mod common;

#[path = "common/nats.rs"]
mod nats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nats::NatsCluster;

const GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const PROPAGATION: Duration = Duration::from_secs(20);

/// `[fleet]` with the cluster's servers and the node's name, nothing else.
fn fleet_config(cluster: &NatsCluster, node_id: &str) -> String {
    format!(
        "[fleet]\nservers = {}\nnode_id = \"{node_id}\"\n",
        cluster.urls_toml()
    )
}

fn node_config(cluster: &NatsCluster, node_id: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "{}replicas = 3\n\n[bans]\nallow = [{}]\n",
        fleet_config(cluster, node_id),
        allow.join(", ")
    )
}

fn start_node(dir: &std::path::Path, config: &str) -> Server {
    ServerSpec::new(dir).config(config).start()
}

/// Data directories under `root` for the nodes `names`, each with its
/// node key made and a `trusted_nodes` listing every one of them (so the
/// fleet trusts itself, as the README sets it up).
fn trusting_each_other(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = names.iter().map(|name| root.join(name)).collect();
    let mut lines = String::new();
    for (dir, name) in dirs.iter().zip(names) {
        std::fs::create_dir_all(dir).unwrap();
        let key = fleet::NodeKey::generate().unwrap();
        key.write_new(&dir.join("node.key")).unwrap();
        lines += &format!("{} {name}\n", key.public_key());
    }
    for dir in &dirs {
        std::fs::write(dir.join("trusted_nodes"), &lines).unwrap();
    }
    dirs
}

/// Times `source` out on `server` (garbage) and waits until it is in
/// its table.
fn time_out_on(server: &Server, source: &str) {
    send_raw(source, server.addr, GARBAGE, Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(5), || server
            .ban_of(&format!("{source}/32"))
            .is_some()),
        "{source} not timed out on its own node; log:\n{}",
        server.log_text()
    );
}

fn fleet_ready() -> bool {
    if let Err(why) = nats::nats_server() {
        skip_or_fail(&why);
        return false;
    }
    true
}

fn wait_fleet_up(server: &Server) {
    assert!(
        server
            .wait_log("fleet: connected to", Duration::from_secs(20))
            .is_some(),
        "never connected; log:\n{}",
        server.log_text()
    );
}

/// Waits for the line that says `server` caught up with the bucket, and
/// answers it.
fn wait_merged(server: &Server) -> String {
    server
        .wait_log("fleet: merged the bucket", PROPAGATION)
        .unwrap_or_else(|| panic!("never caught up; log:\n{}", server.log_text()))
}

/// Polls until `server` refuses `source` at accept.
fn wait_refused(server: &Server, source: &str, what: &str) {
    assert!(
        eventually(PROPAGATION, || refused_at_accept(source, server.addr)),
        "{what}: {source} not refused; log:\n{}",
        server.log_text()
    );
}

#[test]
fn time_outs_cross_the_fleet_through_restarts_and_outages() {
    if !fleet_ready() {
        return;
    }
    let mut cluster = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let a_config = node_config(&cluster, "node-a", &[]);
    let b_config = node_config(&cluster, "node-b", &["127.0.3.200/32"]);
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &a_config);
    let mut b = start_node(&dirs[1], &b_config);
    wait_fleet_up(&a);
    wait_fleet_up(&b);

    // Garbage to A → B refuses the source before reading anything.
    time_out_on(&a, "127.0.3.1");
    wait_refused(&b, "127.0.3.1", "propagation");
    let on_b = b.ban_of("127.0.3.1/32").expect("in B's table");
    assert_eq!(on_b.origin.as_str(), "node-a");
    assert_eq!(on_b.cause.as_str(), "bad-magic");
    let on_a = a.ban_of("127.0.3.1/32").unwrap();
    assert_eq!(
        on_b.expires_at_ms, on_a.expires_at_ms,
        "the record's expiry, not extended"
    );
    assert!(on_a.origin.is_empty(), "A's own record is local on A");
    let (_, shown, _) = b.bans_cli(&["show", "127.0.3.1"]);
    assert!(shown.contains("origin node-a"), "{shown}");

    // B stopped; A times out more; B restarted → B enforces them.
    let b_dir = b.data_dir.clone();
    assert!(b.stop().success());
    time_out_on(&a, "127.0.3.2");
    b = start_node(&b_dir, &b_config);
    wait_refused(&b, "127.0.3.2", "after B's restart");

    // One NATS node killed → time-outs still propagate.
    cluster.stop(0);
    time_out_on(&a, "127.0.3.3");
    wait_refused(&b, "127.0.3.3", "with one NATS node down");

    // Every NATS node stopped → both keep serving and timing out alone.
    cluster.stop(1);
    cluster.stop(2);
    assert!(
        a.wait_log("fleet: lost the engine", Duration::from_secs(20))
            .is_some(),
        "A never noticed the outage; log:\n{}",
        a.log_text()
    );
    time_out_on(&a, "127.0.3.4");
    time_out_on(&b, "127.0.3.5");
    assert!(refused_at_accept("127.0.3.4", a.addr));
    assert!(refused_at_accept("127.0.3.5", b.addr));
    assert!(a.served_from("127.0.3.9"), "A stopped serving alone");
    // NATS back → the outage's time-outs reach the other node.
    for i in 0..3 {
        cluster.restart(i);
    }
    for i in 0..3 {
        cluster.wait_ready(i);
    }
    wait_refused(&b, "127.0.3.4", "A's outage time-out on B");
    wait_refused(&a, "127.0.3.5", "B's outage time-out on A");

    // Admin unban on B → A releases the prefix.
    let (code, out, err) = b.bans_cli(&["remove", "127.0.3.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        eventually(PROPAGATION, || a.ban_of("127.0.3.1/32").is_none()),
        "A kept the prefix B's admin released; log:\n{}",
        a.log_text()
    );
    assert!(a.served_from("127.0.3.1"), "released on A, so served");

    // A prefix allow-listed on B is never enforced by B.
    time_out_on(&a, "127.0.3.200");
    assert!(
        b.wait_log(
            "not applying the time-out of 127.0.3.200/32 from node node-a: allow-listed here",
            PROPAGATION
        )
        .is_some(),
        "B never saw it; log:\n{}",
        b.log_text()
    );
    assert!(b.ban_of("127.0.3.200/32").is_none());
    assert!(b.served_from("127.0.3.200"), "allow-listed on B, so served");
}

#[test]
fn the_outbox_survives_a_restart_while_the_engine_is_down() {
    if !fleet_ready() {
        return;
    }
    let mut cluster = NatsCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (a_config, b_config) = (
        fleet_config(&cluster, "node-a"),
        fleet_config(&cluster, "node-b"),
    );
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &a_config);
    wait_fleet_up(&a);
    cluster.stop(0);
    assert!(
        a.wait_log("fleet: lost the engine", Duration::from_secs(20))
            .is_some()
    );
    time_out_on(&a, "127.0.5.1");
    a.wait_durable();
    // A restarts while the engine is still down: the time-out waits in
    // its outbox, on disk.
    let a_dir = a.data_dir.clone();
    assert!(a.stop().success());
    let a = start_node(&a_dir, &a_config);
    assert!(
        a.wait_log(
            "the outbox holds 1 unpublished changes",
            Duration::from_secs(5)
        )
        .is_some(),
        "{}",
        a.log_text()
    );
    cluster.restart(0);
    cluster.wait_ready(0);
    let b = start_node(&dirs[1], &b_config);
    wait_refused(&b, "127.0.5.1", "the outbox after A's restart");
    assert_eq!(b.ban_of("127.0.5.1/32").unwrap().origin.as_str(), "node-a");
    drop(a);
}

/// The bucket holds this node's own time-outs too: a node started on an
/// empty database (a container without its volume, a damaged one) takes
/// them back, but never one it has released and not yet published.
#[test]
fn a_node_that_lost_its_database_takes_its_own_time_outs_back_from_the_bucket() {
    if !fleet_ready() {
        return;
    }
    let mut cluster = NatsCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (a_config, b_config) = (
        fleet_config(&cluster, "node-a"),
        fleet_config(&cluster, "node-b"),
    );
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &a_config);
    let b = start_node(&dirs[1], &b_config);
    wait_fleet_up(&a);
    wait_fleet_up(&b);
    for source in ["127.0.5.21", "127.0.5.22"] {
        time_out_on(&a, source);
        // B enforcing it: the bucket has it.
        wait_refused(&b, source, "A's time-out");
    }
    // Engine down: A releases one; the release waits in A's outbox, and
    // the bucket still holds the time-out. (Which reaches the engine first
    // after the restart, A's release or A's reading of the bucket, is a
    // race; the fleet crate's unit test pins the outbox check itself.)
    cluster.stop(0);
    assert!(
        a.wait_log("fleet: lost the engine", Duration::from_secs(20))
            .is_some()
    );
    let (code, out, err) = a.bans_cli(&["remove", "127.0.5.22"]);
    assert_eq!(code, 0, "{out}{err}");
    a.wait_durable();
    let a_dir = a.data_dir.clone();
    assert!(a.stop().success());
    cluster.restart(0);
    cluster.wait_ready(0);
    let a = start_node(&a_dir, &a_config);
    wait_merged(&a);
    assert!(
        a.ban_of("127.0.5.22/32").is_none(),
        "released here, yet taken back"
    );
    wait_refused(&b, "127.0.5.21", "still in force on B");
    let a_dir = a.data_dir.clone();
    assert!(a.stop().success());

    // A's database is gone; its keys are kept, its node id the same.
    std::fs::remove_dir_all(a_dir.join("db")).unwrap();
    let a = start_node(&a_dir, &a_config);
    let merged = wait_merged(&a);
    assert!(merged.contains("1 of this node's own"), "{merged}");
    wait_refused(&a, "127.0.5.21", "A's own time-out, from the bucket");
    assert_eq!(a.ban_of("127.0.5.21/32").unwrap().origin.as_str(), "node-a");
    assert!(a.ban_of("127.0.5.22/32").is_none());
    drop(b);
}

#[test]
fn the_readme_permissions_are_enough_and_the_fleet_works_with_them() {
    if !fleet_ready() {
        return;
    }
    // The README's authorization block, as written there.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("authorization {")
        .expect("README has the block");
    let end = start + readme[start..].find("\n```").unwrap();
    let block = readme[start..end].replace("$PENALTYBOX_NATS_PASSWORD", "\"s3cret-for-test\"");
    let block: String = block
        .lines()
        .map(|line| line.split(" # ").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let cluster = NatsCluster::start_single_with(&block);
    let dir = tempfile::tempdir().unwrap();
    let config = |id: &str| {
        fleet_config(&cluster, id) + "user = \"penaltybox\"\npassword = \"s3cret-for-test\"\n"
    };
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &config("node-a"));
    let b = start_node(&dirs[1], &config("node-b"));
    wait_fleet_up(&a);
    wait_fleet_up(&b);
    time_out_on(&a, "127.0.6.1");
    wait_refused(&b, "127.0.6.1", "with the README's permissions");
    let (code, out, err) = b.bans_cli(&["remove", "127.0.6.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        eventually(PROPAGATION, || a.ban_of("127.0.6.1/32").is_none()),
        "release with the README's permissions; log:\n{}",
        a.log_text()
    );
    // B restarts against a bucket that holds a time-out it has not seen:
    // the catch-up's reads are permitted too.
    let b_dir = b.data_dir.clone();
    let log = b.log_text();
    assert!(!log.contains("Permissions Violation"), "{log}");
    assert!(b.stop().success());
    time_out_on(&a, "127.0.6.2");
    let b = start_node(&b_dir, &config("node-b"));
    wait_refused(&b, "127.0.6.2", "caught up with the README's permissions");
    for server in [&a, &b] {
        let log = server.log_text();
        assert!(!log.contains("Permissions Violation"), "{log}");
    }
}

/// A NATS user with write access to the bucket and no node key: what a
/// leaked password or a misconfigured account gives an attacker.
struct BucketWriter {
    kv: async_nats::jetstream::kv::Store,
}

impl BucketWriter {
    fn connect(cluster: &NatsCluster) -> BucketWriter {
        let kv = block_on(async {
            let context = cluster.jetstream().await;
            context.get_key_value("penaltybox_bans").await.unwrap()
        });
        BucketWriter { kv }
    }

    fn key(prefix: &str) -> String {
        fleet::key::key_of(&prefix.parse().unwrap())
    }

    fn get(&self, prefix: &str) -> Vec<u8> {
        block_on(self.kv.get(Self::key(prefix)))
            .unwrap()
            .expect("in the bucket")
            .to_vec()
    }

    fn put(&self, prefix: &str, value: Vec<u8>) {
        block_on(self.kv.put(Self::key(prefix), value.into())).unwrap();
    }

    fn delete(&self, prefix: &str) {
        block_on(self.kv.delete(Self::key(prefix))).unwrap();
    }
}

/// A time-out of `prefix` for an hour from now, claiming `origin`.
fn forged_ban(prefix: &str, origin: &str) -> model::BanInfo {
    let now = actors::now_ms();
    model::BanInfo {
        prefix: prefix.parse().unwrap(),
        cause: "bad-magic".parse().unwrap(),
        first_bytes: Default::default(),
        banned_at_ms: now,
        expires_at_ms: now + 3_600_000,
        repeat: 1,
        origin: model::ban::Origin::new(origin).unwrap(),
    }
}

fn signed_by(prefix: &str, origin: &str, key: &fleet::NodeKey) -> Vec<u8> {
    fleet::record::encode_signed(
        &BucketWriter::key(prefix),
        &fleet::record::Change::TimeOut(forged_ban(prefix, origin)),
        key,
    )
}

/// `penaltybox_fleet_rejected_total{reason}` on `server`.
fn rejected(server: &Server, reason: &str) -> u64 {
    let metrics = http_get(server.metrics.unwrap(), "/metrics");
    let line = format!("penaltybox_fleet_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line:?} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `server` has rejected at least `at_least` entries for
/// `reason`.
fn wait_rejected(server: &Server, reason: &str, at_least: u64) {
    assert!(
        eventually(PROPAGATION, || rejected(server, reason) >= at_least),
        "{reason}: {} rejected, expected {at_least}; log:\n{}",
        rejected(server, reason),
        server.log_text()
    );
}

/// Three nodes that trust each other on a 3-node cluster, and a writer of
/// the bucket without a node key: forged, moved, unsigned and mis-signed
/// records, bare deletes and replays apply nowhere; a trusted node cannot
/// sign for another; a node added to trusted_nodes by a reload is applied
/// from then on.
#[test]
fn only_trusted_nodes_time_out_or_release_and_nothing_replays() {
    if !fleet_ready() {
        return;
    }
    let cluster = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let names = ["node-a", "node-b", "node-c"];
    let dirs = trusting_each_other(dir.path(), &names);
    let nodes: Vec<Server> = dirs
        .iter()
        .zip(names)
        .map(|(dir, name)| start_node(dir, &node_config(&cluster, name, &[])))
        .collect();
    let [a, b, c] = &nodes[..] else {
        unreachable!()
    };
    for node in &nodes {
        wait_fleet_up(node);
    }
    let others = [b, c];

    // Trusted nodes share time-outs as before.
    time_out_on(a, "127.0.7.1");
    for node in others {
        wait_refused(node, "127.0.7.1", "A's signed time-out");
    }

    let writer = BucketWriter::connect(&cluster);
    let a_record = writer.get("127.0.7.1/32");
    // Unsigned (the previous release's format), claiming A.
    writer.put(
        "127.0.7.2/32",
        fleet::record::encode_unsigned(&forged_ban("127.0.7.2/32", "node-a")),
    );
    // Signed with a key of the writer's own, claiming A.
    writer.put(
        "127.0.7.3/32",
        signed_by(
            "127.0.7.3/32",
            "node-a",
            &fleet::NodeKey::generate().unwrap(),
        ),
    );
    // A's genuine record, moved to another prefix.
    writer.put("127.0.7.4/32", a_record.clone());
    // C is trusted, but signs claiming A.
    let c_key = fleet::NodeKey::read(&dirs[2].join("node.key")).unwrap();
    writer.put("127.0.7.5/32", signed_by("127.0.7.5/32", "node-a", &c_key));
    // A bare delete of A's live time-out.
    writer.delete("127.0.7.1/32");
    for node in others {
        wait_rejected(node, "unsigned", 2);
        wait_rejected(node, "unknown key", 1);
        wait_rejected(node, "bad signature", 1);
    }
    wait_rejected(b, "origin mismatch", 1);
    for node in others {
        for forged in ["127.0.7.2", "127.0.7.3", "127.0.7.4", "127.0.7.5"] {
            assert!(
                node.ban_of(&format!("{forged}/32")).is_none(),
                "{forged} applied"
            );
        }
        assert!(
            node.ban_of("127.0.7.1/32").is_some(),
            "a bare delete released A's time-out"
        );
        assert!(refused_at_accept("127.0.7.1", node.addr));
    }
    assert!(
        b.log_text().contains("not applying bucket entry"),
        "{}",
        b.log_text()
    );

    // A releases it (a signed tombstone): released everywhere. Then the
    // writer replays A's earlier record: nothing comes back.
    let (code, out, err) = a.bans_cli(&["remove", "127.0.7.1"]);
    assert_eq!(code, 0, "{out}{err}");
    for node in others {
        assert!(
            eventually(PROPAGATION, || node.ban_of("127.0.7.1/32").is_none()),
            "A's release did not reach {}; log:\n{}",
            node.addr,
            node.log_text()
        );
    }
    let stale_before: Vec<u64> = others.iter().map(|n| rejected(n, "stale")).collect();
    writer.put("127.0.7.1/32", a_record);
    for (node, before) in others.iter().zip(stale_before) {
        wait_rejected(node, "stale", before + 1);
        assert!(node.ban_of("127.0.7.1/32").is_none(), "the replay applied");
        assert!(node.served_from("127.0.7.1"));
    }

    // D is not in B's trusted_nodes: its time-outs are rejected on B; a
    // reload that lists it applies them from then on.
    let d_dir = trusting_each_other(&dir.path().join("d-side"), &["node-d"]).remove(0);
    let d = start_node(&d_dir, &node_config(&cluster, "node-d", &[]));
    wait_fleet_up(&d);
    let unknown_before = rejected(b, "unknown key");
    time_out_on(&d, "127.0.7.9");
    wait_rejected(b, "unknown key", unknown_before + 1);
    assert!(b.ban_of("127.0.7.9/32").is_none());
    let d_public = std::fs::read_to_string(d_dir.join("node.pub")).unwrap();
    let d_line = format!(
        "{} node-d\n",
        fleet::NodePublicKey::parse(&d_public, "node.pub").unwrap()
    );
    let trusted = dirs[1].join("trusted_nodes");
    let listed = std::fs::read_to_string(&trusted).unwrap();
    // A bad line: the reload is refused, the running keys kept.
    std::fs::write(&trusted, listed.clone() + "not-a-key node-d\n").unwrap();
    let (code, out, err) = b.admin_cli("reload", &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("fleet.trusted_nodes") && err.contains(":4:"),
        "{out}{err}"
    );
    std::fs::write(&trusted, listed + &d_line).unwrap();
    let (code, out, err) = b.admin_cli("reload", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 trusted fleet node keys"), "{out}");
    time_out_on(&d, "127.0.7.10");
    wait_refused(b, "127.0.7.10", "D's time-out after B's reload");
    assert_eq!(b.ban_of("127.0.7.10/32").unwrap().origin.as_str(), "node-d");

    // The bucket still holds the replay (it replaced A's tombstone). B
    // restarts and catches up with it: what B applied before its restart
    // is kept, so the replay is still stale.
    let mut nodes = nodes;
    let b = nodes.remove(1);
    assert!(b.stop().success());
    let b = start_node(&dirs[1], &node_config(&cluster, "node-b", &[]));
    wait_merged(&b);
    assert!(
        b.ban_of("127.0.7.1/32").is_none(),
        "the replay applied after a restart"
    );
    assert!(rejected(&b, "stale") >= 1, "{}", b.log_text());
    assert!(b.served_from("127.0.7.1"));
}

/// A credentials file (`fleet.creds_file`) against an engine in operator
/// (JWT) mode: an operator, an account with JetStream and a user, made by
/// tests/tools/nats_operator.py with PyPI's nats-jwt.
#[test]
fn the_fleet_works_with_a_credentials_file_against_an_engine_in_operator_mode() {
    if !fleet_ready() {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/tools/nats_operator.py"
        ))
        .arg(secrets.path())
        .output()
        .expect("python3");
    if !made.status.success() {
        skip_or_fail(&format!(
            "cannot make an operator, account and user (pip install nats-jwt): {}",
            String::from_utf8_lossy(&made.stderr)
        ));
        return;
    }
    let conf = std::fs::read_to_string(secrets.path().join("nats.conf")).unwrap();
    let cluster = NatsCluster::start_single_with(&conf);
    let creds = secrets.path().join("penaltybox.creds");
    let config =
        |id: &str| fleet_config(&cluster, id) + &format!("creds_file = {:?}\n", creds.display());
    let dir = tempfile::tempdir().unwrap();
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &config("node-a"));
    let b = start_node(&dirs[1], &config("node-b"));
    wait_fleet_up(&a);
    wait_fleet_up(&b);
    time_out_on(&a, "127.0.6.41");
    wait_refused(&b, "127.0.6.41", "with a credentials file in operator mode");

    // Without the credentials the engine refuses the node, which serves
    // alone and says why.
    let c_dir = dir.path().join("node-c");
    let c = start_node(&c_dir, &fleet_config(&cluster, "node-c"));
    let line = c
        .wait_log("working alone", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{}", c.log_text()));
    assert!(line.contains("fleet: cannot connect to"), "{line}");
    assert!(c.served_from("127.0.6.49"), "C serves alone");

    // C had no node key: it made one on its first start (0600, with its
    // .pub), and `key pub` prints the public key the .pub holds.
    assert!(
        c.log_text().contains("generated a fleet node key pair"),
        "{}",
        c.log_text()
    );
    let key_path = c_dir.join("node.key");
    let mode = std::fs::metadata(&key_path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let public = std::fs::read_to_string(c_dir.join("node.pub")).unwrap();
    let public = fleet::NodePublicKey::parse(&public, "node.pub").unwrap();
    let (code, out, err) = cli(&["key", "pub", key_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("{public}\nfingerprint {}\n", public.fingerprint())
    );
    assert!(err.contains("trusted_nodes"), "{err}");
}

/// A test CA, and a server certificate for 127.0.0.1 and a client one
/// signed by it, made with the openssl CLI in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (apt install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=penaltybox test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        for (name, usage, san) in [
            ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
            ("client", "clientAuth", ""),
        ] {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
            )
            .unwrap();
            let subject = format!("/CN=penaltybox test {name}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        let pair = |name: &str| {
            (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            )
        };
        Pki {
            ca: dir.join("ca.pem"),
            server: pair("server"),
            client: pair("client"),
        }
    }
}

/// The engine requires TLS and a client certificate: nodes with one share
/// time-outs; a node without one is refused by the engine, says so, and
/// serves alone.
#[test]
fn the_fleet_works_over_tls_with_client_certificates_and_a_node_without_one_works_alone() {
    if !fleet_ready() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::make(certs.path());
    let cluster = NatsCluster::start_single_with(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
        pki.server.0, pki.server.1, pki.ca
    ));
    let url = cluster.urls()[0].replace("nats://", "tls://");
    let config = |id: &str, client_cert: bool| {
        let mut toml = format!(
            "[fleet]\nservers = [{url:?}]\nnode_id = \"{id}\"\ntls_ca_file = {:?}\n",
            pki.ca
        );
        if client_cert {
            toml += &format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                pki.client.0, pki.client.1
            );
        }
        toml
    };
    let dir = tempfile::tempdir().unwrap();
    let dirs = trusting_each_other(dir.path(), &["node-a", "node-b"]);
    let a = start_node(&dirs[0], &config("node-a", true));
    let b = start_node(&dirs[1], &config("node-b", true));
    wait_fleet_up(&a);
    wait_fleet_up(&b);
    time_out_on(&a, "127.0.5.31");
    wait_refused(&b, "127.0.5.31", "over TLS");

    let c = start_node(&dir.path().join("c"), &config("node-c", false));
    let line = c
        .wait_log("working alone", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{}", c.log_text()));
    // The engine's refusal of a client without a certificate, as rustls
    // reports it (today: "received fatal alert: CertificateRequired").
    assert!(line.contains("fleet: cannot connect to tls://"), "{line}");
    assert!(
        !c.log_text().contains("fleet: connected to"),
        "{}",
        c.log_text()
    );
    assert!(c.served_from("127.0.5.40"), "C serves alone");
    drop((a, b));
}
