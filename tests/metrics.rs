//! The metrics endpoint against a real Prometheus parser (the official
//! Python client's OpenMetrics parser, `pip install prometheus_client`):
//! after a scripted run, every counter is checked against what the run did;
//! and `/readyz` says 503 while a large table is restored, 200 after.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use model::Cidr;
use protocol::{AdminRequest, Request, Response};

/// `GET path` over HTTP/1.0: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Every sample, parsed by prometheus_client's OpenMetrics parser, keyed
/// by `name{label="value",...}` (labels sorted). `None` if the parser is
/// not installed (the test then skips loudly).
fn parse(text: &str) -> Option<HashMap<String, f64>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        skip_or_fail("the Prometheus parser is missing (pip install prometheus_client)");
        return None;
    }
    assert!(
        output.status.success(),
        "the parser refused it: {stderr}\n{text}"
    );
    let values: HashMap<String, f64> = serde_json::from_slice(&output.stdout).unwrap();
    Some(values)
}

#[test]
fn every_counter_matches_a_scripted_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let metrics = server.metrics.expect("metrics on by default");
    const GARBAGE: usize = 5;
    const LEGIT: usize = 3;
    for i in 0..GARBAGE {
        let source = format!("127.0.8.{}", i + 1);
        send_raw(
            &source,
            server.addr,
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(2),
        );
        assert!(
            server
                .wait_log(&format!("timed out {source}/32"), Duration::from_secs(5))
                .is_some()
        );
    }
    for i in 0..LEGIT {
        let source = format!("127.0.9.{}", i + 1);
        let pong = server.call_from(&source, None, Request::Ping { nonce: 7 });
        assert!(matches!(pong, Response::Pong { .. }), "{pong:?}");
    }
    let added = server.admin_call(AdminRequest::AddBan {
        prefix: "198.51.100.0/24".parse::<Cidr>().unwrap(),
        duration_secs: Some(600),
        cause: model::Cause::new("abuse report").unwrap(),
        force: false,
    });
    assert!(matches!(added, Response::BanAdded(_)), "{added:?}");
    // A timed-out source comes back: refused at accept.
    assert!(refused_at_accept("127.0.8.1", server.addr));
    assert!(eventually(Duration::from_secs(5), || {
        server.stats().connections_refused >= 1
    }));
    let stats = server.stats();

    // The last admin session may still be closing, and the group commit
    // not have run yet: scrape (a scrape opens no session) until both
    // have settled, then check everything on that scrape.
    let mut scraped = None;
    let settled = eventually(Duration::from_secs(5), || {
        let (status, text) = get(metrics, "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        let Some(m) = parse(&text) else {
            return true; // no parser: skipped below
        };
        let idle = m.get("penaltybox_sessions_active") == Some(&0.0)
            && m.get("penaltybox_storage_unflushed_writes") == Some(&0.0)
            && m.get("penaltybox_storage_flushes_total")
                .is_some_and(|n| *n >= 1.0);
        scraped = Some((text, m));
        idle
    });
    let Some((text, m)) = scraped else { return };
    assert!(
        settled,
        "sessions still active or writes unflushed:\n{text}"
    );
    let at = |key: &str| -> f64 {
        *m.get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{text}"))
    };
    assert_eq!(
        at(&format!(
            "penaltybox_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(
        at("penaltybox_timeouts_total{cause=\"bad-magic\"}"),
        GARBAGE as f64
    );
    assert_eq!(at("penaltybox_timeouts_total{cause=\"admin\"}"), 1.0);
    assert_eq!(at("penaltybox_timeouts_total{cause=\"port-scan\"}"), 0.0);
    assert_eq!(
        at("penaltybox_timeouts_active{family=\"ipv4\"}"),
        (GARBAGE + 1) as f64
    );
    assert_eq!(at("penaltybox_timeouts_active{family=\"ipv6\"}"), 0.0);
    assert_eq!(at("penaltybox_connections_refused_total"), 1.0);
    // The rest against the server's own counters at that moment (the
    // stats calls are connections too), and what the run implies.
    let accepted = at("penaltybox_connections_accepted_total");
    assert!(accepted >= (GARBAGE + LEGIT + 2) as f64, "{accepted}");
    assert!(accepted >= stats.connections_accepted as f64);
    let handshakes = at("penaltybox_handshakes_completed_total");
    assert!(handshakes >= (LEGIT + 1) as f64, "{handshakes}");
    assert_eq!(
        at("penaltybox_handshake_duration_seconds_count"),
        handshakes,
        "one observation per handshake"
    );
    assert_eq!(
        at("penaltybox_handshake_duration_seconds_bucket{le=\"+Inf\"}"),
        handshakes
    );
    assert_eq!(
        at("penaltybox_time_to_timeout_seconds_count"),
        GARBAGE as f64,
        "one observation per session time-out (not the admin's)"
    );
    assert!(at("penaltybox_time_to_timeout_seconds_sum") > 0.0);
    assert_eq!(at("penaltybox_storage_errors_total"), 0.0);
    assert!(at("penaltybox_storage_flushes_total") >= 1.0);
    // No kernel tier configured: absent, so its alert cannot page.
    assert!(!m.contains_key("penaltybox_kernel_tier_up"), "{text}");
    assert_eq!(at("penaltybox_kernel_errors_total"), 0.0);
    assert_eq!(at("penaltybox_sessions_active"), 0.0);
    // No label ever holds an address.
    for key in m.keys() {
        assert!(
            !key.contains("127.0.") && !key.contains("198.51."),
            "an address in a label: {key}"
        );
    }

    assert_eq!(get(metrics, "/healthz").unwrap().0, 200);
    assert_eq!(get(metrics, "/readyz").unwrap().0, 200);
    assert_eq!(get(metrics, "/nothing").unwrap().0, 404);
}

#[test]
fn readyz_is_503_while_a_large_table_is_restored_then_200() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 200,000 live bans, written the way a server writes them.
    write_live_bans(&data.join("db"), 200_000);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let server = ServerSpec::new(&data)
        .env("PENALTYBOX_METRICS__LISTEN", metrics.to_string())
        .start_without_waiting();
    let mut saw_503 = false;
    let mut saw_200 = false;
    while started.elapsed() < Duration::from_secs(60) {
        match get(metrics, "/readyz") {
            Ok((503, body)) => {
                assert!(body.contains("restoring"), "{body}");
                assert!(!saw_200, "503 after 200");
                saw_503 = true;
            }
            Ok((200, _)) => {
                saw_200 = true;
                break;
            }
            Ok((other, body)) => panic!("{other}: {body}"),
            Err(_) => std::thread::yield_now(), // not listening yet
        }
    }
    assert!(saw_503, "never saw 503 during the restore");
    assert!(saw_200, "never ready: {}", server.log_text());
    assert!(
        server
            .wait_log("200000 bans restored", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
}
