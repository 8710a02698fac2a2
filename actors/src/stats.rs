//! Server-wide counters, shared by every actor; read by the admin `Stats`
//! request and the startup/shutdown logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use protocol::message::ServerStats;

pub struct Stats {
    started: Instant,
    pub connections_accepted: AtomicU64,
    /// Closed at accept: the source was timed out.
    pub connections_refused: AtomicU64,
    /// Closed at accept: a connection or pending-handshake limit was reached.
    pub connections_over_limit: AtomicU64,
    pub sessions_active: AtomicU64,
    pub handshakes_completed: AtomicU64,
    pub bans_total: AtomicU64,
    pub bans_evicted: AtomicU64,
    /// Kernel-table updates that failed (the userspace ban stands).
    pub kernel_errors: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_over_limit: AtomicU64::new(0),
            sessions_active: AtomicU64::new(0),
            handshakes_completed: AtomicU64::new(0),
            bans_total: AtomicU64::new(0),
            bans_evicted: AtomicU64::new(0),
            kernel_errors: AtomicU64::new(0),
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub fn snapshot(&self, bans_active: usize, storage_errors: u64) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            uptime_secs: self.started.elapsed().as_secs(),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            sessions_active: get(&self.sessions_active),
            handshakes_completed: get(&self.handshakes_completed),
            bans_active: bans_active as u64,
            bans_total: get(&self.bans_total),
            storage_errors,
            kernel_errors: get(&self.kernel_errors),
        }
    }
}
