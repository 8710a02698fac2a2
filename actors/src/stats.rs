//! Server-wide counters, shared by every actor, and their snapshot (the
//! wire's [`ServerStats`]), the one way they are read: by the admin `Stats`
//! request, the shutdown log, and the binary ([`crate::ServerHandle::stats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use protocol::message::ServerStats;

/// The counters themselves; opaque outside this crate (read them through a
/// [`StatsSnapshot`]).
pub struct Stats {
    started: Instant,
    pub(crate) connections_accepted: AtomicU64,
    /// Closed at accept: the source was timed out.
    pub(crate) connections_refused: AtomicU64,
    /// Closed at accept: a connection or pending-handshake limit was reached.
    pub(crate) connections_over_limit: AtomicU64,
    pub(crate) sessions_active: AtomicU64,
    /// Pending connections closed to make room for new ones.
    pub(crate) pending_evicted: AtomicU64,
    /// Sessions closed because the peer did not take its responses.
    pub(crate) sessions_not_reading: AtomicU64,
    /// Requests answered "too many requests" (per-session rate limit).
    pub(crate) requests_rate_limited: AtomicU64,
    /// Established sessions closed because their source was timed out.
    pub(crate) sessions_kicked: AtomicU64,
    pub(crate) handshakes_completed: AtomicU64,
    pub(crate) bans_total: AtomicU64,
    pub(crate) bans_evicted: AtomicU64,
    /// Kernel-table updates that failed (the userspace ban stands).
    pub(crate) kernel_errors: AtomicU64,
    /// Kernel detector events received.
    pub(crate) kernel_detections: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_over_limit: AtomicU64::new(0),
            sessions_active: AtomicU64::new(0),
            pending_evicted: AtomicU64::new(0),
            sessions_not_reading: AtomicU64::new(0),
            requests_rate_limited: AtomicU64::new(0),
            sessions_kicked: AtomicU64::new(0),
            handshakes_completed: AtomicU64::new(0),
            bans_total: AtomicU64::new(0),
            bans_evicted: AtomicU64::new(0),
            kernel_errors: AtomicU64::new(0),
            kernel_detections: AtomicU64::new(0),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Every counter at one moment, as the admin `Stats` answer carries them.
    pub(crate) fn snapshot(&self, bans_active: usize, store: &storage::Store) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            uptime_secs: self.started.elapsed().as_secs(),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_over_limit: get(&self.connections_over_limit),
            sessions_active: get(&self.sessions_active),
            pending_evicted: get(&self.pending_evicted),
            sessions_not_reading: get(&self.sessions_not_reading),
            requests_rate_limited: get(&self.requests_rate_limited),
            sessions_kicked: get(&self.sessions_kicked),
            handshakes_completed: get(&self.handshakes_completed),
            bans_active: bans_active as u64,
            bans_total: get(&self.bans_total),
            bans_evicted: get(&self.bans_evicted),
            storage_flushes: store.flush_count(),
            storage_unflushed: store.unflushed_writes(),
            storage_errors: store.error_count(),
            kernel_errors: get(&self.kernel_errors),
            kernel_detections: get(&self.kernel_detections),
        }
    }
}
