//! Catches the one loss sled cannot report: the end of its log.
//!
//! Why: sled 0.34 reads a damaged record in its log as a torn write, that
//! is as the end of the log, and opens without everything after it, with
//! no error. A database of 200 time-outs, one byte flipped, opened as 9
//! (tests/disk.rs does this to a copy of a real database). When the damage
//! falls before sled's last snapshot, sled does report it
//! ([`crate::StorageError::Damaged`]); when it falls after, only a record
//! kept outside sled's log can tell.
//!
//! So every flush is numbered twice: inside sled (tree `meta`, key `flush`,
//! written just before the flush, so it is the newest thing in the log), and
//! once sled says the flush is durable, in a 16-byte file beside it
//! (`flushed`). At open, a database whose own number is behind the file's
//! has lost flushes that had completed. That is remembered in the database
//! (`meta`/`lost`), said in one line at every open, and reported by
//! `penaltybox db check` until `db salvage` makes a fresh database.
//!
//! The file can only be behind the database, never ahead of it, unless sled
//! lost something: it is written after the flush that holds the same number,
//! and flushes are numbered and written one at a time.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Result;

const FLUSH_KEY: &[u8] = b"flush";
const LOST_KEY: &[u8] = b"lost";
const FILE_NAME: &str = "flushed";

/// Flushes that had completed and that the database no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostWrites {
    /// The last flush the database still holds.
    pub held: u64,
    /// The last flush that had completed before.
    pub completed: u64,
}

impl std::fmt::Display for LostWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "it lost the writes of flushes {} to {}, which had completed (sled dropped the end of its log after damage): time-outs and volumes written then are gone",
            self.held.saturating_add(1),
            self.completed
        )
    }
}

impl LostWrites {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.held.to_be_bytes());
        out[8..].copy_from_slice(&self.completed.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<LostWrites> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (held, completed) = bytes.split_at(8);
        Some(LostWrites {
            held: u64::from_be_bytes(held.try_into().ok()?),
            completed: u64::from_be_bytes(completed.try_into().ok()?),
        })
    }
}

/// The flush numbering: the next number and the file outside sled.
pub(crate) struct Watermark {
    path: PathBuf,
    file: Option<File>,
    last: u64,
    /// A write of the file failed: logged once, not per flush.
    failing: bool,
}

impl Watermark {
    /// Reads the file and the database's own number (in its `meta` tree),
    /// and compares them. Returns the numbering and what the database
    /// lost, if it ever did. `kept`: where a repair at this start kept the
    /// damaged files.
    pub(crate) fn open(
        dir: &Path,
        meta: &sled::Tree,
        kept: Option<&Path>,
    ) -> Result<(Watermark, Option<LostWrites>)> {
        let path = dir.join(FILE_NAME);
        let on_file = read_file(&path);
        let held = meta
            .get(FLUSH_KEY)?
            .and_then(|value| Some(u64::from_be_bytes(value.as_ref().try_into().ok()?)))
            .unwrap_or(0);
        let mut lost = meta
            .get(LOST_KEY)?
            .and_then(|value| LostWrites::decode(&value));
        if held < on_file {
            let found = LostWrites {
                held,
                completed: on_file,
            };
            meta.insert(LOST_KEY, &found.encode())?;
            let copy = match kept {
                Some(kept) => format!("the damaged files are kept in {}", kept.display()),
                None => format!(
                    "keep a copy for inspection (cp -a {} {}.damaged)",
                    dir.display(),
                    dir.display()
                ),
            };
            log::error!(
                "the database in {} is damaged: {found}; serving with what is left (in a fleet, the bucket brings back what it holds); {copy}; `penaltybox db check` reports this until `penaltybox db salvage --to NEW_DIR` makes a fresh database",
                dir.display(),
            );
            lost = Some(found);
        } else if let Some(lost) = lost {
            log::warn!(
                "the database in {} was found damaged at an earlier start: {lost} (`penaltybox db check`; `penaltybox db salvage --to NEW_DIR` makes a fresh database)",
                dir.display()
            );
        }
        let watermark = Watermark {
            path,
            file: None,
            last: held.max(on_file),
            failing: false,
        };
        Ok((watermark, lost))
    }

    /// Numbers a flush about to start: the number goes into the database,
    /// to be made durable by it.
    pub(crate) fn stamp(&mut self, meta: &sled::Tree) -> Result<u64> {
        let seq = self.last.saturating_add(1);
        meta.insert(FLUSH_KEY, &seq.to_be_bytes())?;
        self.last = seq;
        Ok(seq)
    }

    /// The flush numbered `seq` is durable: says so outside sled. A failure
    /// only weakens the check (the file stays behind), so it is logged once.
    pub(crate) fn completed(&mut self, seq: u64) {
        match self.write(seq) {
            Ok(()) => self.failing = false,
            Err(error) => {
                if !self.failing {
                    log::warn!(
                        "cannot write {} (it lets the next start notice a damaged database): {error}",
                        self.path.display()
                    );
                }
                self.failing = true;
                self.file = None;
            }
        }
    }

    fn write(&mut self, seq: u64) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.path)?,
            );
        }
        let file = self.file.as_ref().ok_or(std::io::ErrorKind::NotFound)?;
        let mut record = [0; 16];
        record[..8].copy_from_slice(&seq.to_le_bytes());
        record[8..].copy_from_slice(&(!seq).to_le_bytes());
        // 16 bytes in place: no new block is needed, so a full disk does
        // not stop it, and the check on reading catches a torn one. No
        // fsync of its own (it cost 0.2 ms a flush, 1.4x a bare one): the
        // kernel writes it back within seconds, so a power cut can leave it
        // behind, never ahead, and only a loss in those seconds then goes
        // unnoticed. A crash of the process loses nothing of it.
        file.write_all_at(&record, 0)
    }
}

/// The number on file; 0 when there is none or it does not check out.
fn read_file(path: &Path) -> u64 {
    let mut record = [0u8; 16];
    let read = File::open(path).and_then(|mut file| file.read_exact(&mut record));
    match read {
        Ok(()) => {
            let (seq, check) = record.split_at(8);
            let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
            let check = u64::from_le_bytes(check.try_into().unwrap_or_default());
            if seq == !check {
                seq
            } else {
                log::warn!(
                    "{} does not check out; ignored (a damaged database may go unnoticed this once)",
                    path.display()
                );
                0
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => {
            log::warn!("cannot read {}: {error}; ignored", path.display());
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_writes_round_trip_and_odd_lengths_are_none() {
        let lost = LostWrites {
            held: 3,
            completed: 9,
        };
        assert_eq!(LostWrites::decode(&lost.encode()), Some(lost));
        assert_eq!(LostWrites::decode(&[0; 15]), None);
        assert!(lost.to_string().contains("flushes 4 to 9"));
    }

    fn ban(n: u8) -> model::BanInfo {
        crate::test_ban(&format!("192.0.2.{n}"), u64::MAX / 2)
    }

    #[test]
    fn a_database_behind_its_flush_file_is_reported_damaged_until_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::StoreOptions::default();
        let flushed = {
            let store = crate::Store::open(dir.path(), &options).unwrap();
            assert_eq!(store.lost_writes(), None);
            store.bans().put(&ban(1)).unwrap();
            store.flush().unwrap();
            store.bans().put(&ban(2)).unwrap();
            store.flush().unwrap();
            read_file(&dir.path().join(FILE_NAME))
        };
        assert!(flushed >= 2, "{flushed}");
        // A clean restart: the numbers agree (the final flush of the close
        // is on file too).
        {
            let store = crate::Store::open(dir.path(), &options).unwrap();
            assert_eq!(store.lost_writes(), None);
        }
        let held = read_file(&dir.path().join(FILE_NAME));
        assert!(held > flushed);
        // What sled losing its last flushes looks like from outside: the
        // file is ahead of the database.
        let mut file = Watermark {
            path: dir.path().join(FILE_NAME),
            file: None,
            last: 0,
            failing: false,
        };
        file.completed(held + 5);
        let expected = LostWrites {
            held,
            completed: held + 5,
        };
        {
            let store = crate::Store::open(dir.path(), &options).unwrap();
            assert_eq!(store.lost_writes(), Some(expected));
        }
        // Remembered: the next open still says so, though the numbers agree.
        let store = crate::Store::open(dir.path(), &options).unwrap();
        assert_eq!(store.lost_writes(), Some(expected));
        // A salvage is a fresh database: clean, with what was left.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = crate::Store::open(fresh_dir.path(), &options).unwrap();
        store.salvage(Some(&fresh)).unwrap();
        assert_eq!(fresh.lost_writes(), None);
        assert_eq!(fresh.bans().get(&ban(2).prefix).unwrap(), Some(ban(2)));
    }

    #[test]
    fn a_torn_or_foreign_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(read_file(&path), 0);
        std::fs::write(&path, [7u8; 16]).unwrap();
        assert_eq!(read_file(&path), 0);
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(read_file(&path), 0);
    }
}
