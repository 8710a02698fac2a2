//! Ban policy: how long a cause times a source out, how repeat offenders
//! escalate, which prefix a source is aggregated into, what an admin may
//! time out, and how large the table may grow. Pure functions, no I/O (who
//! is never timed out is the [`AllowList`], shared with the acceptors).

use std::net::IpAddr;
use std::time::Duration;

use model::Cidr;
use model::ban::{BanCause, BanInfo, Cause, CauseClass, FirstBytes};
use protocol::Rejection;
use storage::History;

use crate::BanError;
use crate::allow_list::AllowList;
use crate::widen::WidenPolicy;

/// The ban cause of a rejected first message: the protocol says what was
/// wrong, the ban side names it.
pub fn cause_of(rejection: &Rejection) -> BanCause {
    match rejection {
        Rejection::BadMagic => BanCause::BadMagic,
        Rejection::BadVersion(_) => BanCause::BadVersion,
        Rejection::BadPattern(_) => BanCause::BadPattern,
        Rejection::BadLength { .. } => BanCause::BadLength,
        Rejection::BadMac1 => BanCause::BadMac1,
        Rejection::HandshakeFailed => BanCause::HandshakeFailed,
        Rejection::AnonymousNotAllowed | Rejection::Unauthorized(_) => BanCause::Unauthorized,
        Rejection::Replayed => BanCause::Replayed,
        Rejection::FutureTimestamp => BanCause::FutureTimestamp,
    }
}

/// `now_ms + duration`, saturating: no duration, however absurd, wraps an
/// expiry into the past.
pub fn expiry_after(now_ms: u64, duration: Duration) -> u64 {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(millis)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Base time-out per kind of cause (OpenSSH PerSourcePenalties style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations {
    /// Bytes that are not penaltybox at all: bad magic, version, pattern, length.
    pub non_protocol: Duration,
    /// A penaltybox client that failed to authenticate: bad mac1, bad
    /// handshake, unauthorized key, replay.
    pub handshake_failure: Duration,
    pub handshake_timeout: Duration,
    pub session_violation: Duration,
    /// An admin's `bans add` without `--for`.
    pub admin_default: Duration,
    /// The kernel detectors' causes.
    pub port_scan: Duration,
    pub syn_flood: Duration,
    pub bad_tcp_flags: Duration,
    pub stray_segments: Duration,
    pub unparsed_flood: Duration,
    /// A prefix widened over the time-outs inside it (`crate::widen`).
    pub widened: Duration,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            non_protocol: Duration::from_secs(15 * 60),
            handshake_failure: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(60),
            session_violation: Duration::from_secs(15 * 60),
            admin_default: Duration::from_secs(60 * 60),
            port_scan: Duration::from_secs(60 * 60),
            syn_flood: Duration::from_secs(10 * 60),
            bad_tcp_flags: Duration::from_secs(60 * 60),
            stray_segments: Duration::from_secs(60 * 60),
            unparsed_flood: Duration::from_secs(60 * 60),
            widened: Duration::from_secs(60 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanPolicy {
    pub durations: Durations,
    /// A source banned again within this long of its previous ban gets
    /// double the previous time-out (fail2ban's bantime.increment).
    pub escalation_window: Duration,
    /// Escalation never goes past this.
    pub max_duration: Duration,
    /// Aggregation: one entry per IPv4 /n and per IPv6 /m.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Most live entries; when full the entry closest to expiry is evicted.
    pub max_entries: usize,
    /// Monitor mode (`bans.mode = "monitor"`): every would-be time-out is
    /// decided, logged and counted as usual, and none is enforced.
    pub monitor: bool,
    /// When time-outs widen to the network they come from.
    pub widen: WidenPolicy,
}

impl Default for BanPolicy {
    fn default() -> Self {
        BanPolicy {
            durations: Durations::default(),
            escalation_window: Duration::from_secs(24 * 3600),
            max_duration: Duration::from_secs(24 * 3600),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_entries: 1_000_000,
            monitor: false,
            widen: WidenPolicy::default(),
        }
    }
}

/// What the policy decided for one ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub duration: Duration,
    /// 1 for a first offence, n for the n-th within the escalation window.
    pub repeat: u32,
}

impl BanPolicy {
    /// The table entry a source falls into. IPv4-mapped IPv6 is IPv4.
    pub fn prefix_for(&self, ip: IpAddr) -> Cidr {
        Cidr::aggregate(ip, self.ipv4_prefix, self.ipv6_prefix)
    }

    /// The history-window start: bans before it no longer escalate.
    pub fn escalation_cutoff(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(millis(self.escalation_window))
    }

    pub fn base_duration(&self, cause: BanCause) -> Duration {
        match cause.class() {
            CauseClass::ForeignProtocol => self.durations.non_protocol,
            CauseClass::HandshakeFailure => self.durations.handshake_failure,
            CauseClass::HandshakeTimeout => self.durations.handshake_timeout,
            CauseClass::SessionViolation => self.durations.session_violation,
            CauseClass::PortScan => self.durations.port_scan,
            CauseClass::SynFlood => self.durations.syn_flood,
            CauseClass::BadTcpFlags => self.durations.bad_tcp_flags,
            CauseClass::StraySegments => self.durations.stray_segments,
            CauseClass::UnparsedFlood => self.durations.unparsed_flood,
            CauseClass::Widened => self.durations.widened,
        }
    }

    /// Applies escalation: a repeat within the window doubles the previous
    /// time-out (never below the cause's base, never above the maximum).
    pub fn decide(&self, cause: BanCause, previous: Option<History>, now_ms: u64) -> Decision {
        let base = self.base_duration(cause).min(self.max_duration);
        let window_ms = millis(self.escalation_window);
        match previous {
            Some(history) if now_ms < history.last_banned_at_ms.saturating_add(window_ms) => {
                let doubled = Duration::from_millis(history.last_duration_ms.saturating_mul(2));
                Decision {
                    duration: doubled.max(base).min(self.max_duration),
                    repeat: history.repeat.saturating_add(1),
                }
            }
            _ => Decision {
                duration: base,
                repeat: 1,
            },
        }
    }
}

/// An admin's request to time out a prefix.
#[derive(Debug, Clone)]
pub struct AdminBan {
    pub prefix: Cidr,
    /// `None`: `bans.admin_default`.
    pub duration: Option<Duration>,
    pub cause: Cause,
    /// Time out a prefix that covers allow-listed addresses or the
    /// requester's own address anyway. The allow-list still holds.
    pub force: bool,
    /// Where the request came from (none offline).
    pub requester: Option<IpAddr>,
}

impl BanPolicy {
    /// The record for an admin's ban (no escalation). The allow-list wins:
    /// a prefix inside an allow-list entry is refused; one that covers an
    /// entry, or the admin's own address, only with `force` (and even then
    /// the allow-listed addresses are never refused nor dropped).
    pub fn admin_ban(
        &self,
        ban: AdminBan,
        allow: &AllowList,
        now_ms: u64,
    ) -> Result<BanInfo, BanError> {
        let AdminBan {
            prefix,
            duration,
            cause,
            force,
            requester,
        } = ban;
        if let Some(entry) = allow.covering(&prefix) {
            return Err(BanError::AllowListed { prefix, entry });
        }
        if let Some(entry) = allow.inside(&prefix)
            && !force
        {
            return Err(BanError::CoversAllowListed { prefix, entry });
        }
        if let Some(requester) = requester
            && !force
            && prefix.contains(requester)
        {
            return Err(BanError::CoversRequester { prefix, requester });
        }
        let duration = match duration {
            None => self.durations.admin_default,
            Some(zero) if zero.is_zero() => return Err(BanError::ZeroDuration),
            Some(long) if long > self.max_duration => {
                return Err(BanError::OverMaxDuration {
                    requested: long,
                    max: self.max_duration,
                });
            }
            Some(duration) => duration,
        };
        Ok(BanInfo {
            prefix,
            cause,
            first_bytes: FirstBytes::default(),
            banned_at_ms: now_ms,
            expires_at_ms: expiry_after(now_ms, duration),
            repeat: 1,
            origin: Default::default(),
        })
    }

    /// Which table entries `bans remove PREFIX` may mean, most specific
    /// first: the prefix itself, and for a single address also the
    /// aggregated entry it falls in (`2001:db8::5` → `2001:db8::/64`).
    pub fn release_candidates(&self, prefix: Cidr) -> Vec<Cidr> {
        let aggregated = self.prefix_for(prefix.addr());
        if prefix.is_host() && aggregated != prefix {
            vec![prefix, aggregated]
        } else {
            vec![prefix]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(prefix: &str, force: bool, requester: Option<&str>) -> AdminBan {
        AdminBan {
            prefix: prefix.parse().unwrap(),
            duration: None,
            cause: "test".parse().unwrap(),
            force,
            requester: requester.map(|r| r.parse().unwrap()),
        }
    }

    #[test]
    fn admin_bans_that_cover_the_allow_list_or_the_admin_need_force() {
        let policy = BanPolicy::default();
        let allow = AllowList::new(
            vec![
                "127.0.6.250/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            &[],
        );
        let refused = |ban| policy.admin_ban(ban, &allow, 0).unwrap_err();
        assert!(matches!(
            refused(admin("127.0.6.0/24", false, None)),
            BanError::CoversAllowListed { .. }
        ));
        assert!(matches!(
            refused(admin("0.0.0.0/0", false, None)),
            BanError::CoversAllowListed { .. }
        ));
        assert!(
            matches!(
                refused(admin("10.1.0.0/16", true, None)),
                BanError::AllowListed { .. }
            ),
            "inside an entry: never, even forced"
        );
        assert!(matches!(
            refused(admin("192.0.2.0/24", false, Some("192.0.2.9"))),
            BanError::CoversRequester { .. }
        ));
        assert!(
            policy
                .admin_ban(admin("127.0.6.0/24", true, None), &allow, 0)
                .is_ok()
        );
        assert!(
            policy
                .admin_ban(admin("192.0.2.0/24", true, Some("192.0.2.9")), &allow, 0)
                .is_ok()
        );
        assert!(
            policy
                .admin_ban(
                    admin("192.0.2.0/24", false, Some("198.51.100.1")),
                    &allow,
                    0
                )
                .is_ok()
        );
    }

    const MIN: u64 = 60_000;

    fn history(at: u64, duration: u64, repeat: u32) -> Option<History> {
        Some(History {
            last_banned_at_ms: at,
            last_duration_ms: duration,
            repeat,
        })
    }

    #[test]
    fn causes_map_to_their_durations() {
        let policy = BanPolicy::default();
        let foreign = cause_of(&Rejection::BadMagic);
        let auth = cause_of(&Rejection::BadMac1);
        assert_eq!(policy.base_duration(foreign), Duration::from_secs(900));
        assert_eq!(policy.base_duration(auth), Duration::from_secs(60));
        assert_eq!(
            policy.base_duration(BanCause::HandshakeTimeout),
            Duration::from_secs(60)
        );
        assert_eq!(
            policy.base_duration(BanCause::SessionViolation),
            Duration::from_secs(900)
        );
        for (cause, minutes) in [
            (BanCause::PortScan, 60),
            (BanCause::SynFlood, 10),
            (BanCause::BadTcpFlags, 60),
            (BanCause::StraySegments, 60),
            (BanCause::UnparsedFlood, 60),
        ] {
            assert_eq!(
                policy.base_duration(cause),
                Duration::from_secs(minutes * 60)
            );
        }
        for rejection in [
            Rejection::BadMagic,
            Rejection::BadVersion(9),
            Rejection::BadPattern(9),
            Rejection::BadLength {
                declared: 1,
                expected: 2,
            },
        ] {
            assert_eq!(
                cause_of(&rejection).class(),
                CauseClass::ForeignProtocol,
                "{rejection}"
            );
            assert!(rejection.is_foreign_protocol());
        }
    }

    #[test]
    fn escalation_doubles_within_the_window_up_to_the_maximum() {
        let policy = BanPolicy::default();
        let cause = BanCause::BadMagic;
        let now = 100 * 24 * 60 * MIN;
        assert_eq!(
            policy.decide(cause, None, now).duration,
            Duration::from_secs(900)
        );
        let second = policy.decide(cause, history(now - 20 * MIN, 15 * MIN, 1), now);
        assert_eq!(
            second,
            Decision {
                duration: Duration::from_secs(1800),
                repeat: 2
            }
        );
        // A cheap previous ban does not lower a costlier cause's base.
        let after_auth = policy.decide(cause, history(now - 5 * MIN, MIN, 1), now);
        assert_eq!(after_auth.duration, Duration::from_secs(900));
        let capped = policy.decide(cause, history(now - MIN, 20 * 60 * MIN, 7), now);
        assert_eq!(
            capped,
            Decision {
                duration: Duration::from_secs(24 * 3600),
                repeat: 8
            }
        );
        // Outside the window: a first offence again.
        let stale = policy.decide(cause, history(now - 25 * 60 * MIN, 15 * MIN, 3), now);
        assert_eq!(
            stale,
            Decision {
                duration: Duration::from_secs(900),
                repeat: 1
            }
        );
    }

    #[test]
    fn expiries_saturate() {
        assert_eq!(expiry_after(5, Duration::from_millis(10)), 15);
        assert_eq!(expiry_after(5, Duration::MAX), u64::MAX);
        assert_eq!(expiry_after(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
    }

    #[test]
    fn aggregation() {
        let mut policy = BanPolicy::default();
        assert_eq!(
            policy
                .prefix_for("2001:db8:1:2:3:4:5:6".parse().unwrap())
                .to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            policy
                .prefix_for("::ffff:192.0.2.1".parse().unwrap())
                .to_string(),
            "192.0.2.1/32"
        );
        policy.ipv4_prefix = 24;
        assert_eq!(
            policy.prefix_for("192.0.2.1".parse().unwrap()).to_string(),
            "192.0.2.0/24"
        );
    }
}
