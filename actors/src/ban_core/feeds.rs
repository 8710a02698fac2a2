//! The core's side of the lists an operator hands the server: a blocklist
//! feed's refresh (its entries' expiry, monitor mode, the one log line),
//! and `bans import` (admin time-outs of many prefixes, one summary line).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use model::Cidr;
use model::ban::Cause;

use super::BanCore;
use crate::ban_table::FeedApplied;
use crate::policy::AdminBan;

/// One refresh of a feed: its list (sorted, unique) and how often it is
/// refreshed.
#[derive(Debug, Clone)]
pub struct FeedList {
    pub name: String,
    pub entries: Vec<Cidr>,
    pub refresh: Duration,
    /// Lines of the list that were not entries (for `bans stats`).
    pub bad_lines: usize,
}

/// What `bans import` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub added: usize,
    pub refused: usize,
    /// The first refusal, in words.
    pub first_refusal: Option<String>,
}

impl BanCore {
    /// Applies a refresh of a feed as a difference (`ban_table/feeds.rs`,
    /// where its entries' expiry is computed).
    pub fn apply_feed(&mut self, list: FeedList, now_ms: u64) -> FeedApplied {
        let FeedList {
            name,
            entries,
            refresh,
            bad_lines,
        } = list;
        if self.policy.monitor {
            log::info!(
                event = "would-feed", feed = name.as_str();
                "feed {name}: would time out {} prefixes (monitor mode)",
                entries.len()
            );
            return FeedApplied::default();
        }
        let refresh_ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
        let started = Instant::now();
        let applied = self.table.apply_feed(&name, &entries, refresh_ms, now_ms);
        let in_force = applied.added + applied.kept;
        self.table
            .stats()
            .feed_applied(&name, in_force, bad_lines, now_ms);
        log::info!(
            event = "feed", feed = name.as_str(), entries = in_force, added = applied.added,
            released = applied.released;
            "feed {name}: {in_force} entries in force ({} added, {} kept with their expiry moved, {} released; {} listed but timed out otherwise, {} inside the allow-list), applied in {:.0} ms",
            applied.added,
            applied.kept,
            applied.released,
            applied.held,
            applied.allow_listed,
            started.elapsed().as_secs_f64() * 1e3
        );
        applied
    }

    /// `bans import`: an admin time-out of each prefix, as `bans add`
    /// makes one (the allow-list wins; covering it needs `force`), logged
    /// in one line.
    pub fn import(
        &mut self,
        prefixes: &[Cidr],
        duration: Option<Duration>,
        cause: Cause,
        force: bool,
        requester: Option<IpAddr>,
        now_ms: u64,
    ) -> Imported {
        let mut imported = Imported::default();
        if self.policy.monitor {
            imported.refused = prefixes.len();
            imported.first_refusal = Some(crate::BanError::MonitorMode.to_string());
            return imported;
        }
        for prefix in prefixes {
            let ban = AdminBan {
                prefix: *prefix,
                duration,
                cause,
                force,
                requester,
            };
            match self.policy.admin_ban(ban, &self.allow, now_ms) {
                Ok(record) => {
                    self.table.insert(&record, now_ms);
                    self.widen_after(record.prefix, now_ms);
                    imported.added += 1;
                }
                Err(error) => {
                    imported.refused += 1;
                    imported
                        .first_refusal
                        .get_or_insert_with(|| format!("{prefix}: {error}"));
                }
            }
        }
        log::info!(
            event = "admin-import", cause = cause.as_str(), added = imported.added, refused = imported.refused;
            "admin imported {} time-outs (cause {cause}){}",
            imported.added,
            match &imported.first_refusal {
                Some(first) => format!("; {} refused, the first: {first}", imported.refused),
                None => String::new(),
            }
        );
        imported
    }
}
