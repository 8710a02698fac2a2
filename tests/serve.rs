//! `penaltybox serve` end to end: the real binary on loopback, clients bound
//! to 127.0.0.x to act as distinct sources, a real sled database on disk.

mod common;

use std::time::Duration;

use common::*;
use protocol::handshake::Initiator;
use protocol::initiation::{MAC1_LEN, Mac1Key};
use protocol::message::{VolumeSpec, VolumeStatus};
use protocol::{AdminRequest, PrivateKey, Request, Response};

const SHORT: Duration = Duration::from_millis(1500);

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
fn a_valid_client_uses_the_volume_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    // Writes need a client key (service.anonymous_writes is off by default).
    let (user, _) = key_file(dir.path(), "user.key");
    let mut client = server.client_from("127.0.0.2", Some(&user)).unwrap();
    let spec = VolumeSpec {
        id: "A00001L9".parse().unwrap(),
        media_type: "LTO-9".parse().unwrap(),
        location: "Library slot 12".parse().unwrap(),
        status: VolumeStatus::Active,
    };
    let put = block_on(client.call(&Request::PutVolume(spec.clone()))).unwrap();
    assert!(
        matches!(&put, Response::Volume(v) if v.spec == spec),
        "{put:?}"
    );
    let moved = block_on(client.call(&Request::MoveVolume {
        id: spec.id,
        location: "Vault 3".parse().unwrap(),
    }))
    .unwrap();
    assert!(
        matches!(&moved, Response::Volume(v) if v.spec.location.as_str() == "Vault 3"),
        "{moved:?}"
    );
    for i in 2..=5 {
        let mut other = spec.clone();
        other.id = format!("A0000{i}L9").parse().unwrap();
        block_on(client.call(&Request::PutVolume(other))).unwrap();
    }
    let page = block_on(client.call(&Request::ListVolumes {
        after: None,
        limit: 3,
    }))
    .unwrap();
    let Response::Volumes {
        volumes,
        next_after,
    } = page
    else {
        panic!("{page:?}")
    };
    assert_eq!(volumes.len(), 3);
    assert_eq!(volumes[0].spec.location.as_str(), "Vault 3");
    let rest = block_on(client.call(&Request::ListVolumes {
        after: next_after,
        limit: 3,
    }))
    .unwrap();
    assert!(
        matches!(rest, Response::Volumes { ref volumes, next_after: None } if volumes.len() == 2),
        "{rest:?}"
    );
    let missing = block_on(client.call(&Request::GetVolume {
        id: "NOPE".parse().unwrap(),
    }))
    .unwrap();
    assert!(matches!(
        missing,
        Response::Error {
            code: protocol::message::ErrorCode::NotFound,
            ..
        }
    ));
    // A session without an admin key may not send admin requests, and is
    // not banned for it.
    let admin = block_on(client.call(&Request::Admin(AdminRequest::Stats))).unwrap();
    assert!(matches!(
        admin,
        Response::Error {
            code: protocol::message::ErrorCode::Forbidden,
            ..
        }
    ));
    assert_eq!(
        block_on(client.call(&Request::Ping { nonce: 5 })).unwrap(),
        Response::Pong { nonce: 5 }
    );
    // An anonymous session reads, and may not write.
    let mut anonymous = server.client_from("127.0.0.3", None).unwrap();
    assert!(matches!(
        block_on(anonymous.call(&Request::GetVolume { id: spec.id })).unwrap(),
        Response::Volume(_)
    ));
    let refused = error_message(
        block_on(anonymous.call(&Request::PutVolume(spec.clone()))).unwrap(),
        protocol::message::ErrorCode::Forbidden,
    );
    assert!(refused.contains("service.anonymous_writes"), "{refused}");
}

#[test]
fn the_inventory_cannot_fill_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (user, _) = key_file(dir.path(), "user.key");
    let spec = |id: &str| VolumeSpec {
        id: id.parse().unwrap(),
        media_type: "LTO-9".parse().unwrap(),
        location: "shelf".parse().unwrap(),
        status: VolumeStatus::Active,
    };
    let limit_exceeded =
        |response| error_message(response, protocol::message::ErrorCode::LimitExceeded);

    // A quota on volumes: new ones stop at the cap, existing ones still change.
    let server = Server::with_config(dir.path(), "[service]\nmax_volumes = 2\n");
    let mut client = server.client_from("127.0.0.2", Some(&user)).unwrap();
    for id in ["Q1", "Q2"] {
        let put = block_on(client.call(&Request::PutVolume(spec(id)))).unwrap();
        assert!(matches!(put, Response::Volume(_)), "{put:?}");
    }
    let full = limit_exceeded(block_on(client.call(&Request::PutVolume(spec("Q3")))).unwrap());
    assert!(
        full.contains("at most 2 volumes (service.max_volumes)"),
        "{full}"
    );
    let again = block_on(client.call(&Request::PutVolume(spec("Q1")))).unwrap();
    assert!(matches!(again, Response::Volume(_)), "{again:?}");
    drop(client);
    assert!(server.stop().success());

    // A per-session request rate.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(
        dir.path(),
        "[service]\nrequests_per_second = 1\nrequest_burst = 3\n",
    );
    let mut client = server.client_from("127.0.0.2", None).unwrap();
    for nonce in 0..3 {
        let pong = block_on(client.call(&Request::Ping { nonce })).unwrap();
        assert_eq!(pong, Response::Pong { nonce });
    }
    let limited = limit_exceeded(block_on(client.call(&Request::Ping { nonce: 9 })).unwrap());
    assert!(
        limited.contains("at most 1 a second on one session"),
        "{limited}"
    );
    assert!(server.stats().requests_rate_limited >= 1);
    drop(client);
    assert!(server.stop().success());

    // A free-space reserve (here larger than any disk): inventory writes
    // pause, time-outs still persist.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[service]\nmin_free_mb = 1000000000\n");
    let mut client = server.client_from("127.0.0.2", Some(&user)).unwrap();
    let paused = limit_exceeded(block_on(client.call(&Request::PutVolume(spec("F1")))).unwrap());
    assert!(paused.contains("service.min_free_mb"), "{paused}");
    send_raw("127.0.14.1", server.addr, b"GET /", SHORT);
    assert!(eventually(SHORT, || server.ban_of("127.0.14.1").is_some()));
    server.wait_durable();
}

#[test]
fn the_client_cli_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr.to_string();
    let key = server.public_key.to_string();
    let pub_file = server.data_dir.join("server.pub");
    // A client key: writes need one.
    let (_, user_key) = key_file(dir.path(), "user.key");
    let user_key = user_key.display().to_string();
    let base = [
        "client",
        "--key",
        &user_key,
        "--server",
        &addr,
        "--server-key",
    ];
    let run = |key: &str, rest: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(key);
        args.extend_from_slice(rest);
        cli(&args)
    };
    let (code, out, err) = run(&key, &["ping"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("pong from server in"), "{out}");
    let (code, _, err) = run(
        pub_file.to_str().unwrap(),
        &[
            "volume",
            "put",
            "B1",
            "--media",
            "LTO-8",
            "--location",
            "rack 1",
            "--status",
            "offsite",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&key, &["volume", "move", "B1", "vault"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("B1\tLTO-8\toffsite\tvault\t"), "{out}");
    let (code, out, _) = run(&key, &["volume", "list", "--all", "--limit", "1"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}");
    let (code, _, err) = run(&key, &["volume", "get", "NOPE"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "penaltybox: error: server: not found: no volume NOPE"
    );
    let (code, _, err) = run(
        &key,
        &[
            "volume",
            "put",
            "has space",
            "--media",
            "LTO",
            "--location",
            "x",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("volume id \"has space\" may only contain"),
        "{err}"
    );

    // A wrong server key: one clear line (and that source is now timed out).
    let wrong = PrivateKey::generate().public_key().to_string();
    let (code, _, err) = run(&wrong, &["--bind", "127.0.0.9", "ping"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not this server's key"), "{err}");
    assert!(
        err.contains("and this address is now timed out for 1m"),
        "the client is told it is timed out: {err}"
    );
    // The same source again: refused at accept.
    let (code, _, err) = run(&key, &["--bind", "127.0.0.9", "ping"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("closed the connection during the handshake"),
        "{err}"
    );
    drop(server);
    // Unreachable now.
    let (code, _, err) = run(&key, &["ping"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("penaltybox: error: cannot connect to {addr}")),
        "{err}"
    );
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
fn admin_cli_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let online = |args: &[&str]| server.bans_cli(args);
    let (code, out, err) = online(&[
        "add",
        "192.0.2.0/24",
        "--for",
        "2h",
        "--cause",
        "abuse report",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("192.0.2.0/24"), "{out}");
    let (code, out, _) = online(&["list", "--json"]);
    assert_eq!(code, 0);
    let ban: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(ban["prefix"], "192.0.2.0/24");
    assert_eq!(ban["cause"], "abuse report");
    assert_eq!(ban["repeat"], 1);
    let remaining = ban["remaining_s"].as_u64().unwrap();
    assert!((7190..=7200).contains(&remaining), "{remaining}");
    assert!(ban["expires_at"].as_str().unwrap().ends_with('Z'));
    // A non-admin key is told so.
    let (_, stranger) = key_file(dir.path(), "stranger.key");
    let addr = server.addr.to_string();
    let pub_file = server.data_dir.join("server.pub").display().to_string();
    let (code, _, err) = cli(&[
        "bans",
        "--server",
        &addr,
        "--server-key",
        &pub_file,
        "--key",
        stranger.to_str().unwrap(),
        "list",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("is not an admin key"), "{err}");
    // Offline while the server runs: the database is locked, and we say so.
    let data = server.data_dir.display().to_string();
    let (code, _, err) = cli(&["bans", "list", "--data-dir", &data]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by another process"), "{err}");

    let (code, out, _) = online(&["remove", "192.0.2.0/24"]);
    assert_eq!((code, out.trim()), (0, "released 192.0.2.0/24"));
    let (code, _, err) = online(&["remove", "192.0.2.0/24"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not timed out"), "{err}");
    assert!(server.stop().success());

    // Offline, the server stopped.
    let (code, _, err) = cli(&["bans", "add", "198.51.100.7", "--data-dir", &data]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["bans", "list", "--data-dir", &data]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("198.51.100.7/32") && out.contains("admin"),
        "{out}"
    );
    let (code, out, _) = cli(&["bans", "remove", "198.51.100.7", "--data-dir", &data]);
    assert_eq!((code, out.trim()), (0, "released 198.51.100.7/32"));
    let (code, out, _) = cli(&["bans", "list", "--data-dir", &data]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = cli(&[
        "bans",
        "list",
        "--data-dir",
        &dir.path().join("nothing").display().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no penaltybox database here"), "{err}");
    // Neither --server nor --data-dir: said, not guessed.
    let (code, _, err) = cli(&["bans", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("which server?"), "{err}");
}

#[test]
fn config_precedence_is_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "data_dir = \"/from/file\"\nlisten = [\"127.0.0.1:7001\"]\n[bans]\nnon_protocol = \"3m\"\nhandshake_failure = \"2m\"\n").unwrap();
    let output = std::process::Command::new(BIN)
        .args(["config", "print", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:7003"])
        .env("PENALTYBOX_BANS__NON_PROTOCOL", "4m")
        .env("PENALTYBOX_DATA_DIR", "/from/env")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(
        printed["listen"][0].as_str(),
        Some("127.0.0.1:7003"),
        "flag beats file"
    );
    assert_eq!(
        printed["data_dir"].as_str(),
        Some("/from/env"),
        "env beats file"
    );
    assert_eq!(
        printed["bans"]["non_protocol"].as_str(),
        Some("4m"),
        "env beats file"
    );
    assert_eq!(
        printed["bans"]["handshake_failure"].as_str(),
        Some("2m"),
        "file beats default"
    );
    assert_eq!(
        printed["bans"]["session_violation"].as_str(),
        Some("15m"),
        "default"
    );
    assert_eq!(
        printed["timeouts"]["handshake"].as_str(),
        Some("5s"),
        "default"
    );
}

#[test]
fn every_bad_config_is_one_clear_error_naming_the_key_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("bogus = 1\n", "unknown field `bogus`"),
        ("[bans]\nfoo = 1\n", "unknown field `foo`"),
        (
            "[bans]\nnon_protocol = \"5 fortnights\"\n",
            "bans.non_protocol",
        ),
        ("[bans]\nallow = [\"10.0.0.0/40\"]\n", "bans.allow[0]"),
        ("[bans]\nallow = [\"not-an-ip\"]\n", "bans.allow[0]"),
        ("[bans]\nipv6_prefix = 0\n", "bans.ipv6_prefix"),
        ("listen = [\"localhost\"]\n", "listen"),
        ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
        ("this is not toml", "c.toml"),
        ("workers = 5000\n", "workers: 5000 is more than 256"),
        (
            "[bans]\nnon_protocol = \"0s\"\n",
            "bans.non_protocol: must be longer than 0s",
        ),
        (
            "[bans]\nnon_protocol = \"2days\"\n",
            "bans.non_protocol: 2days is longer than bans.max_duration (1day)",
        ),
        (
            "[bans]\nmax_duration = \"10000years\"\n",
            "bans.max_duration: 10000years is longer than 10 years",
        ),
        (
            "[timeouts]\nidle = \"0s\"\n",
            "timeouts.idle: must be longer than 0s",
        ),
        (
            "[kernel]\nscan_ports = 40\n",
            "kernel.scan_ports: 40 is not in 2..=16",
        ),
        (
            "[kernel]\ndrop_scope = \"everything\"\n",
            "kernel.drop_scope: \"everything\" is neither",
        ),
        ("[kernel]\nsyn_rate = 0\n", "kernel.syn_rate"),
        ("[kernel]\nscan_window = \"0s\"\n", "kernel.scan_window"),
        ("[kernel]\ntrap_ports = [70000]\n", "trap_ports"),
        (
            "[bans]\nport_scan = \"2days\"\n",
            "bans.port_scan: 2days is longer than bans.max_duration",
        ),
    ];
    for (toml, expected) in cases {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let (code, _, err) = cli(&["config", "print", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{toml}");
        assert_eq!(err.lines().count(), 1, "{toml}: {err}");
        assert!(
            err.starts_with("penaltybox: error: ") && err.contains(expected),
            "{toml}: {err}"
        );
    }
    let (code, _, err) = cli(&["config", "print", "--config", "/nonexistent/c.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/c.toml"), "{err}");
    // Key files are checked by serve itself.
    let data = dir.path().join("data");
    for (toml, expected) in [
        (
            "[keys]\nserver_key = \"/nonexistent/server.key\"\n",
            "keys.server_key: /nonexistent/server.key does not exist",
        ),
        (
            "[keys]\nauthorized_keys = \"/nonexistent/authorized\"\n",
            "keys.authorized_keys: /nonexistent/authorized",
        ),
    ] {
        let file = dir.path().join("k.toml");
        std::fs::write(&file, toml).unwrap();
        let (code, _, err) = cli(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{toml}");
        assert!(err.contains(expected), "{toml}: {err}");
    }
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let file = dir.path().join("g.toml");
    std::fs::write(
        &file,
        format!("[keys]\nserver_key = {:?}\n", garbage.display().to_string()),
    )
    .unwrap();
    let (code, _, err) = cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("garbage.key") && err.contains("not a key"),
        "{err}"
    );
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
fn a_storage_failure_under_an_admin_command_is_answered_as_the_servers_fault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A ban record whose expiry reads (so boot restores it) but whose body
    // does not decode: listing or releasing it fails in storage.
    {
        let db = sled::open(data.join("db")).unwrap();
        let mut key = [0u8; 18];
        key[..5].copy_from_slice(&[4, 192, 0, 2, 66]);
        key[17] = 32;
        let mut value = (actors::now_ms() + 3_600_000).to_be_bytes().to_vec();
        value.extend_from_slice(&[0xF1, 0xde, 0xad]);
        db.open_tree("bans").unwrap().insert(key, value).unwrap();
        db.flush().unwrap();
    }
    let server = ServerSpec::new(&data).start();
    let list = AdminRequest::ListBans {
        after: None,
        limit: 10,
    };
    let failed = error_message(
        server.admin_call(list.clone()),
        protocol::message::ErrorCode::Internal,
    );
    assert!(failed.contains("storage"), "{failed}");
    // The client's own mistake is still the client's.
    error_message(
        server.admin_call(AdminRequest::ListBans {
            after: None,
            limit: 0,
        }),
        protocol::message::ErrorCode::InvalidRequest,
    );
    assert!(
        server
            .wait_log("admin request failed: storage", SHORT)
            .is_some()
    );
}

#[test]
fn absurd_durations_are_refused_with_the_cap_and_nothing_panics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let add = |duration: &str| server.bans_cli(&["add", "203.0.113.0/24", "--for", duration]);
    for (duration, expected) in [
        ("10000years", "longer than bans.max_duration (1day)"),
        ("18446744073709552s", "longer than bans.max_duration (1day)"),
        ("0s", "must be longer than 0s"),
    ] {
        let (code, _, err) = add(duration);
        assert_eq!(code, 1, "{duration}: {err}");
        assert!(err.contains(expected), "{duration}: {err}");
    }
    // The registry is alive and well: an ordinary time-out still works.
    let (code, out, err) = add("1day");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("203.0.113.0/24"), "{out}");
    assert!(
        !server.log_text().contains("panic"),
        "{}",
        server.log_text()
    );
    assert!(server.stop().success());
}

#[test]
fn a_stored_record_with_an_absurd_expiry_loads_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // What an earlier release could write for `--for 10000years`: a valid
    // format-1 record (expiry, format, banned-at, repeat, cause, first
    // bytes) whose expiry is the largest there is.
    {
        let db = sled::open(data.join("db")).unwrap();
        let mut value = u64::MAX.to_be_bytes().to_vec();
        value.push(0xF1);
        let mut prefix = [0u8; 18];
        prefix[..5].copy_from_slice(&[4, 127, 0, 12, 0]);
        prefix[17] = 24;
        value.extend_from_slice(&1_764_000_000_000u64.to_be_bytes());
        value.extend_from_slice(&1u32.to_be_bytes());
        value.push(5);
        value.extend_from_slice(b"admin");
        value.push(0);
        db.open_tree("bans").unwrap().insert(prefix, value).unwrap();
        db.flush().unwrap();
    }
    let data_arg = data.display().to_string();
    for json in [false, true] {
        let mut args = vec!["bans", "--data-dir", &data_arg, "list"];
        if json {
            args.push("--json");
        }
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("127.0.12.0/24"), "{out}");
        assert!(out.contains("9999-12-31T23:59:59Z+"), "{out}");
    }
    let server = ServerSpec::new(&data).start();
    assert!(refused_at_accept("127.0.12.7", server.addr));
    let ban = server.ban_of("127.0.12.0/24").unwrap();
    assert_eq!(ban.expires_at_ms, u64::MAX);
}

/// `penaltybox db salvage --data-dir FROM --to TO`.
fn db_salvage(from: &str, to: &str) -> (i32, String, String) {
    cli(&["db", "salvage", "--data-dir", from, "--to", to])
}

#[test]
fn db_check_and_salvage_copy_every_readable_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data).start();
    send_raw("127.0.15.1", server.addr, b"GET /", SHORT);
    assert!(eventually(SHORT, || server.ban_of("127.0.15.1").is_some()));
    assert!(server.stop().success());
    let data_arg = data.display().to_string();
    let (code, out, err) = cli(&["db", "check", "--data-dir", &data_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("time-outs: 1 readable, 0 not"), "{out}");

    // A record that does not decode.
    {
        let db = sled::open(data.join("db")).unwrap();
        db.open_tree("bans")
            .unwrap()
            .insert(b"garbage key", b"garbage value".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let (code, out, err) = cli(&["db", "check", "--data-dir", &data_arg]);
    assert_eq!(code, 1);
    assert!(out.starts_with("time-outs: 1 readable, 1 not"), "{out}");
    assert!(err.contains("db salvage --to"), "{err}");

    let salvaged = dir.path().join("salvaged");
    let salvaged_arg = salvaged.display().to_string();
    let (code, out, err) = db_salvage(&data_arg, &salvaged_arg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("salvaged into"), "{out}");
    let (code, out, _) = cli(&["db", "check", "--data-dir", &salvaged_arg]);
    assert_eq!(code, 0);
    assert!(out.starts_with("time-outs: 1 readable, 0 not"), "{out}");
    // A second salvage into the same place is refused.
    let (code, _, err) = db_salvage(&data_arg, &salvaged_arg);
    assert_eq!(code, 1);
    assert!(err.contains("a database is there already"), "{err}");
    // The salvaged database serves: the time-out is restored.
    let server = ServerSpec::new(&salvaged).start();
    assert!(refused_at_accept("127.0.15.1", server.addr));
}

/// sled reads a damaged record in its log as the end of the log and opens
/// without what follows, silently; the flush number outside sled notices.
#[test]
fn a_database_that_lost_completed_flushes_to_damage_says_so_at_start_and_in_db_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data).start();
    // Five flushes of 20 time-outs each; kill -9, so that sled writes no
    // snapshot at close (one covering the damage would report it).
    for batch in 0..5 {
        for i in 1..=20 {
            send_raw(
                &format!("127.0.17.{}", batch * 20 + i),
                server.addr,
                b"GET /",
                SHORT,
            );
        }
        assert!(eventually(SHORT, || server.stats().bans_active >= (batch + 1) * 20));
        server.wait_durable();
    }
    server.kill9();
    // One byte flipped halfway into what sled has written of its log.
    let log = data.join("db").join("db");
    let mut bytes = std::fs::read(&log).unwrap();
    let written = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[written / 2] ^= 0xff;
    std::fs::write(&log, &bytes).unwrap();

    let server = ServerSpec::new(&data).start();
    let line = server
        .wait_log("is damaged: it lost the writes of flushes", SHORT)
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(line.contains("db salvage --to"), "{line}");
    let left = server.stats().bans_active;
    assert!(
        left < 100,
        "{left} of 100 time-outs left: nothing was lost?"
    );
    assert!(server.stop().success());

    let data_arg = data.display().to_string();
    let (code, out, err) = cli(&["db", "check", "--data-dir", &data_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("damaged: it lost the writes of flushes"),
        "{out}"
    );
    assert!(
        err.contains("lost completed flushes") && err.contains("db salvage --to"),
        "{err}"
    );
    // Remembered at the next start, too.
    let server = ServerSpec::new(&data).start();
    assert!(
        server
            .wait_log("was found damaged at an earlier start", SHORT)
            .is_some()
    );
    assert!(server.stop().success());
    // A salvage is a fresh database: what was left, and clean.
    let salvaged = dir.path().join("salvaged");
    let salvaged_arg = salvaged.display().to_string();
    let (code, _, err) = db_salvage(&data_arg, &salvaged_arg);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["db", "check", "--data-dir", &salvaged_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("time-outs: {left} readable, 0 not")),
        "{out}"
    );
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

#[test]
fn an_empty_list_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let data = server.data_dir.display().to_string();
    server.stop();
    let (code, out, err) = cli(&["bans", "--data-dir", &data, "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim(), "no time-outs");
}

#[test]
fn bans_show_answers_for_an_address_a_prefix_and_an_ipv6_inside_a_64_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let online = |args: &[&str]| {
        let mut all = vec!["show"];
        all.extend_from_slice(args);
        let (code, out, err) = server.bans_cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    send_raw(
        "127.0.6.1",
        server.addr,
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    );
    assert!(
        server
            .wait_log("timed out 127.0.6.1/32", Duration::from_secs(5))
            .is_some()
    );
    let added = server.admin_call(AdminRequest::AddBan {
        prefix: "2001:db8:5::/64".parse().unwrap(),
        duration_secs: Some(600),
        cause: model::Cause::new("abuse report").unwrap(),
        force: false,
    });
    assert!(matches!(added, Response::BanAdded(_)), "{added:?}");

    let covered = online(&["127.0.6.1"]);
    assert!(
        covered.contains("127.0.6.1/32: timed out by 127.0.6.1/32 (cause bad-magic"),
        "{covered}"
    );
    assert!(covered.contains("first bytes: 47 45 54 20 2f"), "{covered}");
    assert!(covered.contains("\"GET / HT"), "{covered}");
    assert!(
        covered.contains("history of 127.0.6.1/32: 1 time-out(s)"),
        "{covered}"
    );
    assert!(covered.contains("kernel: no kernel tier"), "{covered}");

    let clean = online(&["127.0.6.2"]);
    assert!(clean.starts_with("127.0.6.2/32: not timed out"), "{clean}");
    assert!(clean.contains("history: none"), "{clean}");

    let inside = online(&["2001:db8:5::7", "--json"]);
    let inside: serde_json::Value = serde_json::from_str(inside.trim()).unwrap();
    assert_eq!(inside["timed_out"], true);
    assert_eq!(inside["covering"]["prefix"], "2001:db8:5::/64");
    assert_eq!(inside["covering"]["cause"], "abuse report");

    let json = online(&["127.0.6.1", "--json"]);
    let json: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(
        json["covering"]["first_bytes"]
            .as_str()
            .unwrap()
            .starts_with("47 45 54 20 2f")
    );
    assert!(
        json["covering"]["first_bytes_text"]
            .as_str()
            .unwrap()
            .starts_with("GET /")
    );
    assert_eq!(json["history"]["repeat"], 1);

    // Offline, on the stopped server's database: the same answers.
    let data = server.data_dir.display().to_string();
    server.stop();
    let (code, out, err) = cli(&["bans", "--data-dir", &data, "show", "127.0.6.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("timed out by 127.0.6.1/32 (cause bad-magic"),
        "{out}"
    );
    let (code, out, err) = cli(&["bans", "--data-dir", &data, "show", "2001:db8:5::1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("timed out by 2001:db8:5::/64"), "{out}");
    let (code, _, err) = cli(&["bans", "--data-dir", &data, "show", "not-an-address"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is neither an address nor a CIDR prefix"),
        "{err}"
    );
}

#[test]
fn keygen_writes_the_public_key_beside_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("admin.key");
    let (code, stdout, err) = cli(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let public = protocol::keys::read_public_key_file(&dir.path().join("admin.pub")).unwrap();
    assert_eq!(public.to_string(), stdout.trim());
    let private = protocol::PrivateKey::read(&out).unwrap();
    assert_eq!(private.public_key(), public);
    // The file's whole text works as --server-key too ("$(cat x.pub)").
    let text = std::fs::read_to_string(dir.path().join("admin.pub")).unwrap();
    let (code, _, err) = cli(&[
        "client",
        "--server",
        "127.0.0.1:1",
        "--server-key",
        &text,
        "--timeout",
        "1",
        "ping",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to 127.0.0.1:1"),
        "parsed, then connected: {err}"
    );
    let (code, shown, err) = cli(&["key", "pub", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        shown,
        format!("{public}\nfingerprint {}\n", public.fingerprint())
    );
    let (code, _, err) = cli(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("never overwrites"), "{err}");
    let (code, _, err) = cli(&[
        "keygen",
        "--out",
        dir.path().join("x.pub").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("would pass for a public key"), "{err}");
}

#[test]
fn each_key_mix_up_is_one_line_before_any_connection_and_times_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let addr = server.addr.to_string();
    let server_key = server.data_dir.join("server.key").display().to_string();
    let server_pub = server.data_dir.join("server.pub").display().to_string();
    let out = dir.path().join("me.key");
    assert_eq!(cli(&["keygen", "--out", out.to_str().unwrap()]).0, 0);
    let me_pub = dir.path().join("me.pub").display().to_string();
    let me_key = out.display().to_string();
    let accepted = server.stats().connections_accepted;
    // The private server key given as --server-key.
    // (clap's usage error: status 2, the reason on the first line.)
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "--server-key",
        &server_key,
        "ping",
    ]);
    assert_eq!(code, 2);
    let first = err.lines().next().unwrap();
    assert!(first.contains("this is a PRIVATE key file"), "{err}");
    // A .pub file given as --key.
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "--server-key",
        &server_pub,
        "--key",
        &me_pub,
        "ping",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("this is a public key file"), "{err}");
    // A private key file as the admins list.
    let (code, _, err) = cli(&[
        "config",
        "check",
        "--data-dir",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let output = std::process::Command::new(BIN)
        .args(["config", "check"])
        .env("PENALTYBOX_KEYS__ADMIN_KEYS", &me_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("keys.admin_keys") && err.contains("PRIVATE key file"),
        "{err}"
    );
    // None of it reached the server, and nobody is timed out.
    assert_eq!(
        server.stats().connections_accepted,
        accepted + 1,
        "only this stats call"
    );
    assert!(server.bans().is_empty());
}

#[test]
fn client_side_variables_reach_the_client_commands_and_not_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "");
    let pub_file = server.data_dir.join("server.pub");
    let output = std::process::Command::new(BIN)
        .args(["bans", "list"])
        .env("PENALTYBOX_SERVER", server.addr.to_string())
        .env("PENALTYBOX_SERVER_KEY", &pub_file)
        .env("PENALTYBOX_KEY", &server.admin_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("no time-outs"), "online, and empty: {err}");
    let output = std::process::Command::new(BIN)
        .args(["config", "print"])
        .env("PENALTYBOX_SERVER", server.addr.to_string())
        .env("PENALTYBOX_KEY", &server.admin_key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn serve_fails_on_a_busy_port_or_a_bad_key_list_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let (code, _, err) = cli(&["serve", "--listen", &addr, "--data-dir", &data_arg]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!data.exists(), "a data dir (and key pair) was created");
    let output = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_arg])
        .env(
            "PENALTYBOX_KEYS__ADMIN_KEYS",
            dir.path().join("missing-admins"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("keys.admin_keys"), "{err}");
    assert!(!data.exists(), "a data dir (and key pair) was created");
}
