//! One log line a second for a storm of the same kind of event (a failure,
//! an eviction): the first is logged at once, in full; the rest are counted
//! and summed up in one line when the second is over (or at the next
//! `flush`), with the first and the last of them. A full disk during a ban
//! storm then costs a line a second, not a line per ban.

use std::time::{Duration, Instant};

pub(crate) struct LogSummary {
    what: &'static str,
    level: log::Level,
    window: Duration,
    started: Option<Instant>,
    suppressed: u64,
    first: String,
    last: String,
}

impl LogSummary {
    /// Failures, logged as errors.
    pub fn errors(what: &'static str, window: Duration) -> Self {
        LogSummary::at(log::Level::Error, what, window)
    }

    pub fn at(level: log::Level, what: &'static str, window: Duration) -> Self {
        LogSummary {
            what,
            level,
            window,
            started: None,
            suppressed: 0,
            first: String::new(),
            last: String::new(),
        }
    }

    /// Reports one event, described by `detail`.
    pub fn failed(&mut self, detail: impl FnOnce() -> String, now: Instant) {
        match self.started {
            Some(started) if now.saturating_duration_since(started) < self.window => {
                self.suppressed += 1;
                self.last = detail();
                if self.suppressed == 1 {
                    self.first = self.last.clone();
                }
            }
            _ => {
                self.flush(now);
                log::log!(self.level, "{}: {}", self.what, detail());
                self.started = Some(now);
            }
        }
    }

    /// Logs the summary of a window that is over. Returns how many failures
    /// it summed up.
    pub fn flush(&mut self, now: Instant) -> u64 {
        let over = self
            .started
            .is_some_and(|started| now.saturating_duration_since(started) >= self.window);
        if !over {
            return 0;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        match suppressed {
            0 => {}
            1 => log::log!(
                self.level,
                "{}: 1 more in the last {:?}: {}",
                self.what,
                self.window,
                self.last
            ),
            _ => log::log!(
                self.level,
                "{}: {suppressed} more in the last {:?}, the first: {}, the last: {}",
                self.what,
                self.window,
                self.first,
                self.last
            ),
        }
        self.started = None;
        suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_one_line_then_one_summary() {
        let start = Instant::now();
        let mut summary = LogSummary::errors("storage", Duration::from_secs(1));
        for i in 0..1000u64 {
            summary.failed(|| format!("error {i}"), start + Duration::from_micros(i));
        }
        assert_eq!(summary.suppressed, 999);
        assert_eq!(
            (summary.first.as_str(), summary.last.as_str()),
            ("error 1", "error 999")
        );
        assert_eq!(
            summary.flush(start + Duration::from_millis(500)),
            0,
            "not over yet"
        );
        assert_eq!(summary.flush(start + Duration::from_secs(1)), 999);
        assert_eq!(summary.flush(start + Duration::from_secs(5)), 0);
        // A failure after a quiet spell is logged at once again.
        summary.failed(|| "later".into(), start + Duration::from_secs(9));
        assert_eq!(summary.suppressed, 0);
    }
}
