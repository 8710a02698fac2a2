//! The persistent time-out table and the ban history.
//!
//! Key: the 18-byte prefix encoding of [`crate::codec`], so keys sort by
//! family, then address, then length, and list pagination is a range scan.
//! Value of `bans`: a [`crate::codec::encode_ban`] record, which starts with
//! the expiry, so boot reads 8 bytes of each value. Value of `history`: last
//! banned-at, last duration (both u64 ms) and repeat count (u32), big-endian.

use std::sync::Arc;

use model::Cidr;
use model::ban::BanInfo;

use crate::codec::{decode_ban, encode_ban, encode_prefix};
use crate::preread::BansRead;
use crate::trees::TreeId;
use crate::{Result, StorageError, StoreCore, page};

const HISTORY_LEN: usize = 20;

/// The previous ban of a prefix, for escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    pub last_banned_at_ms: u64,
    pub last_duration_ms: u64,
    pub repeat: u32,
}

/// What becomes of a released ban's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryAfter {
    /// Kept: the next ban of the prefix within the window escalates
    /// (expiry, eviction, a release by the allow-list).
    Kept,
    /// Forgotten: an admin's pardon.
    Forgotten,
}

/// What boot found in the table.
#[derive(Debug, Default)]
pub struct LoadedBans {
    /// Live bans: prefix and expiry (Unix ms).
    pub live: Vec<(Cidr, u64)>,
    /// Bans that expired while the server was down; removed from the table.
    pub discarded: usize,
}

#[derive(Clone)]
pub struct BanStore {
    shared: Arc<StoreCore>,
}

impl BanStore {
    pub(crate) fn new(shared: Arc<StoreCore>) -> Self {
        BanStore { shared }
    }

    /// Records a ban (replacing one of the same prefix). Its history is
    /// written when it ends ([`BanStore::release`]): while it is live its
    /// own record says all the history would, and one record per live ban
    /// instead of two is most of what a million of them cost in memory.
    pub fn put(&self, ban: &BanInfo) -> Result<()> {
        let key = encode_prefix(&ban.prefix);
        self.shared
            .write(TreeId::Bans, &key, Some(encode_ban(ban)))?;
        Ok(())
    }

    /// Ends a ban: removes its record, and keeps its history (so that the
    /// next ban of the prefix escalates) or forgets it (an admin's pardon).
    /// Says whether there was one. A record that does not decode is removed
    /// all the same, without history.
    pub fn release(&self, prefix: &Cidr, history: HistoryAfter) -> Result<bool> {
        let key = encode_prefix(prefix);
        let old = self.shared.write(TreeId::Bans, &key, None)?;
        match history {
            HistoryAfter::Kept => {
                if let Some(old) = &old {
                    self.keep_history(&key, old)?;
                }
            }
            HistoryAfter::Forgotten => {
                self.shared.write(TreeId::History, &key, None)?;
            }
        }
        Ok(old.is_some())
    }

    fn keep_history(&self, key: &[u8; 18], record: &[u8]) -> Result<()> {
        if let Ok(ban) = decode_ban(key, record) {
            let history = History {
                last_banned_at_ms: ban.banned_at_ms,
                last_duration_ms: ban.expires_at_ms.saturating_sub(ban.banned_at_ms),
                repeat: ban.repeat,
            };
            self.put_history_key(key, &history)?;
        }
        Ok(())
    }

    fn put_history_key(&self, key: &[u8; 18], history: &History) -> Result<()> {
        self.shared
            .write(TreeId::History, key, Some(encode_history(history).to_vec()))?;
        Ok(())
    }

    pub fn get(&self, prefix: &Cidr) -> Result<Option<BanInfo>> {
        let key = encode_prefix(prefix);
        let value = self.shared.with(|trees| Ok(trees.bans.get(key)?))?;
        value.map(|value| decode_ban(&key, &value)).transpose()
    }

    /// Up to `limit` bans in prefix order after `after`, and the prefix to
    /// continue from if there are more.
    pub fn list(&self, after: Option<&Cidr>, limit: usize) -> Result<(Vec<BanInfo>, Option<Cidr>)> {
        let after = after.map(|prefix| encode_prefix(prefix).to_vec());
        self.shared.with(|trees| {
            page(&trees.bans, after, limit, decode_ban, |b: &BanInfo| {
                b.prefix
            })
        })
    }

    /// Up to `limit` bans of `cause` in prefix order after `after`, and the
    /// prefix to continue from if there may be more (the cause is read in
    /// place: a page among a million feed entries costs no decoding of the
    /// rest).
    pub fn list_by_cause(
        &self,
        cause: &str,
        after: Option<&Cidr>,
        limit: usize,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>)> {
        let limit = limit.max(1);
        let after = after.map(|prefix| encode_prefix(prefix).to_vec());
        self.shared.with(|trees| {
            let entries = match after {
                Some(after) => trees
                    .bans
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
                None => trees.bans.iter(),
            };
            let mut bans: Vec<BanInfo> = Vec::new();
            for entry in entries {
                let (key, value) = entry?;
                if crate::codec::cause_in_place(&value) != Some(cause.as_bytes()) {
                    continue;
                }
                if bans.len() == limit {
                    let next = bans.last().map(|ban| ban.prefix);
                    return Ok((bans, next));
                }
                bans.push(decode_ban(&key, &value)?);
            }
            Ok((bans, None))
        })
    }

    /// Reads every ban for boot: live ones are returned (prefix and expiry
    /// only: the rest of each record is not decoded), expired ones retired
    /// (removed, their history kept). The first call after the open takes
    /// the table as the open read it ([`BansRead`]) instead of reading it
    /// again.
    pub fn load_live(&self, now_ms: u64) -> Result<LoadedBans> {
        let read = match self.shared.take_bans_read() {
            Some(read) => read,
            None => self.shared.with(|trees| {
                let mut read = BansRead::default();
                for entry in trees.bans.iter() {
                    let (key, value) = entry?;
                    read.add(&key, &value);
                }
                Ok(read)
            })?,
        };
        let entries = read.entries?;
        let mut loaded = LoadedBans::default();
        let mut expired = Vec::new();
        for (prefix, expires_at_ms) in entries {
            if expires_at_ms > now_ms {
                loaded.live.push((prefix, expires_at_ms));
            } else {
                expired.push(prefix);
            }
        }
        loaded.discarded = expired.len();
        for prefix in expired {
            self.release(&prefix, HistoryAfter::Kept)?;
        }
        Ok(loaded)
    }

    /// The previous ban of `prefix` (for escalation; a live ban's own record
    /// is not consulted: a prefix is not banned again while it is live).
    pub fn history(&self, prefix: &Cidr) -> Result<Option<History>> {
        let key = encode_prefix(prefix);
        let value = self.shared.with(|trees| Ok(trees.history.get(key)?))?;
        value.map(|v| decode_history(&v)).transpose()
    }

    /// Drops history entries whose ban started before `before_ms`: they can
    /// no longer make a new ban escalate. Returns how many were dropped.
    pub fn purge_history(&self, before_ms: u64) -> Result<usize> {
        let stale = self.shared.with(|trees| {
            let mut stale = Vec::new();
            for entry in trees.history.iter() {
                let (key, value) = entry?;
                if decode_history(&value)?.last_banned_at_ms < before_ms {
                    stale.push(key);
                }
            }
            Ok(stale)
        })?;
        for key in &stale {
            self.shared.write(TreeId::History, key, None)?;
        }
        Ok(stale.len())
    }

    pub fn len(&self) -> usize {
        self.shared
            .with(|trees| crate::trees::count(&trees.bans))
            .unwrap_or(0)
    }

    /// Writes `prefix`'s history as given (salvage).
    pub(crate) fn put_history(&self, prefix: &Cidr, history: &History) -> Result<()> {
        self.put_history_key(&encode_prefix(prefix), history)
    }

    /// Writes raw bytes as `prefix`'s ban record (its expiry first, as every
    /// format has it): how tests make a record that does not decode.
    #[cfg(feature = "test-support")]
    pub fn put_raw_ban_for_test(&self, prefix: &Cidr, expires_at_ms: u64, rest: &[u8]) {
        let mut value = expires_at_ms.to_be_bytes().to_vec();
        value.extend_from_slice(rest);
        self.shared
            .write(TreeId::Bans, &encode_prefix(prefix), Some(value))
            .unwrap();
    }

    /// Writes raw bytes as `prefix`'s history record.
    #[cfg(feature = "test-support")]
    pub fn put_raw_history_for_test(&self, prefix: &Cidr, value: &[u8]) {
        self.shared
            .write(
                TreeId::History,
                &encode_prefix(prefix),
                Some(value.to_vec()),
            )
            .unwrap();
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode_history(history: &History) -> [u8; HISTORY_LEN] {
    let mut out = [0u8; HISTORY_LEN];
    out[..8].copy_from_slice(&history.last_banned_at_ms.to_be_bytes());
    out[8..16].copy_from_slice(&history.last_duration_ms.to_be_bytes());
    out[16..].copy_from_slice(&history.repeat.to_be_bytes());
    out
}

pub(crate) fn decode_history(value: &[u8]) -> Result<History> {
    let value: &[u8; HISTORY_LEN] = value.try_into().map_err(|_| StorageError::Corrupt {
        tree: "history",
        detail: format!("value of {} bytes", value.len()),
    })?;
    Ok(History {
        last_banned_at_ms: u64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
        last_duration_ms: u64::from_be_bytes(value[8..16].try_into().expect("8 bytes")),
        repeat: u32::from_be_bytes(value[16..].try_into().expect("4 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_prefix;
    use crate::{Store, StoreOptions};

    fn ban(prefix: &str, expires_at_ms: u64) -> BanInfo {
        BanInfo {
            prefix: prefix.parse().unwrap(),
            cause: "bad-magic".parse().unwrap(),
            first_bytes: model::inline::InlineBytes::truncated(b"GET / HTTP/1.1\r\n"),
            banned_at_ms: 1_000,
            expires_at_ms,
            repeat: 1,
            origin: Default::default(),
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_family_then_address() {
        let prefixes: Vec<Cidr> = [
            "10.0.0.0/8",
            "10.0.0.1/32",
            "192.0.2.7/32",
            "::1/128",
            "2001:db8::/64",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let mut keys: Vec<_> = prefixes.iter().map(encode_prefix).collect();
        for (key, prefix) in keys.iter().zip(&prefixes) {
            assert_eq!(decode_prefix("bans", key).unwrap(), *prefix);
        }
        keys.sort();
        let sorted: Vec<Cidr> = keys
            .iter()
            .map(|k| decode_prefix("bans", k).unwrap())
            .collect();
        assert_eq!(sorted, prefixes);
    }

    #[test]
    fn put_list_remove_and_boot_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let bans = store.bans();
        for (i, prefix) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::/64"]
            .iter()
            .enumerate()
        {
            bans.put(&ban(prefix, 10_000 + i as u64)).unwrap();
        }
        bans.put(&ban("10.0.0.9", 500)).unwrap();
        assert_eq!(bans.len(), 5);

        let (page, next) = bans.list(None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some("10.0.0.2".parse().unwrap()));
        let (page, next) = bans.list(next.as_ref(), 10).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(next, None);
        assert_eq!(page[2].prefix.to_string(), "2001:db8::/64");
        assert_eq!(page[0], ban("10.0.0.3", 10_002));

        let loaded = bans.load_live(1_000).unwrap();
        assert_eq!(loaded.live.len(), 4);
        assert_eq!(loaded.discarded, 1);
        assert!(bans.get(&"10.0.0.9".parse().unwrap()).unwrap().is_none());
        assert!(
            bans.history(&"10.0.0.9".parse().unwrap())
                .unwrap()
                .is_some(),
            "expired while down: retired, its history kept"
        );

        let prefix: Cidr = "10.0.0.1".parse().unwrap();
        assert_eq!(bans.history(&prefix).unwrap(), None, "written when it ends");
        assert!(bans.release(&prefix, HistoryAfter::Kept).unwrap());
        assert!(!bans.release(&prefix, HistoryAfter::Kept).unwrap());
        // History outlives the ban, until forgotten or purged.
        let history = bans.history(&prefix).unwrap().unwrap();
        assert_eq!(history.last_duration_ms, 9_000);
        bans.release(&prefix, HistoryAfter::Forgotten).unwrap();
        assert!(bans.history(&prefix).unwrap().is_none());
        // Only 10.0.0.9 has history left (live bans have none yet).
        assert_eq!(bans.purge_history(1_001).unwrap(), 1);
    }

    #[test]
    fn a_second_open_gets_a_clear_locked_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let second = Store::open(dir.path(), &StoreOptions::default());
        let error = second.err().expect("the database is locked");
        assert!(matches!(error, StorageError::Locked { .. }), "{error}");
        assert!(
            error.to_string().contains("in use by another process"),
            "{error}"
        );
    }
}
