//! How the CLI prints times and bans.

use std::time::Duration;

use actors::format_time;
use protocol::message::{BanInfo, ServerStats};

/// One ban as a JSON object (one per line with `--json`).
pub fn ban_json(ban: &BanInfo, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "prefix": ban.prefix.to_string(),
        "cause": ban.cause.as_str(),
        "expires_at": format_time(ban.expires_at_ms),
        "remaining_s": ban.expires_at_ms.saturating_sub(now_ms) / 1000,
        "repeat": ban.repeat,
        "banned_at": format_time(ban.banned_at_ms),
        "first_bytes": hex(ban.first_bytes.as_slice()),
    })
}

pub fn stats_json(stats: &ServerStats) -> serde_json::Value {
    serde_json::json!({
        "uptime_s": stats.uptime_secs,
        "connections_accepted": stats.connections_accepted,
        "connections_refused": stats.connections_refused,
        "connections_over_limit": stats.connections_over_limit,
        "sessions_active": stats.sessions_active,
        "pending_evicted": stats.pending_evicted,
        "sessions_not_reading": stats.sessions_not_reading,
        "requests_rate_limited": stats.requests_rate_limited,
        "sessions_kicked": stats.sessions_kicked,
        "handshakes_completed": stats.handshakes_completed,
        "bans_active": stats.bans_active,
        "bans_total": stats.bans_total,
        "bans_evicted": stats.bans_evicted,
        "storage_flushes": stats.storage_flushes,
        "storage_unflushed": stats.storage_unflushed,
        "storage_errors": stats.storage_errors,
        "kernel_errors": stats.kernel_errors,
        "kernel_detections": stats.kernel_detections,
    })
}

/// One ban as a line of a table.
pub fn ban_line(ban: &BanInfo, now_ms: u64) -> String {
    let remaining = Duration::from_secs(ban.expires_at_ms.saturating_sub(now_ms) / 1000);
    format!(
        "{:<24} {:<18} until {} ({} left)  repeat {}  first bytes {}",
        ban.prefix.to_string(),
        ban.cause.as_str(),
        format_time(ban.expires_at_ms),
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
