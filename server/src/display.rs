//! How the CLI prints times and bans.

use std::time::{Duration, UNIX_EPOCH};

use protocol::message::{BanInfo, ServerStats};

/// Unix milliseconds as RFC 3339 UTC, to the second.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One ban as a JSON object (one per line with `--json`).
pub fn ban_json(ban: &BanInfo, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "prefix": ban.prefix.to_string(),
        "cause": ban.cause.as_str(),
        "expires_at": rfc3339_ms(ban.expires_at_ms),
        "remaining_s": ban.expires_at_ms.saturating_sub(now_ms) / 1000,
        "repeat": ban.repeat,
        "banned_at": rfc3339_ms(ban.banned_at_ms),
        "first_bytes": hex(ban.first_bytes.as_slice()),
    })
}

pub fn stats_json(stats: &ServerStats) -> serde_json::Value {
    serde_json::json!({
        "uptime_s": stats.uptime_secs,
        "connections_accepted": stats.connections_accepted,
        "connections_refused": stats.connections_refused,
        "sessions_active": stats.sessions_active,
        "handshakes_completed": stats.handshakes_completed,
        "bans_active": stats.bans_active,
        "bans_total": stats.bans_total,
        "storage_errors": stats.storage_errors,
        "kernel_errors": stats.kernel_errors,
    })
}

/// One ban as a line of a table.
pub fn ban_line(ban: &BanInfo, now_ms: u64) -> String {
    let remaining = Duration::from_secs(ban.expires_at_ms.saturating_sub(now_ms) / 1000);
    format!(
        "{:<24} {:<18} until {} ({} left)  repeat {}  first bytes {}",
        ban.prefix.to_string(),
        ban.cause.as_str(),
        rfc3339_ms(ban.expires_at_ms),
        humantime::format_duration(remaining),
        ban.repeat,
        if ban.first_bytes.as_slice().is_empty() {
            "-".into()
        } else {
            hex(ban.first_bytes.as_slice())
        }
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn rfc3339_known_answers() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        // date -u -d @1700000000
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        // date -u -d @951782400 (a leap day)
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
