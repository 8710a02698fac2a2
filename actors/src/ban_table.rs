//! The time-out table: every live time-out in the forms its readers need,
//! kept in step through one [`BanTable::insert`] and one
//! [`BanTable::release`] that every ending of a time-out goes through, with
//! its reason ([`Ending`]):
//! - the [`BanView`] (prefix → expiry) the acceptors check per connection;
//! - `by_expiry`, a min-heap by expiry, for the release sweep and for
//!   evicting the entry closest to expiry when the table is full;
//! - the sled `bans` tree (full records) and the escalation history, for
//!   restarts, the admin list and the next decision;
//! - the kernel table, when there is one, with the allow-list beside it;
//! - the fleet outbox, for the changes made here.
//!
//! It decides nothing: [`crate::BanCore`] does, and hands it records. A
//! storage error never undoes a time-out: it is logged (a line a second at
//! most) and counted, and the time-out stays in force in memory. A kernel
//! error likewise (the userspace tier still enforces).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::Cidr;
use model::ban::BanInfo;
use storage::{FleetChange, History, HistoryAfter, StorageError, Store};

use crate::allow_list::AllowList;
use crate::error_summary::LogSummary;
use crate::fleet_outlet::FleetOutlet;
use crate::kernel_table::KernelTable;
use crate::stats::{Stats, bump};
use crate::view::BanView;

mod feeds;
use feeds::FeedEntries;
pub use feeds::{FeedApplied, feed_cause};

pub struct BanTable {
    view: Arc<BanView>,
    /// Lazy: an entry whose expiry no longer matches the view's (released,
    /// or replaced by a new ban of the prefix) is skipped when it comes up.
    /// A heap costs 32 bytes a time-out where an ordered set that deletes
    /// eagerly costs twice that, and a million live time-outs is the design
    /// load.
    by_expiry: BinaryHeap<Reverse<(u64, Cidr)>>,
    store: Store,
    kernel: Option<Box<dyn KernelTable>>,
    /// What the kernel's allow-list is made of (the core's own list).
    allow: AllowList,
    /// Where changes made here go for the other nodes (fleet on).
    fleet: Option<FleetOutlet>,
    /// Most live entries; when full, the one closest to expiry is evicted.
    max_entries: usize,
    stats: Arc<Stats>,
    /// Storage failures, one log line a second.
    storage_errors: LogSummary,
    /// Evictions (a table full under a flood), one log line a second.
    evictions: LogSummary,
    /// Blocklist feeds' entries: kept apart from the bound and the heap
    /// above (`feeds.rs`).
    feeds: FeedEntries,
}

/// Why a time-out ends. Every ending goes through [`BanTable::release`]
/// with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its time was up.
    Expired,
    /// The table was full and it was the entry closest to its expiry.
    Evicted,
    /// A reload allow-listed it.
    AllowListed,
    /// An admin released it here: its history is forgotten, and the fleet
    /// is told.
    ReleasedByAdmin,
    /// An admin released it on another node: its history is forgotten.
    ReleasedRemotely,
}

impl Ending {
    fn history(self) -> HistoryAfter {
        match self {
            Ending::Expired | Ending::Evicted | Ending::AllowListed => HistoryAfter::Kept,
            Ending::ReleasedByAdmin | Ending::ReleasedRemotely => HistoryAfter::Forgotten,
        }
    }

    /// For "could not persist the … of PREFIX".
    fn noun(self) -> &'static str {
        match self {
            Ending::Expired => "expiry",
            Ending::Evicted => "eviction",
            Ending::AllowListed | Ending::ReleasedByAdmin | Ending::ReleasedRemotely => "release",
        }
    }
}

/// What boot restored.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    pub restored: usize,
    /// Blocklist feeds' entries still in force, from their stored lists.
    pub feed_entries: usize,
    pub discarded: usize,
    pub elapsed: Duration,
    /// With a kernel table: entries replayed into it, stale ones removed,
    /// failures, and the time it took.
    pub kernel: Option<KernelReplay>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct KernelReplay {
    pub replayed: usize,
    pub removed_stale: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

/// What the table is made of, before it holds anything.
pub struct TableParts {
    pub store: Store,
    pub view: Arc<BanView>,
    pub stats: Arc<Stats>,
    pub kernel: Option<Box<dyn KernelTable>>,
    pub allow: AllowList,
}

impl BanTable {
    /// Loads the live time-outs from storage into the view (expired ones
    /// are discarded and deleted on the way), holds the bound (closest to
    /// expiry go first), and makes the kernel table, if any, hold exactly
    /// those time-outs and the allow-list.
    pub fn restore(
        parts: TableParts,
        max_entries: usize,
        now_ms: u64,
    ) -> Result<(Self, BootReport), StorageError> {
        let started = Instant::now();
        let loaded = parts.store.bans().load_live(now_ms)?;
        let stored_feeds = parts.store.feeds().load()?;
        let mut by_expiry = BinaryHeap::with_capacity(loaded.live.len());
        for (prefix, expires) in &loaded.live {
            parts.view.insert(*prefix, *expires);
            by_expiry.push(Reverse((*expires, *prefix)));
        }
        let mut table = BanTable::with(parts, max_entries, by_expiry);
        let from_feeds = table.restore_feeds(stored_feeds, now_ms);
        let elapsed = started.elapsed();
        // A table stored with a larger bound than today's: the bound holds
        // from the first connection on.
        let mut live = loaded.live;
        while table.bounded_len() > table.max_entries {
            table.evict_one(now_ms);
        }
        // Feed entries are in the view but not in `live`: compare with
        // the bounded part alone, or evicted bans would reach the kernel.
        if live.len() > table.bounded_len() {
            live.retain(|(prefix, _)| table.view.expiry(prefix).is_some());
        }
        let restored = live.len();
        let feed_entries = from_feeds.len();
        live.extend(from_feeds);
        let kernel = table.replay_into_kernel(&live, now_ms);
        let report = BootReport {
            restored,
            feed_entries,
            discarded: loaded.discarded,
            elapsed,
            kernel,
        };
        Ok((table, report))
    }

    /// A table over a stopped server's database, for the offline admin
    /// commands: nothing restored, no kernel table, a view nobody reads.
    pub fn offline(store: Store, allow: AllowList) -> Self {
        let parts = TableParts {
            store,
            view: Arc::new(BanView::default()),
            stats: Arc::new(Stats::default()),
            kernel: None,
            allow,
        };
        BanTable::with(parts, usize::MAX, BinaryHeap::new())
    }

    fn with(
        parts: TableParts,
        max_entries: usize,
        by_expiry: BinaryHeap<Reverse<(u64, Cidr)>>,
    ) -> Self {
        BanTable {
            view: parts.view,
            by_expiry,
            store: parts.store,
            kernel: parts.kernel,
            allow: parts.allow,
            fleet: None,
            max_entries,
            stats: parts.stats,
            storage_errors: LogSummary::errors("storage error", Duration::from_secs(1)),
            evictions: LogSummary::at(
                log::Level::Warn,
                "time-out table full",
                Duration::from_secs(1),
            ),
            feeds: FeedEntries::default(),
        }
    }

    /// Entries the table bound counts: all but the feeds' (`feeds.rs`).
    fn bounded_len(&self) -> usize {
        self.view.len().saturating_sub(self.feeds.len())
    }

    /// Shares every change made here from now on with the fleet (remote
    /// records are never sent back).
    pub fn set_fleet(&mut self, fleet: FleetOutlet) {
        self.fleet = Some(fleet);
    }

    /// A new bound (a reload): it holds from the next insert on.
    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries;
    }

    pub fn view(&self) -> &Arc<BanView> {
        &self.view
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The expiry of the entry of exactly `prefix`, if it is in the table
    /// (live, or ended and not swept yet).
    pub fn expiry(&self, prefix: &Cidr) -> Option<u64> {
        let written = self.view.expiry(prefix)?;
        // A feed's entry is written with a margin (`feeds.rs`); its own
        // expiry is the feed's to say.
        Some(self.feeds.expiry_of(prefix).unwrap_or(written))
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// The escalation history of `prefix` (`None` too when it cannot be
    /// read: logged, and the decision goes on without escalation).
    pub fn history(&mut self, prefix: &Cidr) -> Option<History> {
        match self.store.bans().history(prefix) {
            Ok(history) => history,
            Err(error) => {
                self.storage_failed(|| {
                    format!("could not read the ban history of {prefix} (no escalation): {error}")
                });
                None
            }
        }
    }

    /// Puts `record` in the table, replacing a live entry of its prefix or
    /// evicting the entry closest to expiry if the table is full. A record
    /// made here (no origin) goes to the fleet too.
    pub fn insert(&mut self, record: &BanInfo, now_ms: u64) {
        match self.view.expiry(&record.prefix) {
            // Ended but not swept yet (an admin or remote ban right at
            // expiry): released first, which also makes room.
            Some(expires) if expires <= now_ms => self.release_ended(&record.prefix),
            Some(_) => self.feeds.disown(&record.prefix), // live: replaced in place
            None if self.bounded_len() >= self.max_entries => self.evict_one(now_ms),
            None => {}
        }
        self.view.insert(record.prefix, record.expires_at_ms);
        self.by_expiry
            .push(Reverse((record.expires_at_ms, record.prefix)));
        self.kernel_insert(&record.prefix, record.expires_at_ms, now_ms);
        if let Err(error) = self.store.bans().put(record) {
            let prefix = record.prefix;
            self.storage_failed(|| {
                format!("could not persist the ban of {prefix} (kept in memory): {error}")
            });
        }
        bump(&self.stats.bans_total);
        self.stats.count_ban(record.cause.as_str().parse().ok());
        self.stats.note_recent(record);
        if record.origin.is_empty() {
            self.share(FleetChange::Put(record.clone()));
        }
    }

    /// Ends the time-out of exactly `prefix`, for `why`: from the view,
    /// the kernel table and storage (its history kept or forgotten as the
    /// reason says), logged once. Says whether there was one.
    ///
    /// A storage failure of an ending the server decided (expiry, eviction,
    /// the allow-list) is logged and the release stands; one of a release
    /// someone asked for (an admin, here or elsewhere) is returned to them.
    pub fn release(&mut self, prefix: &Cidr, why: Ending) -> Result<bool, StorageError> {
        // Its heap entry goes stale and is skipped when it comes up.
        let in_view = self.view.remove(prefix);
        if in_view.is_some() {
            self.kernel_remove(prefix);
            self.feeds.disown(prefix);
        }
        let existed = match self.store.bans().release(prefix, why.history()) {
            Ok(stored) => in_view.is_some() || stored,
            Err(error) if why.history() == HistoryAfter::Forgotten => {
                if in_view.is_some() {
                    log::error!(
                        "released {prefix} in memory, but could not persist the release: {error}"
                    );
                }
                return Err(error);
            }
            Err(error) => {
                self.storage_failed(|| {
                    format!("could not persist the {} of {prefix}: {error}", why.noun())
                });
                in_view.is_some()
            }
        };
        if existed {
            self.log_release(prefix, why);
        }
        Ok(existed)
    }

    fn log_release(&mut self, prefix: &Cidr, why: Ending) {
        match why {
            Ending::Expired => {
                log::info!(event = "release", prefix:% = prefix; "released {prefix}: time-out over")
            }
            Ending::AllowListed => {
                log::info!(event = "release", prefix:% = prefix; "released {prefix}: allow-listed by the reload")
            }
            Ending::Evicted => bump(&self.stats.bans_evicted),
            Ending::ReleasedByAdmin => {
                log::info!(event = "admin-release", prefix:% = prefix; "admin released {prefix}");
                self.share(FleetChange::Delete(*prefix));
            }
            Ending::ReleasedRemotely => {
                bump(&self.stats.fleet_released);
                log::info!(
                    event = "remote-release", prefix:% = prefix;
                    "released {prefix}: an admin released it on another node"
                );
            }
        }
    }

    /// Releases `prefix`, whose time-out has ended (a storage failure is
    /// already logged by `release`).
    fn release_ended(&mut self, prefix: &Cidr) {
        let _ = self.release(prefix, Ending::Expired);
    }

    /// Releases every time-out that ended at or before `now_ms`; returns
    /// how many.
    pub fn release_expired(&mut self, now_ms: u64) -> usize {
        let mut released = 0;
        while let Some(&Reverse((expires, prefix))) = self.by_expiry.peek() {
            if expires > now_ms {
                break;
            }
            self.by_expiry.pop();
            if self.view.expiry(&prefix) != Some(expires) {
                continue; // stale: released or replaced since
            }
            self.release_ended(&prefix);
            released += 1;
        }
        released += self.release_expired_feed_entries(now_ms);
        let now = Instant::now();
        self.storage_errors.flush(now);
        self.evictions.flush(now);
        released
    }

    /// Makes room: releases the live entry closest to its expiry.
    fn evict_one(&mut self, now_ms: u64) {
        while let Some(Reverse((expires, prefix))) = self.by_expiry.pop() {
            if self.view.expiry(&prefix) != Some(expires) {
                continue; // stale
            }
            let max = self.max_entries;
            self.evictions.failed(
                || {
                    format!(
                        "evicted {prefix}, {} before its expiry ({max} entries)",
                        humantime::format_duration(Duration::from_secs(
                            expires.saturating_sub(now_ms) / 1000
                        ))
                    )
                },
                Instant::now(),
            );
            let _ = self.release(&prefix, Ending::Evicted);
            return;
        }
    }

    /// Every live entry at `now_ms`: prefix and expiry.
    pub fn live(&self, now_ms: u64) -> Vec<(Cidr, u64)> {
        self.view.live(now_ms)
    }

    /// One page of the stored table, in prefix order.
    pub fn list(
        &self,
        after: Option<&Cidr>,
        limit: usize,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), StorageError> {
        self.store.bans().list(after, limit)
    }

    /// One page of the stored time-outs of `cause`, in prefix order (a
    /// feed's, `feed:NAME`, from its stored list).
    pub fn list_by_cause(
        &self,
        cause: &model::ban::Cause,
        after: Option<&Cidr>,
        limit: usize,
        now_ms: u64,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), StorageError> {
        match cause.as_str().strip_prefix("feed:") {
            Some(feed) => self.list_feed(feed, after, limit, now_ms),
            None => self
                .store
                .bans()
                .list_by_cause(cause.as_str(), after, limit),
        }
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()
    }

    /// Drops history older than `before_ms`, which can no longer make a
    /// ban escalate. A full scan, so it runs on a thread of its own.
    pub fn purge_history_in_background(&self, before_ms: u64) {
        let bans = self.store.bans().clone();
        std::thread::spawn(move || match bans.purge_history(before_ms) {
            Ok(0) => {}
            Ok(n) => log::debug!("purged {n} stale escalation records"),
            Err(error) => log::error!("could not purge escalation history: {error}"),
        });
    }

    /// Hands a change made here to the fleet; a storage failure is logged
    /// like any other (the change stands locally).
    fn share(&mut self, change: FleetChange) {
        let Some(fleet) = &self.fleet else { return };
        if let Err(error) = fleet.offer(&change) {
            let prefix = change.prefix();
            self.storage_failed(|| {
                format!("could not queue {prefix} for the fleet (not shared): {error}")
            });
        }
    }

    fn storage_failed(&mut self, detail: impl FnOnce() -> String) {
        self.storage_errors.failed(detail, Instant::now());
    }
}

/// The kernel side of the table.
impl BanTable {
    /// A new kernel table in place of the old one (the kernel watchdog
    /// attached the program again): it is made to hold exactly the live
    /// time-outs and the allow-list, as on boot.
    pub fn replace_kernel(&mut self, kernel: Box<dyn KernelTable>, now_ms: u64) -> KernelReplay {
        self.kernel = Some(kernel);
        self.feeds.kernel_replaced();
        let live = self.view.live(now_ms);
        self.replay_into_kernel(&live, now_ms).unwrap_or_default()
    }

    /// Writes the allow-list into the kernel table (after a reload).
    pub fn write_allow_list_to_kernel(&mut self) {
        let allow = self.allow.entries();
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(error) = kernel.set_allowed(&allow)
        {
            bump(&self.stats.kernel_errors);
            log::warn!("kernel table: cannot replace the allow-list: {error}");
        }
    }

    /// Whether the kernel table holds the entry of exactly `prefix`, and
    /// its drop count; `None` without a kernel table (or when it cannot
    /// tell: logged).
    pub fn kernel_entry(&mut self, prefix: &Cidr) -> Option<model::KernelEntry> {
        let kernel = self.kernel.as_mut()?;
        match kernel.lookup(prefix) {
            Ok(drops) => Some(model::KernelEntry {
                in_map: drops.is_some(),
                drops: drops.unwrap_or(0),
            }),
            Err(error) => {
                log::warn!("kernel table: cannot look up {prefix}: {error}");
                None
            }
        }
    }

    /// Makes the kernel table hold exactly `live` and the allow-list:
    /// entries it has that the table does not are removed, every live one
    /// is written (in place: no clearing first, so no source is let
    /// through meanwhile).
    fn replay_into_kernel(&mut self, live: &[(Cidr, u64)], now_ms: u64) -> Option<KernelReplay> {
        let allow = self.allow.entries();
        let kernel = self.kernel.as_mut()?;
        let started = Instant::now();
        let mut report = KernelReplay::default();
        if let Err(error) = kernel.set_allowed(&allow) {
            report.failed += 1;
            log::warn!(
                "kernel table: cannot write the allow-list (allow-listed sources inside a ban may be dropped in the kernel): {error}"
            );
        }
        let wanted: HashSet<Cidr> = live.iter().map(|(prefix, _)| *prefix).collect();
        match kernel.prefixes() {
            Ok(present) => {
                for prefix in present.iter().filter(|p| !wanted.contains(p)) {
                    match kernel.remove(prefix) {
                        Ok(()) => report.removed_stale += 1,
                        Err(error) => {
                            report.failed += 1;
                            log::warn!("kernel table: cannot remove stale {prefix}: {error}");
                        }
                    }
                }
            }
            Err(error) => log::warn!("kernel table: cannot list entries: {error}"),
        }
        let failures = kernel.insert_all(live, now_ms);
        if let Some((prefix, error)) = failures.first() {
            log::warn!(
                "kernel table: cannot replay {prefix}: {error} ({} failures in all)",
                failures.len()
            );
        }
        report.failed += failures.len();
        report.replayed = live.len().saturating_sub(failures.len());
        self.stats
            .kernel_errors
            .fetch_add(report.failed as u64, std::sync::atomic::Ordering::Relaxed);
        report.elapsed = started.elapsed();
        Some(report)
    }

    fn kernel_insert(&mut self, prefix: &Cidr, expires_ms: u64, now_ms: u64) {
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(error) = kernel.insert(prefix, expires_ms, now_ms)
        {
            bump(&self.stats.kernel_errors);
            log::warn!(
                "kernel table: cannot add {prefix} (the userspace time-out stands): {error}"
            );
        }
    }

    fn kernel_remove(&mut self, prefix: &Cidr) {
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(error) = kernel.remove(prefix)
        {
            bump(&self.stats.kernel_errors);
            log::warn!("kernel table: cannot remove {prefix}: {error}");
        }
    }
}

/// `bans show`: a query over the table.
impl BanTable {
    /// What covers `target` (an address: the longest live prefix around
    /// it; a prefix: its own entry), the escalation history of `entry` (the
    /// table entry `target` falls in; `window_ms` long), and whether the
    /// kernel table holds the covering entry. `monitored` is the core's.
    pub fn report(
        &mut self,
        target: Cidr,
        entry: Cidr,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<model::BanReport, StorageError> {
        let covering_prefix = if target.is_host() {
            self.view.lookup(target.addr(), now_ms).map(|(p, _)| p)
        } else {
            self.view
                .expiry(&target)
                .filter(|expires| *expires > now_ms)
                .map(|_| target)
        };
        let covering = match covering_prefix {
            Some(prefix) => match self.feeds.record_of(&prefix) {
                Some(record) => Some(record),
                None => self.store.bans().get(&prefix)?,
            },
            // Offline the view is empty: ask the stored table itself.
            None => self.stored_covering(target, now_ms)?,
        };
        // A live time-out of the entry is its latest history (the history
        // record is written when a time-out ends).
        let live = covering
            .as_ref()
            .filter(|ban| ban.prefix == entry)
            .map(|ban| History {
                last_banned_at_ms: ban.banned_at_ms,
                last_duration_ms: ban.expires_at_ms.saturating_sub(ban.banned_at_ms),
                repeat: ban.repeat,
            });
        let history = match live {
            Some(live) => Some(live),
            None => self.store.bans().history(&entry)?,
        }
        .map(|h| model::BanHistory {
            prefix: entry,
            last_banned_at_ms: h.last_banned_at_ms,
            last_duration_ms: h.last_duration_ms,
            repeat: h.repeat,
            resets_at_ms: h.last_banned_at_ms.saturating_add(window_ms),
        })
        .filter(|h| h.resets_at_ms > now_ms);
        let kernel = match &covering {
            Some(ban) => self.kernel_entry(&ban.prefix),
            None => None,
        };
        Ok(model::BanReport {
            covering,
            history,
            kernel,
            monitored: None,
        })
    }

    /// The live stored time-out covering `target`, longest prefix first (an
    /// address: at most 129 reads; a prefix: its own entry).
    fn stored_covering(&self, target: Cidr, now_ms: u64) -> Result<Option<BanInfo>, StorageError> {
        let lengths = if target.is_host() {
            0..=target.len()
        } else {
            target.len()..=target.len()
        };
        for len in lengths.rev() {
            let Ok(prefix) = Cidr::new(target.addr(), len) else {
                continue;
            };
            if let Some(ban) = self.store.bans().get(&prefix)?
                && ban.expires_at_ms > now_ms
            {
                return Ok(Some(ban));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
