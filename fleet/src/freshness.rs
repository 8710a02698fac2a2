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
//! It lives in memory: a node that restarts after a replay overwrote a
//! tombstone in the bucket takes the replayed record (until its expiry).

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
}

const MIN_SWEEP_LEN: usize = 4096;

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            newest: HashMap::new(),
            sweep_at_len: MIN_SWEEP_LEN,
        }
    }
}

impl Freshness {
    /// Whether a change of `prefix` made at `changed_at_ms` and mattering
    /// until `until_ms` is newer than every change applied for it; if so
    /// it is noted as the newest.
    pub fn admit(&mut self, prefix: Cidr, changed_at_ms: u64, until_ms: u64, now_ms: u64) -> bool {
        if self.newest.len() >= self.sweep_at_len {
            self.newest.retain(|_, stamp| stamp.keep_until_ms > now_ms);
            self.sweep_at_len = (self.newest.len() * 2).max(MIN_SWEEP_LEN);
        }
        match self.newest.get_mut(&prefix) {
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
        }
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
    }
}
