//! No replay: per prefix, the newest change this node has applied from
//! the bucket, so that a writer of the bucket who re-publishes an old
//! signed record (a time-out its node released since, say) brings nothing
//! back. A change no newer than the one noted is stale.
//!
//! A prefix is remembered until every change noted for it has run out
//! (the latest expiry seen): an older record replayed after that is itself
//! expired, and no node applies an expired record. The map only holds
//! prefixes of records that verified, so a writer without a node key
//! cannot grow it; it is swept when it has doubled since the last sweep.
//!
//! What changes is handed out ([`Freshness::take_changes`]) for the link
//! to keep in the store (`storage::fleet_seen`), and read back at start
//! ([`Freshness::restore`]), so that a replay stays stale across a
//! restart too.

use std::collections::HashMap;

use model::Cidr;

#[derive(Debug, Clone, Copy)]
struct Stamp {
    newest_ms: u64,
    keep_until_ms: u64,
}

#[derive(Debug)]
pub struct Freshness {
    newest: HashMap<Cidr, Stamp>,
    sweep_at_len: usize,
    /// Noted since the last [`Freshness::take_changes`].
    noted: Vec<Cidr>,
    /// Forgotten by sweeps since then.
    forgotten: Vec<Cidr>,
}

/// What changed since the last call: stamps to keep, prefixes to forget.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FreshnessChanges {
    pub stamps: Vec<storage::SeenStamp>,
    pub forgotten: Vec<Cidr>,
}

const MIN_SWEEP_LEN: usize = 4096;

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            newest: HashMap::new(),
            sweep_at_len: MIN_SWEEP_LEN,
            noted: Vec::new(),
            forgotten: Vec::new(),
        }
    }
}

impl Freshness {
    /// Whether a change of `prefix` made at `changed_at_ms` and mattering
    /// until `until_ms` is newer than every change applied for it; if so
    /// it is noted as the newest.
    pub fn admit(&mut self, prefix: Cidr, changed_at_ms: u64, until_ms: u64, now_ms: u64) -> bool {
        if self.newest.len() >= self.sweep_at_len {
            let forgotten = &mut self.forgotten;
            self.newest.retain(|prefix, stamp| {
                let keep = stamp.keep_until_ms > now_ms;
                if !keep {
                    forgotten.push(*prefix);
                }
                keep
            });
            self.sweep_at_len = (self.newest.len() * 2).max(MIN_SWEEP_LEN);
        }
        let admitted = match self.newest.get_mut(&prefix) {
            Some(stamp) if stamp.keep_until_ms > now_ms && changed_at_ms <= stamp.newest_ms => {
                false
            }
            Some(stamp) if stamp.keep_until_ms > now_ms => {
                stamp.newest_ms = changed_at_ms;
                stamp.keep_until_ms = stamp.keep_until_ms.max(until_ms);
                true
            }
            _ => {
                self.newest.insert(
                    prefix,
                    Stamp {
                        newest_ms: changed_at_ms,
                        keep_until_ms: until_ms,
                    },
                );
                true
            }
        };
        if admitted {
            self.noted.push(prefix);
        }
        admitted
    }

    /// [`Freshness::admit`] of a change the local table holds as it is: its
    /// stamp is not handed to the store (the table keeps the time-out
    /// itself, and a restart finds it held again).
    pub fn admit_held(&mut self, prefix: Cidr, changed_at_ms: u64, until_ms: u64, now_ms: u64) {
        if self.admit(prefix, changed_at_ms, until_ms, now_ms) {
            self.noted.pop();
        }
    }

    /// The stamps kept before a restart (`storage::FleetSeenStore::load`).
    pub fn restore(&mut self, stamps: &[storage::SeenStamp]) {
        for stamp in stamps {
            self.newest.insert(
                stamp.prefix,
                Stamp {
                    newest_ms: stamp.newest_ms,
                    keep_until_ms: stamp.keep_until_ms,
                },
            );
        }
        self.sweep_at_len = (self.newest.len() * 2).max(MIN_SWEEP_LEN);
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> FreshnessChanges {
        let mut noted = std::mem::take(&mut self.noted);
        noted.sort_unstable();
        noted.dedup();
        let stamps = noted
            .into_iter()
            .filter_map(|prefix| {
                let stamp = self.newest.get(&prefix)?;
                Some(storage::SeenStamp {
                    prefix,
                    newest_ms: stamp.newest_ms,
                    keep_until_ms: stamp.keep_until_ms,
                })
            })
            .collect();
        let forgotten = std::mem::take(&mut self.forgotten)
            .into_iter()
            .filter(|prefix| !self.newest.contains_key(prefix))
            .collect();
        FreshnessChanges { stamps, forgotten }
    }

    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_or_equal_changes_are_stale_until_everything_noted_ran_out() {
        let mut fresh = Freshness::default();
        let p: Cidr = "198.18.0.1/32".parse().unwrap();
        // A time-out at 100 until 10,000; released at 200 (tombstone until 1,000).
        assert!(fresh.admit(p, 100, 10_000, 150));
        assert!(fresh.admit(p, 200, 1_000, 250));
        // The time-out replayed: stale, also after the tombstone's end.
        assert!(!fresh.admit(p, 100, 10_000, 300));
        assert!(!fresh.admit(p, 100, 10_000, 5_000));
        assert!(!fresh.admit(p, 200, 1_000, 300));
        // A new time-out is newer.
        assert!(fresh.admit(p, 400, 20_000, 450));
        // Other prefixes are their own.
        assert!(fresh.admit("198.18.0.2/32".parse().unwrap(), 100, 10_000, 450));
        // After everything noted ran out, the prefix is forgotten.
        assert!(fresh.admit(p, 50, 30_000, 20_001));
    }

    #[test]
    fn sweeps_keep_the_map_to_what_is_in_force() {
        let mut fresh = Freshness::default();
        for i in 0..10_000u32 {
            let p = Cidr::new(std::net::IpAddr::from(i.to_be_bytes()), 32).unwrap();
            let at = u64::from(i);
            assert!(fresh.admit(p, at, at + 1, at));
        }
        assert!(fresh.len() <= 2 * MIN_SWEEP_LEN);
        let changes = fresh.take_changes();
        assert_eq!(changes.stamps.len(), fresh.len());
        assert_eq!(changes.forgotten.len() + fresh.len(), 10_000);
        assert_eq!(fresh.take_changes(), FreshnessChanges::default());
    }

    #[test]
    fn restored_stamps_keep_replays_stale() {
        let p: Cidr = "198.18.0.1/32".parse().unwrap();
        let mut before = Freshness::default();
        assert!(before.admit(p, 100, 10_000, 150));
        assert!(before.admit(p, 200, 1_000, 250));
        let kept = before.take_changes().stamps;
        assert_eq!(kept.len(), 1);
        let mut after = Freshness::default();
        after.restore(&kept);
        assert!(
            !after.admit(p, 100, 10_000, 300),
            "the replay after a restart"
        );
        assert!(after.admit(p, 300, 10_000, 300));
    }
}
