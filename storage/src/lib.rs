//! # penaltybox-storage
//!
//! The server's sled database, one directory, three trees:
//!
//! - `bans`: the live time-out table, prefix → [`model::BanInfo`]
//!   (see [`bans`]);
//! - `history`: when each prefix was last banned and for how long, kept past
//!   a ban's expiry so that a repeat offender's time-out can escalate;
//! - `volumes`: the tape-volume inventory (see [`volumes`]).
//!
//! Writes go to sled at once (readers see them immediately) and are made
//! durable by group commit ([`commit`]): one fsync at most every flush
//! interval, never one per ban. A ban survives `kill -9` once the flush after
//! it has completed.
//!
//! Records have their own versioned encoding ([`codec`]), not the wire's, so
//! the protocol and the disk can change apart; every older format still loads.
//!
//! One process per database: [`Store::open`] takes an exclusive lock on a
//! `lock` file in the directory first, and a lock held elsewhere is
//! [`StorageError::Locked`] (told by the lock call's own `WouldBlock`, not
//! by reading sled's error text), so the CLI can say what to do.

pub mod bans;
pub mod codec;
mod commit;
pub mod salvage;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use bans::{BanStore, History, LoadedBans};
pub use salvage::{CheckReport, TreeReport};
pub use volumes::VolumeStore;

use commit::GroupCommit;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "data directory {dir} is in use by another process (a running `penaltybox serve`?): stop it, or use the online commands with --server"
    )]
    Locked { dir: PathBuf },
    #[error("cannot open the database in {dir}: {source}")]
    Open { dir: PathBuf, source: sled::Error },
    #[error(
        "the database in {dir} is damaged ({detail}): move it aside (mv {dir} {dir}.damaged) and start again with an empty time-out table, or put back a copy of it from a backup"
    )]
    Damaged { dir: PathBuf, detail: String },
    #[error("cannot lock the database in {dir}: {source}")]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// How the database is tuned.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Group-commit interval: the longest a write waits to become durable.
    pub flush_interval: Duration,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush_interval: Duration::from_millis(100),
            cache_bytes: 64 << 20,
        }
    }
}

/// The open database. Cheap to clone; all clones share one flusher.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    bans: BanStore,
    volumes: VolumeStore,
    shared: Arc<Shared>,
    /// Held (flock) for as long as any clone lives.
    _lock: Arc<std::fs::File>,
    dir: PathBuf,
}

/// What every tree handle shares: the group commit and the error count.
pub(crate) struct Shared {
    commit: GroupCommit,
    errors: AtomicU64,
}

impl Shared {
    /// Marks the database dirty after a successful write; counts a failure.
    pub(crate) fn wrote<T>(&self, result: sled::Result<T>) -> Result<T> {
        match result {
            Ok(value) => {
                self.commit.mark_dirty();
                Ok(value)
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    pub(crate) fn read<T>(&self, result: sled::Result<T>) -> Result<T> {
        result.map_err(|error| self.failed(error))
    }

    fn failed(&self, error: sled::Error) -> StorageError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        StorageError::Sled(error)
    }
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
    shared: &Shared,
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
        let (key, value) = shared.read(entry)?;
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
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            // We flush ourselves (group commit); sled's own timer would add
            // fsyncs we did not ask for.
            .flush_every_ms(None)
            .open()
            .map_err(|source| match source {
                sled::Error::Corruption { at, .. } => StorageError::Damaged {
                    dir: dir.to_owned(),
                    detail: match at {
                        Some(at) => format!("unreadable data at {at:?}"),
                        None => "unreadable data".into(),
                    },
                },
                source => StorageError::Open {
                    dir: dir.to_owned(),
                    source,
                },
            })?;
        let shared = Arc::new(Shared {
            commit: GroupCommit::start(db.clone(), options.flush_interval),
            errors: AtomicU64::new(0),
        });
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|source| StorageError::Open {
                dir: dir.to_owned(),
                source,
            })
        };
        Ok(Store {
            bans: BanStore::new(open_tree("bans")?, open_tree("history")?, shared.clone()),
            volumes: VolumeStore::new(open_tree("volumes")?, shared.clone()),
            db,
            shared,
            _lock: Arc::new(lock),
            dir: dir.to_owned(),
        })
    }

    pub fn bans(&self) -> &BanStore {
        &self.bans
    }

    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
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
        self.shared.commit.flush_now().map_err(StorageError::Sled)
    }

    /// Bytes free for an unprivileged writer on the database's file
    /// system, if the system says.
    pub fn free_bytes(&self) -> Option<u64> {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs writes into the struct we own; the path is a
        // NUL-terminated string that outlives the call.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
        (rc == 0).then(|| stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.shared.read(self.db.size_on_disk())
    }
}
