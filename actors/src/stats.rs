//! Server-wide counters, shared by every actor, and their snapshots: the
//! wire's [`ServerStats`] (the admin `Stats` request, the shutdown log,
//! [`crate::ServerHandle::stats`]) and the fuller [`MetricsSnapshot`] the
//! binary's Prometheus endpoint encodes ([`crate::ServerHandle::metrics`]).
//! Everything is a relaxed atomic: recording costs the hot path one add.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model::{BanCause, BanInfo};
use protocol::message::{FeedStat, MAX_TOP_RECENT, ServerStats};

/// The counters themselves; opaque outside this crate (read them through
/// a [`ServerStats`] or a [`MetricsSnapshot`]).
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
    /// Time-outs other fleet nodes made, applied here.
    pub(crate) fleet_applied: AtomicU64,
    /// Prefixes released here because an admin released them elsewhere.
    pub(crate) fleet_released: AtomicU64,
    /// Connections from a trusted proxy dropped: no valid PROXY header in
    /// time (the proxy is not timed out).
    pub(crate) proxy_header_rejected: AtomicU64,
    /// Time-outs made, by cause: `BanCause::ALL` order, then admin bans.
    pub(crate) bans_by_cause: [AtomicU64; CAUSE_SLOTS],
    /// Monitor mode: time-outs that would have been made, by cause (the
    /// same slots; the admin slot counts other nodes' records).
    pub(crate) monitored_by_cause: [AtomicU64; CAUSE_SLOTS],
    /// From accept to the first authenticated frame.
    pub(crate) handshake_seconds: LatencyHistogram,
    /// From the offending input (or the missed deadline, or the kernel's
    /// event) to the time-out being in the table.
    pub(crate) time_to_ban_seconds: LatencyHistogram,
    /// Blocklist feeds by name (a handful; written once a refresh).
    feeds: Mutex<BTreeMap<String, FeedStat>>,
    /// The newest time-outs put in the table, newest last (for `top`).
    recent: Mutex<VecDeque<BanInfo>>,
}

const CAUSE_SLOTS: usize = BanCause::ALL.len() + 1;
const ADMIN_SLOT: usize = BanCause::ALL.len();

fn cause_slot(cause: Option<BanCause>) -> usize {
    cause
        .and_then(|c| BanCause::ALL.iter().position(|known| *known == c))
        .unwrap_or(ADMIN_SLOT)
}

/// The upper bounds of the latency buckets, in seconds: 100 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram of fixed buckets, lock-free (a Prometheus histogram
/// is encoded from its snapshot by the binary).
pub(crate) struct LatencyHistogram {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            count: cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

/// A histogram at one moment: cumulative counts per upper bound (the last
/// bound is +Inf, its count the total).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: Vec<(f64, u64)>,
}

/// Everything the metrics endpoint shows, at one moment.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub stats: ServerStats,
    /// Time-outs made since start, by cause name ("admin" for admins').
    pub bans_by_cause: Vec<(&'static str, u64)>,
    pub bans_active_ipv4: u64,
    pub bans_active_ipv6: u64,
    pub handshake_seconds: HistogramSnapshot,
    pub time_to_ban_seconds: HistogramSnapshot,
    pub fleet_applied: u64,
    pub fleet_released: u64,
    pub proxy_header_rejected: u64,
    /// Monitor mode's would-be time-outs, by cause ("other" for admins'
    /// and other nodes').
    pub monitored_by_cause: Vec<(&'static str, u64)>,
    /// Blocklist feeds.
    pub feeds: Vec<FeedStat>,
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
            fleet_applied: AtomicU64::new(0),
            fleet_released: AtomicU64::new(0),
            proxy_header_rejected: AtomicU64::new(0),
            bans_by_cause: std::array::from_fn(|_| AtomicU64::new(0)),
            monitored_by_cause: std::array::from_fn(|_| AtomicU64::new(0)),
            handshake_seconds: LatencyHistogram::default(),
            time_to_ban_seconds: LatencyHistogram::default(),
            feeds: Mutex::default(),
            recent: Mutex::default(),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    fn feeds_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FeedStat>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A feed's list was applied: its entries now, and its bad lines.
    pub(crate) fn feed_applied(&self, name: &str, entries: usize, bad_lines: usize, now_ms: u64) {
        let mut feeds = self.feeds_lock();
        let feed = feeds.entry(name.to_owned()).or_default();
        feed.name = name.to_owned();
        feed.entries = entries as u64;
        feed.bad_lines = bad_lines as u64;
        feed.last_refresh_ms = now_ms;
        feed.refreshes += 1;
        feed.last_error.clear();
    }

    /// Where feed `name` comes from (set when its runner starts).
    pub fn feed_source(&self, name: &str, source: &str) {
        let mut feeds = self.feeds_lock();
        let feed = feeds.entry(name.to_owned()).or_default();
        feed.name = name.to_owned();
        feed.source = source.to_owned();
    }

    /// A refresh of feed `name` failed; its list before stays in force.
    pub fn feed_failed(&self, name: &str, error: &str) {
        let mut feeds = self.feeds_lock();
        let feed = feeds.entry(name.to_owned()).or_default();
        feed.name = name.to_owned();
        feed.refresh_errors += 1;
        feed.last_error = error.chars().take(256).collect();
    }

    /// The feeds' entries in force, as the table counts them.
    pub(crate) fn feed_entries(&self, sizes: &[(String, usize)]) {
        let mut feeds = self.feeds_lock();
        for (name, entries) in sizes {
            let feed = feeds.entry(name.clone()).or_default();
            feed.name = name.clone();
            feed.entries = *entries as u64;
        }
    }

    /// Every feed.
    pub fn feeds(&self) -> Vec<FeedStat> {
        self.feeds_lock().values().cloned().collect()
    }

    /// Counts a time-out made: `None` for an admin's (its cause is free text).
    pub(crate) fn count_ban(&self, cause: Option<BanCause>) {
        bump(&self.bans_by_cause[cause_slot(cause)]);
    }

    /// Keeps `record` among the newest time-outs (at most
    /// [`MAX_TOP_RECENT`]; one lock a time-out, never on the accept path).
    pub(crate) fn note_recent(&self, record: &BanInfo) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == usize::from(MAX_TOP_RECENT) {
            recent.pop_front();
        }
        recent.push_back(record.clone());
    }

    /// The newest `n` time-outs, newest first.
    pub(crate) fn recent(&self, n: usize) -> Vec<BanInfo> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().take(n).cloned().collect()
    }

    /// Counts a time-out monitor mode did not make.
    pub(crate) fn count_monitored(&self, cause: Option<BanCause>) {
        bump(&self.monitored_by_cause[cause_slot(cause)]);
    }

    pub(crate) fn metrics(
        &self,
        stats: ServerStats,
        (ipv4, ipv6): (usize, usize),
    ) -> MetricsSnapshot {
        let mut bans_by_cause: Vec<(&'static str, u64)> = BanCause::ALL
            .iter()
            .zip(&self.bans_by_cause)
            .map(|(cause, n)| (cause.name(), n.load(Ordering::Relaxed)))
            .collect();
        bans_by_cause.push((
            "admin",
            self.bans_by_cause[ADMIN_SLOT].load(Ordering::Relaxed),
        ));
        MetricsSnapshot {
            stats,
            bans_by_cause,
            bans_active_ipv4: ipv4 as u64,
            bans_active_ipv6: ipv6 as u64,
            handshake_seconds: self.handshake_seconds.snapshot(),
            time_to_ban_seconds: self.time_to_ban_seconds.snapshot(),
            fleet_applied: self.fleet_applied.load(Ordering::Relaxed),
            fleet_released: self.fleet_released.load(Ordering::Relaxed),
            proxy_header_rejected: self.proxy_header_rejected.load(Ordering::Relaxed),
            monitored_by_cause: BanCause::ALL
                .iter()
                .map(|cause| cause.name())
                .chain(["other"])
                .zip(&self.monitored_by_cause)
                .map(|(name, n)| (name, n.load(Ordering::Relaxed)))
                .collect(),
            feeds: self.feeds(),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_sum_their_observations() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50)); // first bucket
        h.observe(Duration::from_micros(100)); // on the bound: still first
        h.observe(Duration::from_millis(3)); // 0.005
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.0001, 2));
        assert_eq!(s.buckets[5], (0.005, 3));
        assert_eq!(s.buckets[13], (5.0, 3));
        assert_eq!(s.buckets[14], (f64::INFINITY, 4));
        assert!((s.sum_seconds - 60.00315).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn bans_are_counted_by_cause_and_admin() {
        let stats = Stats::default();
        stats.count_ban(Some(BanCause::PortScan));
        stats.count_ban(Some(BanCause::PortScan));
        stats.count_ban(None);
        let m = stats.metrics(ServerStats::default(), (1, 2));
        assert!(m.bans_by_cause.contains(&("port-scan", 2)));
        assert!(m.bans_by_cause.contains(&("admin", 1)));
        assert!(m.bans_by_cause.contains(&("bad-magic", 0)));
        assert_eq!((m.bans_active_ipv4, m.bans_active_ipv6), (1, 2));
    }
}
