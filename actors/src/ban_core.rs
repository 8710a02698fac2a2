//! The ban core: every decision about a time-out, in one plain struct with
//! no actix in it, so that every source of time-outs (sessions, admins, the
//! offline CLI, the kernel detectors, the fleet) goes through one piece of
//! logic, unit-tested without sockets or a kernel.
//!
//! The steps of a decision, in order: allow-list, aggregation into the
//! table prefix, dedupe against a live entry, monitor mode, history,
//! duration. The decision is a record; the [`BanTable`] keeps it (view,
//! storage, kernel, fleet) and ends it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use model::Cidr;
use model::ban::{BanCause, BanInfo, Cause, FirstBytes};
use storage::{StorageError, Store};

use crate::BanError;
use crate::allow_list::AllowList;
use crate::ban_table::{BanTable, BootReport, Ending, KernelReplay, TableParts};
use crate::fleet_outlet::FleetOutlet;
use crate::kernel_table::KernelTable;
use crate::policy::{AdminBan, BanPolicy, expiry_after};
use crate::view::BanView;
use crate::widen::{Due, Widener};

mod feeds;
pub use feeds::{FeedList, Imported};

pub struct BanCore {
    policy: BanPolicy,
    /// Which wider prefixes have seen which time-outs lately.
    widener: Widener,
    /// Prefixes widened since the registry last asked (to close their
    /// live sessions).
    just_widened: Vec<Cidr>,
    /// Who is never timed out (the acceptors read the same list).
    allow: AllowList,
    table: BanTable,
    /// Monitor mode's would-be time-outs, for `bans show` and so that one
    /// offender is logged once per would-be time-out, not per connection.
    monitored: Monitored,
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

/// What the core is made of, besides its policy.
pub struct CoreParts {
    pub allow: AllowList,
    pub store: Store,
    pub view: Arc<BanView>,
    pub stats: Arc<crate::Stats>,
    pub kernel: Option<Box<dyn KernelTable>>,
}

impl BanCore {
    /// Restores the live time-outs from storage (see [`BanTable::restore`]).
    pub fn restore(
        policy: BanPolicy,
        parts: CoreParts,
        now_ms: u64,
    ) -> Result<(Self, BootReport), StorageError> {
        let allow = parts.allow.clone();
        let table = TableParts {
            store: parts.store,
            view: parts.view,
            stats: parts.stats,
            kernel: parts.kernel,
            allow: parts.allow,
        };
        let (table, report) = BanTable::restore(table, policy.max_entries, now_ms)?;
        let core = BanCore {
            widener: Widener::new(policy.widen.clone()),
            just_widened: Vec::new(),
            policy,
            allow,
            table,
            monitored: Monitored::default(),
        };
        Ok((core, report))
    }

    /// A core over a stopped server's database, for the offline admin
    /// commands (an admin ban or release needs only storage and the
    /// policy).
    pub fn offline(policy: BanPolicy, allow: AllowList, store: Store) -> Self {
        BanCore {
            widener: Widener::new(policy.widen.clone()),
            just_widened: Vec::new(),
            policy,
            table: BanTable::offline(store, allow.clone()),
            allow,
            monitored: Monitored::default(),
        }
    }

    /// A new policy (a reload): durations, escalation, the cap, the table
    /// bound and the mode apply from the next decision on. `newly_allowed`
    /// are the entries the reload added to the allow-list (already in
    /// force at accept): live time-outs inside them are released at once
    /// (their history kept), and the kernel's allow-list is rewritten. The
    /// aggregation lengths are the caller's to keep (entries are keyed by
    /// them).
    pub fn set_policy(
        &mut self,
        policy: BanPolicy,
        newly_allowed: &[Cidr],
        now_ms: u64,
    ) -> PolicyChange {
        self.table.set_max_entries(policy.max_entries);
        self.widener.set_policy(policy.widen.clone());
        self.policy = policy;
        let mut change = PolicyChange::default();
        for (prefix, _) in self.table.live(now_ms) {
            if newly_allowed.iter().any(|entry| entry.covers(&prefix))
                && let Ok(true) = self.table.release(&prefix, Ending::AllowListed)
            {
                change.released += 1;
            }
        }
        self.table.write_allow_list_to_kernel();
        change
    }

    /// Shares every time-out and admin release made here from now on with
    /// the fleet (remote ones are never sent back).
    pub fn set_fleet(&mut self, fleet: FleetOutlet) {
        self.table.set_fleet(fleet);
    }

    pub fn view(&self) -> Arc<BanView> {
        self.table.view().clone()
    }

    pub fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    pub fn allow(&self) -> &AllowList {
        &self.allow
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
    /// [`BanCore::ban`], with what the kernel saw kept in the record and
    /// told in words (`evidence`) in the log.
    pub fn ban_detected(
        &mut self,
        source: IpAddr,
        cause: BanCause,
        seen: model::KernelSeen,
        evidence: &str,
        now_ms: u64,
    ) -> BanOutcome {
        self.ban_for(source, cause, seen.to_first_bytes(), evidence, now_ms)
    }

    fn ban_for(
        &mut self,
        source: IpAddr,
        cause: BanCause,
        first_bytes: FirstBytes,
        evidence: &str,
        now_ms: u64,
    ) -> BanOutcome {
        if self.allow.contains(source) {
            log::info!("not timing out {source} ({cause}): allow-listed; {evidence}");
            return BanOutcome::AllowListed;
        }
        let prefix = self.policy.prefix_for(source);
        if self.policy.monitor
            && let Some(would) = self.monitored.live(&prefix, now_ms)
        {
            return BanOutcome::Monitored(would.clone());
        }
        match self.table.expiry(&prefix) {
            Some(expires) if expires > now_ms => return BanOutcome::AlreadyBanned(prefix),
            // Ended but not swept yet: released first, so that its history
            // counts (an offender retrying right at expiry still escalates).
            Some(_) => {
                let _ = self.table.release(&prefix, Ending::Expired);
            }
            None => {}
        }
        let history = self.table.history(&prefix);
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
        let duration = humantime::format_duration(decision.duration);
        if self.policy.monitor {
            log::info!(
                event = "would-timeout", prefix:% = prefix, source:% = source, cause = cause.name(),
                duration_s = decision.duration.as_secs(), repeat = decision.repeat, evidence = evidence;
                "would time out {prefix} for {duration} (monitor mode; cause {cause}, repeat {}, source {source}, {evidence})",
                decision.repeat,
            );
            self.table.stats().count_monitored(Some(cause));
            self.monitored.remember(record.clone());
            self.widen_after(prefix, now_ms);
            return BanOutcome::Monitored(record);
        }
        self.table.insert(&record, now_ms);
        log::info!(
            event = "timeout", prefix:% = prefix, source:% = source, cause = cause.name(),
            duration_s = decision.duration.as_secs(), repeat = decision.repeat,
            expires_at = crate::format_time(record.expires_at_ms).as_str(), evidence = evidence;
            "timed out {prefix} for {duration} (cause {cause}, repeat {}, source {source}, {evidence})",
            decision.repeat,
        );
        self.widen_after(prefix, now_ms);
        BanOutcome::Banned(record)
    }

    /// The prefixes widened since the last call (their live sessions are
    /// the registry's to close).
    pub fn take_widened(&mut self) -> Vec<Cidr> {
        std::mem::take(&mut self.just_widened)
    }

    /// A new time-out of `member` (made here, by an admin, or by another
    /// node): the wider prefixes it makes due are timed out.
    fn widen_after(&mut self, member: Cidr, now_ms: u64) {
        for due in self.widener.note(member, now_ms) {
            self.widen(due, now_ms);
        }
    }

    /// Times out a wider prefix over the time-outs inside it (cause
    /// `widened`, escalating as any other). Its members stay in the table
    /// until they end: the kernel map is not churned. The allow-list still
    /// wins inside it, at accept and in the kernel.
    fn widen(&mut self, due: Due, now_ms: u64) {
        let Due { prefix, members } = due;
        if self
            .table
            .expiry(&prefix)
            .is_some_and(|expires| expires > now_ms)
        {
            return; // an admin's, or another node's: it stands
        }
        let list = members
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let count = members.len();
        let window = humantime::format_duration(self.policy.widen.window);
        let history = self.table.history(&prefix);
        let decision = self.policy.decide(BanCause::Widened, history, now_ms);
        let from = model::WidenedFrom {
            count: u8::try_from(count).unwrap_or(u8::MAX),
            members,
        };
        let record = BanInfo {
            prefix,
            cause: BanCause::Widened.as_cause(),
            first_bytes: from.to_first_bytes(&prefix),
            banned_at_ms: now_ms,
            expires_at_ms: expiry_after(now_ms, decision.duration),
            repeat: decision.repeat,
            origin: Default::default(),
        };
        let duration = humantime::format_duration(decision.duration);
        if self.policy.monitor {
            if self.monitored.live(&prefix, now_ms).is_none() {
                log::info!(
                    event = "would-widen", prefix:% = prefix, cause = "widened",
                    duration_s = decision.duration.as_secs(), repeat = decision.repeat, members = list.as_str();
                    "would widen: would time out {prefix} for {duration} (monitor mode): {count} time-outs inside it within {window} ({list}); repeat {}",
                    decision.repeat,
                );
                self.table.stats().count_monitored(Some(BanCause::Widened));
                self.monitored.remember(record);
            }
            return;
        }
        self.table.insert(&record, now_ms);
        self.just_widened.push(prefix);
        log::info!(
            event = "timeout", prefix:% = prefix, cause = "widened",
            duration_s = decision.duration.as_secs(), repeat = decision.repeat,
            expires_at = crate::format_time(record.expires_at_ms).as_str(), members = list.as_str();
            "widened: timed out {prefix} for {duration}: {count} time-outs inside it within {window} ({list}); cause widened, repeat {}",
            decision.repeat,
        );
    }

    /// An admin's time-out of an address or prefix: no escalation, the
    /// allow-list wins.
    pub fn admin_ban(&mut self, ban: AdminBan, now_ms: u64) -> Result<BanInfo, BanError> {
        if self.policy.monitor {
            return Err(BanError::MonitorMode);
        }
        let forced = ban.force;
        let record = self.policy.admin_ban(ban, &self.allow, now_ms)?;
        self.table.insert(&record, now_ms);
        self.widen_after(record.prefix, now_ms);
        log::info!(
            event = "admin-timeout", prefix:% = record.prefix, cause = record.cause.as_str(),
            expires_at = crate::format_time(record.expires_at_ms).as_str(), forced = forced;
            "admin timed out {} until {} (cause {}{})",
            record.prefix,
            crate::format_time(record.expires_at_ms),
            record.cause,
            if forced { ", forced" } else { "" }
        );
        Ok(record)
    }

    /// An admin's pardon: releases the entry `prefix` means (for a single
    /// address, also the aggregated entry it falls in) and forgets its
    /// history. Answers which entry was released, if any.
    pub fn release(&mut self, prefix: Cidr) -> Result<Option<Cidr>, BanError> {
        for candidate in self.policy.release_candidates(prefix) {
            if self.table.release(&candidate, Ending::ReleasedByAdmin)? {
                return Ok(Some(candidate));
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
        if self.allow.overlapping(&prefix).is_some() {
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
                self.table.stats().count_monitored(None);
                self.monitored.remember(record);
                self.widen_after(prefix, now_ms);
            }
            return RemoteOutcome::Monitored;
        }
        // Another node's record lasts no longer than our own cap would.
        let mut record = record;
        record.expires_at_ms = record
            .expires_at_ms
            .min(expiry_after(now_ms, self.policy.max_duration));
        if self
            .table
            .expiry(&prefix)
            .is_some_and(|expires| expires >= record.expires_at_ms)
        {
            return RemoteOutcome::Superseded;
        }
        self.table.insert(&record, now_ms);
        crate::stats::bump(&self.table.stats().fleet_applied);
        log::info!(
            event = "remote-timeout", prefix:% = prefix, origin = origin.as_str(),
            cause = record.cause.as_str(), repeat = record.repeat,
            expires_at = crate::format_time(record.expires_at_ms).as_str();
            "timed out {prefix} until {} as node {origin} did (cause {}, repeat {})",
            crate::format_time(record.expires_at_ms),
            record.cause,
            record.repeat
        );
        self.widen_after(prefix, now_ms);
        RemoteOutcome::Applied
    }

    /// Another node's admin released `prefix`: the entry of exactly that
    /// prefix is released here too, and its history forgotten (a pardon
    /// everywhere). Says whether there was one. Not shared again.
    pub fn release_remote(&mut self, prefix: Cidr) -> Result<bool, BanError> {
        Ok(self.table.release(&prefix, Ending::ReleasedRemotely)?)
    }

    /// Releases every time-out that ended at or before `now_ms`; returns
    /// how many.
    pub fn release_expired(&mut self, now_ms: u64) -> usize {
        self.table.release_expired(now_ms)
    }

    /// One page of the stored time-outs of `cause`, in prefix order.
    pub fn list_by_cause(
        &self,
        cause: &Cause,
        after: Option<&Cidr>,
        limit: usize,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), BanError> {
        Ok(self
            .table
            .list_by_cause(cause, after, limit, crate::now_ms())?)
    }

    /// One page of the stored table, in prefix order.
    pub fn list(
        &self,
        after: Option<&Cidr>,
        limit: usize,
    ) -> Result<(Vec<BanInfo>, Option<Cidr>), BanError> {
        Ok(self.table.list(after, limit)?)
    }

    /// What covers `target`, its table entry's escalation history, whether
    /// the kernel holds the covering entry, and (monitor mode) what would
    /// be in force.
    pub fn show(&mut self, target: Cidr, now_ms: u64) -> Result<model::BanReport, BanError> {
        let entry = if target.is_host() {
            self.policy.prefix_for(target.addr())
        } else {
            target
        };
        let window_ms =
            u64::try_from(self.policy.escalation_window.as_millis()).unwrap_or(u64::MAX);
        let mut report = self.table.report(target, entry, window_ms, now_ms)?;
        report.monitored = self.monitored.live(&entry, now_ms).cloned();
        Ok(report)
    }

    /// Makes every ban so far durable.
    pub fn flush(&self) -> Result<(), BanError> {
        Ok(self.table.flush()?)
    }

    /// Drops history that can no longer make a ban escalate (on a thread
    /// of its own).
    pub fn purge_history_in_background(&self, now_ms: u64) {
        self.table
            .purge_history_in_background(self.policy.escalation_cutoff(now_ms));
    }

    /// Records how long a time-out took from the offence to the table.
    pub(crate) fn observe_time_to_ban(&self, elapsed: Duration) {
        self.table.stats().time_to_ban_seconds.observe(elapsed);
    }

    /// The expiry of the entry of exactly `prefix`, if the table holds it.
    pub fn expiry(&self, prefix: &Cidr) -> Option<u64> {
        self.table.expiry(prefix)
    }

    /// Live entries in memory.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A new kernel table (the watchdog attached the program again): the
    /// live time-outs and the allow-list are replayed into it.
    pub fn replace_kernel(&mut self, kernel: Box<dyn KernelTable>, now_ms: u64) -> KernelReplay {
        self.table.replace_kernel(kernel, now_ms)
    }
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
mod tests;
