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
use storage::{BanStore, FleetChange, FleetSeenStore, OutboxStore, Pending, Store};
use tokio::sync::Notify;

use crate::FleetError;
use crate::freshness::Freshness;
use crate::key::{key_of, prefix_of};
use crate::node_key::NodeKey;
use crate::record::{self, Change};
use crate::trust::{Rejection, Trust};

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
    /// Signs every record this node writes (format 2). `None` writes the
    /// previous release's unsigned records (format 1): benches measuring
    /// what signing costs, and tests of a fleet being upgraded.
    pub node_key: Option<Arc<NodeKey>>,
    /// The keys whose records are applied (replaced by a reload).
    pub trust: Trust,
    /// Unsigned records (format 1, bare deletes) are rejected. Off only
    /// while a fleet is upgraded.
    pub require_signatures: bool,
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
    /// Entries not applied, by [`Rejection::index`].
    pub rejected: [AtomicU64; Rejection::ALL.len()],
}

pub struct FleetLink {
    wake: Arc<Notify>,
    stats: Arc<FleetStats>,
}

struct Inner {
    config: FleetConfig,
    outbox: OutboxStore,
    /// The local table, read while catching up (what it holds already).
    bans: BanStore,
    /// The newest change applied per prefix, kept across restarts.
    seen: FleetSeenStore,
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
        store: &Store,
        target: Arc<dyn FleetTarget>,
    ) -> std::io::Result<()> {
        let inner = Arc::new(Inner {
            config,
            outbox: store.outbox().clone(),
            bans: store.bans().clone(),
            seen: store.fleet_seen().clone(),
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
        "fleet: connected to {}, bucket {} (node {}, {})",
        inner.config.servers.join(","),
        inner.config.bucket,
        inner.config.node_id,
        match (&inner.config.node_key, inner.config.require_signatures) {
            (Some(_), true) => "signing its records; applying only signed ones from trusted nodes",
            (Some(_), false) =>
                "signing its records; fleet.require_signatures is off: UNSIGNED records are applied too",
            (None, true) => "not signing; applying only signed records from trusted nodes",
            (None, false) =>
                "not signing; fleet.require_signatures is off: UNSIGNED records are applied too",
        }
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
        .reconnect_delay_callback(reconnect_delay)
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

/// The client asks before every attempt, the first one included
/// (`attempts` is 1 then): that one goes at once, the rest back off.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from((attempts - 2).min(6)).unwrap_or(6);
    (MIN_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF)
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
    let now_ms = crate_now_ms();
    let payload = match (&entry.change, &inner.config.node_key) {
        (FleetChange::Put(ban), node_key) => {
            let left_ms = ban.expires_at_ms.saturating_sub(now_ms);
            if left_ms == 0 {
                return Ok(None);
            }
            // Whole seconds, rounded up: the entry never ends before the ban.
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                HeaderValue::from(left_ms.div_ceil(1000)),
            );
            let ban = BanInfo {
                origin,
                ..ban.clone()
            };
            match node_key {
                Some(node_key) => record::encode_signed(&key, &Change::TimeOut(ban), node_key),
                None => record::encode_unsigned(&ban),
            }
        }
        (FleetChange::Delete(prefix), Some(node_key)) => {
            // A signed tombstone: a put the TTL purges, which only this
            // node's key can have made.
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                HeaderValue::from(TOMBSTONE_TTL_SECS),
            );
            let release = Change::Release {
                prefix: *prefix,
                released_at_ms: now_ms,
                until_ms: now_ms.saturating_add(TOMBSTONE_TTL_SECS * 1000),
                origin,
            };
            record::encode_signed(&key, &release, node_key)
        }
        (FleetChange::Delete(_), None) => {
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

/// What the watch keeps between entries: the newest change applied per
/// prefix (no replay), the rejection log's pace, the catch-up's counts.
struct Receiver {
    freshness: Freshness,
    log: PacedLog,
    merged: u64,
    own: u64,
    /// Time-outs the local table held as the bucket has them (catch-up).
    held: u64,
}

/// Warnings about entries not applied: at most one a second, saying how
/// many were not logged since, so a writer flooding the bucket with
/// forgeries cannot flood the log too.
#[derive(Default)]
struct PacedLog {
    last: Option<std::time::Instant>,
    quiet: u64,
}

impl PacedLog {
    fn warn(&mut self, key: &str, why: &dyn std::fmt::Display) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.quiet += 1;
            return;
        }
        let quiet = std::mem::take(&mut self.quiet);
        self.last = Some(now);
        if quiet > 0 {
            log::warn!(
                "fleet: not applying bucket entry {key:?}: {why} (and {quiet} more entries not applied in the last second)"
            );
        } else {
            log::warn!("fleet: not applying bucket entry {key:?}: {why}");
        }
    }
}

/// Bucket entries read at once while catching up.
const CATCH_UP_BATCH: usize = 8192;
/// A catch-up that receives nothing for this long asks the engine whether
/// anything is left to deliver.
const CATCH_UP_IDLE: Duration = Duration::from_secs(1);

/// A bucket entry's operation, read from its headers as the client's own
/// watch reads them: `KV-Operation`, or the engine's marker of a TTL or a
/// purge; a plain message is a put. One this node cannot read is taken for
/// a purge (nothing to apply).
fn operation_of(headers: Option<&HeaderMap>) -> kv::Operation {
    let Some(headers) = headers else {
        return kv::Operation::Put;
    };
    if let Some(operation) = headers.get("KV-Operation") {
        return operation.as_str().parse().unwrap_or(kv::Operation::Purge);
    }
    match headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .map(HeaderValue::as_str)
    {
        Some("Remove") => kv::Operation::Delete,
        Some(_) => kv::Operation::Purge,
        None => kv::Operation::Put,
    }
}

/// Catches up with the bucket (its live values, read in batches), then
/// watches it for good: a broken watch resumes after the last revision
/// it delivered.
async fn watch(inner: Arc<Inner>, store: kv::Store) {
    let mut receiver = Receiver {
        freshness: Freshness::default(),
        log: PacedLog::default(),
        merged: 0,
        own: 0,
        held: 0,
    };
    match inner.seen.load(crate_now_ms()) {
        Ok(stamps) => receiver.freshness.restore(&stamps),
        Err(error) => log::warn!(
            "fleet: cannot read the changes applied before the restart ({error}); a replayed record older than them may apply until it expires"
        ),
    }
    let mut backoff = MIN_BACKOFF;
    // The first failure of a run of them is a warning (a permission
    // missing, say); the retries after it are debug.
    let mut failing = false;
    let warn_once = |failing: &mut bool, error: FleetError| {
        if *failing {
            log::debug!("fleet: {error}");
        } else {
            log::warn!("fleet: {error}; retrying (other nodes' time-outs arrive once it works)");
            *failing = true;
        }
    };
    let mut last_revision = loop {
        match catch_up(&inner, &store, &mut receiver).await {
            Ok(last_revision) => break last_revision,
            Err(error) => warn_once(&mut failing, error),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    inner.stats.caught_up.store(true, Ordering::Relaxed);
    log::info!(
        "fleet: merged the bucket: {} time-outs from other nodes, and {} of this node's own (applied where it no longer held them); {} held here already",
        receiver.merged,
        receiver.own,
        receiver.held
    );
    backoff = MIN_BACKOFF;
    loop {
        match store.watch_all_from_revision(last_revision + 1).await {
            Ok(entries) => {
                let mut chunks = entries.ready_chunks(APPLY_BATCH);
                while let Some(chunk) = chunks.next().await {
                    let mut entries = Vec::with_capacity(chunk.len());
                    let mut broken = false;
                    for entry in chunk {
                        match entry {
                            Ok(entry) => entries.push(entry),
                            Err(error) => {
                                log::debug!("fleet: watch: {error}");
                                broken = true;
                                break;
                            }
                        }
                    }
                    if let Some(last) = entries.last() {
                        backoff = MIN_BACKOFF;
                        failing = false;
                        last_revision = last_revision.max(last.revision);
                    }
                    hand_over(&inner, &mut receiver, &entries, false);
                    if broken {
                        break;
                    }
                }
            }
            Err(error) => warn_once(
                &mut failing,
                FleetError::Watch {
                    bucket: inner.config.bucket.clone(),
                    detail: error.to_string(),
                },
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the live value of every key in batches of [`CATCH_UP_BATCH`]
/// (an ephemeral pull consumer, last value per subject, no acks) and
/// hands them over, this node's own included where it no longer holds
/// them. Answers the last revision read: the watch goes on after it.
async fn catch_up(
    inner: &Arc<Inner>,
    store: &kv::Store,
    receiver: &mut Receiver,
) -> Result<u64, FleetError> {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let failed = |detail: String| FleetError::Watch {
        bucket: inner.config.bucket.clone(),
        detail,
    };
    let stream = store.stream.clone();
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            filter_subject: format!("{}>", store.prefix),
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|error| failed(format!("cannot read the bucket: {error}")))?;
    let name = consumer.cached_info().name.clone();
    let read = async {
        let pending = consumer.cached_info().num_pending;
        // Nothing live: the watch starts after the last revision.
        let mut last_revision = consumer.cached_info().delivered.stream_sequence;
        if pending == 0 {
            let status = store.status().await.map_err(|e| failed(e.to_string()))?;
            return Ok(status.info.state.last_sequence);
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(CATCH_UP_BATCH)
            .messages()
            .await
            .map_err(|error| failed(error.to_string()))?;
        let mut chunks = messages.ready_chunks(APPLY_BATCH);
        loop {
            let chunk = match tokio::time::timeout(CATCH_UP_IDLE, chunks.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // Quiet: entries that expired after the consumer was made
                // are never delivered, and the one marked "nothing pending"
                // may be among them. The engine says whether any is left.
                Err(_) => {
                    let info = stream
                        .consumer_info(&name)
                        .await
                        .map_err(|error| failed(error.to_string()))?;
                    if info.num_pending == 0 {
                        last_revision = last_revision.max(info.delivered.stream_sequence);
                        break;
                    }
                    continue;
                }
            };
            let mut entries = Vec::with_capacity(chunk.len());
            let mut done = false;
            for message in chunk {
                let message = message.map_err(|error| failed(error.to_string()))?;
                let info = message.info().map_err(|error| failed(error.to_string()))?;
                last_revision = last_revision.max(info.stream_sequence);
                done |= info.pending == 0;
                let key = message
                    .subject
                    .strip_prefix(store.prefix.as_str())
                    .unwrap_or_default()
                    .to_owned();
                entries.push(kv::Entry {
                    bucket: inner.config.bucket.clone(),
                    key,
                    value: message.payload.clone(),
                    revision: info.stream_sequence,
                    delta: info.pending,
                    created: info.published,
                    operation: operation_of(message.headers.as_ref()),
                    seen_current: done,
                });
            }
            hand_over(inner, receiver, &entries, true);
            if done {
                break;
            }
        }
        Ok(last_revision)
    };
    let outcome = read.await;
    // Best effort: the engine drops it after `inactive_threshold` anyway.
    let _ = stream.delete_consumer(&name).await;
    outcome
}

/// Entries read on several threads at once while catching up (a
/// signature costs more than everything else an entry asks).
const PARALLEL_MIN: usize = 64;

/// Hands `entries` to the target in bucket order: runs of time-outs as
/// one batch, each release after what came before it. While catching up
/// (`reclaim_own`), the entries are read and verified on every core first.
fn hand_over(inner: &Inner, receiver: &mut Receiver, entries: &[kv::Entry], reclaim_own: bool) {
    let reads: Vec<Read> = if reclaim_own && entries.len() >= PARALLEL_MIN {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let per_thread = entries.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = entries
                .chunks(per_thread)
                .map(|part| scope.spawn(move || read_entries(inner, part, true)))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
        })
    } else {
        read_entries(inner, entries, reclaim_own)
    };
    let mut batch = Vec::with_capacity(entries.len());
    for (entry, read) in entries.iter().zip(reads) {
        match settle(inner, receiver, entry, read, reclaim_own) {
            Received::Apply(record) => {
                if record.origin == inner.config.node_id {
                    receiver.own += 1;
                } else {
                    receiver.merged += 1;
                }
                batch.push(record);
            }
            Received::Release(prefix) => {
                inner.target.apply(std::mem::take(&mut batch));
                inner.target.release(prefix);
            }
            Received::Nothing => {}
        }
    }
    if !batch.is_empty() {
        inner.target.apply(batch);
    }
    let changes = receiver.freshness.take_changes();
    if let Err(error) = inner.seen.update(&changes.stamps, &changes.forgotten) {
        // Counted with the store's errors (and alerted on there).
        log::debug!("fleet: cannot keep the newest changes applied: {error}");
    }
}

/// What one bucket entry asks of this node.
enum Received {
    Apply(BanInfo),
    Release(Cidr),
    Nothing,
}

/// One entry read, before this node's state is consulted: what it is, and
/// whether a trusted node made it. No side effect but storage reads, so
/// that a catch-up reads many at once.
enum Read {
    /// Not ours to read (a foreign key, a record that does not decode).
    Skip(String),
    Rejected(Rejection),
    /// An expiry marker, or a release of our own coming back.
    Nothing,
    /// The local table holds exactly this time-out already (catching up
    /// after a restart): applying it would change nothing, so it is not
    /// verified either.
    Held(Change),
    /// A bare delete, while unsigned records are accepted.
    UnsignedRelease(Cidr),
    /// Signed by a trusted key for its origin (or unsigned, while that is
    /// accepted).
    Trusted(Change),
}

/// An entry decoded: read already, or a record whose signer is still to
/// be checked (many at once, [`read_entries`]).
enum Decoded {
    Read(Read),
    Check(record::Record),
}

/// Reads `entries`, their signatures verified together.
fn read_entries(inner: &Inner, entries: &[kv::Entry], catching_up: bool) -> Vec<Read> {
    let decoded: Vec<Decoded> = entries
        .iter()
        .map(|entry| decode_entry(inner, entry, catching_up))
        .collect();
    let to_check: Vec<&record::Record> = decoded
        .iter()
        .filter_map(|decoded| match decoded {
            Decoded::Check(record) => Some(record),
            Decoded::Read(_) => None,
        })
        .collect();
    let mut verdicts = inner
        .config
        .trust
        .get()
        .check_all(&to_check, inner.config.require_signatures)
        .into_iter();
    decoded
        .into_iter()
        .map(|decoded| match decoded {
            Decoded::Read(read) => read,
            Decoded::Check(record) => match verdicts.next() {
                Some(Ok(())) => Read::Trusted(record.change),
                Some(Err(rejection)) => Read::Rejected(rejection),
                None => unreachable!("one verdict a record checked"),
            },
        })
        .collect()
}

fn decode_entry(inner: &Inner, entry: &kv::Entry, catching_up: bool) -> Decoded {
    let Some(prefix) = prefix_of(&entry.key) else {
        return Decoded::Read(Read::Skip("not a prefix key".into()));
    };
    let own_name = inner.config.node_id;
    let record = match entry.operation {
        kv::Operation::Put => match record::decode(&entry.key, prefix, &entry.value) {
            Ok(record) => record,
            Err(error) => return Decoded::Read(Read::Skip(error.to_string())),
        },
        // A bare delete cannot be signed: a release of the previous
        // release, or anyone with write access to the bucket.
        kv::Operation::Delete => {
            return Decoded::Read(if entry.value.as_ref() == own_name.as_str().as_bytes() {
                Read::Nothing
            } else if inner.config.require_signatures {
                Read::Rejected(Rejection::Unsigned)
            } else {
                Read::UnsignedRelease(prefix)
            });
        }
        // The engine's marker of a TTL that ran out (or an operator's
        // purge): every node ends its time-outs by its own clock.
        kv::Operation::Purge => return Decoded::Read(Read::Nothing),
    };
    if catching_up && holds(inner, &record.change) {
        return Decoded::Read(Read::Held(record.change));
    }
    Decoded::Check(record)
}

/// Whether the local table holds `change` as it is (the same time-out,
/// from the same node, made and ending at the same moments).
fn holds(inner: &Inner, change: &Change) -> bool {
    let Change::TimeOut(ban) = change else {
        return false;
    };
    let Ok(Some(local)) = inner.bans.get(&ban.prefix) else {
        return false;
    };
    let same_origin = local.origin == ban.origin
        || (local.origin.is_empty() && ban.origin == inner.config.node_id);
    same_origin
        && local.banned_at_ms == ban.banned_at_ms
        && local.expires_at_ms == ban.expires_at_ms
        && local.cause == ban.cause
        && local.repeat == ban.repeat
}

/// What a read entry asks of this node, now: another node's time-out or
/// release, or nothing (ours coming back, not to be applied). With
/// `reclaim_own` (the live values at start), our own time-outs too, unless
/// the outbox holds a newer change of the prefix.
///
/// A record is applied only if a trusted key signed it for its origin
/// (unsigned ones too while signatures are not required), it has not
/// expired, and it is newer than any change of its prefix applied before.
fn settle(
    inner: &Inner,
    receiver: &mut Receiver,
    entry: &kv::Entry,
    read: Read,
    reclaim_own: bool,
) -> Received {
    let stats = &inner.stats;
    let change = match read {
        Read::Skip(why) => {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            receiver.log.warn(&entry.key, &why);
            return Received::Nothing;
        }
        Read::Rejected(rejection) => return reject(inner, receiver, entry, rejection),
        Read::Nothing => return Received::Nothing,
        Read::Held(change) => {
            receiver.held += 1;
            // Noted, so that an older record of the prefix is stale.
            receiver.freshness.admit_held(
                change.prefix(),
                change.changed_at_ms(),
                change.until_ms(),
                crate_now_ms(),
            );
            return Received::Nothing;
        }
        Read::UnsignedRelease(prefix) => {
            stats.received.fetch_add(1, Ordering::Relaxed);
            return Received::Release(prefix);
        }
        Read::Trusted(change) => change,
    };
    let prefix = change.prefix();
    if change.origin() == inner.config.node_id {
        // Unknown (a storage error) counts as held: the other nodes still
        // enforce it, and nothing stale comes back.
        let take_back = reclaim_own && !inner.outbox.holds(&prefix).unwrap_or(true);
        return match change {
            Change::TimeOut(ban) if take_back && ban.expires_at_ms > crate_now_ms() => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                Received::Apply(ban)
            }
            _ => Received::Nothing,
        };
    }
    let now_ms = crate_now_ms();
    if change.until_ms() <= now_ms {
        // Ordinary: the engine purges by whole seconds, a node ends a
        // time-out by the millisecond. Counted, not worth a warning.
        stats.rejected[Rejection::Stale.index()].fetch_add(1, Ordering::Relaxed);
        return Received::Nothing;
    }
    if !receiver
        .freshness
        .admit(prefix, change.changed_at_ms(), change.until_ms(), now_ms)
    {
        // A record older than a change applied: a replay.
        return reject(inner, receiver, entry, Rejection::Stale);
    }
    stats.received.fetch_add(1, Ordering::Relaxed);
    match change {
        Change::TimeOut(ban) => Received::Apply(ban),
        Change::Release { prefix, .. } => Received::Release(prefix),
    }
}

fn reject(
    inner: &Inner,
    receiver: &mut Receiver,
    entry: &kv::Entry,
    rejection: Rejection,
) -> Received {
    inner.stats.rejected[rejection.index()].fetch_add(1, Ordering::Relaxed);
    receiver.log.warn(&entry.key, &rejection.label());
    Received::Nothing
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
    use crate::trust::TrustedNodes;

    struct Nowhere;

    impl FleetTarget for Nowhere {
        fn apply(&self, _: Vec<BanInfo>) {}
        fn release(&self, _: Cidr) {}
    }

    struct Nodes {
        a: Arc<NodeKey>,
        b: NodeKey,
        c: NodeKey,
    }

    /// Node a, trusting b and c under their names.
    fn inner(store: &storage::Store, nodes: &Nodes, require_signatures: bool) -> Inner {
        let a = Origin::new("node-a").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted");
        std::fs::write(
            &path,
            format!(
                "{} node-b\n{} node-c\n",
                nodes.b.public_key(),
                nodes.c.public_key()
            ),
        )
        .unwrap();
        let trusted = TrustedNodes::own(nodes.a.public_key(), a)
            .read(&path)
            .unwrap();
        Inner {
            config: FleetConfig {
                servers: Vec::new(),
                bucket: "penaltybox".into(),
                node_id: a,
                replicas: 1,
                auth: Auth::None,
                tls: None,
                node_key: Some(nodes.a.clone()),
                trust: Trust::new(trusted),
                require_signatures,
            },
            outbox: store.outbox().clone(),
            bans: store.bans().clone(),
            seen: store.fleet_seen().clone(),
            target: Arc::new(Nowhere),
            wake: Arc::new(Notify::new()),
            stats: Arc::default(),
        }
    }

    /// A store in a directory of its own, node a's link trusting b and c
    /// over it, and a fresh receiver.
    struct Bed {
        _dir: tempfile::TempDir,
        store: storage::Store,
        nodes: Nodes,
        inner: Inner,
        rx: Receiver,
    }

    fn bed(require_signatures: bool) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), &Default::default()).unwrap();
        let nodes = nodes();
        let inner = inner(&store, &nodes, require_signatures);
        Bed {
            _dir: dir,
            store,
            nodes,
            inner,
            rx: receiver(),
        }
    }

    fn nodes() -> Nodes {
        Nodes {
            a: Arc::new(NodeKey::generate().unwrap()),
            b: NodeKey::generate().unwrap(),
            c: NodeKey::generate().unwrap(),
        }
    }

    /// One entry, read and settled, as the watch does.
    fn receive(
        inner: &Inner,
        receiver: &mut Receiver,
        entry: &kv::Entry,
        reclaim_own: bool,
    ) -> Received {
        let read = read_entries(inner, std::slice::from_ref(entry), false)
            .pop()
            .expect("one read an entry");
        settle(inner, receiver, entry, read, reclaim_own)
    }

    fn receiver() -> Receiver {
        Receiver {
            freshness: Freshness::default(),
            log: PacedLog::default(),
            merged: 0,
            own: 0,
            held: 0,
        }
    }

    fn ban(origin: &str, prefix: &str, banned_at_ms: u64) -> BanInfo {
        BanInfo {
            prefix: prefix.parse().unwrap(),
            cause: "bad-magic".parse().unwrap(),
            first_bytes: Default::default(),
            banned_at_ms,
            expires_at_ms: u64::MAX / 2,
            repeat: 1,
            origin: Origin::new(origin).unwrap(),
        }
    }

    fn entry(prefix: &str, value: Vec<u8>, operation: kv::Operation) -> kv::Entry {
        kv::Entry {
            bucket: "penaltybox".into(),
            key: key_of(&prefix.parse().unwrap()),
            value: value.into(),
            revision: 1,
            delta: 0,
            created: async_nats::datetime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap(),
            operation,
            seen_current: false,
        }
    }

    fn signed(change: Change, by: &NodeKey) -> kv::Entry {
        let prefix = change.prefix();
        entry(
            &prefix.to_string(),
            record::encode_signed(&key_of(&prefix), &change, by),
            kv::Operation::Put,
        )
    }

    fn rejected(inner: &Inner, why: Rejection) -> u64 {
        inner.stats.rejected[why.index()].load(Ordering::Relaxed)
    }

    #[test]
    fn operations_are_read_from_the_headers_as_the_client_reads_them() {
        let with = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value);
            headers
        };
        let marker = async_nats::header::NATS_MARKER_REASON.as_ref();
        for (headers, expected) in [
            (Some(with("KV-Operation", "DEL")), kv::Operation::Delete),
            (Some(with("KV-Operation", "PURGE")), kv::Operation::Purge),
            (Some(with("KV-Operation", "PUT")), kv::Operation::Put),
            (Some(with("KV-Operation", "nonsense")), kv::Operation::Purge),
            (Some(with(marker, "MaxAge")), kv::Operation::Purge),
            (Some(with(marker, "Remove")), kv::Operation::Delete),
            (Some(with("Nats-TTL", "60")), kv::Operation::Put),
            (None, kv::Operation::Put),
        ] {
            assert_eq!(operation_of(headers.as_ref()), expected, "{headers:?}");
        }
    }

    #[test]
    fn rejections_are_logged_at_most_once_a_second() {
        let mut log = PacedLog::default();
        log.warn("198.18.0.1/32", &"unsigned");
        for _ in 0..1_000 {
            log.warn("198.18.0.1/32", &"unsigned");
        }
        assert_eq!(log.quiet, 1_000, "lines after the first within the second");
        log.last = log.last.map(|t| t - Duration::from_secs(2));
        log.warn("198.18.0.1/32", &"unsigned");
        assert_eq!(
            log.quiet, 0,
            "the next second's line says how many were quiet"
        );
    }

    #[test]
    fn the_first_connect_does_not_wait_and_retries_back_off() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), MIN_BACKOFF);
        assert_eq!(reconnect_delay(3), MIN_BACKOFF * 2);
        assert_eq!(reconnect_delay(1_000), MAX_BACKOFF);
    }

    #[test]
    fn own_records_are_taken_back_only_at_start_and_never_over_a_pending_change() {
        let Bed {
            _dir,
            store,
            nodes,
            inner,
            mut rx,
        } = bed(true);
        let own = signed(Change::TimeOut(ban("node-a", "192.0.2.1/32", 1)), &nodes.a);
        // An echo of our own publish, while watching: skipped.
        assert!(matches!(
            receive(&inner, &mut rx, &own, false),
            Received::Nothing
        ));
        // The live values at start: taken back.
        assert!(
            matches!(receive(&inner, &mut rx, &own, true), Received::Apply(ban) if ban.origin.as_str() == "node-a")
        );
        // A release made here and not yet published is newer: not taken back.
        store
            .outbox()
            .push(&FleetChange::Delete("192.0.2.1/32".parse().unwrap()))
            .unwrap();
        assert!(matches!(
            receive(&inner, &mut rx, &own, true),
            Received::Nothing
        ));
        // Another node's record is applied either way.
        let other = signed(Change::TimeOut(ban("node-b", "192.0.2.2/32", 1)), &nodes.b);
        assert!(matches!(
            receive(&inner, &mut rx, &other, true),
            Received::Apply(_)
        ));
    }

    #[test]
    fn only_trusted_signed_fresh_records_are_applied() {
        let Bed {
            _dir,
            store: _store,
            nodes,
            inner,
            mut rx,
        } = bed(true);
        let p = "198.18.0.1/32";
        // Unsigned (format 1) and bare deletes: rejected.
        let unsigned = entry(
            p,
            record::encode_unsigned(&ban("node-b", p, 10)),
            kv::Operation::Put,
        );
        assert!(matches!(
            receive(&inner, &mut rx, &unsigned, false),
            Received::Nothing
        ));
        let delete = entry(p, b"node-b".to_vec(), kv::Operation::Delete);
        assert!(matches!(
            receive(&inner, &mut rx, &delete, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::Unsigned), 2);
        // A key not trusted.
        let stranger = signed(
            Change::TimeOut(ban("node-b", p, 10)),
            &NodeKey::generate().unwrap(),
        );
        assert!(matches!(
            receive(&inner, &mut rx, &stranger, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::UnknownKey), 1);
        // A changed byte.
        let mut forged = signed(Change::TimeOut(ban("node-b", p, 10)), &nodes.b);
        let mut bytes = forged.value.to_vec();
        bytes[3] ^= 1;
        forged.value = bytes.into();
        assert!(matches!(
            receive(&inner, &mut rx, &forged, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::BadSignature), 1);
        // c signing for b.
        let posing = signed(Change::TimeOut(ban("node-b", p, 10)), &nodes.c);
        assert!(matches!(
            receive(&inner, &mut rx, &posing, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::OriginMismatch), 1);
        // b's own: applied; its release: applied; the time-out replayed: stale.
        let timeout = signed(Change::TimeOut(ban("node-b", p, 10)), &nodes.b);
        assert!(matches!(
            receive(&inner, &mut rx, &timeout, false),
            Received::Apply(_)
        ));
        let release = signed(
            Change::Release {
                prefix: p.parse().unwrap(),
                released_at_ms: 20,
                until_ms: u64::MAX / 2,
                origin: Origin::new("node-b").unwrap(),
            },
            &nodes.b,
        );
        assert!(matches!(
            receive(&inner, &mut rx, &release, false),
            Received::Release(_)
        ));
        assert!(matches!(
            receive(&inner, &mut rx, &timeout, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::Stale), 1);
        // An expired record: never applied.
        let mut old = ban("node-c", "198.18.0.2/32", 10);
        old.expires_at_ms = 11;
        let expired = signed(Change::TimeOut(old), &nodes.c);
        assert!(matches!(
            receive(&inner, &mut rx, &expired, false),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::Stale), 2);
        assert_eq!(inner.stats.received.load(Ordering::Relaxed), 2);
    }

    /// Catching up after a restart: what the table holds as the bucket has
    /// it changes nothing, so it is neither verified nor applied; anything
    /// else is read as ever.
    #[test]
    fn a_catch_up_passes_over_what_the_table_holds_already() {
        let Bed {
            _dir,
            store,
            nodes,
            inner,
            mut rx,
        } = bed(true);
        let held = ban("node-b", "198.18.0.1/32", 10);
        store.bans().put(&held).unwrap();
        let mut newer = ban("node-b", "198.18.0.2/32", 10);
        store.bans().put(&newer).unwrap();
        newer.banned_at_ms = 20;
        let mut entries: Vec<kv::Entry> = (0..PARALLEL_MIN as u8)
            .map(|i| {
                signed(
                    Change::TimeOut(ban("node-c", &format!("198.18.1.{i}/32"), 10)),
                    &nodes.c,
                )
            })
            .collect();
        entries.push(signed(Change::TimeOut(held.clone()), &nodes.b));
        entries.push(signed(Change::TimeOut(newer), &nodes.b));
        hand_over(&inner, &mut rx, &entries, true);
        assert_eq!(rx.held, 1);
        assert_eq!(rx.merged, PARALLEL_MIN as u64 + 1);
        // What was applied is kept for after a restart; the held one is
        // the table's to keep.
        let kept = store.fleet_seen().load(0).unwrap();
        assert_eq!(kept.len(), PARALLEL_MIN + 1);
        assert!(kept.iter().all(|stamp| stamp.prefix != held.prefix));
        // The held one is noted: its replay, or anything older, is stale.
        assert!(matches!(
            receive(
                &inner,
                &mut rx,
                &signed(Change::TimeOut(held), &nodes.b),
                false
            ),
            Received::Nothing
        ));
        assert_eq!(rejected(&inner, Rejection::Stale), 1);
    }

    #[test]
    fn unsigned_records_pass_while_signatures_are_not_required() {
        let Bed {
            _dir,
            store: _store,
            nodes: _nodes,
            inner,
            mut rx,
        } = bed(false);
        let p = "198.18.0.1/32";
        let unsigned = entry(
            p,
            record::encode_unsigned(&ban("node-b", p, 10)),
            kv::Operation::Put,
        );
        assert!(matches!(
            receive(&inner, &mut rx, &unsigned, false),
            Received::Apply(_)
        ));
        let delete = entry(p, b"node-b".to_vec(), kv::Operation::Delete);
        assert!(matches!(
            receive(&inner, &mut rx, &delete, false),
            Received::Release(_)
        ));
        // Signed ones are still checked.
        let stranger = signed(
            Change::TimeOut(ban("node-b", p, 30)),
            &NodeKey::generate().unwrap(),
        );
        assert!(matches!(
            receive(&inner, &mut rx, &stranger, false),
            Received::Nothing
        ));
    }
}
