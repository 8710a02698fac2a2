//! The fleet's memory of the newest change it applied for each prefix
//! (the fleet crate's `freshness`), kept in the `fleet_seen` tree so that
//! a record a writer of the bucket replays stays stale across a restart of
//! the node, too.
//!
//! Key: the prefix (as in `bans`). Value: format byte `1`, the newest
//! change's time, and until when the stamp matters (u64 ms each,
//! big-endian). Not journalled: a stamp lost with the last unflushed writes
//! of a crash only lets that prefix's replay through until the record
//! itself expires. Made durable by the next group-commit flush.

use std::sync::Arc;

use model::Cidr;

use crate::codec::{PREFIX_LEN, decode_prefix, encode_prefix};
use crate::{Result, StoreCore};

const FORMAT_1: u8 = 1;
const VALUE_LEN: usize = 1 + 8 + 8;

/// The newest change applied for a prefix, and until when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenStamp {
    pub prefix: Cidr,
    pub newest_ms: u64,
    pub keep_until_ms: u64,
}

#[derive(Clone)]
pub struct FleetSeenStore {
    shared: Arc<StoreCore>,
}

impl FleetSeenStore {
    pub(crate) fn new(shared: Arc<StoreCore>) -> Self {
        FleetSeenStore { shared }
    }

    /// Writes `stamps` and removes `forgotten`, in one batch.
    pub fn update(&self, stamps: &[SeenStamp], forgotten: &[Cidr]) -> Result<()> {
        if stamps.is_empty() && forgotten.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for prefix in forgotten {
            batch.remove(&encode_prefix(prefix)[..]);
        }
        for stamp in stamps {
            let mut value = [0u8; VALUE_LEN];
            value[0] = FORMAT_1;
            value[1..9].copy_from_slice(&stamp.newest_ms.to_be_bytes());
            value[9..].copy_from_slice(&stamp.keep_until_ms.to_be_bytes());
            batch.insert(&encode_prefix(&stamp.prefix)[..], &value[..]);
        }
        self.shared
            .with(|trees| Ok(trees.fleet_seen.apply_batch(batch)?))?;
        self.shared.commit.mark_dirty(0);
        Ok(())
    }

    /// The stamps that still matter at `now_ms` (boot); the others are
    /// removed. A record that does not decode is removed too (one warning):
    /// it only weakens replay protection for its prefix.
    pub fn load(&self, now_ms: u64) -> Result<Vec<SeenStamp>> {
        let (stamps, stale) = self.shared.with(|trees| {
            let mut stamps = Vec::new();
            let mut stale = Vec::new();
            for entry in trees.fleet_seen.iter() {
                let (key, value) = entry?;
                match decode(&key, &value) {
                    Some(stamp) if stamp.keep_until_ms > now_ms => stamps.push(stamp),
                    Some(_) => stale.push(key),
                    None => {
                        log::warn!("fleet_seen: removed a record that does not decode");
                        stale.push(key);
                    }
                }
            }
            Ok((stamps, stale))
        })?;
        if !stale.is_empty() {
            let mut batch = sled::Batch::default();
            for key in stale {
                batch.remove(key);
            }
            self.shared
                .with(|trees| Ok(trees.fleet_seen.apply_batch(batch)?))?;
            self.shared.commit.mark_dirty(0);
        }
        Ok(stamps)
    }
}

fn decode(key: &[u8], value: &[u8]) -> Option<SeenStamp> {
    let key: &[u8; PREFIX_LEN] = key.try_into().ok()?;
    let value: &[u8; VALUE_LEN] = value.try_into().ok()?;
    if value[0] != FORMAT_1 {
        return None;
    }
    Some(SeenStamp {
        prefix: decode_prefix("fleet_seen", key).ok()?,
        newest_ms: u64::from_be_bytes(value[1..9].try_into().ok()?),
        keep_until_ms: u64::from_be_bytes(value[9..].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_a_reopen_and_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = |prefix: &str, newest_ms, keep_until_ms| SeenStamp {
            prefix: prefix.parse().unwrap(),
            newest_ms,
            keep_until_ms,
        };
        let (a, b) = (
            stamp("198.18.0.1/32", 10, 1_000),
            stamp("2001:db8::/64", 20, 50),
        );
        {
            let store = crate::Store::open(dir.path(), &Default::default()).unwrap();
            let seen = store.fleet_seen();
            seen.update(&[a, b, stamp("198.18.0.9/32", 1, 2_000)], &[])
                .unwrap();
            seen.update(&[], &["198.18.0.9/32".parse().unwrap()])
                .unwrap();
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path(), &Default::default()).unwrap();
        let mut loaded = store.fleet_seen().load(40).unwrap();
        loaded.sort_by_key(|s| s.newest_ms);
        assert_eq!(loaded, vec![a, b]);
        // b ran out at 50: not loaded, and gone from the tree.
        assert_eq!(store.fleet_seen().load(60).unwrap(), vec![a]);
        assert_eq!(store.fleet_seen().load(0).unwrap(), vec![a]);
    }
}
