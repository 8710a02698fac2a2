//! The fleet outbox: time-outs and releases made here that the fleet has
//! not yet acknowledged. The ban path writes here (no network wait) and
//! the fleet link drains it, so a change made while the engine is down,
//! or just before a crash, is published once the engine is back, also
//! after a restart (the outbox is durable with the same group commit as
//! the ban itself).
//!
//! Key: the prefix (as in `bans`), so there is at most one pending change
//! per prefix and the outbox never outgrows the table plus the releases:
//! a later change of a prefix replaces an earlier one, which the engine
//! would have overwritten anyway. Value: [`PUT`] and an encoded ban, or
//! [`DELETE`].

use std::sync::Arc;

use model::Cidr;
use model::ban::BanInfo;
use sled::IVec;

use crate::codec::{decode_ban, decode_prefix, encode_ban, encode_prefix};
use crate::trees::TreeId;
use crate::{Result, StorageError, StoreCore};

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// A change for the fleet to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    /// A time-out made here.
    Put(BanInfo),
    /// An admin released this prefix here.
    Delete(Cidr),
}

impl FleetChange {
    pub fn prefix(&self) -> Cidr {
        match self {
            FleetChange::Put(ban) => ban.prefix,
            FleetChange::Delete(prefix) => *prefix,
        }
    }
}

/// One pending change, as read: [`OutboxStore::done`] removes it only if
/// it has not been replaced since.
#[derive(Debug, Clone)]
pub struct Pending {
    pub change: FleetChange,
    key: [u8; crate::codec::PREFIX_LEN],
    raw: IVec,
}

#[derive(Clone)]
pub struct OutboxStore {
    shared: Arc<StoreCore>,
}

impl OutboxStore {
    pub(crate) fn new(shared: Arc<StoreCore>) -> Self {
        OutboxStore { shared }
    }

    pub fn push(&self, change: &FleetChange) -> Result<()> {
        let key = encode_prefix(&change.prefix());
        let value = match change {
            FleetChange::Put(ban) => {
                let mut value = vec![PUT];
                value.extend_from_slice(&encode_ban(ban));
                value
            }
            FleetChange::Delete(_) => vec![DELETE],
        };
        self.shared.write(TreeId::Outbox, &key, Some(value))?;
        Ok(())
    }

    /// Up to `limit` pending changes, in prefix order. A record that does
    /// not decode is removed (logged): it could never be published.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>> {
        let raw: Vec<(IVec, IVec)> = self.shared.with(|trees| {
            trees
                .outbox
                .iter()
                .take(limit)
                .collect::<std::result::Result<_, _>>()
                .map_err(StorageError::Sled)
        })?;
        let mut pending = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            match decode(&key, &value) {
                Ok((key, change)) => pending.push(Pending {
                    change,
                    key,
                    raw: value,
                }),
                Err(error) => {
                    log::warn!("fleet outbox: dropping a record that does not decode: {error}");
                    self.shared.write(TreeId::Outbox, &key, None)?;
                }
            }
        }
        Ok(pending)
    }

    /// `pending` was published: it leaves the outbox, unless a newer change
    /// of its prefix took its place meanwhile.
    pub fn done(&self, pending: &Pending) -> Result<()> {
        self.shared
            .update(TreeId::Outbox, &pending.key, |current| match current {
                Some(current) if current == pending.raw.as_ref() => None,
                other => other.map(<[u8]>::to_vec),
            })?;
        Ok(())
    }

    /// Whether a change of exactly `prefix` waits to be published.
    pub fn holds(&self, prefix: &Cidr) -> Result<bool> {
        let key = encode_prefix(prefix);
        self.shared
            .with(|trees| Ok(trees.outbox.contains_key(key)?))
    }

    pub fn len(&self) -> usize {
        self.shared
            .with(|trees| crate::trees::count(&trees.outbox))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn decode(
    key: &[u8],
    value: &[u8],
) -> Result<([u8; crate::codec::PREFIX_LEN], FleetChange)> {
    let prefix = decode_prefix("outbox", key)?;
    let key = encode_prefix(&prefix);
    let change = match value.split_first() {
        Some((&PUT, ban)) => FleetChange::Put(decode_ban(&key, ban)?),
        Some((&DELETE, [])) => FleetChange::Delete(prefix),
        _ => {
            return Err(StorageError::Corrupt {
                tree: "outbox",
                detail: format!("unknown change of {} bytes", value.len()),
            });
        }
    };
    Ok((key, change))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};

    #[test]
    fn a_change_survives_a_reopen_until_done_and_a_newer_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = FleetChange::Put(crate::test_ban("192.0.2.7/32", 10_000));
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            store.outbox().push(&first).unwrap();
            store
                .outbox()
                .push(&FleetChange::Delete("2001:db8::/64".parse().unwrap()))
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let pending = store.outbox().pending(10).unwrap();
        let changes: Vec<_> = pending.iter().map(|p| p.change.clone()).collect();
        assert_eq!(
            changes,
            vec![
                first.clone(),
                FleetChange::Delete("2001:db8::/64".parse().unwrap())
            ]
        );
        // Replaced between read and acknowledgement: the newer one stays.
        let newer = FleetChange::Delete("192.0.2.7/32".parse().unwrap());
        store.outbox().push(&newer).unwrap();
        store.outbox().done(&pending[0]).unwrap();
        store.outbox().done(&pending[1]).unwrap();
        let left: Vec<_> = store
            .outbox()
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|p| p.change)
            .collect();
        assert_eq!(left, vec![newer]);
        assert_eq!(store.outbox().len(), 1);
        assert!(
            store
                .outbox()
                .holds(&"192.0.2.7/32".parse().unwrap())
                .unwrap()
        );
        assert!(
            !store
                .outbox()
                .holds(&"192.0.2.0/24".parse().unwrap())
                .unwrap()
        );
        assert!(
            !store
                .outbox()
                .holds(&"2001:db8::/64".parse().unwrap())
                .unwrap()
        );
    }
}
