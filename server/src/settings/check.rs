//! Validation: every problem of a set of settings, one line each, naming
//! the key (`config check` prints them all; `serve` stops at the first).

use std::time::Duration;

use anyhow::{anyhow, bail};

use super::Settings;
use super::values::Dur;

/// The longest any time-out or window may be: long enough for any real
/// policy, short enough that no expiry arithmetic comes near overflowing.
const MAX_TIME_OUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Session worker threads at most.
const MAX_WORKERS: usize = 256;

/// A duration setting: longer than 0 and at most `max` (named `max_name`).
fn check_duration(key: &str, value: Dur, max: Duration, max_name: &str) -> anyhow::Result<()> {
    if value.0.is_zero() {
        bail!("{key}: must be longer than 0s");
    }
    if value.0 > max {
        bail!(
            "{key}: {} is longer than {max_name} ({})",
            humantime::format_duration(value.0),
            humantime::format_duration(max)
        );
    }
    Ok(())
}

/// Problems, collected in order.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn note(&mut self, result: anyhow::Result<()>) {
        if let Err(error) = result {
            self.0.push(format!("{error:#}"));
        }
    }

    fn note_some(&mut self, problem: Option<String>) {
        self.0.extend(problem);
    }
}

/// Most entries one feed may hold (about 40 bytes each in memory, besides
/// the view's and the kernel's).
const MAX_FEED_ENTRIES: usize = 10_000_000;

/// The widest a time-out may widen to: a provider's allocation is wider.
const WIDEST_IPV4: u8 = 16;
const WIDEST_IPV6: u8 = 32;

impl Settings {
    /// Validates; the first problem is the error (`problems` has them all).
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(anyhow!(problem)),
            None => Ok(()),
        }
    }

    /// Every problem of these settings, one line each, in key order.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Problems::default();
        self.check_top(&mut problems);
        self.check_bans(&mut problems);
        self.check_connections(&mut problems);
        self.check_kernel(&mut problems);
        self.check_feeds(&mut problems);
        problems.note(self.allow_list().map(drop));
        problems.note(self.metrics_listen().map(drop));
        problems.note(self.fleet().map(drop));
        problems.note(self.proxy_trusted().map(drop));
        problems.0
    }

    fn check_top(&self, problems: &mut Problems) {
        if self.listen.is_empty() {
            problems.note(Err(anyhow!("listen: at least one address is needed")));
        }
        if self.workers > MAX_WORKERS {
            problems.note(Err(anyhow!(
                "workers: {} is more than {MAX_WORKERS} (each is a thread with its own event loop; 0 = one per CPU)",
                self.workers
            )));
        }
        if let Some(spec) = &self.log_level {
            problems
                .note(crate::logging::check_filter(spec).map_err(|e| anyhow!("log_level: {e}")));
        }
    }

    fn check_bans(&self, problems: &mut Problems) {
        let b = &self.bans;
        if b.ipv4_prefix == 0 || b.ipv4_prefix > 32 {
            problems.note(Err(anyhow!(
                "bans.ipv4_prefix: {} is not in 1..=32",
                b.ipv4_prefix
            )));
        }
        if b.ipv6_prefix == 0 || b.ipv6_prefix > 128 {
            problems.note(Err(anyhow!(
                "bans.ipv6_prefix: {} is not in 1..=128",
                b.ipv6_prefix
            )));
        }
        if b.max_entries == 0 {
            problems.note(Err(anyhow!("bans.max_entries: must be at least 1")));
        }
        for (key, value) in [
            ("bans.max_duration", b.max_duration),
            ("bans.escalation_window", b.escalation_window),
        ] {
            problems.note(check_duration(key, value, MAX_TIME_OUT, "10 years"));
        }
        for (key, value) in b.cause_durations() {
            problems.note(check_duration(
                key,
                value,
                b.max_duration.0,
                "bans.max_duration",
            ));
        }
        problems.note_some(b.mode.problem("bans.mode"));
        self.check_widen(problems);
    }

    /// `[[feeds]]`: a name fit for a cause, one source each, sane bounds.
    fn check_feeds(&self, problems: &mut Problems) {
        let mut names = std::collections::HashSet::new();
        for (i, feed) in self.feeds.iter().enumerate() {
            let key = format!("feeds[{i}]");
            let valid_name = !feed.name.is_empty()
                && feed.name.len() <= 32
                && feed
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid_name {
                problems.note(Err(anyhow!(
                    "{key}.name: {:?} is not 1 to 32 letters, digits, '.', '_' or '-'",
                    feed.name
                )));
            } else if !names.insert(feed.name.as_str()) {
                problems.note(Err(anyhow!("{key}.name: {:?} names two feeds", feed.name)));
            }
            match (&feed.path, &feed.url) {
                (Some(_), Some(_)) | (None, None) => {
                    problems.note(Err(anyhow!("{key}: give it a path or a url (one of them)")))
                }
                (None, Some(url))
                    if !(url.starts_with("https://") || url.starts_with("http://")) =>
                {
                    problems.note(Err(anyhow!(
                        "{key}.url: {url:?} is not an https:// (or http://) URL"
                    )))
                }
                _ => {}
            }
            if feed.refresh.0 < Duration::from_secs(10)
                || feed.refresh.0 > Duration::from_secs(7 * 86_400)
            {
                problems.note(Err(anyhow!(
                    "{key}.refresh: {} is not between 10s and 7days",
                    humantime::format_duration(feed.refresh.0)
                )));
            }
            if feed.timeout.0 < Duration::from_secs(1) || feed.timeout.0 > Duration::from_secs(600)
            {
                problems.note(Err(anyhow!(
                    "{key}.timeout: {} is not between 1s and 10m",
                    humantime::format_duration(feed.timeout.0)
                )));
            }
            if feed.max_entries == 0 || feed.max_entries > MAX_FEED_ENTRIES {
                problems.note(Err(anyhow!(
                    "{key}.max_entries: {} is not in 1..={MAX_FEED_ENTRIES}",
                    feed.max_entries
                )));
            }
        }
    }

    /// `[bans.widen]`: steps wider than the aggregation, narrowest first,
    /// and never wider than a provider's allocation.
    fn check_widen(&self, problems: &mut Problems) {
        let b = &self.bans;
        let w = &b.widen;
        if w.members < 2 {
            problems.note(Err(anyhow!(
                "bans.widen.members: {} is below 2 (one time-out is no pattern; enabled = false turns widening off)",
                w.members
            )));
        }
        problems.note(check_duration(
            "bans.widen.window",
            w.window,
            MAX_TIME_OUT,
            "10 years",
        ));
        // Steps not wider than the aggregation (bans.ipv6_prefix = 48, say)
        // have nothing to widen and are passed over.
        for (key, steps, widest, longest) in [
            ("bans.widen.ipv4", &w.ipv4, WIDEST_IPV4, 32),
            ("bans.widen.ipv6", &w.ipv6, WIDEST_IPV6, 128),
        ] {
            let mut narrower: Option<u8> = None;
            for &len in steps {
                if len > longest {
                    problems.note(Err(anyhow!("{key}: /{len} is longer than an address")));
                } else if let Some(before) = narrower.filter(|before| len >= *before) {
                    problems.note(Err(anyhow!(
                        "{key}: /{len} after /{before}: list the steps narrowest first, each wider than the one before"
                    )));
                } else if len < widest {
                    problems.note(Err(anyhow!(
                        "{key}: /{len} is wider than /{widest}, a provider's allocation: its customers would be timed out with the scanner"
                    )));
                }
                narrower = Some(len);
            }
        }
    }

    fn check_connections(&self, problems: &mut Problems) {
        for (key, value, max, max_name) in [
            (
                "timeouts.handshake",
                self.timeouts.handshake,
                Duration::from_secs(600),
                "10m",
            ),
            (
                "timeouts.idle",
                self.timeouts.idle,
                MAX_TIME_OUT,
                "10 years",
            ),
            (
                "storage.flush_interval",
                self.storage.flush_interval,
                Duration::from_secs(60),
                "1m",
            ),
        ] {
            problems.note(check_duration(key, value, max, max_name));
        }
        problems.note_some(self.storage.on_damage.problem("storage.on_damage"));
        if self.service.requests_per_second == 0 || self.service.request_burst == 0 {
            problems.note(Err(anyhow!(
                "service.requests_per_second and service.request_burst: must be at least 1"
            )));
        }
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_pending_handshakes", l.max_pending_handshakes),
            ("limits.max_pending_per_source", l.max_pending_per_source),
            ("limits.max_sessions_per_source", l.max_sessions_per_source),
        ] {
            if value == 0 {
                problems.note(Err(anyhow!("{name}: must be at least 1")));
            }
        }
    }

    fn check_kernel(&self, problems: &mut Problems) {
        let k = &self.kernel;
        problems.note_some(k.xdp_mode.problem("kernel.xdp_mode"));
        problems.note_some(k.drop_scope.problem("kernel.drop_scope"));
        if !(1..=super::MAX_MAX_PREFIXES).contains(&k.max_prefixes) {
            problems.note(Err(anyhow!(
                "kernel.max_prefixes: {} is not in 1..={}",
                k.max_prefixes,
                super::MAX_MAX_PREFIXES
            )));
        }
        let mut detection = self.detection();
        if k.bpf_table.is_none() && k.xdp_iface.is_none() {
            // No kernel tier: how many ports we listen on is no concern.
            detection.service_ports.clear();
        }
        problems.note(detection.check().map_err(|e| anyhow!("kernel.{e}")));
    }
}
