//! Who is never timed out: `bans.allow` and the trusted proxies (a proxy
//! carries every client, so it must never be refused itself).
//!
//! One list, one handle: the acceptors read it when a refused source turns
//! out to be covered by a time-out, the ban core reads it for every
//! decision and writes it into the kernel table, and a reload replaces the
//! configured part (the proxies are fixed at start). Cloning the handle
//! shares the list.

use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use model::Cidr;

#[derive(Clone, Default)]
pub struct AllowList {
    inner: Arc<RwLock<Entries>>,
}

#[derive(Default)]
struct Entries {
    /// `bans.allow`, as configured (replaced by a reload).
    configured: Vec<Cidr>,
    /// `proxy.trusted`, joined in here and nowhere else.
    proxies: Vec<Cidr>,
}

impl Entries {
    fn iter(&self) -> impl Iterator<Item = &Cidr> {
        self.configured.iter().chain(&self.proxies)
    }
}

impl AllowList {
    pub fn new(configured: Vec<Cidr>, trusted_proxies: &[Cidr]) -> Self {
        AllowList {
            inner: Arc::new(RwLock::new(Entries {
                configured,
                proxies: trusted_proxies.to_vec(),
            })),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Is `ip` allow-listed?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.read().iter().any(|entry| entry.contains(ip))
    }

    /// The entry that covers all of `prefix`, if one does.
    pub fn covering(&self, prefix: &Cidr) -> Option<Cidr> {
        self.read()
            .iter()
            .find(|entry| entry.covers(prefix))
            .copied()
    }

    /// An entry that lies inside `prefix`, if one does.
    pub fn inside(&self, prefix: &Cidr) -> Option<Cidr> {
        self.read()
            .iter()
            .find(|entry| prefix.covers(entry))
            .copied()
    }

    /// An entry that shares addresses with `prefix`, if one does.
    pub fn overlapping(&self, prefix: &Cidr) -> Option<Cidr> {
        self.read()
            .iter()
            .find(|entry| entry.overlaps(prefix))
            .copied()
    }

    /// Every entry, proxies included (what the kernel's allow-list holds).
    pub fn entries(&self) -> Vec<Cidr> {
        self.read().iter().copied().collect()
    }

    /// Replaces the configured entries (a reload; the proxies stay).
    /// Answers the entries that were not on the list before.
    pub fn replace(&self, configured: Vec<Cidr>) -> Vec<Cidr> {
        let mut entries = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new: Vec<Cidr> = configured
            .iter()
            .filter(|entry| !entries.iter().any(|old| old == *entry))
            .copied()
            .collect();
        entries.configured = configured;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn proxies_stay_through_a_reload_and_only_new_entries_are_news() {
        let allow = AllowList::new(vec![p("10.0.0.0/8")], &[p("192.0.2.10")]);
        let reader = allow.clone();
        assert!(reader.contains("10.9.9.9".parse().unwrap()));
        assert!(reader.contains("::ffff:192.0.2.10".parse().unwrap()));
        assert_eq!(reader.covering(&p("10.1.0.0/16")), Some(p("10.0.0.0/8")));
        assert_eq!(reader.inside(&p("192.0.2.0/24")), Some(p("192.0.2.10")));
        assert_eq!(reader.overlapping(&p("0.0.0.0/0")), Some(p("10.0.0.0/8")));
        let new = allow.replace(vec![p("10.0.0.0/8"), p("198.51.100.0/24")]);
        assert_eq!(new, vec![p("198.51.100.0/24")]);
        assert!(reader.contains("198.51.100.7".parse().unwrap()));
        allow.replace(Vec::new());
        assert!(!reader.contains("10.9.9.9".parse().unwrap()));
        assert_eq!(reader.entries(), vec![p("192.0.2.10")], "the proxy stays");
    }
}
