//! Admission: connection limits, checked by the acceptor before a session
//! starts. Total connections, and handshakes in progress in total and per
//! source, so that one source (or a flood of half-open handshakes) cannot
//! take every slot. Slots are RAII guards: dropping a session frees them,
//! however it ended.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    pub max_pending_per_source: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_connections: 10_000,
            max_pending_handshakes: 1_024,
            max_pending_per_source: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    Connections,
    PendingHandshakes,
    PendingFromSource,
}

pub struct Admission {
    config: LimitConfig,
    connections: AtomicUsize,
    pending: AtomicUsize,
    pending_by_source: DashMap<IpAddr, usize>,
}

/// A connection slot, with a pending-handshake slot until `handshake_done`.
pub struct Slot {
    admission: Arc<Admission>,
    pending_source: Option<IpAddr>,
}

impl Admission {
    pub fn new(config: LimitConfig) -> Arc<Self> {
        Arc::new(Admission {
            config,
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            pending_by_source: DashMap::new(),
        })
    }

    /// Takes a connection slot and a pending-handshake slot for `source`.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, OverLimit> {
        if !take(&self.connections, self.config.max_connections) {
            return Err(OverLimit::Connections);
        }
        if !take(&self.pending, self.config.max_pending_handshakes) {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(OverLimit::PendingHandshakes);
        }
        {
            let mut count = self.pending_by_source.entry(source).or_insert(0);
            if *count >= self.config.max_pending_per_source {
                drop(count);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(OverLimit::PendingFromSource);
            }
            *count += 1;
        }
        Ok(Slot {
            admission: self.clone(),
            pending_source: Some(source),
        })
    }

    #[cfg(test)]
    fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    fn release_pending(&self, source: IpAddr) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.pending_by_source.remove_if_mut(&source, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Slot {
    /// The handshake finished: free the pending slot, keep the connection.
    pub fn handshake_done(&mut self) {
        if let Some(source) = self.pending_source.take() {
            self.admission.release_pending(source);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.admission.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_freed() {
        let limits = Admission::new(LimitConfig {
            max_connections: 3,
            max_pending_handshakes: 2,
            max_pending_per_source: 1,
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mut first = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(OverLimit::PendingFromSource));
        let second = limits.admit(b).unwrap();
        assert_eq!(
            limits.admit("127.0.0.4".parse().unwrap()).err(),
            Some(OverLimit::PendingHandshakes)
        );
        first.handshake_done();
        let third = limits.admit(a).unwrap();
        assert_eq!(limits.admit(b).err(), Some(OverLimit::Connections));
        drop((first, second, third));
        assert_eq!(limits.connections(), 0);
        assert!(limits.pending_by_source.is_empty());
        assert_eq!(limits.pending.load(Ordering::Acquire), 0);
    }
}
