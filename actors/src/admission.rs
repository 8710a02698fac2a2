//! Admission: the connection limits the acceptor checks before a session
//! starts, shaped so that an attacker holding connections open cannot lock
//! real clients out.
//!
//! - Total connections are capped (file descriptors are finite).
//! - Per source, counted per **time-out prefix** (/32, /64 as configured, so
//!   addresses rotated inside one /64 are one source): handshakes in
//!   progress, and established sessions.
//! - Handshakes in progress ("pending") are capped in total, but a full
//!   table does not refuse the newcomer: a pending connection is closed
//!   instead. The victim is the oldest one that has been *quiet* (no
//!   complete first message) for at least [`QUIET_GRACE`], else the oldest
//!   that sent its first message at least [`HEARD_GRACE`] ago and still no
//!   frame (a replay). A connection whose bytes were already waiting when
//!   it was accepted is not quiet until its session reads them: under a
//!   flood the workers lag behind the acceptor, and those bytes are a real
//!   client's first message. The graces cover a real client's round trip.
//!   When no pending connection qualifies the table grows, up to twice its
//!   size; there the graces give way (the oldest quiet one goes, then the
//!   oldest that sent its first message), and only a table full of
//!   connections with unread bytes refuses a newcomer ("server busy").
//!   OpenSSH's MaxStartups drops new connections at random instead; that
//!   refuses real clients with the same probability as attackers, while a
//!   real client sends its first message at once and finishes within a
//!   round trip or two.
//! - The handshake deadline shortens as the pending table fills (down to a
//!   fifth of the configured one, never under a second), so stalled
//!   connections free their slots sooner under load.
//!
//! A connection stays pending until its first transport frame has
//! authenticated: a replayed first message earns an answer but never a
//! session. Slots are RAII guards: dropping a session frees them, however
//! it ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model::Cidr;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    /// Handshakes in progress from one time-out prefix.
    pub max_pending_per_source: usize,
    /// Established sessions from one time-out prefix.
    pub max_sessions_per_source: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_connections: 10_000,
            max_pending_handshakes: 1_024,
            max_pending_per_source: 8,
            max_sessions_per_source: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    Connections,
    /// The pending table is full of connections that cannot be judged yet.
    PendingHandshakes,
    PendingFromSource,
    SessionsFromSource,
}

impl OverLimit {
    /// Is this the source's own doing (as opposed to the server's load)?
    pub fn is_per_source(self) -> bool {
        matches!(
            self,
            OverLimit::PendingFromSource | OverLimit::SessionsFromSource
        )
    }
}

pub(crate) struct Admission {
    /// Replaced by a reload; read once per admission.
    config: std::sync::RwLock<LimitConfig>,
    connections: AtomicUsize,
    state: Mutex<State>,
    epoch: Instant,
}

/// A quiet connection is evicted only once it has been quiet this long.
pub(crate) const QUIET_GRACE: Duration = Duration::from_millis(300);
/// A connection that sent its first message is evicted only if it has had
/// this long to send its first frame: a real client sends it within a round
/// trip; a replayer never does.
pub(crate) const HEARD_GRACE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    by_source: HashMap<Cidr, SourceCount>,
    /// Pending connections in admission order.
    pending: BTreeMap<u64, Arc<PendingSignal>>,
    next_seq: u64,
}

#[derive(Default, Clone, Copy)]
struct SourceCount {
    pending: usize,
    sessions: usize,
}

/// Bytes were waiting at accept, and its session has not read them yet.
const UNREAD: u8 = 0;
/// No complete first message (nothing was waiting at accept, or its
/// session is reading and it is not all there).
const QUIET: u8 = 1;
/// Its whole first message has arrived.
const HEARD: u8 = 2;

/// What admission and the session share about one pending connection.
#[derive(Default)]
struct PendingSignal {
    /// UNREAD, QUIET or HEARD.
    progress: AtomicU8,
    /// When the current progress was reached, ms after the admission's epoch.
    since_ms: AtomicU64,
    /// Set (and notified) when admission closes this connection to make room.
    evicted: AtomicBool,
    wake: Notify,
}

/// A connection slot; pending until [`Slot::established`].
pub(crate) struct Slot {
    admission: Arc<Admission>,
    source: Cidr,
    pending: Option<(u64, Arc<PendingSignal>)>,
    /// How long this connection has for its handshake and first frame.
    pub deadline: Duration,
}

/// A new connection's slot, and whether another was evicted for it.
pub(crate) struct Admitted {
    pub slot: Slot,
    pub evicted_another: bool,
}

impl Admission {
    pub fn new(config: LimitConfig) -> Arc<Self> {
        Arc::new(Admission {
            config: std::sync::RwLock::new(config),
            connections: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            epoch: Instant::now(),
        })
    }

    /// New limits for new connections (a reload); connections already in
    /// keep their slots.
    pub fn set_limits(&self, limits: LimitConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = limits;
    }

    fn limits(&self) -> LimitConfig {
        *self
            .config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a connection slot and a pending-handshake slot for a
    /// connection from `source` (its time-out prefix). `base_deadline` is
    /// the configured handshake deadline.
    ///
    /// `sent_data`: whether bytes were already waiting when it was
    /// accepted. One that had sent nothing is evictable from the start; one
    /// that had is protected until its session has read them (under load
    /// the workers lag behind the acceptor, and that is a real client's
    /// first message waiting).
    pub fn admit(
        self: &Arc<Self>,
        source: Cidr,
        base_deadline: Duration,
        sent_data: bool,
        now: Instant,
    ) -> Result<Admitted, OverLimit> {
        let limits = self.limits();
        if !take(&self.connections, limits.max_connections) {
            return Err(OverLimit::Connections);
        }
        let mut state = self.state();
        let count = state.by_source.get(&source).copied().unwrap_or_default();
        // Pending ones count towards the session cap too: each may become a
        // session, and the cap must hold when they do.
        let refused = if count.sessions + count.pending >= limits.max_sessions_per_source {
            Some(OverLimit::SessionsFromSource)
        } else if count.pending >= limits.max_pending_per_source {
            Some(OverLimit::PendingFromSource)
        } else {
            None
        };
        if let Some(limit) = refused {
            drop(state);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        let max = limits.max_pending_handshakes;
        let now_ms = self.elapsed_ms(now);
        let evicted_another = if state.pending.len() >= max.saturating_mul(2) {
            let evicted = state.evict_one(now_ms, false);
            if !evicted {
                drop(state);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(OverLimit::PendingHandshakes);
            }
            evicted
        } else {
            state.pending.len() >= max && state.evict_one(now_ms, true)
        };
        let fill = state.pending.len() as f64 / limits.max_pending_handshakes.max(1) as f64;
        let seq = state.next_seq;
        state.next_seq += 1;
        let signal = Arc::new(PendingSignal::default());
        signal.since_ms.store(now_ms, Ordering::Release);
        if !sent_data {
            signal.progress.store(QUIET, Ordering::Release);
        }
        state.pending.insert(seq, signal.clone());
        state.by_source.entry(source).or_default().pending += 1;
        drop(state);
        Ok(Admitted {
            slot: Slot {
                admission: self.clone(),
                source,
                pending: Some((seq, signal)),
                deadline: deadline_under_load(base_deadline, fill),
            },
            evicted_another,
        })
    }

    /// `now` as milliseconds after the epoch (what the pending table
    /// stores: 8 bytes where an `Instant` takes 16).
    fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn release(&self, source: Cidr, pending: Option<u64>) {
        let mut state = self.state();
        if let Some(seq) = pending {
            state.pending.remove(&seq);
        }
        if let Some(count) = state.by_source.get_mut(&source) {
            match pending {
                Some(_) => count.pending = count.pending.saturating_sub(1),
                None => count.sessions = count.sessions.saturating_sub(1),
            }
            if count.pending == 0 && count.sessions == 0 {
                state.by_source.remove(&source);
            }
        }
    }
}

impl State {
    /// Closes the oldest pending connection quiet for [`QUIET_GRACE`], else
    /// the oldest that sent its first message [`HEARD_GRACE`] ago and no
    /// frame since (without `graces`, however young). It leaves the pending
    /// table at once (its per-source count goes when its session drops the
    /// slot).
    fn evict_one(&mut self, now_ms: u64, graces: bool) -> bool {
        let oldest = |wanted: u8, grace: Duration| {
            let grace = if graces {
                u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)
            } else {
                0
            };
            self.pending
                .iter()
                .find(|(_, signal)| {
                    signal.progress.load(Ordering::Acquire) == wanted
                        && now_ms.saturating_sub(signal.since_ms.load(Ordering::Acquire)) >= grace
                })
                .map(|(seq, _)| *seq)
        };
        let victim = oldest(QUIET, QUIET_GRACE).or_else(|| oldest(HEARD, HEARD_GRACE));
        let Some(signal) = victim.and_then(|seq| self.pending.remove(&seq)) else {
            return false;
        };
        signal.evicted.store(true, Ordering::Release);
        // notify_one keeps a permit if the session is not waiting yet.
        signal.wake.notify_one();
        true
    }
}

/// The configured deadline up to half full; then linearly shorter, to a
/// fifth of it (at least a second) when the table is full.
fn deadline_under_load(base: Duration, fill: f64) -> Duration {
    if fill <= 0.5 {
        return base;
    }
    let floor = (base / 5).max(Duration::from_secs(1)).min(base);
    let shrink = ((fill - 0.5) * 2.0).clamp(0.0, 1.0);
    base.saturating_sub((base.saturating_sub(floor)).mul_f64(shrink))
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Slot {
    fn progress(&self, from: Option<u8>, to: u8, now: Instant) {
        if let Some((_, signal)) = &self.pending {
            if from.is_some_and(|from| signal.progress.load(Ordering::Acquire) != from) {
                return;
            }
            signal
                .since_ms
                .store(self.admission.elapsed_ms(now), Ordering::Release);
            signal.progress.store(to, Ordering::Release);
        }
    }

    /// The session has started reading the first message: bytes waiting
    /// since accept no longer shield it (it is quiet from now on, until
    /// `heard`).
    pub fn reading(&self, now: Instant) {
        self.progress(Some(UNREAD), QUIET, now);
    }

    /// The whole first message has arrived: this connection is no longer
    /// among the first to be evicted.
    pub fn heard(&self, now: Instant) {
        self.progress(None, HEARD, now);
    }

    /// Resolves when admission evicts this pending connection; never, once
    /// it is established.
    pub async fn evicted(&self) {
        match &self.pending {
            Some((_, signal)) => {
                while !signal.evicted.load(Ordering::Acquire) {
                    signal.wake.notified().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The first transport frame authenticated: the pending slot becomes a
    /// session of its source.
    pub fn established(&mut self) {
        let Some((seq, _)) = self.pending.take() else {
            return;
        };
        let mut state = self.admission.state();
        state.pending.remove(&seq);
        let count = state.by_source.entry(self.source).or_default();
        count.pending = count.pending.saturating_sub(1);
        count.sessions += 1;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let pending = self.pending.take().map(|(seq, _)| seq);
        self.admission.release(self.source, pending);
        self.admission.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);

    fn config() -> LimitConfig {
        LimitConfig {
            max_connections: 100,
            max_pending_handshakes: 3,
            max_pending_per_source: 2,
            max_sessions_per_source: 1,
        }
    }

    fn prefix(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    /// Admission with a clock of its own: `at(ms)` is that long after its
    /// epoch, so graces pass without sleeping.
    fn admission_at(config: LimitConfig) -> (Arc<Admission>, impl Fn(u64) -> Instant) {
        let admission = Admission::new(config);
        let epoch = admission.epoch;
        (admission, move |ms| epoch + Duration::from_millis(ms))
    }

    fn ms(grace: Duration) -> u64 {
        u64::try_from(grace.as_millis()).unwrap()
    }

    #[test]
    fn per_source_limits_count_pending_and_sessions() {
        let (admission, at) = admission_at(LimitConfig {
            max_sessions_per_source: 3,
            ..config()
        });
        let a = prefix("2001:db8:1::/64");
        let mut first = admission.admit(a, BASE, true, at(0)).unwrap().slot;
        let second = admission.admit(a, BASE, true, at(0)).unwrap().slot;
        assert_eq!(
            admission.admit(a, BASE, true, at(0)).err(),
            Some(OverLimit::PendingFromSource)
        );
        first.established();
        let _third = admission.admit(a, BASE, true, at(0)).unwrap().slot;
        // One session and two pending: if both become sessions, that is the
        // cap of three, so no fourth handshake from this source.
        assert_eq!(
            admission.admit(a, BASE, true, at(0)).err(),
            Some(OverLimit::SessionsFromSource)
        );
        drop((first, second));
        assert!(admission.admit(a, BASE, true, at(0)).is_ok());
    }

    fn is_evicted(slot: &Slot) -> bool {
        slot.pending
            .as_ref()
            .unwrap()
            .1
            .evicted
            .load(Ordering::Acquire)
    }

    #[test]
    fn a_full_pending_table_evicts_the_oldest_quiet_connection() {
        let (admission, at) = admission_at(config());
        let admit = |source: &str, sent_data: bool, now: u64| {
            admission
                .admit(prefix(source), BASE, sent_data, at(now))
                .unwrap()
        };
        let old_quiet = admit("192.0.2.1/32", false, 0).slot;
        let old_heard = admit("192.0.2.2/32", true, 0).slot;
        old_heard.heard(at(0));
        let newer_quiet = admit("192.0.2.3/32", false, 0).slot;
        // Nobody has been quiet long enough yet: the table grows instead.
        let young = admit("192.0.2.4/32", true, ms(QUIET_GRACE) - 1);
        assert!(!young.evicted_another);
        let newcomer = admit("192.0.2.5/32", true, ms(QUIET_GRACE));
        assert!(newcomer.evicted_another);
        assert!(is_evicted(&old_quiet) && !is_evicted(&newer_quiet));
        // The eviction wakes the evicted session, even if it waits later.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(old_quiet.evicted());
        // No quiet one left: one that sent its first message goes, once it
        // has had HEARD_GRACE for its first frame.
        let now = ms(QUIET_GRACE);
        newer_quiet.heard(at(now));
        let crowded = admit("192.0.2.6/32", true, ms(HEARD_GRACE) - 1);
        assert!(!crowded.evicted_another, "everyone is within a grace");
        let last = admit("192.0.2.7/32", true, ms(HEARD_GRACE));
        assert!(last.evicted_another);
        assert!(is_evicted(&old_heard) && !is_evicted(&newer_quiet));
        drop((
            old_quiet,
            old_heard,
            newer_quiet,
            young,
            newcomer,
            crowded,
            last,
        ));
        let state = admission.state();
        assert!(state.pending.is_empty() && state.by_source.is_empty());
        assert_eq!(admission.connections.load(Ordering::Acquire), 0);
    }

    #[test]
    fn bytes_waiting_at_accept_shield_a_connection_until_its_session_reads() {
        let (admission, at) = admission_at(config());
        let admit = |source: &str, now: u64| {
            admission
                .admit(prefix(source), BASE, true, at(now))
                .unwrap()
        };
        let waiting = admit("192.0.2.1/32", 0).slot;
        let idle = admission
            .admit(prefix("192.0.2.2/32"), BASE, false, at(0))
            .unwrap()
            .slot;
        let _third = admit("192.0.2.3/32", 0);
        let later = ms(QUIET_GRACE);
        assert!(admit("192.0.2.4/32", later).evicted_another);
        assert!(is_evicted(&idle) && !is_evicted(&waiting));
        // Once its session reads and finds no whole message, it is quiet,
        // from then on.
        waiting.reading(at(later));
        assert!(!admit("192.0.2.5/32", later).evicted_another);
    }

    #[test]
    fn at_twice_the_table_the_graces_give_way() {
        let (admission, at) = admission_at(config());
        let quiet: Vec<_> = (1..=6)
            .map(|i| {
                let admitted = admission
                    .admit(prefix(&format!("192.0.2.{i}/32")), BASE, false, at(0))
                    .unwrap();
                assert!(!admitted.evicted_another, "{i}: all within the grace");
                admitted.slot
            })
            .collect();
        let seventh = admission
            .admit(prefix("192.0.2.7/32"), BASE, false, at(0))
            .unwrap();
        assert!(seventh.evicted_another);
        assert!(is_evicted(&quiet[0]) && !is_evicted(&quiet[1]));
    }

    #[test]
    fn unread_connections_are_never_evicted_the_table_grows_then_refuses() {
        let (admission, at) = admission_at(config());
        let slots: Vec<_> = (1..=6)
            .map(|i| {
                let admitted = admission
                    .admit(prefix(&format!("192.0.2.{i}/32")), BASE, true, at(0))
                    .unwrap();
                assert!(!admitted.evicted_another, "{i}");
                admitted.slot
            })
            .collect();
        assert_eq!(
            admission
                .admit(prefix("192.0.2.7/32"), BASE, true, at(ms(QUIET_GRACE)))
                .err(),
            Some(OverLimit::PendingHandshakes)
        );
        assert!(!OverLimit::PendingHandshakes.is_per_source());
        drop(slots);
    }

    #[test]
    fn the_deadline_shortens_as_the_table_fills() {
        assert_eq!(deadline_under_load(BASE, 0.0), BASE);
        assert_eq!(deadline_under_load(BASE, 0.5), BASE);
        assert_eq!(deadline_under_load(BASE, 0.75), Duration::from_secs(3));
        assert_eq!(deadline_under_load(BASE, 1.0), Duration::from_secs(1));
        assert_eq!(
            deadline_under_load(Duration::from_millis(500), 1.0),
            Duration::from_millis(500),
            "never longer than configured"
        );
    }

    #[test]
    fn the_connection_cap_holds() {
        let (admission, at) = admission_at(LimitConfig {
            max_connections: 1,
            ..config()
        });
        let _one = admission
            .admit(prefix("192.0.2.1/32"), BASE, true, at(0))
            .unwrap();
        assert_eq!(
            admission
                .admit(prefix("192.0.2.2/32"), BASE, true, at(0))
                .err(),
            Some(OverLimit::Connections)
        );
    }
}
