//! What is in a database directory besides sled's own files (its log
//! `db`, `conf`, `snap.*`, `blobs/`): ours, and what repairs kept. The
//! scratch copy leaves ours out, and a repair moves only sled's.

use std::ffi::OsStr;

/// A repair's directory of kept damaged files: `damaged-<time>/`.
pub(crate) const ASIDE_PREFIX: &str = "damaged-";

/// Where a salvage builds the fresh database before it takes the damaged
/// one's place.
pub(crate) const SALVAGE_DIR: &str = "salvaged.tmp";

/// Whether `name` in a database directory is not sled's: our lock, the
/// emergency reserve, the flush number file, what repairs kept.
pub(crate) fn not_sleds(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    matches!(&*name, "lock" | "reserve" | "flushed" | SALVAGE_DIR) || name.starts_with(ASIDE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleds_files_are_told_from_ours() {
        for ours in [
            "lock",
            "reserve",
            "flushed",
            "salvaged.tmp",
            "damaged-2026-12-05T20-10-13Z",
        ] {
            assert!(not_sleds(OsStr::new(ours)), "{ours}");
        }
        for sleds in ["db", "conf", "blobs", "snap.000000000016ECAE"] {
            assert!(!not_sleds(OsStr::new(sleds)), "{sleds}");
        }
    }
}
