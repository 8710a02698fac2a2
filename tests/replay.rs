//! Replays the fixture captures against a live server and checks the table
//! of expected outcomes in fixtures/README.md, while a live client from
//! another address keeps being served.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use protocol::handshake::RESPONSE_LEN;
use protocol::{Request, Response};
use replay::{Outcome, ReplayOptions, read_streams, replay_stream};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// (capture, expected cause or None for "not timed out"), from the README.
fn expected_outcomes() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    let rows: Vec<(String, Option<String>)> = readme
        .lines()
        .filter(|line| line.starts_with("| ") && line.contains(".pcap"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let outcome = cells.last().unwrap();
            let cause = match outcome.strip_prefix("timed out: ") {
                Some(cause) => Some(cause.to_owned()),
                None if *outcome == "not timed out" => None,
                None => panic!("fixtures/README.md: unknown outcome {outcome:?}"),
            };
            (cells[0].to_owned(), cause)
        })
        .collect();
    assert!(
        rows.len() >= 12,
        "the table in fixtures/README.md has {} rows",
        rows.len()
    );
    rows
}

fn replay_all(capture: &Path, server: std::net::SocketAddr, source: &str) -> Vec<Outcome> {
    let mut options = ReplayOptions::new(server);
    options.bind = Some(source.parse().unwrap());
    options.wait = Duration::from_millis(700);
    read_streams(capture)
        .unwrap()
        .iter()
        .map(|stream| replay_stream(stream, &options).unwrap())
        .collect()
}

fn cause_of(server: &Server, source: &str) -> Option<String> {
    server
        .bans()
        .iter()
        .find(|b| b.prefix.contains(source.parse().unwrap()))
        .map(|b| b.cause.to_string())
}

#[test]
fn every_capture_has_its_documented_outcome_while_a_live_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[keys]\nserver_key = {:?}\n",
        fixtures().join("server.key").display().to_string(),
    );
    let server = ServerSpec::new(&dir.path().join("data"))
        .config(&config)
        .start();

    // The live client: pings from 127.0.0.2 all along, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let live = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let (addr, key) = (server.addr, server.public_key);
        std::thread::spawn(move || {
            let mut config = protocol::ClientConfig::new(key);
            config.bind = Some("127.0.0.2".parse().unwrap());
            let mut client =
                block_on(protocol::Client::connect(&addr.to_string(), &config)).unwrap();
            let mut nonce = 0;
            while !stop.load(Ordering::Relaxed) {
                nonce += 1;
                match block_on(client.call(&Request::Ping { nonce })) {
                    Ok(Response::Pong { nonce: n }) if n == nonce => {
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || served.load(Ordering::Relaxed)
            > 0),
        "served before the replays"
    );

    for (i, (capture, expected)) in expected_outcomes().into_iter().enumerate() {
        let source = format!("127.0.40.{}", i + 1);
        let outcomes = replay_all(&fixtures().join(&capture), server.addr, &source);
        assert!(!outcomes.is_empty(), "{capture}: no streams");
        let actual = if expected.is_some() {
            eventually(Duration::from_secs(2), || {
                cause_of(&server, &source).is_some()
            });
            cause_of(&server, &source)
        } else {
            // Every replayed session has ended (the live client's remains):
            // a ban it caused would be in the table by now.
            server.wait_sessions(1);
            cause_of(&server, &source)
        };
        assert_eq!(
            actual,
            expected,
            "{capture}: outcomes {outcomes:?}\n{}",
            server.log_text()
        );
        if expected.is_some() {
            assert!(
                refused_at_accept(&source, server.addr),
                "{capture}: next connection from {source} not refused"
            );
        }
        if capture.starts_with("penaltybox-") {
            // No replayed request is ever answered: at most the handshake.
            for outcome in &outcomes {
                if let Outcome::Closed { answer, .. } | Outcome::Open { answer, .. } = outcome {
                    assert!(
                        answer.len() <= RESPONSE_LEN,
                        "{capture}: a replay got an answer: {outcome:?}"
                    );
                }
            }
        }
    }
    // A few more pings after the last replay, then stop.
    let so_far = served.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || served
        .load(Ordering::Relaxed)
        > so_far + 2));
    stop.store(true, Ordering::Relaxed);
    live.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the live client failed during the replays"
    );
    assert!(served.load(Ordering::Relaxed) > 20);

    // The IK capture a second time, from another source: refused as a replay.
    replay_all(
        &fixtures().join("penaltybox-ik-session.pcap"),
        server.addr,
        "127.0.41.1",
    );
    assert!(eventually(Duration::from_secs(2), || cause_of(
        &server,
        "127.0.41.1"
    )
    .as_deref()
        == Some("replayed")));
}

#[test]
fn the_replay_command_reports_each_stream_and_the_ban() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin_path = server.admin_key.clone();
    let capture = fixtures().join("nmap-sv.pcap");
    let (code, out, err) = cli(&[
        "replay",
        capture.to_str().unwrap(),
        "--server",
        &server.addr.to_string(),
        "--bind",
        "127.0.42.1",
        "--server-key",
        server.data_dir.join("server.pub").to_str().unwrap(),
        "--key",
        admin_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stream 1: "), "{out}");
    assert!(out.contains("refused at accept"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("source 127.0.42.1: timed out as 127.0.42.1/32 (cause bad-magic)"),
        "{out}"
    );
    let (code, _, err) = cli(&[
        "replay",
        "/nonexistent.pcap",
        "--server",
        &server.addr.to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.pcap"), "{err}");
    let not_a_capture = fixtures().join("README.md");
    let (code, _, err) = cli(&[
        "replay",
        not_a_capture.to_str().unwrap(),
        "--server",
        &server.addr.to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a pcap or pcapng capture"), "{err}");
}

#[test]
fn monitor_mode_logs_and_counts_every_would_be_cause_and_refuses_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[keys]\nserver_key = {:?}\n\n[bans]\nmode = \"monitor\"\n",
        fixtures().join("server.key").display().to_string(),
    );
    let server = ServerSpec::new(&dir.path().join("data"))
        .config(&config)
        .start();
    let mut expected_causes = 0;
    for (i, (capture, expected)) in expected_outcomes().into_iter().enumerate() {
        let source = format!("127.0.43.{}", i + 1);
        replay_all(&fixtures().join(&capture), server.addr, &source);
        server.wait_sessions(0);
        let Some(cause) = expected else { continue };
        expected_causes += 1;
        let line = format!("would time out {source}/32 for");
        let logged = server
            .wait_log(&line, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{capture}: no {line:?}; log:\n{}", server.log_text()));
        assert!(
            logged.contains(&format!("cause {cause}")),
            "{capture}: {logged}"
        );
        // Not refused: a ping from the same source is answered.
        assert!(
            server.served_from(&source),
            "{capture}: {source} not served in monitor mode"
        );
        // `bans show` says what would have happened.
        let target: model::Cidr = source.parse().unwrap();
        match server.admin_call(protocol::AdminRequest::ShowBan { target }) {
            Response::BanShown(report) => {
                assert!(report.covering.is_none(), "{capture}: enforced");
                let would = report.monitored.expect("a would-be time-out");
                assert_eq!(would.cause.as_str(), cause, "{capture}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(server.bans().is_empty(), "monitor mode timed someone out");
    assert_eq!(server.stats().connections_refused, 0);
    // Counted: the metrics endpoint sums the would-be time-outs by cause.
    let metrics = server.metrics.expect("metrics on");
    let body = http_get(metrics, "/metrics");
    let counted: u64 = body
        .lines()
        .filter(|l| l.starts_with("penaltybox_bans_monitored_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        counted >= expected_causes,
        "{counted} counted for {expected_causes} would-be causes:\n{body}"
    );
}
