//! Prefix widening: a scanner that rotates through its network costs one
//! time-out per address (an IPv6 scanner with a /48 has 65,536 /64s), each
//! paid for with a parsed connection. When `members` distinct time-outs of
//! one family fall inside one wider prefix within `window`, the wider
//! prefix is timed out ([`crate::BanCore`] makes the record, cause
//! `widened`); it is then a member of the next step up itself.
//!
//! This is the bookkeeping only: which wide prefixes have seen which
//! members lately. Memory is bounded: at most [`MAX_WATCHED`] wide
//! prefixes are watched, the least recently touched forgotten first, and
//! each keeps at most `members` of its members (the newest).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use model::Cidr;

/// When and how far time-outs widen (`[bans.widen]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidenPolicy {
    pub enabled: bool,
    /// Distinct time-outs inside one wider prefix that time it out.
    pub members: usize,
    /// Within how long of each other they must fall.
    pub window: Duration,
    /// The wider lengths, narrowest first: IPv4 and IPv6.
    pub ipv4_steps: Vec<u8>,
    pub ipv6_steps: Vec<u8>,
}

impl Default for WidenPolicy {
    /// Four time-outs within an hour: a rotating scanner shows that many
    /// within minutes, while four unrelated offenders in one IPv6 /56 (a
    /// single customer's delegation) or one IPv4 /24 within an hour are
    /// rare. The widest steps, /48 and /24, are a site's or a customer's
    /// allocation, never a provider's (/32 and wider).
    fn default() -> Self {
        WidenPolicy {
            enabled: true,
            members: 4,
            window: Duration::from_secs(3600),
            ipv4_steps: vec![24],
            ipv6_steps: vec![56, 48],
        }
    }
}

impl WidenPolicy {
    fn steps(&self, addr: IpAddr) -> &[u8] {
        match addr {
            IpAddr::V4(_) => &self.ipv4_steps,
            IpAddr::V6(_) => &self.ipv6_steps,
        }
    }
}

/// A wider prefix now due for a time-out, and the members that made it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub prefix: Cidr,
    pub members: Vec<Cidr>,
}

/// Wide prefixes watched at most (each about 100 bytes with four members).
pub const MAX_WATCHED: usize = 65_536;

#[derive(Default)]
pub struct Widener {
    policy: WidenPolicy,
    /// Wide prefix → its recent members and when each was timed out.
    watched: HashMap<Cidr, Vec<(Cidr, u64)>>,
    /// Wide prefixes in the order they were first watched, for the bound
    /// (lazy: one forgotten meanwhile is skipped).
    order: VecDeque<Cidr>,
}

impl Widener {
    pub fn new(policy: WidenPolicy) -> Self {
        Widener {
            policy,
            ..Widener::default()
        }
    }

    /// A new policy (a reload); what is watched stays.
    pub fn set_policy(&mut self, policy: WidenPolicy) {
        self.policy = policy;
    }

    /// `member` was timed out at `now_ms`: the wide prefixes it now makes
    /// due, narrowest first. A due prefix is forgotten, so that it is due
    /// once; the caller times it out (or not: the allow-list, monitor
    /// mode), and does not note it again: it is already a member of the
    /// next step up, in place of the members it covers (each step wants
    /// `members` pieces of evidence, and a widened prefix is one).
    pub fn note(&mut self, member: Cidr, now_ms: u64) -> Vec<Due> {
        if !self.policy.enabled || self.policy.members < 2 {
            return Vec::new();
        }
        let window_ms = u64::try_from(self.policy.window.as_millis()).unwrap_or(u64::MAX);
        let since = now_ms.saturating_sub(window_ms);
        let members = self.policy.members;
        let mut due: Vec<Due> = Vec::new();
        let mut steps = self.policy.steps(member.addr()).to_vec();
        steps.sort_unstable_by(|a, b| b.cmp(a));
        for len in steps {
            if len >= member.len() {
                continue;
            }
            let Ok(wide) = Cidr::new(member.addr(), len) else {
                continue;
            };
            let seen = self.watched.entry(wide).or_insert_with(|| {
                self.order.push_back(wide);
                Vec::new()
            });
            // What a narrower step just widened stands for its members.
            let newest = due.last().map_or(member, |narrower| narrower.prefix);
            seen.retain(|(prefix, at)| *at >= since && !newest.covers(prefix));
            seen.push((newest, now_ms));
            if seen.len() > members {
                seen.remove(0);
            }
            if seen.len() >= members {
                let members = seen.iter().map(|(prefix, _)| *prefix).collect();
                self.watched.remove(&wide);
                due.push(Due {
                    prefix: wide,
                    members,
                });
            }
        }
        self.hold_bound();
        due
    }

    fn hold_bound(&mut self) {
        while self.watched.len() > MAX_WATCHED {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.watched.remove(&oldest);
                }
                None => break,
            }
        }
        // The order list also holds prefixes forgotten since (due ones):
        // it is compacted once it is twice as long as what it indexes.
        if self.order.len() > 2 * MAX_WATCHED.max(self.watched.len()) {
            let watched = &self.watched;
            self.order.retain(|prefix| watched.contains_key(prefix));
        }
    }

    /// Wide prefixes watched now.
    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.watched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    const MIN: u64 = 60_000;

    #[test]
    fn four_time_outs_in_one_wider_prefix_within_the_window_make_it_due() {
        let mut widener = Widener::new(WidenPolicy::default());
        let t = 1_000 * MIN;
        assert!(widener.note(cidr("198.18.78.1/32"), t).is_empty());
        assert!(widener.note(cidr("198.18.78.2/32"), t + MIN).is_empty());
        // The same member again is one member.
        assert!(widener.note(cidr("198.18.78.2/32"), t + 2 * MIN).is_empty());
        assert!(widener.note(cidr("198.18.79.3/32"), t + 2 * MIN).is_empty());
        assert!(widener.note(cidr("198.18.78.3/32"), t + 3 * MIN).is_empty());
        let due = widener.note(cidr("198.18.78.4/32"), t + 4 * MIN);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].prefix, cidr("198.18.78.0/24"));
        assert_eq!(due[0].members.len(), 4);
        // Due once: the next member starts counting again.
        assert!(widener.note(cidr("198.18.78.5/32"), t + 5 * MIN).is_empty());
    }

    #[test]
    fn members_older_than_the_window_do_not_count() {
        let mut widener = Widener::new(WidenPolicy::default());
        let t = 1_000 * MIN;
        for (i, at) in [0, 10, 20].into_iter().enumerate() {
            assert!(
                widener
                    .note(cidr(&format!("198.18.78.{i}/32")), t + at * MIN)
                    .is_empty()
            );
        }
        // 61 minutes after the first: it has left the window.
        assert!(
            widener
                .note(cidr("198.18.78.9/32"), t + 61 * MIN)
                .is_empty()
        );
        assert_eq!(widener.note(cidr("198.18.78.10/32"), t + 62 * MIN).len(), 1);
    }

    #[test]
    fn ipv6_widens_step_by_step_and_a_widened_prefix_counts_once_for_the_next() {
        let mut widener = Widener::new(WidenPolicy {
            members: 3,
            ..WidenPolicy::default()
        });
        let t = 1_000 * MIN;
        // Three /64s of one /56: the /56 is due, and stands for them in
        // the /48, which has one member so far.
        let mut due = Vec::new();
        for i in 1..=3 {
            due = widener.note(cidr(&format!("2001:db8:77:{i}::/64")), t);
        }
        let prefixes: Vec<Cidr> = due.iter().map(|d| d.prefix).collect();
        assert_eq!(prefixes, [cidr("2001:db8:77::/56")]);
        // Two /64s of other /56s: the /48.
        assert!(widener.note(cidr("2001:db8:77:100::/64"), t).is_empty());
        let due = widener.note(cidr("2001:db8:77:200::/64"), t);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].prefix, cidr("2001:db8:77::/48"));
        assert_eq!(
            due[0].members,
            [
                cidr("2001:db8:77::/56"),
                cidr("2001:db8:77:100::/64"),
                cidr("2001:db8:77:200::/64")
            ]
        );
        // /64s spread over /56s: the /48 counts each.
        let mut widener = Widener::new(WidenPolicy::default());
        for i in 1..=3 {
            assert!(
                widener
                    .note(cidr(&format!("2001:db8:78:{i}00::/64")), t)
                    .is_empty()
            );
        }
        // A wide time-out (a remote one, an admin's) is a member as it is.
        let due = widener.note(cidr("2001:db8:78:400::/56"), t);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].prefix, cidr("2001:db8:78::/48"));
        // Nothing wider than the widest step.
        assert!(widener.note(cidr("2001:db8:78::/48"), t).is_empty());
    }

    #[test]
    fn off_means_off_and_the_watch_is_bounded() {
        let mut widener = Widener::new(WidenPolicy {
            enabled: false,
            ..WidenPolicy::default()
        });
        for i in 1..=8 {
            assert!(
                widener
                    .note(cidr(&format!("198.18.78.{i}/32")), 0)
                    .is_empty()
            );
        }
        let mut widener = Widener::new(WidenPolicy::default());
        for i in 0..(MAX_WATCHED as u32 + 100) {
            let addr = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8));
            widener.note(Cidr::host(addr.into()), 0);
        }
        assert_eq!(widener.watched(), MAX_WATCHED);
        assert!(widener.order.len() <= 2 * MAX_WATCHED + 1);
    }
}
