//! The `BanRegistry` actor: the one writer of the time-out table.
//!
//! It owns three copies of the table, each for one reader:
//! - the [`BanView`] (prefix → expiry) the acceptors check per connection;
//! - `by_expiry`, ordered by expiry, for the release sweep and for evicting
//!   the entry closest to expiry when the table is full;
//! - the sled `bans` tree (full records), for restarts and the admin list.
//!
//! A storage error never stops a ban: it is logged and counted, and the ban
//! stays in force in memory.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protocol::Cidr;
use protocol::message::{BanInfo, Cause, FirstBytes};
use storage::Store;

use crate::kernel::KernelSync;
use crate::now_ms;
use crate::policy::{BanCause, BanPolicy};
use crate::stats::{Stats, bump};
use crate::view::BanView;

/// How often expired time-outs are released (logged, removed from storage).
/// The view releases a source exactly on time regardless; this only bounds
/// how late the log line and the storage delete come.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often stale escalation history is purged.
const HISTORY_PURGE_INTERVAL: Duration = Duration::from_secs(600);

pub struct BanRegistry {
    policy: BanPolicy,
    view: Arc<BanView>,
    store: Store,
    stats: Arc<Stats>,
    by_expiry: BTreeSet<(u64, Cidr)>,
    kernel: Option<Box<dyn KernelSync>>,
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

/// A session saw a protocol violation from `peer`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Ban {
    pub peer: IpAddr,
    pub cause: BanCause,
    pub first_bytes: FirstBytes,
}

/// An admin's ban of an address or CIDR prefix.
#[derive(Message, Debug)]
#[rtype(result = "Result<BanInfo, String>")]
pub struct AdminBan {
    pub prefix: Cidr,
    pub duration: Option<Duration>,
    pub cause: Cause,
}

/// An admin's pardon. Answers which entry was removed, if any.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Cidr>, String>")]
pub struct Unban {
    pub prefix: Cidr,
}

#[derive(Message, Debug)]
#[rtype(result = "Result<(Vec<BanInfo>, Option<Cidr>), String>")]
pub struct ListBans {
    pub after: Option<Cidr>,
    pub limit: usize,
}

/// Makes every ban so far durable (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Flush;

impl BanRegistry {
    /// Loads the live bans from storage into the view; expired ones are
    /// discarded (and deleted) on the way.
    pub fn restore(
        policy: BanPolicy,
        store: Store,
        view: Arc<BanView>,
        stats: Arc<Stats>,
        kernel: Option<Box<dyn KernelSync>>,
    ) -> Result<(Self, BootReport), storage::StorageError> {
        let started = Instant::now();
        let loaded = store.bans().load_live(now_ms())?;
        let mut by_expiry = BTreeSet::new();
        for (prefix, expires) in &loaded.live {
            view.insert(*prefix, *expires);
            by_expiry.insert((*expires, *prefix));
        }
        let elapsed = started.elapsed();
        let mut registry = BanRegistry {
            policy,
            view,
            store,
            stats,
            by_expiry,
            kernel,
        };
        let kernel = registry.replay_into_kernel(&loaded.live);
        let report = BootReport {
            restored: loaded.live.len(),
            discarded: loaded.discarded,
            elapsed,
            kernel,
        };
        Ok((registry, report))
    }

    /// Makes the kernel table hold exactly the live bans: entries it has
    /// that storage no longer holds are removed, every live ban is written
    /// (in place: no clearing first, so no source is let through meanwhile).
    fn replay_into_kernel(&mut self, live: &[(Cidr, u64)]) -> Option<KernelReplay> {
        let kernel = self.kernel.as_mut()?;
        let started = Instant::now();
        let mut report = KernelReplay::default();
        let wanted: std::collections::HashSet<Cidr> =
            live.iter().map(|(prefix, _)| *prefix).collect();
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
        let failures = kernel.insert_all(live, now_ms());
        if let Some((prefix, error)) = failures.first() {
            log::warn!(
                "kernel table: cannot replay {prefix}: {error} ({} failures in all)",
                failures.len()
            );
        }
        report.failed += failures.len();
        report.replayed = live.len() - failures.len();
        self.stats
            .kernel_errors
            .fetch_add(report.failed as u64, std::sync::atomic::Ordering::Relaxed);
        report.elapsed = started.elapsed();
        Some(report)
    }

    fn kernel_insert(&mut self, prefix: &Cidr, expires_ms: u64) {
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(error) = kernel.insert(prefix, expires_ms, now_ms())
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

    pub fn view(&self) -> Arc<BanView> {
        self.view.clone()
    }

    /// Puts `prefix` in the table until `expires_ms`, evicting the entry
    /// closest to expiry if the table is full.
    fn insert(&mut self, ban: &BanInfo) {
        if let Some(old) = self.view.expiry(&ban.prefix) {
            self.by_expiry.remove(&(old, ban.prefix));
        } else if self.view.len() >= self.policy.max_entries {
            self.evict_one();
        }
        self.view.insert(ban.prefix, ban.expires_at_ms);
        self.by_expiry.insert((ban.expires_at_ms, ban.prefix));
        self.kernel_insert(&ban.prefix, ban.expires_at_ms);
        if let Err(error) = self.store.bans().put(ban) {
            log::error!(
                "could not persist the ban of {} (kept in memory): {error}",
                ban.prefix
            );
        }
        bump(&self.stats.bans_total);
    }

    fn evict_one(&mut self) {
        if let Some((expires, prefix)) = self.by_expiry.pop_first() {
            self.view.remove(&prefix);
            self.kernel_remove(&prefix);
            bump(&self.stats.bans_evicted);
            log::warn!(
                "time-out table full ({} entries): evicted {prefix}, {} before its expiry",
                self.policy.max_entries,
                remaining(expires)
            );
            if let Err(error) = self.store.bans().remove(&prefix) {
                log::error!("could not persist the eviction of {prefix}: {error}");
            }
        }
    }

    fn remove(&mut self, prefix: &Cidr) -> bool {
        match self.view.remove(prefix) {
            Some(expires) => {
                self.by_expiry.remove(&(expires, *prefix));
                self.kernel_remove(prefix);
                true
            }
            None => false,
        }
    }

    /// Releases every time-out that ended at or before `now`.
    fn expire(&mut self, now: u64) {
        while let Some(&(expires, prefix)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.view.remove(&prefix);
            self.kernel_remove(&prefix);
            log::info!("released {prefix}: time-out over");
            if let Err(error) = self.store.bans().remove(&prefix) {
                log::error!("could not persist the expiry of {prefix}: {error}");
            }
        }
    }
}

impl Actor for BanRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |registry, _| registry.expire(now_ms()));
        ctx.run_interval(HISTORY_PURGE_INTERVAL, |registry, _| {
            // A full scan of the history tree: off the actor's thread.
            let bans = registry.store.bans().clone();
            let before =
                now_ms().saturating_sub(registry.policy.escalation_window.as_millis() as u64);
            std::thread::spawn(move || match bans.purge_history(before) {
                Ok(0) => {}
                Ok(n) => log::debug!("purged {n} stale escalation records"),
                Err(error) => log::error!("could not purge escalation history: {error}"),
            });
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Err(error) = self.store.flush() {
            log::error!("final flush of the ban table failed: {error}");
        }
    }
}

impl Handler<Ban> for BanRegistry {
    type Result = ();

    fn handle(&mut self, ban: Ban, _: &mut Self::Context) {
        let now = now_ms();
        if self.policy.is_allowed(ban.peer) {
            log::info!(
                "not timing out {} ({}): allow-listed; first bytes {}",
                ban.peer,
                ban.cause,
                hex_preview(ban.first_bytes.as_slice())
            );
            return;
        }
        let prefix = self.policy.prefix_for(ban.peer);
        // Concurrent sessions of one source can all fail at once; the
        // first ban stands.
        if self
            .view
            .expiry(&prefix)
            .is_some_and(|expires| expires > now)
        {
            return;
        }
        let history = self.store.bans().history(&prefix).unwrap_or_else(|error| {
            log::error!("could not read the ban history of {prefix} (no escalation): {error}");
            None
        });
        let decision = self.policy.decide(&ban.cause, history, now);
        let record = BanInfo {
            prefix,
            cause: Cause::new(ban.cause.name()).expect("cause names are short"),
            first_bytes: ban.first_bytes,
            banned_at_ms: now,
            expires_at_ms: now + decision.duration.as_millis() as u64,
            repeat: decision.repeat,
        };
        self.insert(&record);
        log::info!(
            "timed out {prefix} for {} (cause {}, repeat {}, source {}, first bytes {})",
            humantime::format_duration(decision.duration),
            ban.cause,
            decision.repeat,
            ban.peer,
            hex_preview(ban.first_bytes.as_slice())
        );
    }
}

impl Handler<AdminBan> for BanRegistry {
    type Result = Result<BanInfo, String>;

    fn handle(&mut self, ban: AdminBan, _: &mut Self::Context) -> Self::Result {
        let record = self
            .policy
            .admin_ban(ban.prefix, ban.duration, ban.cause, now_ms())?;
        self.insert(&record);
        log::info!(
            "admin timed out {} until {} (cause {})",
            record.prefix,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(record.expires_at_ms)
            ),
            record.cause
        );
        Ok(record)
    }
}

impl Handler<Unban> for BanRegistry {
    type Result = Result<Option<Cidr>, String>;

    fn handle(&mut self, unban: Unban, _: &mut Self::Context) -> Self::Result {
        let candidates = self.policy.release_candidates(unban.prefix);
        for prefix in candidates {
            let in_memory = self.remove(&prefix);
            let stored = self
                .store
                .bans()
                .forget(&prefix)
                .map_err(|e| e.to_string())?;
            if in_memory || stored.is_some() {
                log::info!("admin released {prefix}");
                return Ok(Some(prefix));
            }
        }
        Ok(None)
    }
}

impl Handler<ListBans> for BanRegistry {
    type Result = Result<(Vec<BanInfo>, Option<Cidr>), String>;

    fn handle(&mut self, list: ListBans, _: &mut Self::Context) -> Self::Result {
        self.store
            .bans()
            .list(list.after.as_ref(), list.limit)
            .map_err(|e| e.to_string())
    }
}

impl Handler<Flush> for BanRegistry {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {
        if let Err(error) = self.store.flush() {
            log::error!("flush of the ban table failed: {error}");
        }
    }
}

fn remaining(expires_ms: u64) -> humantime::FormattedDuration {
    let secs = expires_ms.saturating_sub(now_ms()) / 1000;
    humantime::format_duration(Duration::from_secs(secs))
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
