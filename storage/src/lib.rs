//! # penaltybox-storage
//!
//! The server's sled database, one directory, six trees:
//!
//! - `bans`: the live time-out table, prefix → [`model::BanInfo`]
//!   (see [`bans`]);
//! - `history`: when each prefix was last banned and for how long, kept past
//!   a ban's expiry so that a repeat offender's time-out can escalate;
//! - `volumes`: the tape-volume inventory (see [`volumes`]);
//! - `fleet-outbox`: changes made here that the fleet has not yet
//!   published (see [`outbox`]);
//! - `meta`: the flush number, by which a start notices flushes that sled
//!   lost to damage without saying so (`watermark.rs`);
//! - `feeds`: each blocklist feed's list as last applied (see [`feeds`]).
//! - `fleet_seen`: the fleet's newest change applied per prefix (see
//!   [`fleet_seen`]).
//!
//! Writes go to sled at once (readers see them immediately) and are made
//! durable by group commit ([`commit`]): one fsync at most every flush
//! interval, never one per ban. A ban survives `kill -9` once the flush after
//! it has completed.
//!
//! Records have their own versioned encoding ([`codec`]), not the wire's, so
//! the protocol and the disk can change apart; every older format still loads.
//!
//! Writes not yet durable are also journalled (`trees`), so that after
//! failed flushes (a full disk) the database can be reopened and nothing
//! made meanwhile is lost.
//!
//! A damaged database is repaired at open, keeping the damaged files, or
//! refused, as the options say (`repair.rs`).
//!
//! A start on a full disk opens all the same: an emergency reserve file
//! kept in the directory is given back first (`reserve.rs`); without one,
//! a copy of the database in memory is opened instead, read-only in effect
//! until the disk has room (`scratch.rs`).
//!
//! One process per database: [`Store::open`] takes an exclusive lock on a
//! `lock` file in the directory first, and a lock held elsewhere is
//! [`StorageError::Locked`] (told by the lock call's own `WouldBlock`, not
//! by reading sled's error text), so the CLI can say what to do.

pub mod bans;
pub mod codec;
mod commit;
pub mod feeds;
pub mod fleet_seen;
mod layout;
pub mod outbox;
mod preread;
mod repair;
mod reserve;
pub mod salvage;
mod scratch;
mod trees;
pub mod volumes;
mod watermark;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use bans::{BanStore, History, HistoryAfter, LoadedBans};
pub use feeds::{FeedStore, StoredFeed};
pub use fleet_seen::{FleetSeenStore, SeenStamp};
pub use outbox::{FleetChange, OutboxStore, Pending};
pub use repair::OnDamage;
pub use salvage::{CheckReport, TreeReport};
pub use volumes::VolumeStore;
pub use watermark::LostWrites;

use commit::GroupCommit;
use trees::{Database, TreeId, Trees};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "data directory {dir} is in use by another process (a running `penaltybox serve`?): stop it, or use the online commands with --server"
    )]
    Locked { dir: PathBuf },
    #[error("cannot open the database in {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error(
        "cannot open the database in {dir}: its disk is full (sled needs a little room to open it): free some space there and start again"
    )]
    DiskFull { dir: PathBuf },
    #[error(
        "cannot open the database in {dir}: its disk is full (sled needs a little room to open it), there is no emergency reserve, and {why}: free some space there and start again"
    )]
    DiskFullNoCopy { dir: PathBuf, why: String },
    #[error(
        "the database in {dir} is open from a copy in memory (its disk was full at start): nothing written now is durable until there is room"
    )]
    RunningFromCopy { dir: PathBuf },
    #[error(
        "the database in {dir} is damaged ({detail}): a server start with storage.on_damage = \"repair\" (the default) repairs it, keeping the damaged files; or put back a copy of it from a backup"
    )]
    Damaged { dir: PathBuf, detail: String },
    #[error("the database in {dir} is damaged and its repair failed: {detail}")]
    RepairFailed { dir: PathBuf, detail: String },
    #[error("cannot lock the database in {dir}: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {}", sled_text(.0))]
    Sled(#[from] sled::Error),
    #[error(
        "the database in {dir} is closed after a failed write and could not be opened again yet"
    )]
    Unavailable { dir: PathBuf },
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// sled's error in a line of ours: its I/O errors in the system's words
/// (sled's own text is the error's debug form), its damage without the
/// empty backtrace it prints.
fn sled_text(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(io) => io.to_string(),
        sled::Error::Corruption { .. } => "unreadable data (damaged)".into(),
        other => other.to_string(),
    }
}

/// How the database is tuned.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Group-commit interval: the longest a write waits to become durable.
    pub flush_interval: Duration,
    /// sled's page cache, bytes. sled counts it in on-disk bytes and holds
    /// about three times that in memory. 16 MiB keeps a million live
    /// time-outs near 220 bytes each of RSS (64 MiB: 360), at the same ban
    /// rate and a restore of a million about 20 % slower (docs/BENCHMARKS.md).
    pub cache_bytes: u64,
    /// What an open does with a damaged database ([`OnDamage`]).
    pub on_damage: OnDamage,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush_interval: Duration::from_millis(100),
            cache_bytes: 16 << 20,
            on_damage: OnDamage::default(),
        }
    }
}

/// The open database. Cheap to clone; all clones share one flusher.
#[derive(Clone)]
pub struct Store {
    bans: BanStore,
    volumes: VolumeStore,
    outbox: OutboxStore,
    feeds: FeedStore,
    fleet_seen: FleetSeenStore,
    shared: Arc<StoreCore>,
    /// Held (flock) for as long as any clone lives.
    _lock: Arc<std::fs::File>,
}

/// What every tree handle shares: the database, the group commit and the
/// error count.
pub(crate) struct StoreCore {
    db: Arc<Database>,
    commit: GroupCommit,
    errors: AtomicU64,
}

impl StoreCore {
    /// Writes `value` under `key` (`None` removes it); the old value.
    pub(crate) fn write(
        &self,
        tree: TreeId,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<Option<sled::IVec>> {
        let (result, seq) = self.db.write(tree, key, value);
        // Dirty even if sled refused: the journal holds it for a reopen.
        self.commit.mark_dirty(seq);
        result.map_err(|error| self.count(error))
    }

    /// An atomic read-modify-write of `key`; the new value.
    pub(crate) fn update(
        &self,
        tree: TreeId,
        key: &[u8],
        f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<sled::IVec>> {
        let (result, seq) = self.db.update(tree, key, f);
        if seq > 0 {
            self.commit.mark_dirty(seq);
        }
        result.map_err(|error| self.count(error))
    }

    /// Runs `f` on the open trees; errors are counted.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Trees) -> Result<T>) -> Result<T> {
        self.db.with(f).map_err(|error| self.count(error))
    }

    /// The time-out table as the open read it, once (`bans.rs`).
    pub(crate) fn take_bans_read(&self) -> Option<preread::BansRead> {
        self.db.take_bans_read()
    }

    fn count(&self, error: StorageError) -> StorageError {
        if matches!(
            error,
            StorageError::Sled(_) | StorageError::Unavailable { .. }
        ) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        error
    }
}

/// A time-out of `prefix` made here, for this crate's tests.
#[cfg(test)]
pub(crate) fn test_ban(prefix: &str, expires_at_ms: u64) -> model::BanInfo {
    model::BanInfo {
        prefix: prefix.parse().unwrap(),
        cause: "bad-magic".parse().unwrap(),
        first_bytes: Default::default(),
        banned_at_ms: 1,
        expires_at_ms,
        repeat: 1,
        origin: Default::default(),
    }
}

/// Bytes free for an unprivileged writer on the file system of `dir`, if
/// the system says.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we own; the path is a
    // NUL-terminated string that outlives the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    (rc == 0).then(|| stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Takes the database's exclusive lock, creating the directory if needed.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let failed = |source| StorageError::Lock {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

/// One page of a tree in key order, starting after the key `after`: up to
/// `limit` decoded records (`decode` gets key and value), and the key to
/// continue from if more remain.
pub(crate) fn page<T, K>(
    tree: &sled::Tree,
    after: Option<Vec<u8>>,
    limit: usize,
    decode: impl Fn(&[u8], &[u8]) -> Result<T>,
    key_of: impl Fn(&T) -> K,
) -> Result<(Vec<T>, Option<K>)> {
    let limit = limit.max(1);
    let entries = match after {
        Some(after) => tree.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
        None => tree.iter(),
    };
    let mut items = Vec::new();
    for entry in entries {
        let (key, value) = entry?;
        if items.len() == limit {
            let next = items.last().map(&key_of);
            return Ok((items, next));
        }
        items.push(decode(&key, &value)?);
    }
    Ok((items, None))
}

impl Store {
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store> {
        let lock = lock(dir)?;
        // Read to the end, and repaired if damaged (`repair.rs`).
        let open = || Database::open(dir, options, repair::open(dir, options)?);
        let mut opened = open();
        if matches!(opened, Err(StorageError::DiskFull { .. })) && reserve::release(dir) {
            log::warn!(
                "the disk of {} is full: gave back the {} MiB emergency reserve so that the database opens; time-outs made now persist while that room lasts, inventory writes stay paused; free space there (the reserve is made again once there is room)",
                dir.display(),
                reserve::RESERVE_BYTES >> 20
            );
            opened = open();
        }
        if matches!(opened, Err(StorageError::DiskFull { .. })) {
            opened = Database::open_copy(dir, options);
        }
        let db = opened?;
        reserve::ensure(dir);
        let db = Arc::new(db);
        let shared = Arc::new(StoreCore {
            commit: GroupCommit::start(db.clone(), options.flush_interval),
            db,
            errors: AtomicU64::new(0),
        });
        let volumes = VolumeStore::new(shared.clone())?;
        Ok(Store {
            bans: BanStore::new(shared.clone()),
            outbox: OutboxStore::new(shared.clone()),
            feeds: FeedStore::new(shared.clone()),
            fleet_seen: FleetSeenStore::new(shared.clone()),
            volumes,
            shared,
            _lock: Arc::new(lock),
        })
    }

    pub fn bans(&self) -> &BanStore {
        &self.bans
    }

    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
    }

    pub fn outbox(&self) -> &OutboxStore {
        &self.outbox
    }

    pub fn feeds(&self) -> &FeedStore {
        &self.feeds
    }

    pub fn fleet_seen(&self) -> &FleetSeenStore {
        &self.fleet_seen
    }

    /// Storage errors seen since opening (writes, reads and flushes).
    pub fn error_count(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed) + self.shared.commit.error_count()
    }

    /// Writes not yet made durable by a completed flush: what `kill -9` now
    /// would lose.
    pub fn unflushed_writes(&self) -> u64 {
        self.shared.commit.unflushed()
    }

    /// Completed group-commit flushes since opening.
    pub fn flush_count(&self) -> u64 {
        self.shared.commit.flush_count()
    }

    /// Makes every write so far durable now (shutdown, offline CLI).
    pub fn flush(&self) -> Result<()> {
        // The commit thread counts flush failures itself.
        self.shared.commit.flush_now()
    }

    /// For a process about to exit whose clones of the store are never
    /// dropped (they live in threads that are not joined): removes the copy
    /// in memory a start on a full disk made, if any. Call it last.
    pub fn remove_copy(&self) {
        self.shared.db.remove_copy();
    }

    /// Bytes free for an unprivileged writer on the database's file
    /// system, if the system says.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(self.shared.db.dir())
    }

    /// Flushes that had completed and that the database no longer holds,
    /// found at this or an earlier open (`watermark.rs`).
    pub fn lost_writes(&self) -> Option<LostWrites> {
        self.shared.db.lost()
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.shared
            .with(|trees| trees.db.size_on_disk().map_err(StorageError::Sled))
    }
}
