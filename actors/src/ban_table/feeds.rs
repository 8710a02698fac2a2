//! A blocklist feed's entries in the table: time-outs of cause
//! `feed:NAME`, in the view, sled and the kernel map like any other, but
//! kept apart in three ways.
//!
//! - **A refresh is a difference.** What is new is added, what left the
//!   list is released, and the rest keeps its entry with its expiry moved
//!   forward, in place: additions and moves come before releases, and a
//!   prefix listed in both lists is never out of force for an instant.
//! - **Their own bound.** A feed is bounded by its own `max_entries` (the
//!   feeds crate refuses a longer list whole); feed entries do not count
//!   against `bans.max_entries` and are never evicted to make room for an
//!   attacker's time-out, nor do they evict one. So neither a flood nor a
//!   big list can push the other out.
//! - **No history, few lines.** A feed's entry never escalates: ending one
//!   writes no history (a million of them must not write a million), and a
//!   refresh is one log line, not one per entry.
//!
//! A prefix already timed out by something else (an attacker, an admin, a
//! fleet node) is left to that time-out (counted as held); one inside an
//! allow-list entry is skipped. Feed entries are not shared with the fleet:
//! each node reads its own feeds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Instant;

use model::Cidr;
use model::ban::{BanInfo, Cause};

use super::BanTable;

/// The cause of a feed's time-outs (`feed:NAME`).
pub fn feed_cause(name: &str) -> Option<Cause> {
    Cause::new(&format!("feed:{name}")).ok()
}

/// Every feed's entries.
#[derive(Default)]
pub(crate) struct FeedEntries {
    by_name: HashMap<String, HashSet<Cidr>>,
    /// Lazy, like the table's own heap: an entry whose expiry no longer
    /// matches the view's is skipped when it comes up.
    by_expiry: BinaryHeap<Reverse<(u64, Cidr)>>,
    /// Entries of all feeds (the table bound leaves them out).
    count: usize,
}

impl FeedEntries {
    /// Entries of all feeds.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The feed that holds `prefix`, if one does.
    fn owner(&self, prefix: &Cidr) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, entries)| entries.contains(prefix))
            .map(|(name, _)| name.as_str())
    }

    /// `prefix` is no feed's any more (another time-out replaced it).
    pub(crate) fn disown(&mut self, prefix: &Cidr) {
        for entries in self.by_name.values_mut() {
            if entries.remove(prefix) {
                self.count -= 1;
                return;
            }
        }
    }

    /// A restored entry of `name`.
    pub(crate) fn restore(&mut self, name: &str, prefix: Cidr, expires: u64) {
        if self
            .by_name
            .entry(name.to_owned())
            .or_default()
            .insert(prefix)
        {
            self.count += 1;
        }
        self.by_expiry.push(Reverse((expires, prefix)));
    }

    /// Entries by feed.
    pub(crate) fn sizes(&self) -> Vec<(String, usize)> {
        let mut sizes: Vec<(String, usize)> = self
            .by_name
            .iter()
            .map(|(name, entries)| (name.clone(), entries.len()))
            .collect();
        sizes.sort();
        sizes
    }
}

/// What one refresh of a feed did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedApplied {
    pub added: usize,
    /// Listed before and now: their expiry moved forward, in place.
    pub kept: usize,
    pub released: usize,
    /// Listed, but already timed out by something else: left to it.
    pub held: usize,
    /// Listed, but inside an allow-list entry.
    pub allow_listed: usize,
}

impl BanTable {
    /// Applies a refresh of feed `name`: `entries` (sorted, unique) become
    /// its entries, each until `expires(prefix)`.
    pub fn apply_feed(
        &mut self,
        name: &str,
        entries: &[Cidr],
        expires: impl Fn(&Cidr) -> u64,
        now_ms: u64,
    ) -> FeedApplied {
        let mut applied = FeedApplied::default();
        let Some(cause) = feed_cause(name) else {
            return applied;
        };
        let mut current = self.feeds.by_name.remove(name).unwrap_or_default();
        let mut records = Vec::with_capacity(entries.len());
        let mut kernel = Vec::with_capacity(entries.len());
        for prefix in entries {
            let owned = current.contains(prefix);
            if !owned {
                if self.allow.covering(prefix).is_some() {
                    applied.allow_listed += 1;
                    continue;
                }
                if self.view.expiry(prefix).is_some_and(|e| e > now_ms)
                    || self.feeds.owner(prefix).is_some()
                {
                    applied.held += 1;
                    continue;
                }
            }
            let expires_at_ms = expires(prefix);
            self.view.insert(*prefix, expires_at_ms);
            self.feeds.by_expiry.push(Reverse((expires_at_ms, *prefix)));
            kernel.push((*prefix, expires_at_ms));
            records.push(BanInfo {
                prefix: *prefix,
                cause,
                first_bytes: Default::default(),
                banned_at_ms: now_ms,
                expires_at_ms,
                repeat: 1,
                origin: Default::default(),
            });
            if owned {
                applied.kept += 1;
            } else {
                current.insert(*prefix);
                self.feeds.count += 1;
                applied.added += 1;
            }
        }
        // Only now what left the list: nothing listed twice was ever out.
        let gone: Vec<Cidr> = current
            .iter()
            .filter(|prefix| entries.binary_search(prefix).is_err())
            .copied()
            .collect();
        for prefix in &gone {
            current.remove(prefix);
            self.feeds.count -= 1;
            self.view.remove(prefix);
        }
        applied.released = gone.len();
        self.feeds.by_name.insert(name.to_owned(), current);
        self.stats.feed_entries(&self.feeds.sizes());
        self.feed_to_kernel(&kernel, &gone, now_ms);
        self.feed_to_storage(name, &records, &gone);
        applied
    }

    /// Releases every feed entry that ended at or before `now_ms` (a feed
    /// that stopped refreshing); returns how many.
    pub(crate) fn release_expired_feed_entries(&mut self, now_ms: u64) -> usize {
        let mut ended = Vec::new();
        while let Some(&Reverse((expires, prefix))) = self.feeds.by_expiry.peek() {
            if expires > now_ms {
                break;
            }
            self.feeds.by_expiry.pop();
            if self.view.expiry(&prefix) != Some(expires) || self.feeds.owner(&prefix).is_none() {
                continue; // stale: moved forward, released, or replaced
            }
            self.feeds.disown(&prefix);
            self.view.remove(&prefix);
            ended.push(prefix);
        }
        if !ended.is_empty() {
            self.stats.feed_entries(&self.feeds.sizes());
            self.feed_to_kernel(&[], &ended, now_ms);
            self.feed_to_storage("(ended)", &[], &ended);
            log::info!(
                "released {} feed entries: their feed was not refreshed in time",
                ended.len()
            );
        }
        ended.len()
    }

    fn feed_to_kernel(&mut self, upserts: &[(Cidr, u64)], removals: &[Cidr], now_ms: u64) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let mut failed = kernel.insert_all(upserts, now_ms).len();
        for prefix in removals {
            if kernel.remove(prefix).is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            self.stats
                .kernel_errors
                .fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
            log::warn!(
                "kernel table: {failed} feed entries could not be written (the userspace time-outs stand)"
            );
        }
    }

    fn feed_to_storage(&mut self, name: &str, records: &[BanInfo], removals: &[Cidr]) {
        let written = self
            .store
            .bans()
            .put_many(records)
            .and_then(|()| self.store.bans().remove_many(removals));
        if let Err(error) = written {
            self.storage_errors.failed(
                || format!("could not persist feed {name} (in force in memory): {error}"),
                Instant::now(),
            );
        }
    }
}
