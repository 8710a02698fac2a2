//! `db check` and `db salvage`: read every record of every tree, count what
//! decodes and what does not, and (salvage) copy what decodes into a fresh
//! database: time-outs, history, volumes, and the fleet outbox (changes not
//! yet published, so that none is lost on the way). For a database sled still opens but some of whose records no
//! longer decode; what sled itself cannot open, neither can this.

use crate::codec::{decode_ban, decode_prefix, decode_volume};
use crate::trees::Trees;
use crate::{Result, Store};

/// Records read per tree: decoded, and not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeReport {
    pub good: usize,
    pub bad: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub bans: TreeReport,
    pub history: TreeReport,
    pub volumes: TreeReport,
    pub outbox: TreeReport,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.bans.bad + self.history.bad + self.volumes.bad + self.outbox.bad == 0
    }
}

impl Store {
    /// Reads every record; with `into`, copies each one that decodes there
    /// (in its current format) and flushes it.
    pub fn salvage(&self, into: Option<&Store>) -> Result<CheckReport> {
        self.shared.with(|trees| self.salvage_trees(trees, into))
    }

    fn salvage_trees(&self, trees: &Trees, into: Option<&Store>) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        for entry in trees.bans.iter() {
            let (key, value) = entry?;
            match decode_ban(&key, &value) {
                Ok(ban) => {
                    report.bans.good += 1;
                    if let Some(into) = into {
                        into.bans.put(&ban)?;
                    }
                }
                Err(error) => {
                    report.bans.bad += 1;
                    log::warn!("bans: skipping a record: {error}");
                }
            }
        }
        for entry in trees.history.iter() {
            let (key, value) = entry?;
            let decoded = decode_prefix("history", &key)
                .and_then(|prefix| Ok((prefix, crate::bans::decode_history(&value)?)));
            match decoded {
                Ok((prefix, history)) => {
                    report.history.good += 1;
                    if let Some(into) = into {
                        into.bans.put_history(&prefix, &history)?;
                    }
                }
                Err(error) => {
                    report.history.bad += 1;
                    log::warn!("history: skipping a record: {error}");
                }
            }
        }
        for entry in trees.volumes.iter() {
            let (key, value) = entry?;
            match decode_volume(&key, &value) {
                Ok(volume) => {
                    report.volumes.good += 1;
                    if let Some(into) = into {
                        into.volumes.put(&volume)?;
                    }
                }
                Err(error) => {
                    report.volumes.bad += 1;
                    log::warn!("volumes: skipping a record: {error}");
                }
            }
        }
        for entry in trees.outbox.iter() {
            let (key, value) = entry?;
            match crate::outbox::decode(&key, &value) {
                Ok((_, change)) => {
                    report.outbox.good += 1;
                    if let Some(into) = into {
                        into.outbox.push(&change)?;
                    }
                }
                Err(error) => {
                    report.outbox.bad += 1;
                    log::warn!("fleet outbox: skipping a record: {error}");
                }
            }
        }
        if let Some(into) = into {
            into.flush()?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    #[test]
    fn salvage_copies_what_decodes_and_counts_what_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let ban = model::BanInfo {
            repeat: 2,
            ..crate::test_ban("192.0.2.7", u64::MAX / 2)
        };
        store.bans().put(&ban).unwrap();
        store
            .bans()
            .put_history(
                &ban.prefix,
                &crate::History {
                    last_banned_at_ms: 1,
                    last_duration_ms: 2,
                    repeat: 1,
                },
            )
            .unwrap();
        store
            .shared
            .write(
                crate::trees::TreeId::Bans,
                b"not a prefix",
                Some(b"nor a ban".to_vec()),
            )
            .unwrap();
        store
            .outbox()
            .push(&crate::FleetChange::Delete(
                "198.51.100.0/24".parse().unwrap(),
            ))
            .unwrap();
        let report = store.salvage(None).unwrap();
        assert_eq!(report.bans, TreeReport { good: 1, bad: 1 });
        assert_eq!(report.outbox, TreeReport { good: 1, bad: 0 });
        assert_eq!(report.history, TreeReport { good: 1, bad: 0 });
        assert!(!report.is_clean());

        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path(), &StoreOptions::default()).unwrap();
        store.salvage(Some(&fresh)).unwrap();
        assert_eq!(fresh.bans().get(&ban.prefix).unwrap(), Some(ban));
        assert!(
            fresh
                .outbox()
                .holds(&"198.51.100.0/24".parse().unwrap())
                .unwrap()
        );
        assert!(fresh.salvage(None).unwrap().is_clean());
        assert_eq!(
            fresh
                .bans()
                .history(&"192.0.2.7".parse().unwrap())
                .unwrap()
                .unwrap()
                .repeat,
            1
        );
    }
}
