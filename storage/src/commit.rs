//! Group commit: one background thread fsyncs the database at most once per
//! interval, and only when something was written since the last flush.
//!
//! Writers never wait for the disk. The cost is a window of at most one
//! interval (plus the fsync itself) in which a write is visible but not yet
//! durable; `flush_now` closes it on shutdown.
//!
//! When flushes keep failing and the disk has room again, it reopens the
//! database and replays what was not durable ([`crate::trees`]). When a
//! flush fails because the disk is full, the emergency reserve
//! ([`crate::reserve`]) is given back first and the database reopened into
//! the room it leaves, so that time-outs keep persisting while an attack
//! fills the disk; it is made again once there is room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::Result;
use crate::trees::Database;

/// While flushes fail, a reopen is tried every this many attempts (about a
/// second at the default interval) …
const RECOVERY_EVERY: u64 = 10;
/// … once the disk has at least this much room.
pub(crate) const RECOVERY_ROOM: u64 = 1 << 20;
/// How often a missing emergency reserve is made again, at most.
const RESERVE_LOOK_EVERY: Duration = Duration::from_secs(60);
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) struct GroupCommit {
    state: Arc<State>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    db: Arc<Database>,
    interval: Duration,
    flags: Mutex<Flags>,
    wake: Condvar,
    errors: AtomicU64,
    flushes: AtomicU64,
    /// Writes seen, and how many of them the last completed flush made
    /// durable: their difference is what a crash now would lose.
    written: AtomicU64,
    durable: AtomicU64,
}

/// The reserve given back while serving: its room not yet spent, or spent
/// and said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spent {
    No,
    Said,
}

#[derive(Default)]
struct Flags {
    dirty: bool,
    stop: bool,
}

impl GroupCommit {
    pub(crate) fn start(db: Arc<Database>, interval: Duration) -> Self {
        let state = Arc::new(State {
            db,
            interval,
            flags: Mutex::new(Flags::default()),
            wake: Condvar::new(),
            errors: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        });
        let worker = state.clone();
        let thread = std::thread::Builder::new()
            .name("penaltybox-flush".into())
            .spawn(move || worker.run())
            .expect("spawning the flush thread");
        GroupCommit {
            state,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Write number `seq` happened.
    pub(crate) fn mark_dirty(&self, seq: u64) {
        self.state.written.fetch_max(seq, Ordering::AcqRel);
        let mut flags = self.state.flags.lock().unwrap_or_else(|p| p.into_inner());
        if !flags.dirty {
            flags.dirty = true;
            self.state.wake.notify_one();
        }
    }

    pub(crate) fn flush_now(&self) -> Result<()> {
        self.state
            .flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirty = false;
        self.state.flush()
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    pub(crate) fn flush_count(&self) -> u64 {
        self.state.flushes.load(Ordering::Relaxed)
    }

    pub(crate) fn unflushed(&self) -> u64 {
        let durable = self.state.durable.load(Ordering::Acquire);
        self.state
            .written
            .load(Ordering::Acquire)
            .saturating_sub(durable)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            let mut flags = self.state.flags.lock().unwrap_or_else(|p| p.into_inner());
            flags.stop = true;
            self.state.wake.notify_one();
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        if let Err(error) = self.state.flush() {
            log::error!("final flush failed: {error}");
        }
    }
}

impl State {
    fn run(&self) {
        let mut last_flush = Instant::now();
        // A failing flush is retried every interval; it is logged when it
        // starts failing, once a second while it does, and when it works again.
        let mut failing: Option<(u64, Instant)> = None;
        // The emergency reserve, given back by a start on a full disk, is
        // made again once there is room: looked at after a flush that
        // worked, at most once a minute (it needs a free-space call).
        let mut reserve_looked_at = Instant::now();
        let mut reserve_in_place = false;
        // Given back while serving, and (once its room is spent too) said so.
        let mut reserve: Option<Spent> = None;
        loop {
            {
                let mut flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
                while !flags.dirty && !flags.stop {
                    flags = self.wake.wait(flags).unwrap_or_else(|p| p.into_inner());
                }
                if flags.stop {
                    return;
                }
            }
            // Let writes accumulate until a whole interval has passed since
            // the previous flush: that is the "group" in group commit.
            // A stop ends the wait (Drop makes the final flush): a long
            // `storage.flush_interval` must not hold up a shutdown.
            if let Some(wait) = self.interval.checked_sub(last_flush.elapsed()) {
                let flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
                let (flags, _) = self
                    .wake
                    .wait_timeout_while(flags, wait, |flags| !flags.stop)
                    .unwrap_or_else(|p| p.into_inner());
                if flags.stop {
                    return;
                }
            }
            self.flags.lock().unwrap_or_else(|p| p.into_inner()).dirty = false;
            last_flush = Instant::now();
            match self.flush() {
                Ok(()) => {
                    if let Some((failures, _)) = failing.take() {
                        log::warn!("database flushes work again, after {failures} failed");
                    }
                    if !reserve_in_place && reserve_looked_at.elapsed() >= RESERVE_LOOK_EVERY {
                        reserve_in_place = crate::reserve::ensure(self.db.dir());
                        reserve_looked_at = Instant::now();
                        if reserve_in_place {
                            reserve = None;
                        }
                    }
                }
                Err(error) => {
                    if reserve.is_none() && self.give_back_reserve() {
                        reserve = Some(Spent::No);
                        reserve_in_place = false;
                        reserve_looked_at = Instant::now();
                        if let Ok(upto) = self.db.reopen() {
                            self.made_durable(upto);
                            failing = None;
                            continue;
                        }
                    } else if reserve == Some(Spent::No) {
                        reserve = Some(Spent::Said);
                        log::error!(
                            "the room the emergency reserve gave back in {} is spent: time-outs stay in force, in memory and in the journal, and are written once there is room; free space there",
                            self.db.dir().display()
                        );
                    }
                    let unflushed = self
                        .written
                        .load(Ordering::Acquire)
                        .saturating_sub(self.durable.load(Ordering::Acquire));
                    if let Some((failures, _)) = failing
                        && failures % RECOVERY_EVERY == 0
                        && crate::free_bytes(self.db.dir())
                            .is_some_and(|free| free >= RECOVERY_ROOM)
                    {
                        match self.db.reopen() {
                            Ok(upto) => {
                                log::warn!(
                                    "database reopened after {failures} failed flushes: the {unflushed} writes not yet durable were replayed and flushed"
                                );
                                self.made_durable(upto);
                                failing = None;
                                continue;
                            }
                            Err(error) => {
                                log::error!("database reopen failed (retried): {error}");
                            }
                        }
                    }
                    match &mut failing {
                        None => {
                            log::error!(
                                "database flush failed (writes stay in memory and are retried every {:?}): {error}",
                                self.interval
                            );
                            failing = Some((1, Instant::now()));
                        }
                        Some((failures, logged)) => {
                            *failures += 1;
                            if logged.elapsed() >= Duration::from_secs(1) {
                                log::error!(
                                    "database flush still failing ({failures} attempts, {unflushed} writes not durable): {error}"
                                );
                                *logged = Instant::now();
                            }
                        }
                    }
                    self.flags.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
                }
            }
        }
    }

    /// The disk is full: gives the emergency reserve back, if there is
    /// one, and says so. The caller reopens the database into the room.
    fn give_back_reserve(&self) -> bool {
        let dir = self.db.dir();
        let full = crate::free_bytes(dir).is_some_and(|free| free < RECOVERY_ROOM);
        if !full || !crate::reserve::release(dir) {
            return false;
        }
        log::warn!(
            "the disk of {} is full: gave back the {} MiB emergency reserve so that time-outs keep persisting (room for at least {} more); inventory writes stay paused; free space there (the reserve is made again once there is room)",
            dir.display(),
            crate::reserve::RESERVE_BYTES >> 20,
            crate::reserve::TIME_OUTS_IN_RESERVE
        );
        true
    }

    fn made_durable(&self, upto: u64) {
        self.db.durable(upto);
        self.durable.fetch_max(upto, Ordering::AcqRel);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&self) -> Result<()> {
        // Every write numbered up to the cut-off is in sled, so in the flush.
        let upto = self.db.cut_off();
        match self.db.flush() {
            Ok(()) => {
                self.made_durable(upto);
                Ok(())
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreOptions};
    use std::time::Duration;

    #[test]
    fn closing_does_not_wait_out_a_long_flush_interval_and_still_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            flush_interval: Duration::from_secs(3600),
            ..StoreOptions::default()
        };
        let ban = crate::test_ban("192.0.2.9", u64::MAX / 2);
        let store = Store::open(dir.path(), &options).unwrap();
        // A first flush, so that the next write waits out the interval.
        store.flush().unwrap();
        store.bans().put(&ban).unwrap();
        let (done, closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(store);
            let _ = done.send(());
        });
        // Bounded: an hour's wait would fail here, not hang the suite.
        closed
            .recv_timeout(Duration::from_secs(30))
            .expect("closing the store waited out the flush interval");
        let store = Store::open(dir.path(), &options).unwrap();
        assert_eq!(store.bans().get(&ban.prefix).unwrap(), Some(ban));
    }
}
