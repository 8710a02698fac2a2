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
        "first_bytes_text": printable(ban.first_bytes.as_slice()),
        "kernel_saw": kernel_saw(ban),
        "widened_from": widened_from(ban),
        "origin": origin(ban),
    })
}

/// What the kernel saw of a source its detectors reported, in words; `None`
/// for any other time-out.
pub fn kernel_saw(ban: &BanInfo) -> Option<String> {
    let cause: model::BanCause = ban.cause.as_str().parse().ok()?;
    let seen = model::KernelSeen::from_first_bytes(ban.first_bytes.as_slice())?;
    let (figure, port) = (seen.figure, seen.port);
    Some(match cause {
        model::BanCause::PortScan => {
            format!("probes to {figure} distinct ports, the last to port {port}")
        }
        model::BanCause::SynFlood => format!("{figure} SYNs to port {port} within the window"),
        model::BanCause::BadTcpFlags => format!(
            "{} to port {port}",
            crate::kernel_wiring::flag_names(figure)
        ),
        model::BanCause::StraySegments => format!(
            "{figure} segments that belonged to no connection (each with ACK: an ACK, FIN+ACK, SYN+ACK or data; the stack reset each), the last to port {port}"
        ),
        model::BanCause::UnparsedFlood => {
            format!("{figure} packets whose TCP header could not be found")
        }
        _ => return None,
    })
}

/// The time-outs a widened one was made of, in words; `None` for any other
/// time-out.
pub fn widened_from(ban: &BanInfo) -> Option<String> {
    if ban.cause.as_str() != model::BanCause::Widened.name() {
        return None;
    }
    let from = model::WidenedFrom::from_first_bytes(&ban.prefix, ban.first_bytes.as_slice())?;
    let mut members: Vec<String> = from.members.iter().map(ToString::to_string).collect();
    let more = usize::from(from.count).saturating_sub(members.len());
    if more > 0 {
        members.push(format!("{more} more"));
    }
    Some(format!(
        "{} time-outs inside it: {}",
        from.count,
        members.join(", ")
    ))
}

/// Which node made a time-out: "local", or the fleet node's name.
pub fn origin(ban: &BanInfo) -> &str {
    if ban.origin.is_empty() {
        "local"
    } else {
        ban.origin.as_str()
    }
}

/// `bans show`: what covers the target, its history, its kernel entry.
pub fn report_json(
    target: &model::Cidr,
    report: &protocol::message::BanReport,
    now_ms: u64,
) -> serde_json::Value {
    serde_json::json!({
        "target": target.to_string(),
        "timed_out": report.covering.is_some(),
        "covering": report.covering.as_ref().map(|ban| ban_json(ban, now_ms)),
        "history": report.history.as_ref().map(|h| serde_json::json!({
            "prefix": h.prefix.to_string(),
            "repeat": h.repeat,
            "last_banned_at": format_time(h.last_banned_at_ms),
            "last_duration_s": h.last_duration_ms / 1000,
            "resets_at": format_time(h.resets_at_ms),
        })),
        "monitored": report.monitored.as_ref().map(|ban| ban_json(ban, now_ms)),
        "kernel": report.kernel.map(|k| serde_json::json!({
            "in_map": k.in_map,
            "drops": k.drops,
        })),
    })
}

/// `bans show` for a person.
pub fn report_text(
    target: &model::Cidr,
    report: &protocol::message::BanReport,
    now_ms: u64,
) -> String {
    let mut lines = Vec::new();
    match &report.covering {
        Some(ban) => {
            let left = Duration::from_secs(ban.expires_at_ms.saturating_sub(now_ms) / 1000);
            lines.push(format!(
                "{target}: timed out by {} (cause {}, origin {}), {} left, until {}; repeat {}",
                ban.prefix,
                ban.cause.as_str(),
                origin(ban),
                humantime::format_duration(left),
                format_time(ban.expires_at_ms),
                ban.repeat
            ));
            let bytes = ban.first_bytes.as_slice();
            if let Some(saw) = kernel_saw(ban) {
                lines.push(format!("  the kernel saw: {saw}"));
            } else if let Some(from) = widened_from(ban) {
                lines.push(format!("  widened over {from}"));
            } else if bytes.is_empty() {
                lines
                    .push("  first bytes: none (a kernel detection or an admin's time-out)".into());
            } else {
                lines.push(format!(
                    "  first bytes: {}  \"{}\"",
                    hex(bytes),
                    printable(bytes)
                ));
            }
        }
        None => lines.push(format!("{target}: not timed out")),
    }
    if let Some(would) = &report.monitored {
        let left = Duration::from_secs(would.expires_at_ms.saturating_sub(now_ms) / 1000);
        lines.push(format!(
            "  monitor mode: would be timed out as {} (cause {}, repeat {}), {} left, until {}",
            would.prefix,
            would.cause.as_str(),
            would.repeat,
            humantime::format_duration(left),
            format_time(would.expires_at_ms)
        ));
    }
    match &report.history {
        Some(h) => lines.push(format!(
            "  history of {}: {} time-out(s) within the escalation window, the last at {} for {}; resets at {}",
            h.prefix,
            h.repeat,
            format_time(h.last_banned_at_ms),
            humantime::format_duration(Duration::from_secs(h.last_duration_ms / 1000)),
            format_time(h.resets_at_ms)
        )),
        None => lines.push("  history: none within the escalation window".into()),
    }
    if report.covering.is_some() {
        lines.push(match report.kernel {
            Some(k) if k.in_map => format!("  kernel: in the map, {} packets dropped", k.drops),
            Some(_) => "  kernel: NOT in the map (kernel tier on, entry missing)".into(),
            None => "  kernel: no kernel tier here (or offline)".into(),
        });
    }
    lines.join("\n")
}

/// Bytes as text: printable ASCII as is, everything else as `.`.
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// Each blocklist feed, for `bans stats`.
pub fn feeds_json(feeds: &[protocol::message::FeedStat]) -> serde_json::Value {
    feeds
        .iter()
        .map(|feed| {
            serde_json::json!({
                "name": feed.name,
                "source": feed.source,
                "entries": feed.entries,
                "last_refresh": (feed.last_refresh_ms > 0).then(|| format_time(feed.last_refresh_ms)),
                "refreshes": feed.refreshes,
                "refresh_errors": feed.refresh_errors,
                "last_error": (!feed.last_error.is_empty()).then_some(feed.last_error.as_str()),
                "bad_lines": feed.bad_lines,
            })
        })
        .collect()
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
        "{:<24} {:<18} until {} ({} left)  repeat {}  origin {}  first bytes {}",
        ban.prefix.to_string(),
        ban.cause.as_str(),
        format_time(ban.expires_at_ms),
        humantime::format_duration(remaining),
        ban.repeat,
        origin(ban),
        if ban.first_bytes.as_slice().is_empty() {
            "-".into()
        } else {
            hex(ban.first_bytes.as_slice())
        }
    )
}

/// The one first-bytes format (as in the log): "47 45 54 20 2f".
fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    actors::hex_preview(bytes)
}
