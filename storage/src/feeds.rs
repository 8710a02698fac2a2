//! Blocklist feeds' lists as last applied: one record per feed in the
//! `feeds` tree, so that a restart enforces them before the first fetch
//! (a URL may be unreachable then).
//!
//! Why one record a feed, not one a prefix in `bans`: a feed of a million
//! prefixes written as a million records took sled 5 µs each (measured:
//! 500 ms for 100,000, the most of an import), and a refresh rewrites
//! every one to move its expiry. As one record it is 18 bytes a prefix,
//! written once (sled keeps large values in a file of their own), and its
//! entries' expiry is computed from when it was applied and its refresh
//! interval, the same way the table computes it.
//!
//! Format 1: `1` · applied-at (u64 ms) · refresh (u64 ms) · count (u32) ·
//! count × the 18-byte prefix keys of [`crate::codec`], sorted. All
//! big-endian. Not journalled (a refresh makes it again); made durable by
//! the next group-commit flush.

use std::sync::Arc;

use model::Cidr;

use crate::codec::{PREFIX_LEN, decode_prefix, encode_prefix};
use crate::{Result, StorageError, StoreCore};

const FORMAT_1: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 4;

/// A feed's list as last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFeed {
    pub name: String,
    pub applied_at_ms: u64,
    pub refresh_ms: u64,
    /// Sorted.
    pub entries: Vec<Cidr>,
}

#[derive(Clone)]
pub struct FeedStore {
    shared: Arc<StoreCore>,
}

impl FeedStore {
    pub(crate) fn new(shared: Arc<StoreCore>) -> Self {
        FeedStore { shared }
    }

    /// Stores feed `name`'s list (`entries` sorted); an empty one removes
    /// the record.
    pub fn put(
        &self,
        name: &str,
        applied_at_ms: u64,
        refresh_ms: u64,
        entries: &[Cidr],
    ) -> Result<()> {
        if entries.is_empty() {
            return self.remove(name);
        }
        let count = u32::try_from(entries.len()).map_err(|_| StorageError::Corrupt {
            tree: "feeds",
            detail: format!("{} entries are more than a record holds", entries.len()),
        })?;
        let mut value = Vec::with_capacity(HEADER + entries.len() * PREFIX_LEN);
        value.push(FORMAT_1);
        value.extend_from_slice(&applied_at_ms.to_be_bytes());
        value.extend_from_slice(&refresh_ms.to_be_bytes());
        value.extend_from_slice(&count.to_be_bytes());
        for entry in entries {
            value.extend_from_slice(&encode_prefix(entry));
        }
        self.shared
            .with(|trees| Ok(trees.feeds.insert(name.as_bytes(), value)?))?;
        self.shared.commit.mark_dirty(0);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.shared
            .with(|trees| Ok(trees.feeds.remove(name.as_bytes())?))?;
        self.shared.commit.mark_dirty(0);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Option<StoredFeed>> {
        let value = self
            .shared
            .with(|trees| Ok(trees.feeds.get(name.as_bytes())?))?;
        value
            .map(|value| decode(name.as_bytes(), &value))
            .transpose()
    }

    /// Every stored feed (boot).
    ///
    /// A record that does not decode is skipped with one warning: a feed's
    /// list is fetched again at its next refresh, so it must not stop a
    /// start. A read error of the tree still does.
    pub fn load(&self) -> Result<Vec<StoredFeed>> {
        self.shared.with(|trees| {
            let mut feeds = Vec::new();
            for entry in trees.feeds.iter() {
                let (key, value) = entry?;
                match decode(&key, &value) {
                    Ok(feed) => feeds.push(feed),
                    Err(error) => log::warn!(
                        "skipped a stored feed list (read again at its next refresh): {error}"
                    ),
                }
            }
            Ok(feeds)
        })
    }
}

/// Sizes are checked against the value before anything is allocated.
fn decode(key: &[u8], value: &[u8]) -> Result<StoredFeed> {
    let corrupt = |detail: String| StorageError::Corrupt {
        tree: "feeds",
        detail,
    };
    let name = std::str::from_utf8(key)
        .map_err(|_| corrupt("a feed name that is not text".into()))?
        .to_owned();
    let header: &[u8; HEADER] = value
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| corrupt(format!("feed {name}: a record of {} bytes", value.len())))?;
    if header[0] != FORMAT_1 {
        return Err(corrupt(format!(
            "feed {name}: unknown format {:#04x}",
            header[0]
        )));
    }
    let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().unwrap_or_default());
    let count = u32::from_be_bytes(header[17..21].try_into().unwrap_or_default()) as usize;
    let body = &value[HEADER..];
    if body.len() != count.saturating_mul(PREFIX_LEN) {
        return Err(corrupt(format!(
            "feed {name}: {count} entries announced, {} bytes of them",
            body.len()
        )));
    }
    let entries = body
        .chunks_exact(PREFIX_LEN)
        .map(|key| decode_prefix("feeds", key))
        .collect::<Result<Vec<Cidr>>>()?;
    Ok(StoredFeed {
        name,
        applied_at_ms: u64_at(1),
        refresh_ms: u64_at(9),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};

    #[test]
    fn a_feeds_list_round_trips_survives_a_reopen_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Cidr> = ["198.18.0.0/24", "198.18.1.7/32", "2001:db8::/32"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            store
                .feeds()
                .put("drop", 1_000, 3_600_000, &entries)
                .unwrap();
            store.feeds().put("other", 1, 2, &entries[..1]).unwrap();
            store.feeds().put("other", 1, 2, &[]).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let stored = store.feeds().load().unwrap();
        assert_eq!(
            stored,
            vec![StoredFeed {
                name: "drop".into(),
                applied_at_ms: 1_000,
                refresh_ms: 3_600_000,
                entries
            }]
        );
    }

    #[test]
    fn a_damaged_record_is_refused_before_anything_is_allocated() {
        let mut value = vec![FORMAT_1];
        value.extend_from_slice(&[0; 16]);
        value.extend_from_slice(&u32::MAX.to_be_bytes());
        let error = decode(b"drop", &value).unwrap_err().to_string();
        assert!(
            error.contains("4294967295 entries announced, 0 bytes"),
            "{error}"
        );
        assert!(decode(b"drop", &[2; HEADER]).is_err());
        assert!(decode(b"drop", b"short").is_err());
    }

    /// A record that does not decode (a newer format after a downgrade, a
    /// damaged value) is skipped: the start goes on with the other feeds.
    #[test]
    fn a_record_that_does_not_decode_is_skipped_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let entries: Vec<Cidr> = vec!["198.18.0.0/24".parse().unwrap()];
        store.feeds().put("good", 1, 2, &entries).unwrap();
        store
            .feeds()
            .shared
            .with(|trees| {
                trees.feeds.insert("newer", &[9u8; HEADER][..])?;
                Ok(())
            })
            .unwrap();
        let stored = store.feeds().load().unwrap();
        let names: Vec<&str> = stored.iter().map(|feed| feed.name.as_str()).collect();
        assert_eq!(names, ["good"]);
    }
}
