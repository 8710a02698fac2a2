//! The ban core: everything a time-out is, in one plain struct with no
//! actix in it, so every source of time-outs (sessions, admins, the offline
//! CLI, and later kernel detectors and the fleet) goes through one piece of
//! logic, and that logic is unit-tested without sockets or a kernel.
//!
//! It owns the table in three forms, each for one reader, and keeps them in
//! step:
//! - the [`BanView`] (prefix → expiry) the acceptors check per connection;
//! - `by_expiry`, a min-heap by expiry, for the release sweep and for evicting
//!   the entry closest to expiry when the table is full;
//! - the sled `bans` tree (full records), for restarts and the admin list;
//!
//! and mirrors it into the kernel table when there is one.
//!
//! The policy steps of a ban, in order: allow-list, aggregation into the
//! table prefix, dedupe against a live entry, history, decision, record.
//! A storage error never stops a ban: it is logged and counted, and the ban
//! stays in force in memory. A kernel error likewise (the userspace tier
//! still enforces).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::ban::{BanCause, BanInfo, FirstBytes};
use model::cidr::Cidr;
use storage::{FleetChange, StorageError, Store};

use crate::BanError;
use crate::error_summary::ErrorSummary;
use crate::fleet_sync::FleetOutlet;
use crate::kernel_sync::KernelSync;
use crate::policy::{AdminBan, BanPolicy, expiry_after};
use crate::stats::{Stats, bump};
use crate::view::BanView;

pub struct BanCore {
    /// Storage failures, one log line a second.
    storage_errors: ErrorSummary,
    policy: BanPolicy,
    view: Arc<BanView>,
    /// Lazy: an entry whose expiry no longer matches the view's (released,
    /// or replaced by a new ban of the prefix) is skipped when it comes up.
    /// A heap costs 32 bytes a time-out where an ordered set that deletes
    /// eagerly costs twice that, and a million live time-outs is the design
    /// load.
    by_expiry: BinaryHeap<Reverse<(u64, Cidr)>>,
    store: Store,
    kernel: Option<Box<dyn KernelSync>>,
    /// Where time-outs made here go for the other nodes (fleet on).
    fleet: Option<FleetOutlet>,
    /// Monitor mode's would-be time-outs, for `bans show` and so that one
    /// offender is logged once per would-be time-out, not per connection.
    monitored: Monitored,
    stats: Arc<Stats>,
}

/// Would-be time-outs by prefix, the oldest forgotten past a bound.
#[derive(Default)]
struct Monitored {
    by_prefix: std::collections::HashMap<Cidr, BanInfo>,
    order: std::collections::VecDeque<Cidr>,
}

/// Would-be time-outs remembered at most (about 100 bytes each).
const MAX_MONITORED: usize = 65_536;

impl Monitored {
    fn live(&self, prefix: &Cidr, now_ms: u64) -> Option<&BanInfo> {
        self.by_prefix
            .get(prefix)
            .filter(|ban| ban.expires_at_ms > now_ms)
    }

    fn remember(&mut self, record: BanInfo) {
        if self
            .by_prefix
            .insert(record.prefix, record.clone())
            .is_none()
        {
            self.order.push_back(record.prefix);
        }
        while self.order.len() > MAX_MONITORED {
            if let Some(oldest) = self.order.pop_front() {
                self.by_prefix.remove(&oldest);
            }
        }
    }
}

/// What boot restored.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    pub restored: usize,
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

/// What became of a source's ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanOutcome {
    /// A new time-out is in force.
    Banned(BanInfo),
    /// The source is allow-listed: nothing happened.
    AllowListed,
    /// Its prefix is already timed out (concurrent sessions of one source
    /// all fail at once; the first ban stands).
    AlreadyBanned(Cidr),
    /// Monitor mode: this is the time-out that would be in force (logged
    /// and counted once per would-be time-out), not enforced.
    Monitored(BanInfo),
}

/// What became of a time-out another node made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    Applied,
    /// The record's prefix covers, or lies in, an entry of our allow-list:
    /// our allow-list wins.
    AllowListed,
    /// Already over by our clock.
    Expired,
    /// We hold a time-out of that prefix that lasts at least as long.
    Superseded,
    /// Monitor mode: logged and counted, not applied.
    Monitored,
}

/// What a new policy (a reload) changed in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// Live time-outs inside a newly allow-listed prefix, released.
    pub released: usize,
}

impl BanCore {
    /// Loads the live bans from storage into `view` (expired ones are
    /// discarded and deleted on the way) and makes the kernel table, if
    /// any, hold exactly those bans.
    pub fn restore(
        policy: BanPolicy,
        store: Store,
        view: Arc<BanView>,
        stats: Arc<Stats>,
        kernel: Option<Box<dyn KernelSync>>,
        now_ms: u64,
    ) -> Result<(Self, BootReport), StorageError> {
        let started = Instant::now();
        let loaded = store.bans().load_live(now_ms)?;
        let mut by_expiry = BinaryHeap::with_capacity(loaded.live.len());
        for (prefix, expires) in &loaded.live {
            view.insert(*prefix, *expires);
            by_expiry.push(Reverse((*expires, *prefix)));
        }
        let elapsed = started.elapsed();
        let mut core = BanCore {
            storage_errors: storage_error_summary(),
            policy,
            view,
            by_expiry,
            store,
            kernel,
            fleet: None,
            monitored: Monitored::default(),
            stats,
        };
        // A table stored with a larger bound than today's: the bound holds
        // from the first connection on (closest to expiry go first).
        let mut live = loaded.live;
        while core.view.len() > core.policy.max_entries {
            core.evict_one(now_ms);
        }
        if live.len() > core.view.len() {
            live.retain(|(prefix, _)| core.view.expiry(prefix).is_some());
        }
        let kernel = core.replay_into_kernel(&live, now_ms);
        let report = BootReport {
            restored: live.len(),
            discarded: loaded.discarded,
            elapsed,
            kernel,
        };
        Ok((core, report))
    }

    /// A core over a stopped server's database, for the offline admin
    /// commands: no shared view, no kernel table, nothing restored (an
    /// admin ban or release needs only storage and the policy).
    pub fn offline(policy: BanPolicy, store: Store) -> Self {
        BanCore {
            storage_errors: storage_error_summary(),
            policy,
            view: Arc::new(BanView::default()),
            by_expiry: BinaryHeap::new(),
            store,
            kernel: None,
            fleet: None,
            monitored: Monitored::default(),
            stats: Arc::new(Stats::default()),
        }
    }

    /// A new policy (a reload): durations, escalation, the cap, the
    /// allow-list, the table bound and the mode apply from the next
    /// decision on. Live time-outs inside a newly allow-listed prefix are
    /// released at once (view, kernel, storage; their history kept), and
    /// the kernel's allow-list is replaced. The aggregation lengths are the
    /// caller's to keep (entries are keyed by them).
    pub fn set_policy(&mut self, policy: BanPolicy, now_ms: u64) -> PolicyChange {
        let newly_allowed: Vec<Cidr> = policy
            .allow
            .iter()
            .filter(|entry| !self.policy.allow.contains(entry))
            .copied()
            .collect();
        self.policy = policy;
        let mut change = PolicyChange::default();
        if !newly_allowed.is_empty() {
            for (prefix, _) in self.view.live(now_ms) {
                let inside = newly_allowed
                    .iter()
                    .any(|entry| entry.len() <= prefix.len() && entry.contains(prefix.addr()));
                if inside {
                    self.view.remove(&prefix);
                    self.kernel_remove(&prefix);
                    if let Err(error) = self.store.bans().retire(&prefix) {
                        self.storage_failed(|| {
                            format!("could not persist the release of {prefix}: {error}")
                        });
                    }
                    log::info!(event = "release", prefix:% = prefix; "released {prefix}: allow-listed by the reload");
                    change.released += 1;
                }
            }
        }
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(error) = kernel.set_allowed(&self.policy.allow)
        {
            bump(&self.stats.kernel_errors);
            log::warn!("kernel table: cannot replace the allow-list: {error}");
        }
        change
    }

    /// Shares every time-out and admin release made here from now on with
    /// the fleet (remote ones are never sent back).
    pub fn set_fleet(&mut self, fleet: FleetOutlet) {
        self.fleet = Some(fleet);
    }

    pub fn view(&self) -> Arc<BanView> {
        self.view.clone()
    }

    pub fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    /// The table entry `ip` falls into.
    pub fn prefix_for(&self, ip: IpAddr) -> Cidr {
        self.policy.prefix_for(ip)
    }

    /// A session saw `cause` from `source`: apply the policy and, unless
    /// the source is allow-listed or already timed out, time it out.
    pub fn ban(
        &mut self,
        source: IpAddr,
        cause: BanCause,
        first_bytes: FirstBytes,
        now_ms: u64,
    ) -> BanOutcome {
        let evidence = format!("first bytes {}", hex_preview(first_bytes.as_slice()));
        self.ban_for(source, cause, first_bytes, &evidence, now_ms)
    }

    /// A time-out found by the kernel detectors: the same policy as
    /// [`BanCore::ban`] (allow-list, aggregation, escalation, storage,
    /// kernel map), with what the kernel saw as the evidence in the log.
    pub fn ban_detected(
        &mut self,
        source: IpAddr,
        cause: BanCause,
        evidence: &str,
        now_ms: u64,
    ) -> BanOutcome {
        self.ban_for(source, cause, FirstBytes::default(), evidence, now_ms)
    }

    fn ban_for(
        &mut self,
        source: IpAddr,
        cause: BanCause,
        first_bytes: FirstBytes,
        evidence: &str,
        now_ms: u64,
    ) -> BanOutcome {
        if self.policy.is_allowed(source) {
            log::info!("not timing out {source} ({cause}): allow-listed; {evidence}");
            return BanOutcome::AllowListed;
        }
        let prefix = self.policy.prefix_for(source);
        if self.policy.monitor
            && let Some(would) = self.monitored.live(&prefix, now_ms)
        {
            return BanOutcome::Monitored(would.clone());
        }
        match self.view.expiry(&prefix) {
            Some(expires) if expires > now_ms => return BanOutcome::AlreadyBanned(prefix),
            // Ended but not swept yet: released first, so that its history
            // counts (an offender retrying right at expiry still escalates).
            Some(_) => self.release_ended(&prefix),
            None => {}
        }
        let history = match self.store.bans().history(&prefix) {
            Ok(history) => history,
            Err(error) => {
                self.storage_failed(|| {
                    format!("could not read the ban history of {prefix} (no escalation): {error}")
                });
                None
            }
        };
        let decision = self.policy.decide(cause, history, now_ms);
        let record = BanInfo {
            prefix,
            cause: cause.as_cause(),
            first_bytes,
            banned_at_ms: now_ms,
            expires_at_ms: expiry_after(now_ms, decision.duration),
            repeat: decision.repeat,
            origin: Default::default(),
        };
        if self.policy.monitor {
            log::info!(
                event = "would-timeout", prefix:% = prefix, source:% = source, cause = cause.name(),
                duration_s = decision.duration.as_secs(), repeat = decision.repeat, evidence = evidence;
                "would time out {prefix} for {} (monitor mode; cause {cause}, repeat {}, source {source}, {evidence})",
                humantime::format_duration(decision.duration),
                decision.repeat,
            );
            self.stats.count_monitored(Some(cause));
            self.monitored.remember(record.clone());
            return BanOutcome::Monitored(record);
        }
        self.insert(&record, now_ms);
        log::info!(
            event = "timeout", prefix:% = prefix, source:% = source, cause = cause.name(),
            duration_s = decision.duration.as_secs(), repeat = decision.repeat,
            expires_at = crate::format_time(record.expires_at_ms).as_str(), evidence = evidence;
            "timed out {prefix} for {} (cause {cause}, repeat {}, source {source}, {evidence})",
            humantime::format_duration(decision.duration),
            decision.repeat,
        );
        self.share(FleetChange::Put(record.clone()));
        BanOutcome::Banned(record)
    }

    /// An admin's time-out of an address or prefix: no escalation, the
    /// allow-list wins.
    pub fn admin_ban(&mut self, ban: AdminBan, now_ms: u64) -> Result<BanInfo, BanError> {
        if self.policy.monitor {
            return Err(BanError::MonitorMode);
        }
        let forced = ban.force;
        let record = self.policy.admin_ban(ban, now_ms)?;
        self.insert(&record, now_ms);
        log::info!(
            event = "admin-timeout", prefix:% = record.prefix, cause = record.cause.as_str(),
            expires_at = crate::format_time(record.expires_at_ms).as_str(), forced = forced;
            "admin timed out {} until {} (cause {}{})",
            record.prefix,
            crate::format_time(record.expires_at_ms),
            record.cause,
            if forced { ", forced" } else { "" }
        );
        self.share(FleetChange::Put(record.clone()));
        Ok(record)
    }

    /// An admin's pardon: releases the entry `prefix` means (for a single
    /// address, also the aggregated entry it falls in) and forgets its
    /// history. Answers which entry was released, if any.
    pub fn release(&mut self, prefix: Cidr) -> Result<Option<Cidr>, BanError> {
        for candidate in self.policy.release_candidates(prefix) {
            let in_memory = self.remove(&candidate);
            let stored = self.store.bans().forget(&candidate);
            match stored {
                Ok(stored) if in_memory || stored => {
                    log::info!(event = "admin-release", prefix:% = candidate; "admin released {candidate}");
                    self.share(FleetChange::Delete(candidate));
                    return Ok(Some(candidate));
                }
                Ok(_) => {}
                Err(error) if in_memory => {
                    log::error!(
                        "released {candidate} in memory, but could not persist the release: {error}"
                    );
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(None)
    }

    /// Applies a time-out another node made: our allow-list wins, the bound
    /// holds, the record's own expiry, cause, origin and repeat count are
    /// kept (no local escalation), and it is persisted and mirrored like
    /// any other. It is not shared again.
    pub fn apply_remote(&mut self, record: BanInfo, now_ms: u64) -> RemoteOutcome {
        let prefix = record.prefix;
        let origin = record.origin;
        let allow_listed = self
            .policy
            .allow
            .iter()
            .any(|entry| entry.contains(prefix.addr()) || prefix.contains(entry.addr()));
        if allow_listed {
            log::info!(
                "not applying the time-out of {prefix} from node {origin}: allow-listed here"
            );
            return RemoteOutcome::AllowListed;
        }
        if record.expires_at_ms <= now_ms {
            return RemoteOutcome::Expired;
        }
        if self.policy.monitor {
            if self.monitored.live(&prefix, now_ms).is_none() {
                log::info!(
                    "would time out {prefix} until {} as node {origin} did (monitor mode; cause {})",
                    crate::format_time(record.expires_at_ms),
                    record.cause
                );
                self.stats.count_monitored(None);
                self.monitored.remember(record);
            }
            return RemoteOutcome::Monitored;
        }
        // Another node's record lasts no longer than our own cap would.
        let mut record = record;
        record.expires_at_ms = record
            .expires_at_ms
            .min(expiry_after(now_ms, self.policy.max_duration));
        if self
            .view
            .expiry(&prefix)
            .is_some_and(|expires| expires >= record.expires_at_ms)
        {
            return RemoteOutcome::Superseded;
        }
        self.insert(&record, now_ms);
        bump(&self.stats.fleet_applied);
        log::info!(
            event = "remote-timeout", prefix:% = prefix, origin = origin.as_str(),
            cause = record.cause.as_str(), repeat = record.repeat,
            expires_at = crate::format_time(record.expires_at_ms).as_str();
            "timed out {prefix} until {} as node {origin} did (cause {}, repeat {})",
            crate::format_time(record.expires_at_ms),
            record.cause,
            record.repeat
        );
        RemoteOutcome::Applied
    }

    /// Another node's admin released `prefix`: the entry of exactly that
    /// prefix is released here too, and its history forgotten (a pardon
    /// everywhere). Says whether there was one. Not shared again.
    pub fn release_remote(&mut self, prefix: Cidr) -> Result<bool, BanError> {
        let in_memory = self.remove(&prefix);
        let stored = self.store.bans().forget(&prefix)?;
        if in_memory || stored {
            bump(&self.stats.fleet_released);
            log::info!(
                event = "remote-release", prefix:% = prefix;
                "released {prefix}: an admin released it on another node"
            );
        }
        Ok(in_memory || stored)
    }

    /// Hands a change made here to the fleet; a storage failure is logged
    /// like any other (the time-out stands locally).
    fn share(&mut self, change: FleetChange) {
        let Some(fleet) = &self.fleet else { return };
        if let Err(error) = fleet.offer(&change) {
            let prefix = change.prefix();
            self.storage_failed(|| {
                format!("could not queue {prefix} for the fleet (not shared): {error}")
            });
        }
    }

    /// Releases every time-out that ended at or before `now_ms`; returns
    /// how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
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
        self.storage_errors.flush(Instant::now());
        released
    }

    /// One page of the stored table, in prefix order.
    pub fn list(
        &self,
        after: Option<&Cidr>,
        limit: usize,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), BanError> {
        Ok(self.store.bans().list(after, limit)?)
    }

    /// What covers `target` (an address: the longest live prefix around
    /// it; a prefix: its own entry), its table entry's escalation history,
    /// and whether the kernel map holds the covering entry.
    pub fn show(&mut self, target: Cidr, now_ms: u64) -> Result<model::BanReport, BanError> {
        let is_host = target.len()
            == match target.addr() {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
        let covering_prefix = if is_host {
            self.view.lookup(target.addr(), now_ms).map(|(p, _)| p)
        } else {
            self.view
                .expiry(&target)
                .filter(|expires| *expires > now_ms)
                .map(|_| target)
        };
        let covering = match covering_prefix {
            Some(prefix) => self.store.bans().get(&prefix)?,
            // Offline the view is empty: ask the table itself, longest
            // prefix first (an admin command; at most 129 reads).
            None => self.stored_covering(target, is_host, now_ms)?,
        };
        let entry = if is_host {
            self.policy.prefix_for(target.addr())
        } else {
            target
        };
        let window_ms =
            u64::try_from(self.policy.escalation_window.as_millis()).unwrap_or(u64::MAX);
        // A live time-out of the entry is its latest history (the history
        // record is written when a time-out ends).
        let live = covering
            .as_ref()
            .filter(|ban| ban.prefix == entry)
            .map(|ban| storage::History {
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
        let kernel = match (&covering, self.kernel.as_mut()) {
            (Some(ban), Some(kernel)) => match kernel.lookup(&ban.prefix) {
                Ok(drops) => Some(model::KernelEntry {
                    in_map: drops.is_some(),
                    drops: drops.unwrap_or(0),
                }),
                Err(error) => {
                    log::warn!("kernel table: cannot look up {}: {error}", ban.prefix);
                    None
                }
            },
            _ => None,
        };
        let monitored = self.monitored.live(&entry, now_ms).cloned();
        Ok(model::BanReport {
            covering,
            history,
            kernel,
            monitored,
        })
    }

    fn stored_covering(
        &self,
        target: Cidr,
        is_host: bool,
        now_ms: u64,
    ) -> Result<Option<BanInfo>, BanError> {
        let lengths = if is_host {
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

    /// Makes every ban so far durable.
    pub fn flush(&self) -> Result<(), BanError> {
        Ok(self.store.flush()?)
    }

    /// Drops history that can no longer make a ban escalate. A full scan,
    /// so it runs on a thread of its own.
    pub fn purge_history_in_background(&self, now_ms: u64) {
        let bans = self.store.bans().clone();
        let before = self.policy.escalation_cutoff(now_ms);
        std::thread::spawn(move || match bans.purge_history(before) {
            Ok(0) => {}
            Ok(n) => log::debug!("purged {n} stale escalation records"),
            Err(error) => log::error!("could not purge escalation history: {error}"),
        });
    }

    /// Live entries in memory.
    /// Records how long a time-out took from the offence to the table.
    pub(crate) fn observe_time_to_ban(&self, elapsed: Duration) {
        self.stats.time_to_ban_seconds.observe(elapsed);
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// Puts `record` in the table, evicting the entry closest to expiry if
    /// the table is full.
    fn insert(&mut self, record: &BanInfo, now_ms: u64) {
        match self.view.expiry(&record.prefix) {
            // Ended but not swept yet (an admin or remote ban right at
            // expiry): released first, which also makes room.
            Some(expires) if expires <= now_ms => self.release_ended(&record.prefix),
            Some(_) => {} // live: replaced in place
            None if self.view.len() >= self.policy.max_entries => self.evict_one(now_ms),
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
    }

    fn evict_one(&mut self, now_ms: u64) {
        while let Some(Reverse((expires, prefix))) = self.by_expiry.pop() {
            if self.view.expiry(&prefix) != Some(expires) {
                continue; // stale
            }
            self.view.remove(&prefix);
            self.kernel_remove(&prefix);
            bump(&self.stats.bans_evicted);
            log::warn!(
                "time-out table full ({} entries): evicted {prefix}, {} before its expiry",
                self.policy.max_entries,
                humantime::format_duration(Duration::from_secs(
                    expires.saturating_sub(now_ms) / 1000
                ))
            );
            if let Err(error) = self.store.bans().retire(&prefix) {
                self.storage_failed(|| {
                    format!("could not persist the eviction of {prefix}: {error}")
                });
            }
            return;
        }
    }

    /// Releases `prefix`, whose time-out has ended: from the view, the
    /// kernel table and storage (its history kept). A heap entry of it still
    /// queued goes stale and is skipped when it comes up.
    fn release_ended(&mut self, prefix: &Cidr) {
        self.view.remove(prefix);
        self.kernel_remove(prefix);
        log::info!(event = "release", prefix:% = prefix; "released {prefix}: time-out over");
        if let Err(error) = self.store.bans().retire(prefix) {
            self.storage_failed(|| format!("could not persist the expiry of {prefix}: {error}"));
        }
    }

    fn remove(&mut self, prefix: &Cidr) -> bool {
        // Its heap entry goes stale and is skipped when it comes up.
        match self.view.remove(prefix) {
            Some(_) => {
                self.kernel_remove(prefix);
                true
            }
            None => false,
        }
    }

    fn storage_failed(&mut self, detail: impl FnOnce() -> String) {
        self.storage_errors.failed(detail, Instant::now());
    }

    /// Makes the kernel table hold exactly the live bans: entries it has
    /// that storage no longer holds are removed, every live ban is written
    /// (in place: no clearing first, so no source is let through meanwhile).
    /// A new kernel table in place of the old one (the kernel watchdog
    /// re-attached the program): it is made to hold exactly the live
    /// time-outs and the allow-list, as on boot.
    pub fn replace_kernel(&mut self, kernel: Box<dyn KernelSync>, now_ms: u64) -> KernelReplay {
        self.kernel = Some(kernel);
        let live = self.view.live(now_ms);
        self.replay_into_kernel(&live, now_ms).unwrap_or_default()
    }

    fn replay_into_kernel(&mut self, live: &[(Cidr, u64)], now_ms: u64) -> Option<KernelReplay> {
        let kernel = self.kernel.as_mut()?;
        let started = Instant::now();
        let mut report = KernelReplay::default();
        if let Err(error) = kernel.set_allowed(&self.policy.allow) {
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

fn storage_error_summary() -> ErrorSummary {
    ErrorSummary::new("storage error", Duration::from_secs(1))
}

/// "16 03 01 00 f4" for logs: short, and safe whatever the bytes are.
pub fn hex_preview(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "(none)".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::kernel_sync::KernelError;

    const NOW: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    /// The kernel table in memory; a handle the test keeps sees what the
    /// core wrote. `fail` makes every insert fail.
    #[derive(Clone, Default)]
    struct FakeKernel {
        entries: Arc<Mutex<BTreeMap<Cidr, u64>>>,
        allowed: Arc<Mutex<Vec<Cidr>>>,
        fail: bool,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("map full")]
    struct MapFull;

    impl KernelSync for FakeKernel {
        fn insert(&mut self, prefix: &Cidr, expires: u64, _: u64) -> Result<(), KernelError> {
            if self.fail {
                return Err(KernelError::new(MapFull));
            }
            self.entries.lock().unwrap().insert(*prefix, expires);
            Ok(())
        }

        fn remove(&mut self, prefix: &Cidr) -> Result<(), KernelError> {
            self.entries.lock().unwrap().remove(prefix);
            Ok(())
        }

        fn set_allowed(&mut self, allow: &[Cidr]) -> Result<(), KernelError> {
            *self.allowed.lock().unwrap() = allow.to_vec();
            Ok(())
        }

        fn prefixes(&mut self) -> Result<Vec<Cidr>, KernelError> {
            Ok(self.entries.lock().unwrap().keys().copied().collect())
        }

        fn lookup(&mut self, prefix: &Cidr) -> Result<Option<u64>, KernelError> {
            Ok(self
                .entries
                .lock()
                .unwrap()
                .contains_key(prefix)
                .then_some(0))
        }
    }

    impl FakeKernel {
        fn holds(&self, prefix: &str) -> bool {
            self.entries
                .lock()
                .unwrap()
                .contains_key(&prefix.parse().unwrap())
        }
    }

    struct Bed {
        core: BanCore,
        kernel: FakeKernel,
        stats: Arc<Stats>,
        store: Store,
        _dir: tempfile::TempDir,
    }

    fn bed_with(policy: BanPolicy, kernel: FakeKernel, dir: tempfile::TempDir) -> Bed {
        let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
        let stats = Arc::new(Stats::default());
        let (core, _) = BanCore::restore(
            policy,
            store.clone(),
            Arc::new(BanView::default()),
            stats.clone(),
            Some(Box::new(kernel.clone())),
            NOW,
        )
        .unwrap();
        Bed {
            core,
            kernel,
            stats,
            store,
            _dir: dir,
        }
    }

    fn bed(policy: BanPolicy) -> Bed {
        bed_with(policy, FakeKernel::default(), tempfile::tempdir().unwrap())
    }

    fn admin(prefix: Cidr, duration: Option<Duration>, cause: model::Cause) -> AdminBan {
        AdminBan {
            prefix,
            duration,
            cause,
            force: false,
            requester: None,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn banned(outcome: BanOutcome) -> BanInfo {
        match outcome {
            BanOutcome::Banned(record) => record,
            other => panic!("expected a ban, got {other:?}"),
        }
    }

    #[test]
    fn a_ban_is_in_the_view_storage_and_kernel_and_escalates_on_repeat() {
        let mut bed = bed(BanPolicy::default());
        let first = banned(bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMagic,
            FirstBytes::truncated(b"GET /"),
            NOW,
        ));
        assert_eq!(first.expires_at_ms, NOW + 15 * MIN);
        assert_eq!(first.cause.as_str(), "bad-magic");
        assert!(bed.core.view().is_banned(ip("192.0.2.7"), NOW));
        assert!(bed.kernel.holds("192.0.2.7/32"));
        assert_eq!(
            bed.store.bans().get(&first.prefix).unwrap(),
            Some(first.clone())
        );

        // A second ban while the first is live is a no-op.
        assert_eq!(
            bed.core.ban(
                ip("192.0.2.7"),
                BanCause::BadMac1,
                FirstBytes::default(),
                NOW + 1
            ),
            BanOutcome::AlreadyBanned(first.prefix)
        );

        // After it ends: a repeat within the window doubles.
        assert_eq!(bed.core.expire(NOW + 15 * MIN), 1);
        assert!(!bed.core.view().is_banned(ip("192.0.2.7"), NOW + 15 * MIN));
        assert!(!bed.kernel.holds("192.0.2.7/32"));
        assert_eq!(bed.store.bans().get(&first.prefix).unwrap(), None);
        let later = NOW + 20 * MIN;
        let second = banned(bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMagic,
            FirstBytes::default(),
            later,
        ));
        assert_eq!(second.repeat, 2);
        assert_eq!(second.expires_at_ms, later + 30 * MIN);
        assert_eq!(bed.stats.bans_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ipv6_sources_aggregate_per_64_and_the_allow_list_wins() {
        let policy = BanPolicy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..BanPolicy::default()
        };
        let mut bed = bed(policy);
        let record = banned(bed.core.ban(
            ip("2001:db8:1:2:3:4:5:6"),
            BanCause::HandshakeTimeout,
            FirstBytes::default(),
            NOW,
        ));
        assert_eq!(record.prefix.to_string(), "2001:db8:1:2::/64");
        assert!(bed.core.view().is_banned(ip("2001:db8:1:2::99"), NOW));
        assert!(bed.kernel.holds("2001:db8:1:2::/64"));

        assert_eq!(
            bed.core.ban(
                ip("10.9.9.9"),
                BanCause::BadMagic,
                FirstBytes::default(),
                NOW
            ),
            BanOutcome::AllowListed
        );
        assert!(!bed.core.view().is_banned(ip("10.9.9.9"), NOW));
        let refused = bed
            .core
            .admin_ban(
                admin("10.1.0.0/16".parse().unwrap(), None, "x".parse().unwrap()),
                NOW,
            )
            .unwrap_err();
        assert!(matches!(refused, BanError::AllowListed { .. }), "{refused}");
        assert!(!refused.is_server_fault());
    }

    #[test]
    fn a_full_table_evicts_the_entry_closest_to_expiry() {
        let policy = BanPolicy {
            max_entries: 2,
            ..BanPolicy::default()
        };
        let mut bed = bed(policy);
        let soon = Duration::from_secs(60);
        let later = Duration::from_secs(3600);
        bed.core
            .admin_ban(
                admin(
                    "192.0.2.1".parse().unwrap(),
                    Some(later),
                    "a".parse().unwrap(),
                ),
                NOW,
            )
            .unwrap();
        bed.core
            .admin_ban(
                admin(
                    "192.0.2.2".parse().unwrap(),
                    Some(soon),
                    "b".parse().unwrap(),
                ),
                NOW,
            )
            .unwrap();
        bed.core
            .admin_ban(
                admin(
                    "192.0.2.3".parse().unwrap(),
                    Some(later),
                    "c".parse().unwrap(),
                ),
                NOW,
            )
            .unwrap();
        assert_eq!(bed.core.len(), 2);
        assert!(!bed.core.view().is_banned(ip("192.0.2.2"), NOW), "evicted");
        assert!(!bed.kernel.holds("192.0.2.2/32"));
        assert_eq!(
            bed.store.bans().get(&"192.0.2.2".parse().unwrap()).unwrap(),
            None
        );
        assert!(bed.core.view().is_banned(ip("192.0.2.3"), NOW));
        assert_eq!(bed.stats.bans_evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn release_forgets_history_and_finds_the_aggregate_of_an_address() {
        let mut bed = bed(BanPolicy::default());
        banned(bed.core.ban(
            ip("2001:db8::5"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW,
        ));
        let released = bed.core.release("2001:db8::5".parse().unwrap()).unwrap();
        assert_eq!(released, Some("2001:db8::/64".parse().unwrap()));
        assert!(!bed.core.view().is_banned(ip("2001:db8::5"), NOW));
        assert!(!bed.kernel.holds("2001:db8::/64"));
        let prefix: Cidr = "2001:db8::/64".parse().unwrap();
        assert_eq!(bed.store.bans().history(&prefix).unwrap(), None);
        assert_eq!(bed.core.release(prefix).unwrap(), None);
    }

    #[test]
    fn an_offence_right_at_expiry_before_the_sweep_still_escalates() {
        let mut bed = bed(BanPolicy::default());
        let first = banned(bed.core.ban(
            ip("192.0.2.5"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW,
        ));
        // Over, but expire() has not run yet.
        let at = first.expires_at_ms;
        let again = banned(bed.core.ban(
            ip("192.0.2.5"),
            BanCause::BadMagic,
            FirstBytes::default(),
            at,
        ));
        assert_eq!(again.repeat, 2);
        assert_eq!(again.expires_at_ms, at + 30 * MIN);
        // The first ban's heap entry is stale now: the sweep leaves the new one.
        assert_eq!(bed.core.expire(at + MIN), 0);
        assert!(bed.core.view().is_banned(ip("192.0.2.5"), at + MIN));
    }

    #[test]
    fn a_released_and_banned_again_prefix_expires_by_its_new_time_out() {
        let mut bed = bed(BanPolicy::default());
        let prefix: Cidr = "192.0.2.9".parse().unwrap();
        let ban = |minutes: u64| {
            admin(
                prefix,
                Some(Duration::from_secs(60 * minutes)),
                "a".parse().unwrap(),
            )
        };
        bed.core.admin_ban(ban(10), NOW).unwrap();
        assert_eq!(bed.core.release(prefix).unwrap(), Some(prefix));
        bed.core.admin_ban(ban(30), NOW).unwrap();
        // The first ban's heap entry comes up at 10 minutes: stale, skipped.
        assert_eq!(bed.core.expire(NOW + 20 * MIN), 0);
        assert!(bed.core.view().is_banned(ip("192.0.2.9"), NOW + 20 * MIN));
        assert!(bed.kernel.holds("192.0.2.9/32"));
        assert_eq!(bed.core.expire(NOW + 30 * MIN), 1);
        assert!(!bed.kernel.holds("192.0.2.9/32"));
        // History was written when it ended: a new offence escalates.
        let again = banned(bed.core.ban(
            ip("192.0.2.9"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW + 31 * MIN,
        ));
        assert_eq!(again.repeat, 2);
    }

    #[test]
    fn restore_reloads_live_bans_and_removes_stale_kernel_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut first = bed_with(
                BanPolicy::default(),
                FakeKernel::default(),
                tempfile::TempDir::new_in(dir.path()).unwrap(),
            );
            banned(first.core.ban(
                ip("192.0.2.7"),
                BanCause::BadMagic,
                FirstBytes::default(),
                NOW,
            ));
            first
                .core
                .admin_ban(
                    admin(
                        "198.51.100.0/24".parse().unwrap(),
                        Some(Duration::from_secs(1)),
                        "short".parse().unwrap(),
                    ),
                    NOW,
                )
                .unwrap();
            first.core.flush().unwrap();
            let path = first._dir.path().to_owned();
            drop(first.core);
            drop(first.store);
            // Reopen the same database, with a kernel table that holds a
            // ban the database no longer has.
            let kernel = FakeKernel::default();
            kernel
                .entries
                .lock()
                .unwrap()
                .insert("203.0.113.1".parse().unwrap(), NOW + MIN);
            let store = Store::open(&path, &storage::StoreOptions::default()).unwrap();
            let (core, report) = BanCore::restore(
                BanPolicy::default(),
                store,
                Arc::new(BanView::default()),
                Arc::new(Stats::default()),
                Some(Box::new(kernel.clone())),
                NOW + 2_000,
            )
            .unwrap();
            assert_eq!(report.restored, 1);
            assert_eq!(report.discarded, 1, "the 1 s admin ban ran out while down");
            let replay = report.kernel.unwrap();
            // (max_entries is far above 1 here; see the next test for the bound.)
            assert_eq!(
                (replay.replayed, replay.removed_stale, replay.failed),
                (1, 1, 0)
            );
            assert!(kernel.holds("192.0.2.7/32"));
            assert!(!kernel.holds("203.0.113.1/32"));
            assert!(core.view().is_banned(ip("192.0.2.7"), NOW + 2_000));
        }
    }

    #[test]
    fn restore_holds_a_smaller_bound_than_the_table_was_stored_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
        let mut wide = BanCore::offline(BanPolicy::default(), store.clone());
        for (i, minutes) in [30u64, 10, 20].iter().enumerate() {
            let prefix: Cidr = format!("192.0.2.{}", i + 1).parse().unwrap();
            wide.admin_ban(
                admin(
                    prefix,
                    Some(Duration::from_secs(60 * minutes)),
                    "a".parse().unwrap(),
                ),
                NOW,
            )
            .unwrap();
        }
        let policy = BanPolicy {
            max_entries: 2,
            ..BanPolicy::default()
        };
        let kernel = FakeKernel::default();
        let (core, report) = BanCore::restore(
            policy,
            store,
            Arc::new(BanView::default()),
            Arc::new(Stats::default()),
            Some(Box::new(kernel.clone())),
            NOW,
        )
        .unwrap();
        assert_eq!((core.len(), report.restored), (2, 2));
        assert!(
            !core.view().is_banned(ip("192.0.2.2"), NOW),
            "the closest to expiry went"
        );
        assert!(!kernel.holds("192.0.2.2/32") && kernel.holds("192.0.2.1/32"));
    }

    #[test]
    fn kernel_and_storage_failures_keep_the_ban_in_memory() {
        let kernel = FakeKernel {
            fail: true,
            ..FakeKernel::default()
        };
        let mut bed = bed_with(BanPolicy::default(), kernel, tempfile::tempdir().unwrap());
        // A history record that does not decode: the read fails (counted),
        // the ban is made without escalation.
        let prefix: Cidr = "192.0.2.7".parse().unwrap();
        bed.store
            .bans()
            .put_raw_history_for_test(&prefix, b"garbage");
        let record = banned(bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW,
        ));
        assert_eq!(record.repeat, 1, "no escalation without a readable history");
        assert!(bed.core.view().is_banned(ip("192.0.2.7"), NOW));
        assert_eq!(bed.stats.kernel_errors.load(Ordering::Relaxed), 1);
        assert!(!bed.kernel.holds("192.0.2.7/32"));
        assert_eq!(bed.store.bans().get(&prefix).unwrap(), Some(record));
    }

    #[test]
    fn an_undecodable_record_fails_the_list_but_can_still_be_released() {
        let mut bed = bed(BanPolicy::default());
        let prefix: Cidr = "192.0.2.8".parse().unwrap();
        bed.store
            .bans()
            .put_raw_ban_for_test(&prefix, NOW + MIN, b"\xF1garbage");
        let error = bed.core.list(None, 10).unwrap_err();
        assert!(matches!(error, BanError::Storage(_)), "{error}");
        assert!(error.is_server_fault());
        assert_eq!(bed.core.release(prefix).unwrap(), Some(prefix));
        assert_eq!(bed.core.list(None, 10).unwrap(), (Vec::new(), None));
    }

    #[test]
    fn remote_time_outs_keep_their_expiry_and_yield_to_the_allow_list() {
        let policy = BanPolicy {
            allow: vec!["192.0.2.250/32".parse().unwrap()],
            ..BanPolicy::default()
        };
        let mut bed = bed(policy);
        let record = |prefix: &str, expires_at_ms| BanInfo {
            prefix: prefix.parse().unwrap(),
            cause: "port-scan".parse().unwrap(),
            first_bytes: FirstBytes::default(),
            banned_at_ms: NOW - MIN,
            expires_at_ms,
            repeat: 4,
            origin: Default::default(),
        };
        assert_eq!(
            bed.core
                .apply_remote(record("198.51.100.0/24", NOW + 7 * MIN), NOW),
            RemoteOutcome::Applied
        );
        let stored = bed
            .store
            .bans()
            .get(&"198.51.100.0/24".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((stored.expires_at_ms, stored.repeat), (NOW + 7 * MIN, 4));
        assert!(bed.kernel.holds("198.51.100.0/24"));
        assert_eq!(
            bed.core
                .apply_remote(record("192.0.2.0/24", NOW + MIN), NOW),
            RemoteOutcome::AllowListed,
            "covers an allow-listed address"
        );
        assert_eq!(
            bed.core
                .apply_remote(record("203.0.113.0/24", NOW - 1), NOW),
            RemoteOutcome::Expired
        );
        assert_eq!(
            bed.core
                .apply_remote(record("198.51.100.0/24", NOW + MIN), NOW),
            RemoteOutcome::Superseded
        );
    }

    #[test]
    fn local_changes_are_shared_and_remote_ones_are_not() {
        let mut bed = bed(BanPolicy::default());
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = wakes.clone();
        bed.core.set_fleet(FleetOutlet::new(
            bed.store.outbox().clone(),
            Arc::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        ));
        let pending = |bed: &Bed| -> Vec<FleetChange> {
            let outbox = bed.store.outbox();
            outbox
                .pending(10)
                .unwrap()
                .into_iter()
                .map(|p| p.change)
                .collect()
        };
        let local = banned(bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW,
        ));
        assert_eq!(pending(&bed), vec![FleetChange::Put(local.clone())]);
        assert_eq!(wakes.load(Ordering::Relaxed), 1);

        // Another node's time-out is applied, kept with its origin, and not
        // sent back.
        let remote = BanInfo {
            prefix: "198.51.100.9/32".parse().unwrap(),
            origin: model::Origin::new("node-b").unwrap(),
            ..local.clone()
        };
        assert_eq!(
            bed.core.apply_remote(remote.clone(), NOW),
            RemoteOutcome::Applied
        );
        assert_eq!(
            bed.store.bans().get(&remote.prefix).unwrap(),
            Some(remote.clone())
        );
        assert_eq!(pending(&bed).len(), 1);

        // Released on another node: released here, not shared again.
        assert!(bed.core.release_remote(remote.prefix).unwrap());
        assert!(!bed.core.view().is_banned(ip("198.51.100.9"), NOW));
        assert!(!bed.kernel.holds("198.51.100.9/32"));
        assert!(
            !bed.core.release_remote(remote.prefix).unwrap(),
            "nothing left"
        );
        assert_eq!(pending(&bed).len(), 1);

        // An admin's release here replaces the pending put of its prefix.
        assert_eq!(bed.core.release(local.prefix).unwrap(), Some(local.prefix));
        assert_eq!(pending(&bed), vec![FleetChange::Delete(local.prefix)]);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_offline_core_writes_only_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
        let mut core = BanCore::offline(BanPolicy::default(), store.clone());
        let record = core
            .admin_ban(
                admin(
                    "192.0.2.0/24".parse().unwrap(),
                    None,
                    "admin".parse().unwrap(),
                ),
                NOW,
            )
            .unwrap();
        assert_eq!(record.expires_at_ms, NOW + 60 * MIN);
        assert_eq!(
            store.bans().get(&record.prefix).unwrap(),
            Some(record.clone())
        );
        assert_eq!(core.release(record.prefix).unwrap(), Some(record.prefix));
        assert_eq!(store.bans().get(&record.prefix).unwrap(), None);
    }
}
