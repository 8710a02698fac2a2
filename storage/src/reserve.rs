//! The emergency reserve: a file of [`RESERVE_BYTES`] kept in the
//! database's directory while its disk has room, and given back when a
//! start finds the disk full.
//!
//! Given back in two cases: a start that finds the disk full, and a flush
//! that fails for lack of space while serving (`commit.rs`), so that the
//! time-outs an attack makes while filling the disk keep persisting.
//!
//! Why: sled 0.34 cannot open a database without room for a new log
//! segment (measured: 256 KiB free fails with ENOSPC, 1 MiB opens), and it
//! has no read-only mode. Without the reserve, a server restarted on a full
//! disk cannot even read its own time-out table. With it, the start gives
//! the reserve back, opens, restores the table and serves; the time-outs
//! made then persist while the freed room lasts, inventory writes stay
//! paused below `service.min_free_mb`, and the reserve is made again once
//! the disk has room. CockroachDB's "emergency ballast" file is the model.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Sixteen 512 KiB sled segments: far more than the few an open needs,
/// because it is also the room for the time-outs made while an attack
/// fills the disk (below).
pub(crate) const RESERVE_BYTES: u64 = 8 << 20;

/// How many time-outs the reserve's room holds, at least, once given back
/// while serving. Measured on a full 32 MiB tmpfs (tests/disk.rs,
/// `measure_how_many_time_outs_the_reserve_holds`): 43,000 without a fleet,
/// 21,000 with one, whose outbox doubles the writes; the lower figure.
pub(crate) const TIME_OUTS_IN_RESERVE: u64 = 20_000;

/// Made only while this much more than the reserve is free, so that making
/// it never fills a disk itself.
const ROOM_TO_MAKE: u64 = RESERVE_BYTES;

fn path(dir: &Path) -> PathBuf {
    dir.join("reserve")
}

/// Makes the reserve if it is missing and the disk has room; says whether
/// it is in place.
pub(crate) fn ensure(dir: &Path) -> bool {
    let path = path(dir);
    if std::fs::metadata(&path).is_ok_and(|meta| meta.len() >= RESERVE_BYTES) {
        return true;
    }
    if crate::free_bytes(dir).is_none_or(|free| free < RESERVE_BYTES + ROOM_TO_MAKE) {
        return false;
    }
    match make(&path) {
        Ok(()) => true,
        Err(error) => {
            let _ = std::fs::remove_file(&path);
            log::warn!(
                "cannot make the emergency reserve {} ({error}); a restart on a full disk will not open the database",
                path.display()
            );
            false
        }
    }
}

/// Blocks that are really allocated: a sparse file would free nothing.
fn make(path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let len = i64::try_from(RESERVE_BYTES).unwrap_or(i64::MAX);
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        // No fallocate here (some file systems): write it out instead, in
        // bytes that do not compress to nothing.
        let mut chunk = vec![0u8; 64 << 10];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for byte in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
            file.write_all(&chunk)?;
        }
    }
    file.sync_all()
}

/// Gives the reserve back; says whether there was one.
pub(crate) fn release(dir: &Path) -> bool {
    std::fs::remove_file(path(dir)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_once_with_real_blocks_and_released() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure(dir.path()));
        let meta = std::fs::metadata(path(dir.path())).unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        // Allocated, not sparse: st_blocks counts 512-byte units.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= RESERVE_BYTES, "{}", meta.blocks());
        assert!(ensure(dir.path()));
        assert!(release(dir.path()));
        assert!(!release(dir.path()));
    }
}
