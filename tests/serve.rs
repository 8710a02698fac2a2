//! `penaltybox serve` end to end: the real binary on loopback, clients bound
//! to 127.0.0.x to act as distinct sources, a real sled database on disk.
//! This file: the path of a connection and of a time-out (causes, deadlines,
//! expiry, escalation, the allow-list, aggregation, the bound, restarts,
//! live sessions, file descriptors, logs). Beside it, by subject:
//! `inventory.rs`, `bans_cli.rs`, `config.rs`, `db.rs`, `keys.rs`.

mod common;

use std::time::Duration;

use common::*;
use protocol::handshake::Initiator;
use protocol::initiation::{MAC1_LEN, Mac1Key};
use protocol::{AdminRequest, PrivateKey, Request, Response};

/// First messages that are wrong in each way the protocol distinguishes.
fn bad_first_messages(server: &Server) -> Vec<(&'static str, Vec<u8>)> {
    let (_, good) = Initiator::start(&server.public_key, None).unwrap();
    let with = |index: usize, value: u8| {
        let mut bytes = good.clone();
        bytes[index] = value;
        bytes
    };
    let (_, wrong_key) = Initiator::start(&PrivateKey::generate().public_key(), None).unwrap();
    let mut tampered = good.clone();
    tampered[20] ^= 1;
    let covered = tampered.len() - MAC1_LEN;
    let mac = Mac1Key::new(&server.public_key).compute(&tampered[..covered]);
    tampered[covered..].copy_from_slice(&mac);
    vec![
        (
            "bad-magic",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
            ],
        ),
        ("bad-magic", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad-version", with(4, 9)),
        ("bad-pattern", with(5, 7)),
        ("bad-length", with(7, 0x99)),
        ("bad-mac1", wrong_key),
        ("handshake-failed", tampered),
    ]
}

#[test]
fn every_class_of_bad_first_bytes_is_timed_out_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    for (i, (cause, bytes)) in bad_first_messages(&server).into_iter().enumerate() {
        let source = format!("127.0.1.{}", i + 1);
        let outcome = send_raw(&source, server.addr, &bytes, Duration::from_secs(5));
        assert!(
            matches!(outcome, Outcome::Closed { .. }),
            "{cause}: {outcome:?}"
        );
        assert!(
            eventually(SHORT, || server.ban_of(&source).is_some()),
            "{cause}: {source} not banned\n{}",
            server.log_text()
        );
        let ban = server.ban_of(&source).unwrap();
        assert_eq!(ban.cause.as_str(), cause, "{source}");
        assert!(!ban.first_bytes.as_slice().is_empty());
        assert!(
            refused_at_accept(&source, server.addr),
            "{cause}: {source} not refused at accept"
        );
        // Another source is unaffected.
        assert_eq!(
            server.call_from("127.0.2.1", None, Request::Ping { nonce: i as u64 }),
            Response::Pong { nonce: i as u64 }
        );
    }
    let line = server
        .wait_log("timed out 127.0.1.1/32 for 15m", SHORT)
        .expect("ban logged");
    assert!(
        line.contains("cause bad-magic") && line.contains("first bytes 16 03 01 00 f4"),
        "{line}"
    );
    let stats = server.stats();
    assert!(stats.connections_refused >= 7, "{stats:?}");
    assert!(stats.bans_active >= 7, "{stats:?}");
}

#[test]
fn a_garbage_frame_after_the_handshake_is_a_session_violation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let (initiator, first) = Initiator::start(&server.public_key, None).unwrap();
    let mut stream = connect_from("127.0.3.1", server.addr);
    use std::io::{Read, Write};
    stream.write_all(&first).unwrap();
    let mut response = [0u8; protocol::handshake::RESPONSE_LEN];
    stream.read_exact(&mut response).unwrap();
    initiator.finish(&response).unwrap();
    stream.write_all(&[0, 0, 0, 40]).unwrap();
    stream.write_all(&[0x55; 40]).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    assert!(eventually(SHORT, || server
        .ban_of("127.0.3.1")
        .is_some_and(|b| b.cause.as_str() == "session-violation")));
}

#[test]
fn slowloris_is_closed_at_the_deadline_and_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[timeouts]\nhandshake = \"1s\"\n");
    let started = std::time::Instant::now();
    // A valid start of a first message, then nothing.
    let outcome = send_raw(
        "127.0.4.1",
        server.addr,
        &[0xF0, b'P', b'B'],
        Duration::from_secs(5),
    );
    let elapsed = started.elapsed();
    assert!(matches!(outcome, Outcome::Closed { .. }), "{outcome:?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}"
    );
    assert!(eventually(SHORT, || server
        .ban_of("127.0.4.1")
        .is_some_and(|b| b.cause.as_str() == "handshake-timeout")));
    // A connection that sends nothing and closes is not banned (health checks).
    let before = server.stats().connections_accepted;
    drop(connect_from("127.0.4.2", server.addr));
    // Observed, not slept on: that connection's session has come and gone
    // (anything it sent the registry is queued before our next request).
    assert!(eventually(SHORT, || server.stats().connections_accepted >= before + 2));
    server.wait_sessions(0);
    assert!(server.ban_of("127.0.4.2").is_none());
}

#[test]
fn time_outs_expire_and_escalate_on_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[bans]\nnon_protocol = \"1s\"\n");
    let source = "127.0.5.1";
    send_raw(source, server.addr, b"GET /", SHORT);
    assert!(eventually(SHORT, || server.ban_of(source).is_some()));
    let first = server.ban_of(source).unwrap();
    assert_eq!(
        (first.expires_at_ms - first.banned_at_ms, first.repeat),
        (1000, 1)
    );
    assert!(refused_at_accept(source, server.addr));
    // Released by itself, and logged.
    assert!(eventually(Duration::from_secs(3), || !refused_at_accept(
        source,
        server.addr
    )));
    assert!(
        server
            .wait_log(
                &format!("released {source}/32: time-out over"),
                Duration::from_secs(2)
            )
            .is_some()
    );
    assert_eq!(
        server.call_from(source, None, Request::Ping { nonce: 1 }),
        Response::Pong { nonce: 1 }
    );
    // Offends again within the window: double the previous time-out.
    send_raw(source, server.addr, b"GET /", SHORT);
    assert!(eventually(SHORT, || server.ban_of(source).is_some()));
    let second = server.ban_of(source).unwrap();
    assert_eq!(
        (second.expires_at_ms - second.banned_at_ms, second.repeat),
        (2000, 2)
    );
}

#[test]
fn allow_listed_sources_are_never_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[bans]\nallow = [\"127.0.6.0/24\"]\n");
    send_raw("127.0.6.9", server.addr, b"\x16\x03\x01 hello", SHORT);
    assert!(server.wait_log("not timing out 127.0.6.9", SHORT).is_some());
    assert!(server.ban_of("127.0.6.9").is_none());
    assert_eq!(
        server.call_from("127.0.6.9", None, Request::Ping { nonce: 2 }),
        Response::Pong { nonce: 2 }
    );
    // An admin cannot ban inside the allow-list either.
    let refused = server.admin_call(AdminRequest::AddBan {
        prefix: "127.0.6.1".parse().unwrap(),
        duration_secs: None,
        cause: "test".parse().unwrap(),
        force: true,
    });
    assert!(
        matches!(refused, Response::Error { ref message, .. } if message.contains("inside the allow-list")),
        "{refused:?}"
    );
}

#[test]
fn the_allow_list_wins_over_a_covering_admin_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[bans]\nallow = [\"127.0.13.250/32\"]\n");
    let add = |prefix: &str, force| {
        server.admin_call(AdminRequest::AddBan {
            prefix: prefix.parse().unwrap(),
            duration_secs: Some(600),
            cause: "test".parse().unwrap(),
            force,
        })
    };
    let error = |response| error_message(response, protocol::message::ErrorCode::InvalidRequest);
    let message = error(add("127.0.13.0/24", false));
    assert!(
        message.contains("covers the allow-list entry 127.0.13.250/32")
            && message.contains("--force"),
        "{message}"
    );
    let message = error(add("127.0.0.0/8", false));
    assert!(message.contains("covers the allow-list entry"), "{message}");
    // The admin's own address (this request comes from 127.0.0.1).
    let message = error(add("127.0.0.1", false));
    assert!(
        message.contains("covers your own address 127.0.0.1"),
        "{message}"
    );

    // Forced: the /24 is timed out, except the allow-listed address.
    assert!(matches!(add("127.0.13.0/24", true), Response::BanAdded(_)));
    assert!(refused_at_accept("127.0.13.9", server.addr));
    assert!(!refused_at_accept("127.0.13.250", server.addr));
    assert_eq!(
        server.call_from("127.0.13.250", None, Request::Ping { nonce: 3 }),
        Response::Pong { nonce: 3 }
    );
}

#[test]
fn ipv6_sources_are_aggregated_per_64() {
    if !is_root() {
        return skip_or_fail("adding IPv6 test addresses to lo needs root");
    }
    // Two addresses in one /64 and one in another, on lo; removed after.
    let addrs = ["2001:db8:42::1", "2001:db8:42::2", "2001:db8:43::1"];
    let _on_lo = LoAddresses::add(&addrs.map(String::from));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data).listen(&["[::]:0"]).start();
    let target: std::net::SocketAddr = format!("[::1]:{}", server.addr.port()).parse().unwrap();
    send_raw(addrs[0], target, b"SSH-2.0-scanner\r\n", SHORT);
    assert!(
        server
            .wait_log("timed out 2001:db8:42::/64", SHORT)
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(
        refused_at_accept(addrs[1], target),
        "same /64 must be refused"
    );
    assert!(
        !refused_at_accept(addrs[2], target),
        "another /64 must not be"
    );
}

#[test]
fn a_full_table_evicts_the_entry_closest_to_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[bans]\nmax_entries = 2\n");
    for (i, source) in ["127.0.7.1", "127.0.7.2", "127.0.7.3"].iter().enumerate() {
        send_raw(source, server.addr, b"GET /", SHORT);
        assert!(
            eventually(SHORT, || server.bans().len() == (i + 1).min(2)),
            "{}",
            server.log_text()
        );
    }
    assert!(server.wait_log("evicted 127.0.7.1/32", SHORT).is_some());
    assert_eq!(server.stats().bans_evicted, 1);
    assert!(!refused_at_accept("127.0.7.1", server.addr));
    assert!(refused_at_accept("127.0.7.2", server.addr));
    assert!(refused_at_accept("127.0.7.3", server.addr));
}

#[test]
fn an_eviction_flood_is_summed_up_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[bans]\nmax_entries = 10\n");
    // 300 time-outs through an admin session, each after the table is full
    // evicts one: 290 evictions within about a second.
    let mut admin = server
        .client_from("127.0.7.50", Some(&server.admin))
        .unwrap();
    for i in 0..300u32 {
        let prefix = format!("198.51.{}.{}/32", 100 + i / 250, i % 250);
        let response = block_on(admin.call(&Request::Admin(AdminRequest::AddBan {
            prefix: prefix.parse().unwrap(),
            duration_secs: Some(3600 + u64::from(i)),
            cause: "flood".parse().unwrap(),
            force: false,
        })))
        .unwrap();
        assert!(matches!(response, Response::BanAdded(_)), "{response:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || server.stats().bans_evicted
            == 290),
        "{:?}",
        server.stats()
    );
    // The first one at once, then a summary line a second (the flood takes
    // well under ten seconds here).
    assert!(
        server
            .wait_log(
                "more in the last 1s, the first: evicted",
                Duration::from_secs(3)
            )
            .is_some(),
        "{}",
        server.log_text()
    );
    let lines = server
        .log_text()
        .lines()
        .filter(|line| line.contains("time-out table full"))
        .count();
    assert!((2..=12).contains(&lines), "{lines} lines for 290 evictions");
}

#[test]
fn bans_survive_a_clean_restart_and_kill_9_and_expire_during_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = "[bans]\nhandshake_failure = \"2s\"\n";
    let server = ServerSpec::new(&data).config(config).start();
    send_raw("127.0.8.1", server.addr, b"\x16\x03\x01", SHORT); // 15 min
    let (_, wrong) = Initiator::start(&PrivateKey::generate().public_key(), None).unwrap();
    send_raw("127.0.8.2", server.addr, &wrong, SHORT); // bad mac1: 2 s
    assert!(server.wait_log("timed out 127.0.8.2/32", SHORT).is_some());
    assert!(server.stop().success());

    let server = ServerSpec::new(&data).config(config).start();
    assert!(
        server
            .wait_log("2 bans restored", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(refused_at_accept("127.0.8.1", server.addr));
    // kill -9 after the group-commit flush (100 ms): the new ban is durable.
    send_raw("127.0.8.3", server.addr, b"\x16\x03\x01", SHORT);
    assert!(server.wait_log("timed out 127.0.8.3/32", SHORT).is_some());
    let short_ban = server.ban_of("127.0.8.2").expect("restored");
    server.wait_durable();
    server.kill9();
    // 127.0.8.2's 2 s run out while the server is down.
    assert!(eventually(Duration::from_secs(5), || {
        actors::now_ms() > short_ban.expires_at_ms
    }));

    let server = ServerSpec::new(&data).config(config).start();
    let log = server.log_text();
    assert!(
        log.contains("2 bans restored, 1 expired ones discarded"),
        "{log}"
    );
    assert!(refused_at_accept("127.0.8.1", server.addr));
    assert!(refused_at_accept("127.0.8.3", server.addr));
    assert!(!refused_at_accept("127.0.8.2", server.addr));
}

#[test]
fn serve_with_no_arguments_generates_its_key_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("server.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        server
            .wait_log(
                &format!("--server-key {} ping", server.public_key),
                Duration::from_secs(5)
            )
            .is_some()
    );
    assert!(
        server
            .wait_log(&server.public_key.fingerprint(), Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(
        server.call_from("127.0.0.2", None, Request::Ping { nonce: 9 }),
        Response::Pong { nonce: 9 }
    );
    server.signal("-INT");
    assert!(
        server
            .wait_log("SIGINT: stopping", Duration::from_secs(5))
            .is_some()
    );
    assert!(server.stop_after_signal().success());
    // Same key on the next start.
    let again = Server::start(&data);
    assert!(
        again
            .wait_log("0 bans restored", Duration::from_secs(5))
            .is_some()
    );
}

#[test]
fn out_of_file_descriptors_the_acceptor_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // 64 descriptors: the server's own (sled, threads, listeners) take some,
    // idle connections the rest.
    let server = ServerSpec::new(&dir.path().join("data"))
        .wrap(&["prlimit", "--nofile=64:64"])
        .config("[timeouts]\nhandshake = \"30s\"\n[limits]\nmax_pending_per_source = 1000\nmax_pending_handshakes = 1000\n")
        .start();
    let held: Vec<_> = (0..80)
        .filter_map(|_| try_connect_from("127.0.60.1", server.addr).ok())
        .collect();
    assert!(
        server.wait_log("pausing", Duration::from_secs(5)).is_some(),
        "no EMFILE backoff logged:\n{}",
        server.log_text()
    );
    drop(held);
    // Once the idle connections are gone, accepting works again.
    assert!(eventually(Duration::from_secs(10), || server
        .client_from("127.0.60.2", None)
        .is_ok_and(|mut c| block_on(
            c.call(&Request::Ping { nonce: 3 })
        )
        .is_ok())));
}

#[test]
fn a_time_out_closes_the_live_sessions_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let ping =
        |client: &mut protocol::Client, nonce| block_on(client.call(&Request::Ping { nonce }));
    let mut inside = server.client_from("127.0.9.1", None).unwrap();
    let mut in_cidr = server.client_from("127.0.10.5", None).unwrap();
    let mut outside = server.client_from("127.0.9.2", None).unwrap();
    for client in [&mut inside, &mut in_cidr, &mut outside] {
        assert_eq!(ping(client, 1).unwrap(), Response::Pong { nonce: 1 });
    }
    let add = |prefix: &str| {
        server.admin_call(AdminRequest::AddBan {
            prefix: prefix.parse().unwrap(),
            duration_secs: Some(600),
            cause: "test".parse().unwrap(),
            force: false,
        })
    };
    assert!(matches!(add("127.0.9.1"), Response::BanAdded(_)));
    assert!(
        eventually(SHORT, || server.stats().sessions_kicked == 1),
        "{}",
        server.log_text()
    );
    assert!(
        ping(&mut inside, 2).is_err(),
        "the kicked session still answers"
    );
    assert!(
        server
            .wait_log("session closed: 127.0.9.1/32 was timed out", SHORT)
            .is_some()
    );
    // A wider prefix closes every session inside it.
    assert!(matches!(add("127.0.10.0/24"), Response::BanAdded(_)));
    assert!(eventually(SHORT, || server.stats().sessions_kicked == 2));
    assert!(ping(&mut in_cidr, 2).is_err());
    // Everyone else carries on.
    assert_eq!(ping(&mut outside, 2).unwrap(), Response::Pong { nonce: 2 });
    assert_eq!(server.stats().sessions_kicked, 2);
}

#[test]
fn json_logs_parse_line_by_line_and_carry_the_time_out_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .env("PENALTYBOX_LOG_FORMAT", "json")
        .start();
    send_raw(
        "127.0.5.9",
        server.addr,
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    );
    let line = server
        .wait_log("timed out 127.0.5.9/32", Duration::from_secs(5))
        .expect("the time-out is logged");
    let (_, log) = server.stop_with_log();
    for text in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON line ({e}): {text}"));
        for key in ["ts", "level", "target", "message"] {
            assert!(value[key].is_string(), "{key} in {text}");
        }
    }
    let timeout: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(timeout["event"], "timeout");
    assert_eq!(timeout["prefix"], "127.0.5.9/32");
    assert_eq!(timeout["source"], "127.0.5.9");
    assert_eq!(timeout["cause"], "bad-magic");
    assert_eq!(timeout["repeat"], 1);
    assert_eq!(timeout["duration_s"], 900);
    assert!(
        timeout["evidence"]
            .as_str()
            .unwrap()
            .starts_with("first bytes 47 45 54")
    );
}
