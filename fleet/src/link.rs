//! The fleet link: one thread with its own runtime that keeps this node
//! and the bucket in step, in both directions.
//!
//! - **Out:** the ban core writes each local change into the durable
//!   outbox and wakes the link ([`FleetLink::waker`]); the link publishes
//!   what the outbox holds, each put with a per-key TTL that ends when the
//!   time-out does, and removes it once the engine has acknowledged it.
//!   A failed publish stays in the outbox and is retried with backoff, so
//!   an outage (or a restart of this node meanwhile) loses nothing.
//! - **In:** the link watches the whole bucket (the live values first,
//!   then every update) and hands other nodes' records to the
//!   [`FleetTarget`]; its own come back and are skipped. A watch that
//!   breaks is resumed after the last revision seen.
//! - **Own records at start:** while a fresh watch delivers the live values,
//!   this node's own records are handed over too, unless its outbox holds a
//!   newer change of the prefix (a release not yet published, say). So a
//!   node whose database was lost or damaged (a container started without
//!   its volume, flushes sled dropped) takes its own time-outs back; one it
//!   still holds is superseded by its own copy and nothing changes.
//!
//! Every put and every delete carries the origin node, so a node can tell
//! its own writes coming back. A delete is an admin's release; the markers
//! the engine writes when a TTL runs out (KV "purge") are not releases:
//! every node ends the time-out by its own clock anyway.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{ConnectOptions, Event, HeaderMap, HeaderValue};
use futures_util::StreamExt;
use model::Cidr;
use model::ban::{BanInfo, Origin};
use storage::{FleetChange, OutboxStore, Pending};
use tokio::sync::Notify;

use crate::FleetError;
use crate::key::{key_of, prefix_of};
use crate::record;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the engine keeps a delete (and its own expiry markers): long
/// enough for every watching node to see it, short enough that the bucket
/// never fills with tombstones.
const TOMBSTONE_TTL_SECS: u64 = 60;
/// Outbox entries read per round.
const BATCH: usize = 256;
/// Bucket entries handed over at most at once.
const APPLY_BATCH: usize = 512;
/// Publishes in flight at once (acknowledged in order).
const IN_FLIGHT: usize = 256;
/// How long a wake-up waits for more changes before publishing.
const LINGER: Duration = Duration::from_millis(2);
/// The engine's acknowledgement of one publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the fleet is and who we are in it; validated by the binary.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// NATS URLs (`nats://host:port`, `tls://…`).
    pub servers: Vec<String>,
    pub bucket: String,
    /// This node's name, written as the origin of its time-outs.
    pub node_id: Origin,
    /// Replicas of the bucket when this node creates it.
    pub replicas: usize,
    pub auth: Auth,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    /// Certificate and key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where remote changes go (the ban core, through the registry). Records
/// come in batches of what arrived together (a boot's catch-up is one
/// message per few hundred, not one per time-out), in bucket order.
pub trait FleetTarget: Send + Sync + 'static {
    fn apply(&self, records: Vec<BanInfo>);
    fn release(&self, prefix: Cidr);
}

/// The link's counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// The engine is reachable now.
    pub connected: AtomicBool,
    /// The bucket's live values have all been seen (boot merge done).
    pub caught_up: AtomicBool,
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Other nodes' changes handed to the ban core.
    pub received: AtomicU64,
    /// Entries of the bucket that were not ours to read (foreign keys,
    /// undecodable or newer records).
    pub skipped: AtomicU64,
    /// Times the engine was lost.
    pub outages: AtomicU64,
}

pub struct FleetLink {
    wake: Arc<Notify>,
    stats: Arc<FleetStats>,
}

struct Inner {
    config: FleetConfig,
    outbox: OutboxStore,
    target: Arc<dyn FleetTarget>,
    wake: Arc<Notify>,
    stats: Arc<FleetStats>,
}

impl Default for FleetLink {
    fn default() -> Self {
        FleetLink {
            wake: Arc::new(Notify::new()),
            stats: Arc::new(FleetStats::default()),
        }
    }
}

impl FleetLink {
    /// A link not started yet: its [`FleetLink::waker`] can be handed to
    /// the ban core before the server (the link's target) exists.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the link on its own thread. It connects in the background:
    /// the node works alone until the engine answers, and what the outbox
    /// already holds (from before a restart, too) is published first.
    pub fn start(
        &self,
        config: FleetConfig,
        outbox: OutboxStore,
        target: Arc<dyn FleetTarget>,
    ) -> std::io::Result<()> {
        let inner = Arc::new(Inner {
            config,
            outbox,
            target,
            wake: self.wake.clone(),
            stats: self.stats.clone(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fleet".into())
            .spawn(move || runtime.block_on(run(inner)))?;
        Ok(())
    }

    /// What the ban core calls after each change it queued: never blocks.
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let wake = self.wake.clone();
        Arc::new(move || wake.notify_one())
    }

    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }
}

/// The open bucket, and the JetStream context its puts are published on.
#[derive(Clone)]
struct Bucket {
    context: jetstream::Context,
    store: kv::Store,
}

async fn run(inner: Arc<Inner>) {
    let bucket = open_until_up(&inner).await;
    inner.stats.connected.store(true, Ordering::Relaxed);
    log::info!(
        "fleet: connected to {}, bucket {} (node {})",
        inner.config.servers.join(","),
        inner.config.bucket,
        inner.config.node_id
    );
    tokio::spawn(watch(inner.clone(), bucket.store.clone()));
    publish_forever(&inner, &bucket).await;
}

/// Connects and opens (or creates) the bucket, retrying with backoff; the
/// first failure is a warning, the retries after it are debug lines.
async fn open_until_up(inner: &Arc<Inner>) -> Bucket {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        match open(inner).await {
            Ok(bucket) => return bucket,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    inner.stats.outages.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "fleet: {error}; working alone (time-outs made here wait in the outbox), retrying"
                    );
                } else if backoff < MAX_BACKOFF {
                    log::debug!("fleet: still unreachable: {error}");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn open(inner: &Arc<Inner>) -> Result<Bucket, FleetError> {
    let config = &inner.config;
    let mut options = match &config.auth {
        Auth::None => ConnectOptions::new(),
        Auth::CredsFile(path) => {
            ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| FleetError::Credentials {
                    path: path.clone(),
                    source,
                })?
        }
        Auth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => ConnectOptions::with_token(token.clone()),
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let stats = inner.stats.clone();
    let options = options
        .name(format!("penaltybox {}", config.node_id))
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
            (MIN_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
        })
        .event_callback(move |event| {
            let stats = stats.clone();
            async move { connection_event(&stats, event) }
        });
    let servers = config.servers.join(",");
    let addrs = config
        .servers
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| FleetError::Connect {
            servers: servers.clone(),
            detail: error.to_string(),
        })?;
    let client = options
        .connect(addrs)
        .await
        .map_err(|error| FleetError::Connect {
            servers,
            detail: error.to_string(),
        })?;
    let mut context = jetstream::new(client);
    context.set_timeout(ACK_TIMEOUT);
    let store = open_bucket(&context, config).await?;
    Ok(Bucket { context, store })
}

fn connection_event(stats: &FleetStats, event: Event) {
    match event {
        Event::Disconnected => {
            if stats.connected.swap(false, Ordering::Relaxed) {
                stats.outages.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "fleet: lost the engine; working alone (time-outs made here wait in the outbox), reconnecting"
                );
            }
        }
        Event::Connected => {
            // The first connection has its own line (`run`); this one is
            // for coming back after an outage.
            if !stats.connected.swap(true, Ordering::Relaxed)
                && stats.outages.load(Ordering::Relaxed) > 0
            {
                log::info!("fleet: engine reachable again");
            }
        }
        // A permission the account lacks, say: worth a line each time.
        Event::ServerError(error) => log::warn!("fleet: the engine says: {error}"),
        other => log::debug!("fleet: {other}"),
    }
}

/// The bucket, created with per-key TTLs if it does not exist. An existing
/// bucket without them is refused: its entries would outlive their bans.
async fn open_bucket(
    context: &jetstream::Context,
    config: &FleetConfig,
) -> Result<kv::Store, FleetError> {
    let bucket_error = |detail: String| FleetError::Bucket {
        bucket: config.bucket.clone(),
        detail,
    };
    let store = match context.get_key_value(&config.bucket).await {
        Ok(store) => store,
        Err(error) if error.kind() == jetstream::context::KeyValueErrorKind::GetBucket => context
            .create_key_value(kv::Config {
                bucket: config.bucket.clone(),
                description: "penaltybox time-outs, one key per prefix".into(),
                history: 1,
                max_value_size: i32::try_from(record::MAX_RECORD_LEN).unwrap_or(i32::MAX),
                num_replicas: config.replicas.max(1),
                storage: jetstream::stream::StorageType::File,
                limit_markers: Some(Duration::from_secs(TOMBSTONE_TTL_SECS)),
                ..Default::default()
            })
            .await
            .map_err(|error| bucket_error(format!("cannot create it: {error}")))?,
        Err(error) => return Err(bucket_error(error.to_string())),
    };
    let mut stream = store.stream.clone();
    let info = stream
        .info()
        .await
        .map_err(|error| bucket_error(error.to_string()))?;
    if !info.config.allow_message_ttl {
        return Err(bucket_error(
            "it exists without per-key TTLs (allow_msg_ttl); delete it or name another bucket"
                .into(),
        ));
    }
    Ok(store)
}

/// Publishes the outbox whenever the ban core wakes us (and once a second
/// while something waits), backing off while the engine does not answer.
async fn publish_forever(inner: &Arc<Inner>, bucket: &Bucket) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        match publish_pending(inner, bucket).await {
            Ok(published) => {
                backoff = MIN_BACKOFF;
                failing = false;
                if published == BATCH {
                    continue; // more wait
                }
                let woken =
                    tokio::time::timeout(Duration::from_secs(1), inner.wake.notified()).await;
                if woken.is_ok() && published > 1 {
                    // A storm: gathering for a moment makes one round of
                    // many instead of many of one. A lone time-out (the
                    // last round had one or none) goes out at once.
                    tokio::time::sleep(LINGER).await;
                }
            }
            Err(error) => {
                inner.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                // While the engine is away the outage line has said it all.
                if failing || !inner.stats.connected.load(Ordering::Relaxed) {
                    log::debug!("fleet: {error}; retrying in {backoff:?}");
                } else {
                    log::warn!("fleet: {error}; kept in the outbox, retrying");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One round: up to [`BATCH`] changes, [`IN_FLIGHT`] at a time. Answers
/// how many it took from the outbox.
async fn publish_pending(inner: &Arc<Inner>, bucket: &Bucket) -> Result<usize, FleetError> {
    let pending = inner.outbox.pending(BATCH)?;
    let taken = pending.len();
    for chunk in pending.chunks(IN_FLIGHT) {
        let mut acks = Vec::with_capacity(chunk.len());
        for entry in chunk {
            if let Some(ack) = publish(inner, bucket, entry).await? {
                acks.push((entry, ack));
            } else {
                inner.outbox.done(entry)?; // over before it could be shared
            }
        }
        for (entry, ack) in acks {
            ack.await.map_err(|error| FleetError::Publish {
                key: key_of(&entry.change.prefix()),
                detail: error.to_string(),
            })?;
            inner.outbox.done(entry)?;
            inner.stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(taken)
}

/// Sends one change; its acknowledgement is awaited by the caller. `None`
/// for a time-out already over (nothing to share).
async fn publish(
    inner: &Arc<Inner>,
    bucket: &Bucket,
    entry: &Pending,
) -> Result<Option<jetstream::context::PublishAckFuture>, FleetError> {
    let key = key_of(&entry.change.prefix());
    let store = &bucket.store;
    let subject = format!(
        "{}{key}",
        store.put_prefix.as_deref().unwrap_or(&store.prefix)
    );
    let mut headers = HeaderMap::new();
    let origin = inner.config.node_id;
    let payload = match &entry.change {
        FleetChange::Put(ban) => {
            let left_ms = ban.expires_at_ms.saturating_sub(crate_now_ms());
            if left_ms == 0 {
                return Ok(None);
            }
            // Whole seconds, rounded up: the entry never ends before the ban.
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                HeaderValue::from(left_ms.div_ceil(1000)),
            );
            record::encode(ban, origin)
        }
        FleetChange::Delete(_) => {
            headers.insert("KV-Operation", "DEL");
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                HeaderValue::from(TOMBSTONE_TTL_SECS),
            );
            origin.as_str().as_bytes().to_vec()
        }
    };
    let ack = bucket
        .context
        .publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|error| FleetError::Publish {
            key,
            detail: error.to_string(),
        })?;
    Ok(Some(ack))
}

/// Watches the bucket for good: a broken watch resumes after the last
/// revision it delivered.
async fn watch(inner: Arc<Inner>, store: kv::Store) {
    let mut last_revision = 0u64;
    let mut backoff = MIN_BACKOFF;
    let (mut merged, mut own) = (0u64, 0u64);
    // The live values have been delivered once: later watches resume
    // after a revision and bring only updates.
    let mut history_done = false;
    // The first failure of a run of them is a warning (a permission
    // missing, say); the retries after it are debug.
    let mut failing = false;
    match store.status().await {
        Ok(status) if status.values() == 0 => {
            inner.stats.caught_up.store(true, Ordering::Relaxed);
            history_done = true;
        }
        _ => {}
    }
    loop {
        let watched = if last_revision == 0 {
            // The live value of every key first (`watch_all` would only
            // give what comes after), then every update.
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(last_revision + 1).await
        };
        match watched {
            Ok(entries) => {
                let mut chunks = entries.ready_chunks(APPLY_BATCH);
                'watching: while let Some(chunk) = chunks.next().await {
                    let mut batch = Vec::with_capacity(chunk.len());
                    let mut caught_up = false;
                    // The live values of a fresh watch: until the entry
                    // with nothing after it (delta 0), included.
                    let reclaim_own = !history_done;
                    for entry in chunk {
                        let entry = match entry {
                            Ok(entry) => entry,
                            Err(error) => {
                                log::debug!("fleet: watch: {error}");
                                inner.target.apply(std::mem::take(&mut batch));
                                break 'watching;
                            }
                        };
                        backoff = MIN_BACKOFF;
                        failing = false;
                        last_revision = last_revision.max(entry.revision);
                        let reclaim_own = reclaim_own && !caught_up;
                        caught_up |= entry.delta == 0;
                        match receive(&inner, &entry, reclaim_own) {
                            Received::Apply(record) => {
                                if record.origin == inner.config.node_id {
                                    own += 1;
                                } else {
                                    merged += 1;
                                }
                                batch.push(record);
                            }
                            Received::Release(prefix) => {
                                // In order: what came before it first.
                                inner.target.apply(std::mem::take(&mut batch));
                                inner.target.release(prefix);
                            }
                            Received::Nothing => {}
                        }
                    }
                    if !batch.is_empty() {
                        inner.target.apply(batch);
                    }
                    history_done |= caught_up;
                    if caught_up && !inner.stats.caught_up.swap(true, Ordering::Relaxed) {
                        log::info!(
                            "fleet: merged the bucket: {merged} time-outs from other nodes, and {own} of this node's own (applied where it no longer held them)"
                        );
                    }
                }
            }
            Err(error) => {
                let error = FleetError::Watch {
                    bucket: inner.config.bucket.clone(),
                    detail: error.to_string(),
                };
                if failing {
                    log::debug!("fleet: {error}");
                } else {
                    log::warn!(
                        "fleet: {error}; retrying (other nodes' time-outs arrive once it works)"
                    );
                    failing = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What one bucket entry asks of this node.
enum Received {
    Apply(BanInfo),
    Release(Cidr),
    Nothing,
}

/// Reads one bucket entry: another node's time-out or release, or nothing
/// (ours coming back, an expiry marker, or not ours to read). With
/// `reclaim_own` (the live values at start), our own time-outs too, unless
/// the outbox holds a newer change of the prefix.
fn receive(inner: &Inner, entry: &kv::Entry, reclaim_own: bool) -> Received {
    let skip = |why: &str| {
        inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
        log::warn!("fleet: skipping bucket entry {:?}: {why}", entry.key);
        Received::Nothing
    };
    let Some(prefix) = prefix_of(&entry.key) else {
        return skip("not a prefix key");
    };
    let own = inner.config.node_id.as_str().as_bytes();
    let received = match entry.operation {
        kv::Operation::Put => match record::decode(prefix, &entry.value) {
            Ok(ban) if ban.origin == inner.config.node_id => {
                // Unknown (a storage error) counts as held: the other
                // nodes still enforce it, and nothing stale comes back.
                if reclaim_own && !inner.outbox.holds(&prefix).unwrap_or(true) {
                    Received::Apply(ban)
                } else {
                    Received::Nothing
                }
            }
            Ok(ban) => Received::Apply(ban),
            Err(error) => return skip(&error.to_string()),
        },
        kv::Operation::Delete if entry.value.as_ref() == own => Received::Nothing,
        kv::Operation::Delete => Received::Release(prefix),
        // The engine's marker of a TTL that ran out (or an operator's
        // purge): every node ends its time-outs by its own clock.
        kv::Operation::Purge => Received::Nothing,
    };
    if !matches!(received, Received::Nothing) {
        inner.stats.received.fetch_add(1, Ordering::Relaxed);
    }
    received
}

fn crate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A `fleet.servers` entry as the client will read it (`nats://host:port`,
/// `tls://host:port`, or `host:port`).
pub fn check_server_url(url: &str) -> Result<(), BadServerUrl> {
    url.parse::<async_nats::ServerAddr>()
        .map(drop)
        .map_err(|e| BadServerUrl {
            url: url.to_owned(),
            detail: e.to_string(),
        })
}

/// A `fleet.servers` entry the client cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a NATS server URL ({detail}); write e.g. nats://127.0.0.1:4222")]
pub struct BadServerUrl {
    pub url: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl FleetTarget for Nowhere {
        fn apply(&self, _: Vec<BanInfo>) {}
        fn release(&self, _: Cidr) {}
    }

    fn inner(store: &storage::Store) -> Inner {
        Inner {
            config: FleetConfig {
                servers: Vec::new(),
                bucket: "penaltybox".into(),
                node_id: Origin::new("node-a").unwrap(),
                replicas: 1,
                auth: Auth::None,
                tls: None,
            },
            outbox: store.outbox().clone(),
            target: Arc::new(Nowhere),
            wake: Arc::new(Notify::new()),
            stats: Arc::default(),
        }
    }

    fn put_from(origin: &str, prefix: &str) -> kv::Entry {
        let prefix: Cidr = prefix.parse().unwrap();
        let ban = BanInfo {
            prefix,
            cause: "bad-magic".parse().unwrap(),
            first_bytes: Default::default(),
            banned_at_ms: 1,
            expires_at_ms: u64::MAX / 2,
            repeat: 1,
            origin: Default::default(),
        };
        kv::Entry {
            bucket: "penaltybox".into(),
            key: key_of(&prefix),
            value: record::encode(&ban, Origin::new(origin).unwrap()).into(),
            revision: 1,
            delta: 0,
            created: async_nats::datetime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap(),
            operation: kv::Operation::Put,
            seen_current: false,
        }
    }

    #[test]
    fn own_records_are_taken_back_only_at_start_and_never_over_a_pending_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), &Default::default()).unwrap();
        let inner = inner(&store);
        let own = put_from("node-a", "192.0.2.1/32");
        // An echo of our own publish, while watching: skipped.
        assert!(matches!(receive(&inner, &own, false), Received::Nothing));
        // The live values at start: taken back.
        assert!(
            matches!(receive(&inner, &own, true), Received::Apply(ban) if ban.origin.as_str() == "node-a")
        );
        // A release made here and not yet published is newer: not taken back.
        store
            .outbox()
            .push(&FleetChange::Delete("192.0.2.1/32".parse().unwrap()))
            .unwrap();
        assert!(matches!(receive(&inner, &own, true), Received::Nothing));
        // Another node's record is applied either way.
        let other = put_from("node-b", "192.0.2.1/32");
        assert!(matches!(receive(&inner, &other, false), Received::Apply(_)));
        assert!(matches!(receive(&inner, &other, true), Received::Apply(_)));
    }
}
