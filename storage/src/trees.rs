//! The open sled database, behind a lock so that it can be closed and
//! opened again, and the journal of writes not yet known to be durable.
//!
//! Why: once a flush fails (a full disk), sled 0.34 keeps the I/O error for
//! the life of the handle; every later flush fails too, even after space
//! returns. The only way back is a new handle. So every write is also kept
//! in the journal until a flush that covers it completes; when flushes have
//! been failing and the disk has room again, the group commit closes the
//! handle, opens a new one, replays the journal into it and flushes: the
//! time-outs made meanwhile are written, none lost.
//!
//! The journal is the suffix of writes since the last durable flush, in
//! order, so replaying it onto what the disk holds gives the state the
//! process had. A flush reads its cut-off under the write lock: every write
//! numbered up to it has then reached sled.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use sled::IVec;

use crate::preread::BansRead;
use crate::scratch::ScratchCopy;
use crate::watermark::{LostWrites, Watermark};
use crate::{Result, StorageError, StoreOptions};

/// Which tree a write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeId {
    Bans,
    History,
    Volumes,
    Outbox,
}

/// A database opened and read to the end (`repair.rs`).
pub(crate) struct Opened {
    pub trees: Trees,
    /// The time-out table as read.
    pub bans: BansRead,
    /// Where a repair kept the damaged files.
    pub kept: Option<PathBuf>,
}

pub(crate) struct Trees {
    pub db: sled::Db,
    pub bans: sled::Tree,
    pub history: sled::Tree,
    pub volumes: sled::Tree,
    pub outbox: sled::Tree,
    /// Bookkeeping, not journalled: the flush number ([`crate::watermark`]).
    pub meta: sled::Tree,
    /// Blocklist feeds' lists, one record a feed, not journalled
    /// ([`crate::feeds`]).
    pub feeds: sled::Tree,
    /// The fleet's newest change applied per prefix, not journalled
    /// ([`crate::fleet_seen`]).
    pub fleet_seen: sled::Tree,
}

impl Trees {
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Trees> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            // We flush ourselves (group commit); sled's own timer would add
            // fsyncs we did not ask for.
            .flush_every_ms(None);
        // sled locks its `db` file too, and a handle just dropped lets go of
        // it only once sled's I/O threads are done with it, a little later
        // (sled's own tests block on that lock for this reason; CI saw a
        // reopen fail on it). Our `lock` file, taken first, already keeps
        // every other process out, so sled's lock held now is a handle of
        // this process still closing: wait for it, bounded.
        let waited_from = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(error))
                    if is_sled_lock(&error) && waited_from.elapsed() < SLED_LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.map_err(|source| open_error(dir, source))?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|source| open_error(dir, source));
        let [bans, history, volumes, outbox] = TREE_NAMES;
        Ok(Trees {
            bans: tree(bans)?,
            history: tree(history)?,
            volumes: tree(volumes)?,
            outbox: tree(outbox)?,
            meta: tree("meta")?,
            feeds: tree("feeds")?,
            fleet_seen: tree("fleet_seen")?,
            db,
        })
    }

    /// The journalled trees, in [`TREE_NAMES`] order.
    fn journalled(&self) -> [&sled::Tree; 4] {
        [&self.bans, &self.history, &self.volumes, &self.outbox]
    }

    /// Reads every tree to its end, so that damage sled opens without is
    /// found at start, not by a read while serving; the time-out table's
    /// records go into `bans` on the way (the restore's read). Returns how
    /// many time-outs there are.
    pub fn verify(&self, dir: &Path, bans: &mut BansRead) -> Result<usize> {
        let unreadable = |name: &str| StorageError::Damaged {
            dir: dir.to_owned(),
            detail: format!("a record of its {name} tree is unreadable"),
        };
        let mut time_outs = 0;
        for entry in self.bans.iter() {
            let (key, value) = entry.map_err(|_| unreadable(TREE_NAMES[0]))?;
            bans.add(&key, &value);
            time_outs += 1;
        }
        for (tree, name) in self.journalled().into_iter().zip(TREE_NAMES).skip(1) {
            count(tree).map_err(|_| unreadable(name))?;
        }
        count(&self.meta).map_err(|_| unreadable("meta"))?;
        count(&self.feeds).map_err(|_| unreadable("feeds"))?;
        count(&self.fleet_seen).map_err(|_| unreadable("fleet_seen"))?;
        Ok(time_outs)
    }

    /// Copies every record each tree yields before its first unreadable one
    /// into `fresh` (a salvage); `counts` says how many, as they go.
    pub fn copy_readable_into(&self, fresh: &Trees, counts: &mut [usize; 4]) -> Result<()> {
        for ((from, to), count) in self
            .journalled()
            .into_iter()
            .zip(fresh.journalled())
            .zip(counts)
        {
            for (key, value) in from.iter().map_while(|entry| entry.ok()) {
                to.insert(key, value)?;
                *count += 1;
            }
        }
        Ok(())
    }

    pub fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Bans => &self.bans,
            TreeId::History => &self.history,
            TreeId::Volumes => &self.volumes,
            TreeId::Outbox => &self.outbox,
        }
    }
}

/// The journalled trees' names in sled (the fourth is the fleet outbox).
pub(crate) const TREE_NAMES: [&str; 4] = ["bans", "history", "volumes", "fleet-outbox"];

/// How many records `tree` holds, read to the end. Not sled's `len`: on a
/// damaged tree its iterator yields the same error again and again, and
/// `len` counts them for ever.
pub(crate) fn count(tree: &sled::Tree) -> Result<usize> {
    let mut n = 0;
    for entry in tree.iter() {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// How long an open waits for sled's lock to be let go of (see `Trees::open`).
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled's "could not acquire lock" (it has no error kind of its own: an
/// `Other` I/O error with this text, sled 0.34 `Config::try_lock`).
fn is_sled_lock(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other
        && error.to_string().starts_with("could not acquire lock on")
}

fn open_error(dir: &Path, source: sled::Error) -> StorageError {
    let damaged = |detail: String| StorageError::Damaged {
        dir: dir.to_owned(),
        detail,
    };
    match source {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            StorageError::DiskFull {
                dir: dir.to_owned(),
            }
        }
        sled::Error::Corruption { at, .. } => damaged(match at {
            Some(at) => format!("unreadable data at {at:?}"),
            None => "unreadable data".into(),
        }),
        // A log or snapshot shorter than what points into it.
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            damaged(format!("unreadable data: {io}"))
        }
        sled::Error::ReportableBug(_) => damaged("sled gave up reading it".into()),
        // Settings that differ from the ones `conf` records: damage when
        // `conf` fails its own checksum, a real mismatch (a database made
        // by another sled) otherwise.
        sled::Error::Unsupported(_) if !conf_is_whole(dir) => {
            damaged("its conf file fails its checksum".into())
        }
        source => StorageError::Open {
            dir: dir.to_owned(),
            source,
        },
    }
}

/// Whether sled's `conf` file in `dir` passes its checksum (its last four
/// bytes: the CRC-32 of the rest, little-endian; sled 0.34 `write_config`),
/// or is missing (sled writes a new one).
fn conf_is_whole(dir: &Path) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("conf")) else {
        return true;
    };
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return false;
    };
    crc32fast::hash(body) == u32::from_le_bytes(*crc)
}

enum Op {
    Insert(TreeId, IVec, IVec),
    Remove(TreeId, IVec),
}

#[derive(Default)]
struct Journal {
    /// Writes numbered 1, 2, …; those after the last durable flush.
    ops: VecDeque<(u64, Op)>,
    last: u64,
    /// Oldest writes let go because the journal was full.
    dropped: u64,
}

/// The journal holds at most this many writes (a million time-outs made
/// while the disk is full, about 100 MB); past it the oldest are let go,
/// and a reopen then restores all but those.
const MAX_JOURNAL: usize = 1_000_000;

impl Journal {
    fn push(&mut self, op: Op) -> u64 {
        self.last += 1;
        self.ops.push_back((self.last, op));
        if self.ops.len() > MAX_JOURNAL {
            self.ops.pop_front();
            if self.dropped == 0 {
                log::error!(
                    "write journal full ({MAX_JOURNAL} writes not durable): the oldest are let go, and lost unless the disk recovers before a restart"
                );
            }
            self.dropped += 1;
        }
        self.last
    }
}

pub(crate) struct Database {
    dir: PathBuf,
    options: StoreOptions,
    /// `None` only after a reopen that failed (retried later).
    trees: RwLock<Option<Trees>>,
    journal: Mutex<Journal>,
    /// Held across a whole flush: flushes are numbered one at a time.
    watermark: Mutex<Watermark>,
    /// What the database lost to damage, as found at this or an earlier open.
    lost: Option<LostWrites>,
    /// While the trees are a copy of the database (a start on a full disk,
    /// `scratch.rs`): no flush of it counts, and the next reopen opens the
    /// real one and drops the copy.
    copy: Mutex<Option<ScratchCopy>>,
    /// The time-out table as the open read it, until the restore takes it
    /// or a write makes it stale (`bans.rs`).
    bans_read: Mutex<Option<BansRead>>,
    holds_bans_read: AtomicBool,
}

impl Database {
    /// The database of `dir` around its trees as an open found them (read
    /// to the end, repaired if need be).
    pub fn open(dir: &Path, options: &StoreOptions, opened: Opened) -> Result<Database> {
        let database = Database::around(dir, options, opened.trees, None, opened.kept.as_deref())?;
        *database.bans_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened.bans);
        database.holds_bans_read.store(true, Ordering::Release);
        Ok(database)
    }

    /// Opens a copy of the database in memory in its place (a full disk
    /// with no reserve): reads as the database, writes wait in the journal.
    pub fn open_copy(dir: &Path, options: &StoreOptions) -> Result<Database> {
        let copy = ScratchCopy::make(dir).map_err(|why| StorageError::DiskFullNoCopy {
            dir: dir.to_owned(),
            why: why.to_string(),
        })?;
        let trees = Trees::open(copy.path(), options)?;
        log::warn!(
            "the disk of {} is full and the database has no emergency reserve: opened read-only from a copy of it in {}; what is written now is kept in memory and written once there is room; free space there",
            dir.display(),
            copy.path().display()
        );
        Database::around(dir, options, trees, Some(copy), None)
    }

    /// The database of `dir` around trees just opened (from `dir`, or from
    /// `copy` of it). The flush file read is always the real directory's:
    /// a copy's is the same, and once the real database is open again it
    /// is the one to write. `kept`: where a repair kept the damaged files.
    fn around(
        dir: &Path,
        options: &StoreOptions,
        trees: Trees,
        copy: Option<ScratchCopy>,
        kept: Option<&Path>,
    ) -> Result<Database> {
        let (watermark, lost) = Watermark::open(dir, &trees.meta, kept)?;
        Ok(Database {
            dir: dir.to_owned(),
            options: options.clone(),
            trees: RwLock::new(Some(trees)),
            journal: Mutex::new(Journal::default()),
            watermark: Mutex::new(watermark),
            lost,
            copy: Mutex::new(copy),
            bans_read: Mutex::new(None),
            holds_bans_read: AtomicBool::new(false),
        })
    }

    /// The process is stopping: a copy in memory is removed now.
    pub fn remove_copy(&self) {
        if let Some(copy) = self.copy.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            copy.remove();
        }
    }

    fn runs_from_copy(&self) -> bool {
        self.copy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The time-out table as the open read it, once; `None` after a write.
    pub fn take_bans_read(&self) -> Option<BansRead> {
        if !self.holds_bans_read.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.bans_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// A write makes the open's read of the table stale.
    fn forget_bans_read(&self) {
        if self.holds_bans_read.load(Ordering::Acquire) {
            drop(self.take_bans_read());
        }
    }

    pub fn lost(&self) -> Option<LostWrites> {
        self.lost
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the open trees (a read of them, or an iteration).
    pub fn with<T>(&self, f: impl FnOnce(&Trees) -> Result<T>) -> Result<T> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        match trees.as_ref() {
            Some(trees) => f(trees),
            None => Err(StorageError::Unavailable {
                dir: self.dir.clone(),
            }),
        }
    }

    /// A write: applied to sled and kept in the journal (even if sled
    /// refused it: a reopen will apply it). Returns sled's answer and the
    /// write's number. The journal's lock is held across the sled call, so
    /// journal order is the order sled applied writes in.
    pub fn write(
        &self,
        id: TreeId,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> (Result<Option<IVec>>, u64) {
        self.forget_bans_read();
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        let key = IVec::from(key);
        let value = value.map(IVec::from);
        let mut journal = self.journal();
        let seq = journal.push(match &value {
            Some(value) => Op::Insert(id, key.clone(), value.clone()),
            None => Op::Remove(id, key.clone()),
        });
        let result = match trees.as_ref() {
            Some(trees) => {
                let tree = trees.tree(id);
                match value {
                    Some(value) => tree.insert(key, value),
                    None => tree.remove(key),
                }
                .map_err(StorageError::Sled)
            }
            None => Err(StorageError::Unavailable {
                dir: self.dir.clone(),
            }),
        };
        (result, seq)
    }

    /// An atomic read-modify-write (`f` gets the old value, returns the
    /// new), journalled as the write of its result. Returns the new value
    /// and the write's number (0: nothing written).
    pub fn update(
        &self,
        id: TreeId,
        key: &[u8],
        f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> (Result<Option<IVec>>, u64) {
        self.forget_bans_read();
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        let Some(trees) = trees.as_ref() else {
            let dir = self.dir.clone();
            return (Err(StorageError::Unavailable { dir }), 0);
        };
        let mut journal = self.journal();
        match trees.tree(id).update_and_fetch(key, f) {
            Ok(new) => {
                let key = IVec::from(key);
                let seq = journal.push(match &new {
                    Some(value) => Op::Insert(id, key, value.clone()),
                    None => Op::Remove(id, key),
                });
                (Ok(new), seq)
            }
            Err(error) => (Err(StorageError::Sled(error)), 0),
        }
    }

    /// The number of the last write that has reached sled: taken under the
    /// write lock, so no write is half done.
    pub fn cut_off(&self) -> u64 {
        let _quiet = self.trees.write().unwrap_or_else(|p| p.into_inner());
        self.journal().last
    }

    /// A flush covering writes up to `upto` completed: they need no replay.
    pub fn durable(&self, upto: u64) {
        let mut journal = self.journal();
        while journal.ops.front().is_some_and(|(seq, _)| *seq <= upto) {
            journal.ops.pop_front();
        }
    }

    /// Flushes the open trees.
    pub fn flush(&self) -> Result<()> {
        if self.runs_from_copy() {
            if self.journal().ops.is_empty() {
                return Ok(()); // nothing made since the start: nothing to lose
            }
            return Err(StorageError::RunningFromCopy {
                dir: self.dir.clone(),
            });
        }
        self.with(|trees| self.numbered_flush(trees))
    }

    /// A flush, numbered inside and, once durable, outside the database.
    fn numbered_flush(&self, trees: &Trees) -> Result<()> {
        let mut watermark = self.watermark.lock().unwrap_or_else(|p| p.into_inner());
        let seq = watermark.stamp(&trees.meta)?;
        trees.db.flush()?;
        watermark.completed(seq);
        Ok(())
    }

    /// Closes the database, opens it again and replays the journal into
    /// it, then flushes. Returns the number of the last write replayed.
    pub fn reopen(&self) -> Result<u64> {
        let mut guard = self.trees.write().unwrap_or_else(|p| p.into_inner());
        let from_copy = self.runs_from_copy();
        if !from_copy {
            // Dropping the old handle closes sled (and frees its file lock).
            *guard = None;
        }
        // A copy stays in use until the real database is open and caught up.
        let trees = Trees::open(&self.dir, &self.options)?;
        let last = {
            let journal = self.journal();
            for (_, op) in &journal.ops {
                match op {
                    Op::Insert(id, key, value) => {
                        trees.tree(*id).insert(key, value.clone())?;
                    }
                    Op::Remove(id, key) => {
                        trees.tree(*id).remove(key)?;
                    }
                }
            }
            journal.last
        };
        self.numbered_flush(&trees)?;
        *guard = Some(trees);
        if from_copy {
            *self.copy.lock().unwrap_or_else(|p| p.into_inner()) = None;
            log::warn!(
                "the database in {} is open again; its copy in memory is gone",
                self.dir.display()
            );
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_waits_for_a_closing_handle_of_this_process_to_let_go_of_sleds_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = sled::open(dir.path()).unwrap();
        // A handle that lets go late: the scenario itself, not a wait for
        // readiness (the open below starts while it is held).
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let opened = Trees::open(dir.path(), &StoreOptions::default());
        closer.join().unwrap();
        assert!(opened.is_ok(), "{:?}", opened.err());
    }

    #[test]
    fn the_journal_numbers_writes_and_lets_the_oldest_go_past_its_bound() {
        let mut journal = Journal::default();
        for i in 0..(MAX_JOURNAL + 3) {
            let seq = journal.push(Op::Remove(TreeId::Bans, IVec::from(&[i as u8][..])));
            assert_eq!(seq, i as u64 + 1);
        }
        assert_eq!(journal.ops.len(), MAX_JOURNAL);
        assert_eq!(journal.dropped, 3);
        assert_eq!(journal.ops.front().map(|(seq, _)| *seq), Some(4));
    }
}
