//! The time-out table as the open read it.
//!
//! Every open reads the whole database to its end, so that damage sled
//! opens without is found before serving (`repair.rs`). Read as a pass of
//! its own, that doubled a restore of a million time-outs; so the table's
//! records are kept from that pass (prefix and expiry: what the restore
//! needs), and the restore takes them instead of reading the table again
//! (`BanStore::load_live`). A write before it makes them stale
//! (`trees.rs` drops them).

use model::Cidr;

use crate::Result;
use crate::codec::{decode_expiry, decode_prefix};

/// The time-out table as one read of it found it: each prefix and its
/// expiry, or the first record that does not decode.
pub(crate) struct BansRead {
    pub(crate) entries: Result<Vec<(Cidr, u64)>>,
}

impl Default for BansRead {
    fn default() -> Self {
        BansRead {
            entries: Ok(Vec::new()),
        }
    }
}

impl BansRead {
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        if let Ok(entries) = &mut self.entries {
            match decode_prefix("bans", key).and_then(|p| Ok((p, decode_expiry(value)?))) {
                Ok(entry) => entries.push(entry),
                Err(error) => self.entries = Err(error),
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Vec::len)
    }
}
