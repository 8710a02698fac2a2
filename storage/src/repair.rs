//! Repair at start (`storage.on_damage = "repair"`, the default): a database
//! that sled cannot open, or opens but cannot read to the end, is repaired
//! rather than refused, so that the time-out table serves without waiting
//! for a person. `"refuse"` keeps it as it is and says so in one line.
//!
//! Why this ladder (measured on damaged copies of a 5,000-entry database;
//! tests/damage.rs goes through every case): sled keeps its truth in its
//! log (`db`). A snapshot (`snap.*`) only speeds up its start, and `conf`
//! only records its settings. A truncated or scribbled snapshot or `conf`
//! makes sled refuse; so does a snapshot that points past a damaged log, or
//! sled opens and then fails every read past the damage. With both moved
//! aside, sled rebuilds from the log and reads every record the log still
//! holds up to its first damaged one: all 5,000 for a damaged snapshot or
//! `conf`, what the log holds for a damaged log.
//!
//! 1. **Moved aside.** `conf` and the snapshots go to `damaged-<time>/` in
//!    the database's directory, never deleted, with a copy of the log when
//!    the disk has room for it (a rebuild truncates the log past its
//!    damage), and the database is opened again from its log.
//! 2. **Salvaged.** What does not open or read to the end even then: the
//!    records it still reads, tree by tree up to the first that fails, go
//!    into a fresh database in its place; the damaged files and the flush
//!    number file (`watermark.rs`: the fresh database counts from one)
//!    are kept in `damaged-<time>/`.
//!
//! sled may panic on a damaged log (seen once in ten opens of a log whose
//! first page was zeroed): every attempt runs with the panic caught and the
//! panic hook silenced, so that the damage is one line, not a backtrace.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use crate::layout::{ASIDE_PREFIX, SALVAGE_DIR, not_sleds};
use crate::preread::BansRead;
use crate::trees::{Opened, Trees};
use crate::{Result, StorageError, StoreOptions};

/// sled's panics on a damaged log come and go between opens of the same
/// files (about one open in eight of a log whose first page was zeroed, in
/// tests/damage.rs): a rebuild that panicked is tried again, up to this
/// many times in all, before the readable records are salvaged.
const REBUILD_TRIES: usize = 3;

/// What [`attempt`] says of a panic in sled.
const SLED_PANICKED: &str = "sled gave up reading it";

fn panicked(error: &StorageError) -> bool {
    matches!(error, StorageError::Damaged { detail, .. } if detail == SLED_PANICKED)
}

/// What a start does with a damaged database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Move aside what sled rebuilds without, else salvage into a fresh
    /// database; keep every damaged file; serve.
    #[default]
    Repair,
    /// Refuse to open it: a person decides.
    Refuse,
}

/// The trees of `dir`, opened and read to the end. A damaged database is
/// repaired when `options` say so, and refused otherwise.
pub(crate) fn open(dir: &Path, options: &StoreOptions) -> Result<Opened> {
    let damage = match open_verified(dir, options) {
        Err(StorageError::Damaged { detail, .. }) if options.on_damage == OnDamage::Repair => {
            detail
        }
        done => return done,
    };
    let aside = Aside::make(dir)?;
    let log_note = aside.take_snapshot_and_conf()?;
    let mut tries = 0;
    let mut before: Option<StorageError> = None;
    let (again, readable) = loop {
        tries += 1;
        let mut bans = BansRead::default();
        let failed = match attempt(dir, || Trees::open(dir, options)) {
            Ok(trees) => match attempt(dir, || trees.verify(dir, &mut bans)) {
                Ok(time_outs) => {
                    log::error!(
                        "the database in {} was damaged ({damage}): moved its snapshot and conf aside into {}{log_note} and opened it again from its log: {time_outs} time-outs came back",
                        dir.display(),
                        aside.path.display()
                    );
                    return Ok(Opened {
                        trees,
                        bans,
                        kept: Some(aside.path),
                    });
                }
                Err(error) => (error, Some(trees)),
            },
            Err(error) => (error, None),
        };
        if let Some(earlier) = before.take() {
            // A retry that could not even try (sled's lock still held by
            // the attempt that panicked, say): the failure before it stands.
            if !matches!(failed.0, StorageError::Damaged { .. }) {
                break (earlier, None);
            }
        }
        if tries >= REBUILD_TRIES || !panicked(&failed.0) {
            break failed;
        }
        let (error, trees) = failed;
        if let Some(trees) = trees {
            // sled flushes when dropped: that may panic too.
            let _ = attempt(dir, move || {
                drop(trees);
                Ok(())
            });
        }
        before = Some(error);
    };
    let StorageError::Damaged { detail: again, .. } = again else {
        return Err(again);
    };
    let (opened, counts) = salvage(dir, options, &aside, readable)?;
    log::error!(
        "the database in {} was damaged ({damage}) and could not be opened again from its log ({again}): {} time-outs, {} history entries, {} volumes and {} fleet changes were readable and are in a fresh database; the damaged one is kept in {}; in a fleet, the bucket brings back the rest",
        dir.display(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        aside.path.display()
    );
    Ok(Opened {
        kept: Some(aside.path),
        ..opened
    })
}

/// Opens `dir` and reads every tree to its end, sled's panics caught.
fn open_verified(dir: &Path, options: &StoreOptions) -> Result<Opened> {
    let trees = attempt(dir, || Trees::open(dir, options))?;
    let mut bans = BansRead::default();
    attempt(dir, || trees.verify(dir, &mut bans))?;
    Ok(Opened {
        trees,
        bans,
        kept: None,
    })
}

/// Runs `f` (an open or a read of sled) with its panic caught and the
/// panic hook silenced; a panic is damage. The hook is the process's, so
/// this runs only at start, before the server's threads.
fn attempt<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|_| {
        Err(StorageError::Damaged {
            dir: dir.to_owned(),
            detail: SLED_PANICKED.into(),
        })
    })
}

/// `damaged-<time>/` in the database's directory: what a repair kept.
struct Aside {
    dir: PathBuf,
    path: PathBuf,
}

impl Aside {
    fn make(dir: &Path) -> Result<Aside> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        let mut path = dir.join(format!("{ASIDE_PREFIX}{now}"));
        for n in 2.. {
            match std::fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                    path = dir.join(format!("{ASIDE_PREFIX}{now}-{n}"));
                }
                Err(source) => return Err(repair_failed(dir, &path, source)),
            }
        }
        Ok(Aside {
            dir: dir.to_owned(),
            path,
        })
    }

    /// Step 1: `conf` and the snapshots moved in, the log copied in when
    /// there is room. Returns what to say of the log.
    fn take_snapshot_and_conf(&self) -> Result<String> {
        for name in sled_files(&self.dir)? {
            let text = name.to_string_lossy();
            if text == "conf" || text.starts_with("snap.") {
                self.take(&name)?;
            }
        }
        let log = self.dir.join("db");
        let Ok(size) = std::fs::metadata(&log).map(|m| m.len()) else {
            return Ok(" (it had no log)".into());
        };
        let free = crate::free_bytes(&self.dir).unwrap_or(0);
        if free < size.saturating_add(crate::commit::RECOVERY_ROOM) {
            return Ok(format!(
                " (no copy of its log: {} MiB, {} MiB free)",
                size >> 20,
                free >> 20
            ));
        }
        match std::fs::copy(&log, self.path.join("db")) {
            Ok(_) => Ok(", with a copy of its log,".into()),
            Err(error) => {
                let _ = std::fs::remove_file(self.path.join("db"));
                Ok(format!(" (no copy of its log: {error})"))
            }
        }
    }

    fn take(&self, name: &std::ffi::OsStr) -> Result<()> {
        let to = self.path.join(name);
        std::fs::rename(self.dir.join(name), &to).map_err(|e| repair_failed(&self.dir, &to, e))
    }
}

/// Step 2: the readable records of `readable` (the database opened from its
/// log, if it opened) copied into a fresh database, which then takes the
/// damaged one's place. Returns it opened, and how many records of each
/// tree (bans, history, volumes, fleet outbox) it received.
fn salvage(
    dir: &Path,
    options: &StoreOptions,
    aside: &Aside,
    readable: Option<Trees>,
) -> Result<(Opened, [usize; 4])> {
    let fresh_dir = dir.join(SALVAGE_DIR);
    if fresh_dir.exists() {
        // Left by a salvage that did not finish: nothing of value in it.
        std::fs::remove_dir_all(&fresh_dir).map_err(|e| repair_failed(dir, &fresh_dir, e))?;
    }
    let mut counts = [0; 4];
    {
        let fresh = attempt(dir, || Trees::open(&fresh_dir, options))?;
        if let Some(readable) = &readable {
            // A panic mid-way keeps what was copied before it.
            let _ = attempt(dir, || readable.copy_readable_into(&fresh, &mut counts));
        }
        fresh.db.flush()?;
    }
    drop(readable);
    // The damaged files are kept; a log already copied aside is the
    // original, so what the rebuild made of it goes.
    let has_log = aside.path.join("db").exists();
    for name in sled_files(dir)? {
        if has_log || aside.path.join(&name).exists() {
            let path = dir.join(&name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| repair_failed(dir, &path, e))?;
        } else {
            aside.take(&name)?;
        }
    }
    if dir.join("flushed").exists() {
        aside.take(std::ffi::OsStr::new("flushed"))?;
    }
    for name in sled_files(&fresh_dir)? {
        let to = dir.join(&name);
        std::fs::rename(fresh_dir.join(&name), &to).map_err(|e| repair_failed(dir, &to, e))?;
    }
    let _ = std::fs::remove_dir_all(&fresh_dir);
    Ok((open_verified(dir, options)?, counts))
}

/// The names of sled's files in `dir`.
fn sled_files(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let entries = std::fs::read_dir(dir).map_err(|e| repair_failed(dir, dir, e))?;
    Ok(entries
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .filter(|name| !not_sleds(name))
        .collect())
}

fn repair_failed(dir: &Path, path: &Path, error: std::io::Error) -> StorageError {
    StorageError::RepairFailed {
        dir: dir.to_owned(),
        detail: format!("{}: {error}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// A closed database in `dir` with two time-outs, a history entry and
    /// a fleet change.
    fn database(dir: &Path) {
        let store = Store::open(dir, &StoreOptions::default()).unwrap();
        for prefix in ["192.0.2.1", "192.0.2.2"] {
            store
                .bans()
                .put(&crate::test_ban(prefix, u64::MAX / 2))
                .unwrap();
        }
        let history = crate::History {
            last_banned_at_ms: 1,
            last_duration_ms: 2,
            repeat: 1,
        };
        let prefix = "192.0.2.1".parse().unwrap();
        store.bans().put_history(&prefix, &history).unwrap();
        store
            .outbox()
            .push(&crate::FleetChange::Delete(prefix))
            .unwrap();
        store.flush().unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Step 2 on a database that opened from its log: what reads goes
    /// into a fresh database in its place, and the damaged files (the log
    /// as it was, the flush number file) are kept.
    #[test]
    fn a_salvage_serves_a_fresh_database_of_what_read_and_keeps_the_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        database(dir);
        let log_before = std::fs::read(dir.join("db")).unwrap();
        let options = StoreOptions::default();
        let aside = Aside::make(dir).unwrap();
        let note = aside.take_snapshot_and_conf().unwrap();
        assert_eq!(note, ", with a copy of its log,");
        let readable = Trees::open(dir, &options).unwrap();

        let (opened, counts) = salvage(dir, &options, &aside, Some(readable)).unwrap();
        assert_eq!(counts, [2, 1, 0, 1]);
        assert_eq!(opened.bans.len(), 2);
        drop(opened);
        assert_eq!(std::fs::read(aside.path.join("db")).unwrap(), log_before);
        let kept = names(&aside.path);
        assert!(kept.contains(&"flushed".to_owned()), "{kept:?}");
        assert!(kept.contains(&"conf".to_owned()), "{kept:?}");
        let left = names(dir);
        assert!(!left.contains(&SALVAGE_DIR.to_owned()), "{left:?}");
        assert!(!left.contains(&"flushed".to_owned()), "{left:?}");

        // It opens as any database: no lost flushes (the fresh one counts
        // from one), its records in force.
        let store = Store::open(dir, &options).unwrap();
        assert!(store.lost_writes().is_none());
        assert_eq!(store.bans().len(), 2);
        assert_eq!(store.outbox().len(), 1);
    }

    /// Step 2 on a database that did not open at all: an empty fresh one,
    /// and every damaged file moved aside (no log copy was made: no room).
    #[test]
    fn a_salvage_of_what_does_not_open_serves_an_empty_database_and_keeps_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        database(dir);
        let log_before = std::fs::read(dir.join("db")).unwrap();
        let options = StoreOptions::default();
        let aside = Aside::make(dir).unwrap();
        let (opened, counts) = salvage(dir, &options, &aside, None).unwrap();
        assert_eq!(counts, [0; 4]);
        assert_eq!(opened.bans.len(), 0);
        assert_eq!(std::fs::read(aside.path.join("db")).unwrap(), log_before);
        let kept = names(&aside.path);
        for name in ["blobs", "conf", "db", "flushed"] {
            assert!(kept.contains(&name.to_owned()), "{name}: {kept:?}");
        }
    }

    /// A panic in sled is damage, said in one line of ours.
    #[test]
    fn a_panic_while_reading_is_damage() {
        let dir = Path::new("/nonexistent");
        let result: Result<()> = attempt(dir, || panic!("sled's own text"));
        match result {
            Err(StorageError::Damaged { detail, .. }) => {
                assert_eq!(detail, "sled gave up reading it")
            }
            other => panic!("{other:?}"),
        }
    }
}
