//! `penaltybox config print`: every setting as TOML, each with a one-line
//! comment and its environment variable, the unset optional ones included
//! (commented out), so the output is both the effective configuration and
//! its reference. A test holds [`KEYS`] to exactly the keys `Settings` has.

use crate::settings::Settings;

/// Every key, in print order, with what it means. A key absent from the
/// serialized settings is an unset optional one.
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "addresses to listen on (--listen, repeatable)"),
    (
        "data_dir",
        "the database and the server key pair (--data-dir)",
    ),
    (
        "workers",
        "threads running sessions; 0 = one per CPU (at most 256)",
    ),
    (
        "log_level",
        "log filter, as RUST_LOG: \"info\", \"debug\", \"info,actors=debug\"; unset: RUST_LOG, else info (a reload applies it)",
    ),
    (
        "feeds",
        "blocklist feeds, [[feeds]] tables: name, path or url, refresh [1h], max_entries [1000000], timeout [30s]",
    ),
    (
        "keys.server_key",
        "server private key [default: DATA_DIR/server.key, generated on first start]",
    ),
    (
        "keys.authorized_keys",
        "only these client public keys may connect (one per line, KEY [comment]) [unset: any client]",
    ),
    (
        "keys.admin_keys",
        "public keys whose sessions may send admin requests",
    ),
    (
        "timeouts.handshake",
        "the handshake and first request must complete within this (shorter under load)",
    ),
    (
        "timeouts.idle",
        "an established session idle this long is closed",
    ),
    (
        "timeouts.write",
        "a response the peer does not take within this ends the session",
    ),
    (
        "bans.non_protocol",
        "time-out for bytes that are not penaltybox (bad magic, version, pattern, length)",
    ),
    (
        "bans.handshake_failure",
        "time-out for a failed authentication (wrong server key, unauthorized, replay)",
    ),
    (
        "bans.handshake_timeout",
        "time-out for no complete handshake and first request in time",
    ),
    (
        "bans.session_violation",
        "time-out for a frame that fails authentication or breaks a limit",
    ),
    ("bans.admin_default", "an admin's `bans add` without --for"),
    (
        "bans.port_scan",
        "time-out for a port scan the kernel detectors saw",
    ),
    (
        "bans.syn_flood",
        "time-out for a SYN flood the kernel detectors saw",
    ),
    (
        "bans.bad_tcp_flags",
        "time-out for TCP flags no real stack sends",
    ),
    (
        "bans.stray_segments",
        "time-out for segments that belong to no connection (ACK and Maimon scans, SYN-ACK floods, replayed TCP)",
    ),
    (
        "bans.unparsed_flood",
        "time-out for a flood of packets whose headers cannot be followed (IPv6 extension chains, TCP fragments)",
    ),
    (
        "bans.escalation_window",
        "a repeat within this of the last time-out doubles it",
    ),
    (
        "bans.max_duration",
        "no time-out (escalated, admin, remote) lasts longer (at most 10 years)",
    ),
    ("bans.ipv4_prefix", "IPv4 sources are timed out per /N"),
    ("bans.ipv6_prefix", "IPv6 sources are timed out per /N"),
    (
        "bans.allow",
        "CIDR prefixes never timed out, refused or dropped",
    ),
    (
        "bans.max_entries",
        "the table's bound; when full the entry closest to expiry goes",
    ),
    (
        "bans.mode",
        "\"enforce\", or \"monitor\": decide, log and count every time-out, enforce none",
    ),
    (
        "bans.widen.enabled",
        "time-outs widen to the network a rotating scanner comes from",
    ),
    (
        "bans.widen.members",
        "distinct time-outs inside one wider prefix, within the window, that time it out",
    ),
    (
        "bans.widen.window",
        "how close together those time-outs must be",
    ),
    (
        "bans.widen.ipv4",
        "IPv4 steps, narrowest first (never wider than /16)",
    ),
    (
        "bans.widen.ipv6",
        "IPv6 steps, narrowest first (never wider than /32)",
    ),
    (
        "bans.widen.duration",
        "a widened prefix's first time-out (escalating as any other)",
    ),
    ("limits.max_connections", "connections at once, all sources"),
    (
        "limits.max_pending_handshakes",
        "connections still in their handshake (the oldest idle ones make room)",
    ),
    (
        "limits.max_pending_per_source",
        "handshakes at once per time-out prefix",
    ),
    (
        "limits.max_sessions_per_source",
        "sessions (and handshakes) at once per time-out prefix",
    ),
    (
        "storage.flush_interval",
        "group commit: the longest a write waits to become durable",
    ),
    (
        "storage.cache_mb",
        "sled's page cache (resident memory is a few times this)",
    ),
    (
        "storage.on_damage",
        "\"repair\" (move aside, else salvage, keep the damaged files, serve) or \"refuse\" (stop)",
    ),
    (
        "service.anonymous_writes",
        "anonymous (keyless) sessions may write the inventory",
    ),
    (
        "service.max_volumes",
        "the inventory holds at most this many volumes",
    ),
    (
        "service.min_free_mb",
        "inventory writes pause below this much free space on the data disk",
    ),
    ("service.requests_per_second", "per session, sustained"),
    ("service.request_burst", "per session, in a burst"),
    (
        "kernel.bpf_table",
        "the pinned ban table of `xdp attach` (-B/--bpf-table) [unset: no kernel tier]",
    ),
    (
        "kernel.xdp_iface",
        "attach the XDP program to this interface at start (--xdp-iface)",
    ),
    ("kernel.xdp_mode", "auto, driver or skb"),
    (
        "kernel.max_prefixes",
        "entries of the kernel's prefix map (time-outs wider than one address, blocklist feeds), set when xdp_iface attaches the program; memory only when used",
    ),
    (
        "kernel.detect",
        "the TCP detectors in the XDP program (port scan, SYN flood, bad flags)",
    ),
    (
        "kernel.scan_ports",
        "distinct ports probed within scan_window that make a port scan (2..=16)",
    ),
    ("kernel.scan_window", "the port-scan window"),
    (
        "kernel.trap_ports",
        "ports nothing legitimate connects to: one probe is a scan",
    ),
    (
        "kernel.syn_rate",
        "SYNs per second per source to the listen ports, sustained",
    ),
    ("kernel.syn_burst", "SYNs per source in a burst"),
    (
        "kernel.stray_segments",
        "segments that belong to no connection (ACK scans, SYN-ACK floods, replays) from one source within stray_window that time it out (at least 2)",
    ),
    ("kernel.stray_window", "the stray-segment window"),
    (
        "kernel.unparsed_burst",
        "packets whose headers the program cannot follow (IPv6 extension chains, TCP fragments) from one source within scan_window past which it is timed out",
    ),
    (
        "kernel.drop_scope",
        "\"service\": a time-out drops TCP to the listen ports only; \"all\": every packet",
    ),
    (
        "metrics.listen",
        "/metrics, /healthz, /readyz; \"\" turns them off",
    ),
    ("fleet.servers", "NATS URLs; empty: no fleet"),
    (
        "fleet.bucket",
        "the JetStream key-value bucket shared by the fleet",
    ),
    (
        "fleet.node_id",
        "this node's name in the fleet [default: the host name]",
    ),
    (
        "fleet.replicas",
        "replicas of the bucket when this node creates it",
    ),
    (
        "fleet.creds_file",
        "a NATS .creds file (or user and password, or token)",
    ),
    ("fleet.user", "NATS user (with password)"),
    ("fleet.password", "NATS password"),
    ("fleet.token", "NATS token"),
    ("fleet.tls_ca_file", "TLS: the CA to trust"),
    ("fleet.tls_cert", "TLS: client certificate (with tls_key)"),
    ("fleet.tls_key", "TLS: client key"),
    (
        "fleet.node_key",
        "this node's Ed25519 key, signing its records [default: <data_dir>/node.key, made on first start]",
    ),
    (
        "fleet.trusted_nodes",
        "`KEY node-name` lines: nodes whose records apply [default: <data_dir>/trusted_nodes; reload re-reads]",
    ),
    (
        "fleet.require_signatures",
        "apply only signed records from trusted nodes; false while upgrading a fleet",
    ),
    (
        "proxy.trusted",
        "load balancers that send the PROXY protocol (v1/v2); their header names the client",
    ),
];

/// The settings as commented TOML.
pub fn render(settings: &Settings) -> anyhow::Result<String> {
    let value = toml::Value::try_from(settings)?;
    let mut out = String::new();
    let mut section = "";
    for (key, comment) in KEYS {
        let (table, name) = match key.rsplit_once('.') {
            Some((table, name)) => (table, name),
            None => ("", *key),
        };
        if table != section {
            out.push_str(&format!("\n[{table}]\n"));
            section = table;
        }
        let env = format!("PENALTYBOX_{}", key.replace('.', "__").to_uppercase());
        out.push_str(&format!("# {comment} ({env})\n"));
        let current = table
            .split('.')
            .filter(|part| !part.is_empty())
            .try_fold(&value, |at, part| at.get(part))
            .and_then(|t| t.get(name));
        match current {
            Some(current) => out.push_str(&format!("{name} = {}\n", inline(current))),
            None => out.push_str(&format!("# {name} = (unset)\n")),
        }
    }
    Ok(out.trim_start().to_owned())
}

/// A value on one line (arrays included).
fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the settings serialize (with each optional one set) has a
    /// line here, and nothing here is not a key.
    #[test]
    fn every_key_is_documented_once() {
        let settings = Settings::with_every_optional_key();
        let value = toml::Value::try_from(&settings).unwrap();
        fn keys(path: &str, value: &toml::Value, out: &mut Vec<String>) {
            match value.as_table() {
                Some(table) => {
                    for (key, item) in table {
                        let path = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        keys(&path, item, out);
                    }
                }
                None => out.push(path.to_owned()),
            }
        }
        let mut serialized = Vec::new();
        keys("", &value, &mut serialized);
        serialized.sort();
        let mut documented: Vec<String> = KEYS.iter().map(|(k, _)| k.to_string()).collect();
        documented.sort();
        assert_eq!(documented, serialized);
        let printed = render(&Settings::default()).unwrap();
        assert!(printed.contains("# server_key = (unset)"), "{printed}");
        assert!(
            printed.contains("(PENALTYBOX_BANS__NON_PROTOCOL)"),
            "{printed}"
        );
        // What it prints reads back as the same settings.
        let back: Settings = toml::from_str(&printed).unwrap();
        assert_eq!(
            toml::Value::try_from(&back).unwrap(),
            toml::Value::try_from(Settings::default()).unwrap()
        );
    }
}
