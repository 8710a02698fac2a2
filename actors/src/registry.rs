//! The `BanRegistry` actor: a thin mailbox over the [`BanCore`], so the core
//! has one writer and every source of time-outs is serialised through it.
//!
//! Beyond the core it keeps one thing of its own: the roster of established
//! sessions by table prefix, so that when a prefix is timed out by any path
//! (a session, an admin, the kernel detectors, the fleet) its live sessions
//! are told to close at once ([`Kick`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use model::Cidr;
use model::ban::{BanCause, BanInfo, FirstBytes};

use crate::ban_core::{BanCore, BanOutcome, RemoteOutcome};
use crate::policy::AdminBan;
use crate::{BanError, now_ms};

/// How often expired time-outs are released (logged, removed from storage).
/// The view releases a source exactly on time regardless; this only bounds
/// how late the log line and the storage delete come.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often stale escalation history is purged.
const HISTORY_PURGE_INTERVAL: Duration = Duration::from_secs(600);

pub struct BanRegistry {
    core: BanCore,
    roster: Roster,
}

/// A session saw a protocol violation from `peer`. Answers how long the
/// source is timed out now, in seconds (`None`: it is not: allow-listed,
/// or monitor mode), for a rejection notice that says so.
#[derive(Message, Debug)]
#[rtype(result = "Option<u64>")]
pub struct Ban {
    pub peer: IpAddr,
    pub cause: BanCause,
    pub first_bytes: FirstBytes,
    /// When the offence was seen (time-to-ban is measured from here).
    pub detected_at: Instant,
}

/// The kernel detectors found `source` (a port scan, a SYN flood, bad TCP
/// flags, stray segments); `evidence` is what they saw, for the log.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct KernelDetection {
    pub source: IpAddr,
    pub cause: BanCause,
    pub seen: model::KernelSeen,
    pub evidence: String,
    /// When the event was read from the kernel.
    pub detected_at: Instant,
}

/// An admin's ban of an address or CIDR prefix, from `session` if it came
/// over the wire (that session is not kicked: it gets its answer).
#[derive(Message, Debug)]
#[rtype(result = "Result<BanInfo, BanError>")]
pub struct AdminBanFrom {
    pub ban: AdminBan,
    pub session: Option<u64>,
}

/// An admin's pardon. Answers which entry was released, if any.
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<Cidr>, BanError>")]
pub struct AdminRelease {
    pub prefix: Cidr,
}

#[derive(Message, Debug)]
#[rtype(result = "Result<(Vec<BanInfo>, Option<Cidr>), BanError>")]
pub struct ListBans {
    pub after: Option<Cidr>,
    pub limit: usize,
}

/// An admin's question: what covers this address or prefix?
#[derive(Message, Debug)]
#[rtype(result = "Result<model::BanReport, BanError>")]
pub struct ShowBan {
    pub target: Cidr,
}

/// The kernel watchdog has a new kernel table (the program was attached
/// again): replay the live time-outs into it.
#[derive(Message)]
#[rtype(result = "crate::KernelReplay")]
pub struct ReplaceKernel {
    pub table: Box<dyn crate::KernelTable>,
}

/// Other fleet nodes' time-outs, from the bucket, in its order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ApplyRemote {
    pub records: Vec<BanInfo>,
}

/// Another fleet node's admin released this prefix.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ReleaseRemote {
    pub prefix: Cidr,
}

/// A reload's new policy, and the entries it added to the allow-list
/// (already in force at accept).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct SetPolicy {
    pub policy: crate::BanPolicy,
    pub newly_allowed: Vec<Cidr>,
}

/// A blocklist feed's refresh: applied as a difference.
#[derive(Message, Debug)]
#[rtype(result = "crate::FeedApplied")]
pub struct ApplyFeed {
    pub list: crate::FeedList,
}

/// One page of the time-outs of one cause.
#[derive(Message, Debug)]
#[rtype(result = "Result<(Vec<BanInfo>, Option<Cidr>), BanError>")]
pub struct ListBansByCause {
    pub cause: model::ban::Cause,
    pub after: Option<Cidr>,
    pub limit: usize,
}

/// `bans import`: admin time-outs of many prefixes.
#[derive(Message, Debug)]
#[rtype(result = "crate::Imported")]
pub struct ImportBans {
    pub prefixes: Vec<Cidr>,
    pub duration: Option<Duration>,
    pub cause: model::ban::Cause,
    pub force: bool,
    pub requester: Option<IpAddr>,
    pub session: Option<u64>,
}

/// Makes every ban so far durable (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), BanError>")]
pub struct Flush;

/// Sent to a session: its source was just timed out; close now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Kick {
    pub prefix: Cidr,
}

/// A session finished its handshake and may now be kicked.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    pub id: u64,
    pub peer: IpAddr,
    pub session: Recipient<Kick>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub id: u64,
    pub peer: IpAddr,
}

impl BanRegistry {
    pub fn new(core: BanCore) -> Self {
        BanRegistry {
            core,
            roster: Roster::default(),
        }
    }

    /// Tells every live session inside `prefix` to close, except those of
    /// allow-listed sources (a forced time-out may cover them) and `spare`.
    fn kick_covered(&mut self, prefix: Cidr, spare: Option<u64>) {
        let allow = self.core.allow();
        let covered = |id: u64, peer: IpAddr| {
            Some(id) != spare && prefix.contains(peer) && !allow.contains(peer)
        };
        let aggregate = self.core.prefix_for(prefix.addr());
        let kicked = if prefix.len() >= aggregate.len() {
            // Inside one roster entry: only its sessions can be covered.
            self.roster.kick(&aggregate, covered, prefix)
        } else {
            // A wider prefix (an admin's CIDR): every entry it contains.
            let keys: Vec<Cidr> = self
                .roster
                .sessions
                .keys()
                .filter(|key| prefix.covers(key))
                .copied()
                .collect();
            keys.iter()
                .map(|key| self.roster.kick(key, covered, prefix))
                .sum()
        };
        if kicked > 0 {
            log::info!("closing {kicked} live sessions from {prefix}: timed out");
        }
    }

    /// Closes the live sessions inside the prefixes the core widened to.
    fn kick_widened(&mut self) {
        for prefix in self.core.take_widened() {
            self.kick_covered(prefix, None);
        }
    }

    /// Closes every live session a time-out now covers, whatever made it
    /// (a feed's refresh: its entries are many, the sessions few).
    fn kick_all_covered(&mut self) {
        let now = now_ms();
        let view = self.core.view();
        let allow = self.core.allow().clone();
        let keys: Vec<Cidr> = self.roster.sessions.keys().copied().collect();
        let mut kicked = 0;
        for key in keys {
            kicked += self.roster.kick(
                &key,
                |_, peer| view.is_banned(peer, now) && !allow.contains(peer),
                key,
            );
        }
        if kicked > 0 {
            log::info!("closing {kicked} live sessions: a feed now times their sources out");
        }
    }
}

/// Established sessions, by the table prefix of their source.
#[derive(Default)]
struct Roster {
    sessions: HashMap<Cidr, Vec<(u64, IpAddr, Recipient<Kick>)>>,
}

impl Roster {
    /// Kicks the sessions of `key` whose peer passes `covered`; they are
    /// dropped from the roster at once (their `SessionClosed` is a no-op).
    fn kick(&mut self, key: &Cidr, covered: impl Fn(u64, IpAddr) -> bool, prefix: Cidr) -> usize {
        let Some(list) = self.sessions.get_mut(key) else {
            return 0;
        };
        let before = list.len();
        list.retain(|(id, peer, session)| {
            if covered(*id, *peer) {
                session.do_send(Kick { prefix });
                false
            } else {
                true
            }
        });
        let kicked = before - list.len();
        if list.is_empty() {
            self.sessions.remove(key);
        }
        kicked
    }
}

impl Actor for BanRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_INTERVAL, |registry, _| {
            registry.core.release_expired(now_ms());
        });
        ctx.run_interval(HISTORY_PURGE_INTERVAL, |registry, _| {
            registry.core.purge_history_in_background(now_ms());
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Err(error) = self.core.flush() {
            log::error!("final flush of the ban table failed: {error}");
        }
    }
}

impl Handler<Ban> for BanRegistry {
    type Result = Option<u64>;

    fn handle(&mut self, ban: Ban, _: &mut Self::Context) -> Option<u64> {
        let now = now_ms();
        let expires = match self.core.ban(ban.peer, ban.cause, ban.first_bytes, now) {
            BanOutcome::Banned(record) => {
                self.core.observe_time_to_ban(ban.detected_at.elapsed());
                self.kick_covered(record.prefix, None);
                self.kick_widened();
                record.expires_at_ms
            }
            BanOutcome::AlreadyBanned(prefix) => self.core.expiry(&prefix)?,
            BanOutcome::AllowListed | BanOutcome::Monitored(_) => return None,
        };
        Some(expires.saturating_sub(now).div_ceil(1000))
    }
}

impl Handler<KernelDetection> for BanRegistry {
    type Result = ();

    fn handle(&mut self, detected: KernelDetection, _: &mut Self::Context) {
        let outcome = self.core.ban_detected(
            detected.source,
            detected.cause,
            detected.seen,
            &detected.evidence,
            now_ms(),
        );
        if let BanOutcome::Banned(record) = outcome {
            self.core
                .observe_time_to_ban(detected.detected_at.elapsed());
            self.kick_covered(record.prefix, None);
            self.kick_widened();
        }
    }
}

impl Handler<SetPolicy> for BanRegistry {
    type Result = ();

    fn handle(&mut self, set: SetPolicy, _: &mut Self::Context) {
        let change = self
            .core
            .set_policy(set.policy, &set.newly_allowed, now_ms());
        if change.released > 0 {
            log::info!(
                "reload: released {} time-outs inside newly allow-listed prefixes",
                change.released
            );
        }
    }
}

impl Handler<ApplyRemote> for BanRegistry {
    type Result = ();

    fn handle(&mut self, remote: ApplyRemote, _: &mut Self::Context) {
        let now = now_ms();
        for record in remote.records {
            let prefix = record.prefix;
            if self.core.apply_remote(record, now) == RemoteOutcome::Applied {
                self.kick_covered(prefix, None);
            }
        }
        self.kick_widened();
    }
}

impl Handler<ReleaseRemote> for BanRegistry {
    type Result = ();

    fn handle(&mut self, remote: ReleaseRemote, _: &mut Self::Context) {
        if let Err(error) = self.core.release_remote(remote.prefix) {
            log::error!(
                "could not release {} as another node asked: {error}",
                remote.prefix
            );
        }
    }
}

impl Handler<AdminBanFrom> for BanRegistry {
    type Result = Result<BanInfo, BanError>;

    fn handle(&mut self, request: AdminBanFrom, _: &mut Self::Context) -> Self::Result {
        let record = self.core.admin_ban(request.ban, now_ms())?;
        self.kick_covered(record.prefix, request.session);
        self.kick_widened();
        Ok(record)
    }
}

impl Handler<ApplyFeed> for BanRegistry {
    type Result = actix::MessageResult<ApplyFeed>;

    fn handle(&mut self, feed: ApplyFeed, _: &mut Self::Context) -> Self::Result {
        let applied = self.core.apply_feed(feed.list, now_ms());
        if applied.added > 0 {
            self.kick_all_covered();
        }
        actix::MessageResult(applied)
    }
}

impl Handler<ListBansByCause> for BanRegistry {
    type Result = Result<(Vec<BanInfo>, Option<Cidr>), BanError>;

    fn handle(&mut self, list: ListBansByCause, _: &mut Self::Context) -> Self::Result {
        self.core
            .list_by_cause(&list.cause, list.after.as_ref(), list.limit)
    }
}

impl Handler<ImportBans> for BanRegistry {
    type Result = actix::MessageResult<ImportBans>;

    fn handle(&mut self, import: ImportBans, _: &mut Self::Context) -> Self::Result {
        let imported = self.core.import(
            &import.prefixes,
            import.duration,
            import.cause,
            import.force,
            import.requester,
            now_ms(),
        );
        if imported.added > 0 {
            for prefix in &import.prefixes {
                self.kick_covered(*prefix, import.session);
            }
            self.kick_widened();
        }
        actix::MessageResult(imported)
    }
}

impl Handler<ShowBan> for BanRegistry {
    type Result = Result<model::BanReport, BanError>;

    fn handle(&mut self, show: ShowBan, _: &mut Self::Context) -> Self::Result {
        self.core.show(show.target, now_ms())
    }
}

impl Handler<ReplaceKernel> for BanRegistry {
    type Result = actix::MessageResult<ReplaceKernel>;

    fn handle(&mut self, replace: ReplaceKernel, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.core.replace_kernel(replace.table, now_ms()))
    }
}

impl Handler<AdminRelease> for BanRegistry {
    type Result = Result<Option<Cidr>, BanError>;

    fn handle(&mut self, release: AdminRelease, _: &mut Self::Context) -> Self::Result {
        self.core.release(release.prefix)
    }
}

impl Handler<ListBans> for BanRegistry {
    type Result = Result<(Vec<BanInfo>, Option<Cidr>), BanError>;

    fn handle(&mut self, list: ListBans, _: &mut Self::Context) -> Self::Result {
        self.core.list(list.after.as_ref(), list.limit)
    }
}

impl Handler<Flush> for BanRegistry {
    type Result = Result<(), BanError>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.core.flush().inspect_err(|error| {
            log::error!("flush of the ban table failed: {error}");
        })
    }
}

impl Handler<SessionOpened> for BanRegistry {
    type Result = ();

    fn handle(&mut self, opened: SessionOpened, _: &mut Self::Context) {
        // Timed out while it was still in its handshake: close it now
        // rather than let it serve.
        if let Some((prefix, _)) = self.core.view().lookup(opened.peer, now_ms())
            && !self.core.allow().contains(opened.peer)
        {
            opened.session.do_send(Kick { prefix });
            return;
        }
        let key = self.core.prefix_for(opened.peer);
        self.roster
            .sessions
            .entry(key)
            .or_default()
            .push((opened.id, opened.peer, opened.session));
    }
}

impl Handler<SessionClosed> for BanRegistry {
    type Result = ();

    fn handle(&mut self, closed: SessionClosed, _: &mut Self::Context) {
        let key = self.core.prefix_for(closed.peer);
        if let Some(list) = self.roster.sessions.get_mut(&key) {
            list.retain(|(id, _, _)| *id != closed.id);
            if list.is_empty() {
                self.roster.sessions.remove(&key);
            }
        }
    }
}
