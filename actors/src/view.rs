//! The read view of the time-out table: what an acceptor consults for every
//! connection, without a message round trip to the registry.
//!
//! A concurrent map from prefix to expiry, plus a count of entries per
//! prefix length, so that a lookup probes only the lengths in use (usually
//! /32 and /64, plus any CIDR lengths admins banned). The registry is the
//! only writer; each entry carries its expiry, so a source is released on
//! time even before the registry's sweep removes it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;
use model::Cidr;

/// 33 IPv4 lengths (0..=32) then 129 IPv6 lengths (0..=128).
const LENGTH_SLOTS: usize = 33 + 129;

pub struct BanView {
    entries: DashMap<Cidr, u64>,
    lengths: [AtomicU32; LENGTH_SLOTS],
}

impl Default for BanView {
    fn default() -> Self {
        BanView {
            entries: DashMap::new(),
            lengths: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

fn slot(prefix: &Cidr) -> usize {
    match prefix.addr() {
        IpAddr::V4(_) => usize::from(prefix.len()),
        IpAddr::V6(_) => 33 + usize::from(prefix.len()),
    }
}

impl BanView {
    /// The live time-out covering `ip`, if any: its prefix and expiry.
    pub fn lookup(&self, ip: IpAddr, now_ms: u64) -> Option<(Cidr, u64)> {
        let ip = ip.to_canonical();
        let (first, last, offset) = match ip {
            IpAddr::V4(_) => (0, 32, 0),
            IpAddr::V6(_) => (0, 128, 33),
        };
        // Longest prefix first: the most specific ban wins.
        for len in (first..=last).rev() {
            if self.lengths[offset + len].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let prefix = Cidr::new(ip, len as u8).expect("length within the family's range");
            if let Some(expires) = self.entries.get(&prefix).map(|e| *e)
                && expires > now_ms
            {
                return Some((prefix, expires));
            }
        }
        None
    }

    pub fn is_banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.lookup(ip, now_ms).is_some()
    }

    pub fn expiry(&self, prefix: &Cidr) -> Option<u64> {
        self.entries.get(prefix).map(|e| *e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry in force at `now_ms`: prefix and expiry.
    pub fn live(&self, now_ms: u64) -> Vec<(Cidr, u64)> {
        self.entries
            .iter()
            .filter(|e| *e.value() > now_ms)
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }

    /// Entries by family: (IPv4, IPv6).
    pub fn len_by_family(&self) -> (usize, usize) {
        let sum = |slots: &[AtomicU32]| -> usize {
            slots
                .iter()
                .map(|n| n.load(Ordering::Relaxed) as usize)
                .sum()
        };
        (sum(&self.lengths[..33]), sum(&self.lengths[33..]))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn insert(&self, prefix: Cidr, expires_ms: u64) {
        if self.entries.insert(prefix, expires_ms).is_none() {
            self.lengths[slot(&prefix)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn remove(&self, prefix: &Cidr) -> Option<u64> {
        let removed = self.entries.remove(prefix).map(|(_, expires)| expires);
        if removed.is_some() {
            self.lengths[slot(prefix)].fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_probes_only_lengths_in_use_and_honours_expiry() {
        let view = BanView::default();
        view.insert("2001:db8:1:2::/64".parse().unwrap(), 100);
        view.insert("192.0.2.7".parse().unwrap(), 100);
        view.insert("198.51.100.0/24".parse().unwrap(), 100);
        assert!(view.is_banned("2001:db8:1:2::99".parse().unwrap(), 50));
        assert!(!view.is_banned("2001:db8:1:3::99".parse().unwrap(), 50));
        assert!(view.is_banned("192.0.2.7".parse().unwrap(), 50));
        assert!(
            view.is_banned("::ffff:192.0.2.7".parse().unwrap(), 50),
            "v4-mapped is v4"
        );
        assert!(view.is_banned("198.51.100.200".parse().unwrap(), 50));
        assert!(!view.is_banned("192.0.2.8".parse().unwrap(), 50));
        assert!(
            !view.is_banned("192.0.2.7".parse().unwrap(), 100),
            "expired at 100"
        );
        assert_eq!(view.remove(&"192.0.2.7".parse().unwrap()), Some(100));
        assert!(!view.is_banned("192.0.2.7".parse().unwrap(), 50));
        assert_eq!(view.lengths[32].load(Ordering::Relaxed), 0);
        assert_eq!(view.len(), 2);
    }
}
