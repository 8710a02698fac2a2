//! The tape-volume inventory end to end: a real client against the real
//! binary, its limits, and the `client` command line.

mod common;

use common::*;
use protocol::message::{VolumeSpec, VolumeStatus};
use protocol::{AdminRequest, PrivateKey, Request, Response};

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
