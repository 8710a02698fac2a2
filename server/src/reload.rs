//! Reloading the settings without a restart: SIGHUP, or `penaltybox
//! reload` over the admin connection (both end here).
//!
//! The settings are read again exactly as at start (file, environment,
//! flags) and the key files with them. If anything is invalid, the running
//! settings stay whole and the reason is logged (and answered). Otherwise
//! what can change live ([`LIVE`]) is applied without dropping a
//! connection or a time-out:
//! - `bans.*` but the aggregation lengths: durations, escalation, the cap,
//!   the table bound, the mode, the allow-list (newly allow-listed
//!   time-outs are released at once, from the view and the kernel);
//! - `keys.authorized_keys`, `keys.admin_keys` (re-read even if the path
//!   is the same): for new handshakes;
//! - `limits.*` and `timeouts.*`: for new connections (and, for the idle
//!   and write deadlines, the next wait of every session);
//! - the kernel detectors' thresholds (`kernel.scan_*`, `trap_ports`,
//!   `syn_*`, `stray_*`, `unparsed_burst`, `drop_scope`);
//! - `log_level`;
//! - `bans.widen`, from the next time-out on;
//! - `feeds`: every feed is read again at once (a changed file applies
//!   then), a new one starts, and a removed one's entries are released;
//! - `fleet.trusted_nodes` (re-read even if the path is the same): the
//!   fleet applies records of the keys it lists from the next record on.
//!
//! Everything else (listen addresses, data dir, workers, storage, metrics,
//! the kernel table, the fleet, the proxies, aggregation) is named in the
//! log and left as it was. One line says what changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use actors::{ReloadError, ServerHandle};

use crate::settings::{BanMode, Settings};

/// Reads the settings the way the command line did.
pub type Loader = Box<dyn Fn() -> anyhow::Result<Settings> + Send + Sync>;

/// Keys that a reload applies; every other changed key is reported as
/// needing a restart. A key here matches itself and everything under it.
const LIVE: &[&str] = &[
    "log_level",
    "bans.non_protocol",
    "bans.handshake_failure",
    "bans.handshake_timeout",
    "bans.session_violation",
    "bans.admin_default",
    "bans.port_scan",
    "bans.syn_flood",
    "bans.bad_tcp_flags",
    "bans.stray_segments",
    "bans.unparsed_flood",
    "bans.escalation_window",
    "bans.max_duration",
    "bans.allow",
    "bans.max_entries",
    "bans.mode",
    "bans.widen",
    "feeds",
    "fleet.trusted_nodes",
    "keys.authorized_keys",
    "keys.admin_keys",
    "limits",
    "timeouts",
    "kernel.scan_ports",
    "kernel.scan_window",
    "kernel.trap_ports",
    "kernel.syn_rate",
    "kernel.syn_burst",
    "kernel.stray_segments",
    "kernel.stray_window",
    "kernel.unparsed_burst",
    "kernel.drop_scope",
];

pub struct Reload {
    load: Loader,
    /// The settings in force.
    current: Mutex<Settings>,
    server: ServerHandle,
    kernel_pins: Option<PathBuf>,
    bound: Vec<std::net::SocketAddr>,
    /// The blocklist feeds' tasks, once they run.
    feeds: std::sync::OnceLock<std::sync::Arc<crate::feeds_wiring::FeedRunners>>,
    /// The fleet's trusted keys, when the fleet is on.
    fleet_trust: std::sync::OnceLock<crate::fleet_wiring::TrustHandle>,
}

impl Reload {
    pub fn new(
        load: Loader,
        current: Settings,
        server: ServerHandle,
        kernel_pins: Option<PathBuf>,
        bound: Vec<std::net::SocketAddr>,
    ) -> Self {
        Reload {
            load,
            current: Mutex::new(current),
            server,
            kernel_pins,
            bound,
            feeds: std::sync::OnceLock::new(),
            fleet_trust: std::sync::OnceLock::new(),
        }
    }

    /// The trusted node keys a reload reads again.
    pub fn set_fleet_trust(&self, trust: crate::fleet_wiring::TrustHandle) {
        let _ = self.fleet_trust.set(trust);
    }

    /// The feeds a reload restarts.
    pub fn set_feeds(&self, feeds: std::sync::Arc<crate::feeds_wiring::FeedRunners>) {
        let _ = self.feeds.set(feeds);
    }

    /// SIGHUP: the outcome is logged.
    pub fn on_signal(&self) {
        match self.apply() {
            Ok(summary) => log::info!("SIGHUP: {summary}"),
            Err(why) => log::error!("SIGHUP: {why}"),
        }
    }

    /// Re-reads and applies; the one-line summary, or why the running
    /// settings were kept.
    pub fn apply(&self) -> Result<String, ReloadError> {
        let kept = |e: anyhow::Error| ReloadError {
            reason: format!("reload failed, the running settings are kept: {e:#}"),
        };
        let new = (self.load)().map_err(kept)?;
        let access = new.access_policy().map_err(kept)?;
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = changed_keys(&current, &new);
        let (live, frozen): (Vec<&String>, Vec<&String>) =
            changed.iter().partition(|key| is_live(key));

        // What applies: the new settings, with every key that cannot change
        // live kept as it runs.
        let applied = live_applied(&current, &new).map_err(kept)?;
        let allow = applied.allow_list().map_err(kept)?;
        // Read again even if the path is the same, as the key lists are.
        let trusted = match self.fleet_trust.get() {
            Some(handle) => Some(
                applied
                    .trusted_nodes(handle.own_key, handle.name)
                    .map_err(kept)?,
            ),
            None => None,
        };
        let detection = self.kernel_detection(&applied);
        if let (Some(pins), Some(detection)) = (&self.kernel_pins, &detection)
            && *detection != self.kernel_detection(&current).expect("same kernel tier")
            && let Err(error) =
                xdp::PinnedMaps::open(pins).and_then(|mut table| table.set_detection(detection))
        {
            return Err(kept(anyhow::anyhow!("kernel detectors: {error}")));
        }
        self.server.reload(
            access.clone(),
            applied.limits(),
            applied.policy(),
            allow,
            applied.deadlines(),
        );
        if let Some(feeds) = self.feeds.get() {
            feeds.replace(&applied.feeds);
        }
        let trusted_count = trusted.as_ref().map(fleet::TrustedNodes::len);
        if let (Some(handle), Some(trusted)) = (self.fleet_trust.get(), trusted) {
            handle.trust.set(trusted);
        }
        let log_level_changed = current.log_level != applied.log_level;
        *current = applied;
        if log_level_changed {
            // Checked with the settings; a failure here keeps the old filter.
            if let Err(error) = crate::logging::set_filter(current.log_level.as_deref()) {
                log::warn!("reload: log_level: {error}");
            }
        }

        let mut parts = Vec::new();
        if live.is_empty() {
            parts.push("no live setting changed".to_owned());
        } else {
            let names: Vec<&str> = live.iter().map(|k| k.as_str()).collect();
            parts.push(format!("applied {}", names.join(", ")));
        }
        parts.push(format!(
            "{} admin keys, {}",
            access.admins.len(),
            match &access.authorized {
                Some(keys) => format!("{} authorized client keys", keys.len()),
                None => "any client".to_owned(),
            }
        ));
        if let Some(count) = trusted_count {
            parts.push(format!("{count} trusted fleet node keys"));
        }
        if current.bans.mode.get() == BanMode::Monitor {
            parts.push("monitor mode (nothing is timed out)".into());
        }
        if !frozen.is_empty() {
            let names: Vec<&str> = frozen.iter().map(|k| k.as_str()).collect();
            parts.push(format!(
                "not applied, restart to change: {}",
                names.join(", ")
            ));
        }
        Ok(format!("reloaded: {}", parts.join("; ")))
    }

    /// The detector settings `settings` give, with the ports as bound;
    /// `None` without a kernel tier.
    fn kernel_detection(&self, settings: &Settings) -> Option<xdp::Detection> {
        self.kernel_pins.as_ref()?;
        let mut detection = settings.detection();
        detection.service_ports = crate::settings::service_ports(&self.bound);
        Some(detection)
    }
}

impl actors::Reloader for Reload {
    fn reload(&self) -> Result<String, ReloadError> {
        let outcome = self.apply();
        match &outcome {
            Ok(summary) => log::info!("admin reload: {summary}"),
            Err(why) => log::error!("admin reload: {why}"),
        }
        outcome
    }
}

/// `current` with every [`LIVE`] key taken from `new`: one list says what
/// a reload applies, both to the settings and to the log line.
fn live_applied(current: &Settings, new: &Settings) -> anyhow::Result<Settings> {
    let mut applied = toml::Value::try_from(current)?;
    let new = toml::Value::try_from(new)?;
    for key in LIVE {
        let path: Vec<&str> = key.split('.').collect();
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut into = &mut applied;
        let mut from = Some(&new);
        for part in parents {
            from = from.and_then(|value| value.get(part));
            into = match into {
                toml::Value::Table(table) => table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default())),
                _ => anyhow::bail!("settings: {key}: not a table"),
            };
        }
        let toml::Value::Table(table) = into else {
            anyhow::bail!("settings: {key}: not a table");
        };
        // A key unset in the new settings (an optional one) is unset.
        match from.and_then(|value| value.get(last)) {
            Some(value) => {
                table.insert(last.to_string(), value.clone());
            }
            None => {
                table.remove(*last);
            }
        }
    }
    Ok(applied.try_into()?)
}

fn is_live(key: &str) -> bool {
    LIVE.iter()
        .any(|live| key == *live || key.starts_with(&format!("{live}.")))
}

/// Every key (dotted path) whose value differs, in order.
fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    let flat = |s: &Settings| {
        let mut out = BTreeMap::new();
        if let Ok(value) = toml::Value::try_from(s) {
            flatten("", &value, &mut out);
        }
        out
    };
    let (old, new) = (flat(old), flat(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|key| old.get(*key) != new.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_and_sorted_into_live_and_restart() {
        let old = Settings::default();
        let mut new = Settings::default();
        new.bans.allow = vec!["192.0.2.0/24".into()];
        new.limits.max_connections = 7;
        new.data_dir = "/elsewhere".into();
        new.bans.ipv4_prefix = 24;
        let changed = changed_keys(&old, &new);
        assert_eq!(
            changed,
            vec![
                "bans.allow",
                "bans.ipv4_prefix",
                "data_dir",
                "limits.max_connections"
            ]
        );
        let live: Vec<&String> = changed.iter().filter(|k| is_live(k)).collect();
        assert_eq!(live, vec!["bans.allow", "limits.max_connections"]);
    }

    #[test]
    fn a_reload_applies_exactly_the_live_keys() {
        let current = Settings::default();
        let mut new = Settings::default();
        new.bans.allow = vec!["192.0.2.0/24".into()];
        new.bans.mode = BanMode::Monitor.into();
        new.timeouts.idle = crate::settings::Dur(std::time::Duration::from_secs(1));
        new.kernel.syn_rate = 7;
        new.keys.admin_keys = Some("/etc/penaltybox/admins".into());
        // Not live:
        new.bans.ipv4_prefix = 24;
        new.data_dir = "/elsewhere".into();
        new.kernel.detect = !current.kernel.detect;
        let applied = live_applied(&current, &new).unwrap();
        let changed = changed_keys(&current, &applied);
        assert_eq!(
            changed,
            vec![
                "bans.allow",
                "bans.mode",
                "kernel.syn_rate",
                "keys.admin_keys",
                "timeouts.idle"
            ]
        );
        // And back: an optional key unset again is unset.
        let back = live_applied(&applied, &current).unwrap();
        assert!(changed_keys(&current, &back).is_empty());
    }

    #[test]
    fn every_live_key_is_a_setting() {
        let settings = Settings::with_every_optional_key();
        let mut flat = BTreeMap::new();
        flatten("", &toml::Value::try_from(&settings).unwrap(), &mut flat);
        for live in LIVE {
            assert!(
                flat.keys()
                    .any(|key| key == live || key.starts_with(&format!("{live}."))),
                "{live} is no setting"
            );
        }
    }
}
