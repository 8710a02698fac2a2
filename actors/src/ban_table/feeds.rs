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

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use model::Cidr;
use model::ban::{BanInfo, Cause};
use storage::StoredFeed;

use super::BanTable;

/// The cause of a feed's time-outs (`feed:NAME`).
pub fn feed_cause(name: &str) -> Option<Cause> {
    Cause::new(&format!("feed:{name}")).ok()
}

/// When an entry of a feed applied at `applied_at_ms` ends: one refresh
/// interval plus a grace of one more, plus up to a quarter of one, fixed
/// per prefix. A feed that stops refreshing ends by itself after two
/// missed refreshes, spread out and not in one second; and a restart
/// computes the same expiries from the stored list.
pub(crate) fn entry_expiry(applied_at_ms: u64, refresh_ms: u64, prefix: &Cidr) -> u64 {
    use std::hash::{Hash, Hasher};
    // std's SipHash with its fixed keys: the same share every run.
    let mut hasher = std::hash::DefaultHasher::new();
    prefix.hash(&mut hasher);
    let spread = (refresh_ms / 4).max(1);
    applied_at_ms
        .saturating_add(refresh_ms.saturating_mul(2))
        .saturating_add(hasher.finish() % spread)
}

/// How much longer than in the view a feed's entry lasts in the kernel
/// map, in refresh intervals. A refresh then rewrites in the kernel only
/// what it added, and every kept entry only once in this many intervals:
/// the kernel's prefix trie has no batch update, so rewriting a million
/// kept entries at every refresh would cost more than the refresh itself.
/// Entries the view releases (left the list, or a feed that stopped) are
/// removed from the kernel at once, so they never outlive the view there
/// while the server runs.
const KERNEL_MARGIN_REFRESHES: u64 = 2;

/// One feed's entries in force.
struct FeedSet {
    entries: HashSet<Cidr>,
    /// When the list in force was applied, and its refresh interval: every
    /// entry's expiry follows from them ([`entry_expiry`]).
    applied_at_ms: u64,
    refresh_ms: u64,
    /// When every entry was last written to the kernel, and with which
    /// interval (0: not since the kernel table was filled from the view).
    kernel_written_at_ms: u64,
    kernel_refresh_ms: u64,
    /// Once the feed is overdue: its entries by expiry, latest first, so
    /// the ones that end pop off the end.
    draining: Option<Vec<(u64, Cidr)>>,
}

impl FeedSet {
    fn new(applied_at_ms: u64, refresh_ms: u64) -> Self {
        FeedSet {
            entries: HashSet::new(),
            applied_at_ms,
            refresh_ms,
            kernel_written_at_ms: 0,
            kernel_refresh_ms: refresh_ms,
            draining: None,
        }
    }

    /// Whether a refresh at `now_ms` must write every entry to the kernel
    /// again: the last full write is about to end there, or was made for
    /// another interval.
    fn kernel_due(&self, refresh_ms: u64, now_ms: u64) -> bool {
        self.kernel_refresh_ms != refresh_ms
            || now_ms
                >= self
                    .kernel_written_at_ms
                    .saturating_add(refresh_ms.saturating_mul(KERNEL_MARGIN_REFRESHES))
    }

    /// The earliest expiry of any of its entries.
    fn first_expiry(&self) -> u64 {
        self.applied_at_ms
            .saturating_add(self.refresh_ms.saturating_mul(2))
    }
}

/// The expiry of a feed entry in the kernel map ([`KERNEL_MARGIN_REFRESHES`]).
fn kernel_expiry(view_expiry_ms: u64, refresh_ms: u64) -> u64 {
    view_expiry_ms.saturating_add(refresh_ms.saturating_mul(KERNEL_MARGIN_REFRESHES))
}

/// Every feed's entries.
#[derive(Default)]
pub(crate) struct FeedEntries {
    by_name: HashMap<String, FeedSet>,
    /// Entries of all feeds (the table bound leaves them out).
    count: usize,
}

impl FeedEntries {
    /// Entries of all feeds.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The feed that holds `prefix`, if one does (for `bans show`).
    pub(crate) fn feed_of(&self, prefix: &Cidr) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, set)| set.entries.contains(prefix))
            .map(|(name, _)| name.as_str())
    }

    /// `prefix` is no feed's any more (another time-out replaced it).
    pub(crate) fn disown(&mut self, prefix: &Cidr) {
        for set in self.by_name.values_mut() {
            if set.entries.remove(prefix) {
                self.count -= 1;
                return;
            }
        }
    }

    /// The kernel table was filled from the view (a new kernel table): the
    /// next refresh writes every entry with its margin again.
    pub(crate) fn kernel_replaced(&mut self) {
        for set in self.by_name.values_mut() {
            set.kernel_written_at_ms = 0;
        }
    }

    /// Entries by feed.
    pub(crate) fn sizes(&self) -> Vec<(String, usize)> {
        let mut sizes: Vec<(String, usize)> = self
            .by_name
            .iter()
            .map(|(name, set)| (name.clone(), set.entries.len()))
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
    /// Entries written to the kernel map: the added ones, and every one
    /// when the last full write is due ([`KERNEL_MARGIN_REFRESHES`]).
    pub kernel_written: usize,
}

impl BanTable {
    /// Applies a refresh of feed `name`, refreshed every `refresh_ms`:
    /// `entries` (sorted, unique) become its entries ([`entry_expiry`]).
    pub fn apply_feed(
        &mut self,
        name: &str,
        entries: &[Cidr],
        refresh_ms: u64,
        now_ms: u64,
    ) -> FeedApplied {
        let mut applied = FeedApplied::default();
        if feed_cause(name).is_none() {
            return applied;
        }
        let mut set = self
            .feeds
            .by_name
            .remove(name)
            .unwrap_or_else(|| FeedSet::new(now_ms, refresh_ms));
        let before = set.entries.len();
        let kernel_due = set.kernel_due(refresh_ms, now_ms);
        let mut kernel = Vec::with_capacity(if kernel_due { entries.len() } else { 0 });
        let mut in_force = Vec::with_capacity(entries.len());
        for prefix in entries {
            let owned = set.entries.contains(prefix);
            if !owned {
                if self.allow.covering(prefix).is_some() {
                    applied.allow_listed += 1;
                    continue;
                }
                if self.view.expiry(prefix).is_some_and(|e| e > now_ms)
                    || self.feeds.feed_of(prefix).is_some()
                {
                    applied.held += 1;
                    continue;
                }
            }
            let expires_at_ms = entry_expiry(now_ms, refresh_ms, prefix);
            self.view.insert(*prefix, expires_at_ms);
            in_force.push(*prefix);
            if kernel_due || !owned {
                kernel.push((*prefix, kernel_expiry(expires_at_ms, refresh_ms)));
            }
            if owned {
                applied.kept += 1;
            } else {
                set.entries.insert(*prefix);
                applied.added += 1;
            }
        }
        // Only now what left the list: nothing listed twice was ever out.
        let gone: Vec<Cidr> = if applied.kept == before {
            Vec::new() // every entry before is listed still
        } else {
            set.entries
                .iter()
                .filter(|prefix| entries.binary_search(prefix).is_err())
                .copied()
                .collect()
        };
        for prefix in &gone {
            set.entries.remove(prefix);
            self.view.remove(prefix);
        }
        applied.released = gone.len();
        applied.kernel_written = kernel.len();
        self.feeds.count = self.feeds.count + set.entries.len() - before;
        set.applied_at_ms = now_ms;
        set.refresh_ms = refresh_ms;
        set.draining = None;
        if kernel_due {
            set.kernel_written_at_ms = now_ms;
            set.kernel_refresh_ms = refresh_ms;
        }
        self.feeds.by_name.insert(name.to_owned(), set);
        self.stats.feed_entries(&self.feeds.sizes());
        self.feed_to_kernel(&kernel, &gone, now_ms);
        // `in_force` is in `entries`' order: sorted, as the record wants.
        if let Err(error) = self.store.feeds().put(name, now_ms, refresh_ms, &in_force) {
            self.storage_errors.failed(
                || format!("could not persist feed {name} (in force in memory): {error}"),
                Instant::now(),
            );
        }
        applied
    }

    /// Releases every feed entry that ended at or before `now_ms` (a feed
    /// that stopped refreshing); returns how many.
    pub(crate) fn release_expired_feed_entries(&mut self, now_ms: u64) -> usize {
        let mut ended = Vec::new();
        for set in self.feeds.by_name.values_mut() {
            if now_ms < set.first_expiry() {
                continue;
            }
            let (applied_at_ms, refresh_ms) = (set.applied_at_ms, set.refresh_ms);
            let draining = set.draining.get_or_insert_with(|| {
                let mut by_expiry: Vec<(u64, Cidr)> = set
                    .entries
                    .iter()
                    .map(|prefix| (entry_expiry(applied_at_ms, refresh_ms, prefix), *prefix))
                    .collect();
                by_expiry.sort_unstable_by(|a, b| b.cmp(a));
                by_expiry
            });
            while let Some(&(expires, prefix)) = draining.last() {
                if expires > now_ms {
                    break;
                }
                draining.pop();
                // Skipped if replaced by another time-out meanwhile.
                if set.entries.remove(&prefix) {
                    ended.push(prefix);
                }
            }
        }
        if ended.is_empty() {
            return 0;
        }
        self.feeds.count -= ended.len();
        for prefix in &ended {
            self.view.remove(prefix);
        }
        // Their stored list computes the same expiries: nothing to write.
        self.stats.feed_entries(&self.feeds.sizes());
        self.feed_to_kernel(&[], &ended, now_ms);
        log::info!(
            "released {} feed entries: their feed was not refreshed in time",
            ended.len()
        );
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
}

impl BanTable {
    /// Boot: the stored feeds' entries still in force, each the feed's
    /// again (a prefix another time-out holds is left to it). Returns them
    /// for the kernel replay.
    pub(crate) fn restore_feeds(
        &mut self,
        stored: Vec<StoredFeed>,
        now_ms: u64,
    ) -> Vec<(Cidr, u64)> {
        let mut live = Vec::new();
        for feed in stored {
            let mut set = FeedSet::new(feed.applied_at_ms, feed.refresh_ms);
            for prefix in feed.entries {
                let expires = entry_expiry(feed.applied_at_ms, feed.refresh_ms, &prefix);
                if expires <= now_ms || self.view.expiry(&prefix).is_some_and(|e| e > now_ms) {
                    continue;
                }
                self.view.insert(prefix, expires);
                set.entries.insert(prefix);
                live.push((prefix, expires));
            }
            self.feeds.count += set.entries.len();
            self.feeds.by_name.insert(feed.name, set);
        }
        self.stats.feed_entries(&self.feeds.sizes());
        live
    }

    /// One page of feed `name`'s entries in force, from its stored list
    /// (online and offline alike), as time-out records.
    pub(crate) fn list_feed(
        &self,
        name: &str,
        after: Option<&Cidr>,
        limit: usize,
        now_ms: u64,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), storage::StorageError> {
        let Some(feed) = self.store.feeds().get(name)? else {
            return Ok((Vec::new(), None));
        };
        let start = after.map_or(0, |after| feed.entries.partition_point(|p| p <= after));
        let limit = limit.max(1);
        let mut bans = Vec::new();
        for prefix in &feed.entries[start..] {
            let expires_at_ms = entry_expiry(feed.applied_at_ms, feed.refresh_ms, prefix);
            if expires_at_ms <= now_ms {
                continue;
            }
            if bans.len() == limit {
                let next = bans.last().map(|ban: &BanInfo| ban.prefix);
                return Ok((bans, next));
            }
            bans.push(feed_record(
                name,
                *prefix,
                feed.applied_at_ms,
                expires_at_ms,
            ));
        }
        Ok((bans, None))
    }
}

/// A feed's entry as a time-out record (what `bans list` and `bans show`
/// print).
pub(crate) fn feed_record(
    name: &str,
    prefix: Cidr,
    applied_at_ms: u64,
    expires_at_ms: u64,
) -> BanInfo {
    BanInfo {
        prefix,
        cause: feed_cause(name).unwrap_or_default(),
        first_bytes: Default::default(),
        banned_at_ms: applied_at_ms,
        expires_at_ms,
        repeat: 1,
        origin: Default::default(),
    }
}
