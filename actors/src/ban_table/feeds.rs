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

use std::collections::HashMap;
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

/// How much longer than its expiry a feed's entry is written for, in the
/// view and the kernel map, in refresh intervals. A refresh then writes
/// only what it added, and every kept entry only once in this many
/// intervals: the kernel's prefix trie has no batch update, and a million
/// kept entries rewritten at every refresh would cost more than the rest
/// of it. The feed releases its entries itself, at their expiry, from both
/// (`release_expired_feed_entries`), and what leaves its list at once, so
/// the margin never keeps a source out while the server runs.
const WRITTEN_MARGIN_REFRESHES: u64 = 2;

/// One feed's entries in force.
struct FeedSet {
    /// Each entry with the generation of the refresh that last listed it.
    entries: HashMap<Cidr, u32>,
    generation: u32,
    /// When the list in force was applied, and its refresh interval: every
    /// entry's expiry follows from them ([`entry_expiry`]).
    applied_at_ms: u64,
    refresh_ms: u64,
    /// When every entry was last written to the view and the kernel, and
    /// with which interval (0: not with its margin, as after a restore).
    written_at_ms: u64,
    written_refresh_ms: u64,
    /// Once the feed is overdue: its entries by expiry, latest first, so
    /// the ones that end pop off the end.
    draining: Option<Vec<(u64, Cidr)>>,
}

impl FeedSet {
    fn new(applied_at_ms: u64, refresh_ms: u64) -> Self {
        FeedSet {
            entries: HashMap::new(),
            generation: 0,
            applied_at_ms,
            refresh_ms,
            written_at_ms: 0,
            written_refresh_ms: refresh_ms,
            draining: None,
        }
    }

    /// Whether a refresh at `now_ms` must write every entry again: the
    /// last full write's margin is running out, or it was made for
    /// another interval.
    fn write_due(&self, refresh_ms: u64, now_ms: u64) -> bool {
        let margin = refresh_ms.saturating_mul(WRITTEN_MARGIN_REFRESHES);
        self.written_refresh_ms != refresh_ms || now_ms >= self.written_at_ms.saturating_add(margin)
    }

    /// The earliest expiry of any of its entries.
    fn first_expiry(&self) -> u64 {
        self.applied_at_ms
            .saturating_add(self.refresh_ms.saturating_mul(2))
    }

    /// `prefix`'s entry as a time-out record, if it holds one.
    fn record(&self, name: &str, prefix: &Cidr) -> Option<BanInfo> {
        self.entries.contains_key(prefix).then(|| {
            let expires = entry_expiry(self.applied_at_ms, self.refresh_ms, prefix);
            feed_record(name, *prefix, self.applied_at_ms, expires)
        })
    }
}

/// The expiry an entry is written with ([`WRITTEN_MARGIN_REFRESHES`]).
fn written_expiry(expires_at_ms: u64, refresh_ms: u64) -> u64 {
    expires_at_ms.saturating_add(refresh_ms.saturating_mul(WRITTEN_MARGIN_REFRESHES))
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

    /// The feed that holds `prefix`, if one does.
    fn feed_of(&self, prefix: &Cidr) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, set)| set.entries.contains_key(prefix))
            .map(|(name, _)| name.as_str())
    }

    /// When `prefix`'s feed entry ends, if a feed holds it.
    pub(crate) fn expiry_of(&self, prefix: &Cidr) -> Option<u64> {
        self.by_name.values().find_map(|set| {
            set.entries
                .contains_key(prefix)
                .then(|| entry_expiry(set.applied_at_ms, set.refresh_ms, prefix))
        })
    }

    /// `prefix`'s feed entry as a time-out record (for `bans show`).
    pub(crate) fn record_of(&self, prefix: &Cidr) -> Option<BanInfo> {
        self.by_name
            .iter()
            .find_map(|(name, set)| set.record(name, prefix))
    }

    /// `prefix` is no feed's any more (another time-out replaced it).
    pub(crate) fn disown(&mut self, prefix: &Cidr) {
        for set in self.by_name.values_mut() {
            if set.entries.remove(prefix).is_some() {
                self.count -= 1;
                return;
            }
        }
    }

    /// The kernel table was filled from the view (a new kernel table): the
    /// next refresh writes every entry with its margin again.
    pub(crate) fn kernel_replaced(&mut self) {
        for set in self.by_name.values_mut() {
            set.written_at_ms = 0;
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
    /// Entries written to the view and the kernel map: the added ones,
    /// and every one when the last full write's margin runs out
    /// ([`WRITTEN_MARGIN_REFRESHES`]).
    pub written: usize,
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
        let due = set.write_due(refresh_ms, now_ms);
        set.generation = set.generation.wrapping_add(1);
        // Grown once, not by doubling through a million-entry import.
        set.entries.reserve(entries.len().saturating_sub(before));
        let mut written = Vec::with_capacity(if due { entries.len() } else { 0 });
        let mut in_force = Vec::with_capacity(entries.len());
        for prefix in entries {
            let owned = match set.entries.get_mut(prefix) {
                Some(generation) => {
                    *generation = set.generation;
                    true
                }
                None => false,
            };
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
                set.entries.insert(*prefix, set.generation);
                applied.added += 1;
            } else {
                applied.kept += 1;
            }
            in_force.push(*prefix);
            // A kept entry's written expiry outlasts its new one until the
            // next full write (`WRITTEN_MARGIN_REFRESHES`).
            if due || !owned {
                let expires = written_expiry(entry_expiry(now_ms, refresh_ms, prefix), refresh_ms);
                written.push((*prefix, expires));
            }
        }
        self.write_feed_entries(&written, now_ms);
        // Only now what left the list: nothing listed twice was ever out.
        let mut gone = Vec::new();
        if applied.kept < before {
            let generation = set.generation;
            set.entries.retain(|prefix, listed| {
                let kept = *listed == generation;
                if !kept {
                    gone.push(*prefix);
                }
                kept
            });
        }
        for prefix in &gone {
            self.view.remove(prefix);
        }
        applied.released = gone.len();
        applied.written = written.len();
        self.feeds.count = self.feeds.count + set.entries.len() - before;
        set.applied_at_ms = now_ms;
        set.refresh_ms = refresh_ms;
        set.draining = None;
        if due {
            set.written_at_ms = now_ms;
            set.written_refresh_ms = refresh_ms;
        }
        self.feeds.by_name.insert(name.to_owned(), set);
        self.stats.feed_entries(&self.feeds.sizes());
        self.remove_from_kernel(&gone);
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
                    .keys()
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
                if set.entries.remove(&prefix).is_some() {
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
        self.remove_from_kernel(&ended);
        log::info!(
            "released {} feed entries: their feed was not refreshed in time",
            ended.len()
        );
        ended.len()
    }

    /// Writes `entries` to the view and the kernel table at once: the
    /// kernel's share (its prefix trie, one syscall an entry) on threads
    /// of its own while this one fills the view.
    fn write_feed_entries(&mut self, entries: &[(Cidr, u64)], now_ms: u64) {
        if entries.is_empty() {
            return;
        }
        let view = &self.view;
        let kernel = self.kernel.as_mut();
        let failed = std::thread::scope(|scope| {
            let kernel =
                kernel.map(|kernel| scope.spawn(move || kernel.insert_all(entries, now_ms)));
            for (prefix, expires) in entries {
                view.insert(*prefix, *expires);
            }
            kernel.map_or(0, |writer| writer.join().map_or(entries.len(), |f| f.len()))
        });
        self.count_kernel_failures(failed);
    }

    fn remove_from_kernel(&mut self, prefixes: &[Cidr]) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let failed = kernel.remove_all(prefixes).len();
        self.count_kernel_failures(failed);
    }

    fn count_kernel_failures(&mut self, failed: usize) {
        if failed > 0 {
            self.stats
                .kernel_errors
                .fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
            log::warn!(
                "kernel table: {failed} feed entries could not be written or removed (the userspace table stands)"
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
                set.entries.insert(prefix, 0);
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
