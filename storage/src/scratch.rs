//! The last resort of a start on a full disk with no emergency reserve
//! (`reserve.rs`): a copy of the database in memory (`/dev/shm`), opened in
//! its place, so that the server still serves its restored table.
//!
//! Why a copy: sled cannot open a database without room to write, and has
//! no read-only mode; reading the files needs no room, so copying them to a
//! file system that has room and opening the copy is the read-only open
//! sled lacks. Nothing written to the copy counts as durable: its flushes
//! fail on purpose (`trees.rs`), so every write stays in the journal, and
//! once the real disk has room the group commit opens the real database,
//! replays the journal into it and drops the copy, as after any full disk.

use std::path::{Path, PathBuf};

/// Where copies go, first that has room: memory, then the temp directory.
fn bases() -> Vec<PathBuf> {
    vec![PathBuf::from("/dev/shm"), std::env::temp_dir()]
}

/// Headroom on top of the copy's size, for sled to open and write.
const HEADROOM: u64 = 8 << 20;

/// Why no copy could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    #[error("cannot read {}: {source}", dir.display())]
    Unreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no room for a {size_mib} MiB copy ({})", tried.join("; "))]
    NoRoom { size_mib: u64, tried: Vec<String> },
}

/// A copy of a database directory; removed when dropped.
pub(crate) struct ScratchCopy {
    path: PathBuf,
}

impl ScratchCopy {
    /// Copies `dir` (not its lock or reserve) to the first base with room.
    /// The error says why none would do.
    pub(crate) fn make(dir: &Path) -> Result<ScratchCopy, CopyError> {
        let size = size_of(dir).map_err(|source| CopyError::Unreadable {
            dir: dir.to_owned(),
            source,
        })?;
        let mut tried = Vec::new();
        for base in bases() {
            sweep(&base);
            let free = crate::free_bytes(&base).unwrap_or(0);
            if free < size.saturating_add(HEADROOM) {
                tried.push(format!("{} has {} MiB free", base.display(), free >> 20));
                continue;
            }
            let path = base.join(format!("{PREFIX}{}-{}", std::process::id(), unique()));
            let copy = ScratchCopy { path };
            match copy_dir(dir, &copy.path) {
                Ok(()) => return Ok(copy),
                Err(error) => tried.push(format!("{}: {error}", copy.path.display())),
            }
        }
        Err(CopyError::NoRoom {
            size_mib: size.div_ceil(1 << 20),
            tried,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl ScratchCopy {
    /// Removes the files now, though the copy may still be open (a process
    /// about to exit, whose store is never dropped).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        self.remove();
    }
}

const PREFIX: &str = "penaltybox-db-copy-";

/// Removes the copies of processes that are gone: one that was killed, or
/// exited without dropping its store, cannot remove its own.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Files not to copy: ours (the flush number file is read from the real
/// directory), and what repairs kept aside.
fn skipped(name: &std::ffi::OsStr) -> bool {
    crate::layout::not_sleds(name)
}

fn size_of(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if skipped(&entry.file_name()) {
            continue;
        }
        let meta = entry.metadata()?;
        total = total.saturating_add(if meta.is_dir() {
            size_of(&entry.path())?
        } else {
            meta.len()
        });
    }
    Ok(total)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if skipped(&entry.file_name()) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_every_file_but_ours_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs").join("1"), b"blob").unwrap();
        std::fs::write(dir.path().join("db"), b"log").unwrap();
        std::fs::write(dir.path().join("lock"), b"").unwrap();
        std::fs::write(dir.path().join("reserve"), [0u8; 64]).unwrap();
        let copy = ScratchCopy::make(dir.path()).unwrap();
        let path = copy.path().to_owned();
        assert_eq!(std::fs::read(path.join("db")).unwrap(), b"log");
        assert_eq!(
            std::fs::read(path.join("blobs").join("1")).unwrap(),
            b"blob"
        );
        assert!(!path.join("lock").exists() && !path.join("reserve").exists());
        drop(copy);
        assert!(!path.exists());
    }

    #[test]
    fn copies_of_processes_that_are_gone_are_swept() {
        let base = tempfile::tempdir().unwrap();
        // No process has pid 4294967295 (pid_max is at most 2^22).
        let stale = base.path().join(format!("{PREFIX}4294967295-0"));
        let ours = base
            .path()
            .join(format!("{PREFIX}{}-99", std::process::id()));
        let other = base.path().join("something-else");
        for dir in [&stale, &ours, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        sweep(base.path());
        assert!(!stale.exists());
        assert!(ours.exists() && other.exists());
    }
}
