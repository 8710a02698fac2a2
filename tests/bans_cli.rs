//! `penaltybox bans` end to end, online (an admin key over the wire) and
//! offline (a stopped server's database): list, add, remove, show, and the
//! answers to what an admin may not do.

mod common;

use std::time::Duration;

use common::*;
use protocol::{AdminRequest, Response};

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
    // A prefix with host bits: one line giving both readings, nothing done.
    let (code, _, err) = online(&["add", "192.0.2.77/24"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("192.0.2.77/24 has host bits set: write 192.0.2.0/24 for the network, or 192.0.2.77/32 for the one address"),
        "{err}"
    );
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
