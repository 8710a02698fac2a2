//! Control of a running server: reload (SIGHUP, `penaltybox reload`) under
//! load, a broken file on reload, and `config check`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use protocol::{AdminRequest, Request, Response};

const GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A ping loop from `source` on one session until `stop`; (served, failed).
fn ping_loop(
    server: &Server,
    source: &str,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut config = server.client_config();
    config.bind = Some(source.parse().unwrap());
    let addr = server.addr.to_string();
    let (s, f) = (served.clone(), failed.clone());
    let thread = std::thread::spawn(move || {
        let mut client = block_on(protocol::Client::connect(&addr, &config)).unwrap();
        let mut nonce = 0;
        while !stop.load(Ordering::Relaxed) {
            nonce += 1;
            match block_on(client.call(&Request::Ping { nonce })) {
                Ok(Response::Pong { nonce: n }) if n == nonce => s.fetch_add(1, Ordering::Relaxed),
                _ => f.fetch_add(1, Ordering::Relaxed),
            };
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (thread, served, failed)
}

fn admin_stats(server: &Server, key: &protocol::PrivateKey) -> Response {
    match server.client_from("127.0.0.1", Some(key)) {
        Ok(mut client) => block_on(client.call(&Request::Admin(AdminRequest::Stats))).unwrap(),
        Err(error) => panic!("connect: {error}"),
    }
}

#[test]
fn a_reload_under_load_changes_keys_and_allow_list_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data)
        .config("[bans]\nallow = []\n")
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let (pinger, served, failed) = ping_loop(&server, "127.0.7.1", stop.clone());
    assert!(eventually(Duration::from_secs(5), || served
        .load(Ordering::Relaxed)
        > 0));

    send_raw("127.0.7.50", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(5), || server
        .ban_of("127.0.7.50/32")
        .is_some()));

    // New admin key B in place of A; 127.0.7.50 allow-listed.
    let (b, _) = key_file(dir.path(), "b.key");
    std::fs::write(
        data.with_extension("admins"),
        format!("{}\n", b.public_key()),
    )
    .unwrap();
    std::fs::write(
        data.with_extension("toml"),
        "[bans]\nallow = [\"127.0.7.50/32\"]\n",
    )
    .unwrap();
    server.signal("-HUP");
    let line = server
        .wait_log("SIGHUP: reloaded", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload line; log:\n{}", server.log_text()));
    assert!(line.contains("applied bans.allow"), "{line}");
    assert!(line.contains("1 admin keys"), "{line}");

    // B is an admin now, A is not.
    assert!(matches!(admin_stats(&server, &b), Response::Stats(_)));
    assert!(matches!(
        admin_stats(&server, &server.admin),
        Response::Error {
            code: protocol::message::ErrorCode::Forbidden,
            ..
        }
    ));
    // The newly allow-listed source was released and is served.
    let list = |key: &protocol::PrivateKey| match server.call_from(
        "127.0.0.1",
        Some(key),
        Request::Admin(AdminRequest::ListBans {
            after: None,
            limit: 100,
        }),
    ) {
        Response::Bans { bans, .. } => bans,
        other => panic!("{other:?}"),
    };
    assert!(
        eventually(Duration::from_secs(5), || list(&b).is_empty()),
        "{:?}",
        list(&b)
    );
    assert!(
        server
            .wait_log(
                "released 127.0.7.50/32: allow-listed by the reload",
                Duration::from_secs(5)
            )
            .is_some()
    );
    assert!(!refused_at_accept_after_garbage(&server, "127.0.7.50"));

    let so_far = served.load(Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(5), || served
        .load(Ordering::Relaxed)
        > so_far + 3));
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a ping failed across the reload"
    );
}

/// Garbage from an allow-listed source is not timed out, so the next
/// connection is served.
/// `timeouts.*` reload: connections from then on get the new deadlines; a
/// wait already begun keeps its own.
#[test]
fn a_reload_gives_the_next_connections_the_new_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data)
        .config("[timeouts]\nidle = \"60s\"\n")
        .start();
    let ping = |client: &mut protocol::Client, nonce| {
        matches!(
            block_on(client.call(&Request::Ping { nonce })),
            Ok(Response::Pong { nonce: n }) if n == nonce
        )
    };
    let mut before = server.client_from("127.0.18.1", None).unwrap();
    assert!(ping(&mut before, 1));
    std::fs::write(data.with_extension("toml"), "[timeouts]\nidle = \"1s\"\n").unwrap();
    server.signal("-HUP");
    let line = server
        .wait_log("SIGHUP: reloaded", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload line; log:\n{}", server.log_text()));
    assert!(line.contains("applied timeouts.idle"), "{line}");
    assert!(!line.contains("restart to change"), "{line}");

    let mut after = server.client_from("127.0.18.2", None).unwrap();
    assert!(ping(&mut after, 2));
    // Closed by the server after a second of silence.
    let closed = server
        .wait_log("idle for 1s, closing", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the new session was not closed; log:\n{}",
                server.log_text()
            )
        });
    assert!(closed.contains("127.0.18.2:"), "{closed}");
    assert!(!ping(&mut after, 3));
    // The session from before is still waiting out its 60 s.
    assert!(ping(&mut before, 4));
}

/// `log_level` reload: the filter changes at once, and unset again it is
/// what the server started with (here the harness's RUST_LOG).
#[test]
fn a_reload_changes_the_log_filter_and_unsetting_it_restores_the_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data).config("").start();
    std::fs::write(data.with_extension("toml"), "log_level = \"warn\"\n").unwrap();
    let (code, out, err) = server.admin_cli("reload", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied log_level"), "{out}");
    // An info line (a time-out) is not written now; the time-out happens.
    send_raw("127.0.19.1", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(5), || server
        .ban_of("127.0.19.1/32")
        .is_some()));

    std::fs::write(data.with_extension("toml"), "").unwrap();
    let (code, out, err) = server.admin_cli("reload", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied log_level"), "{out}");
    send_raw("127.0.19.2", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(
        server
            .wait_log("timed out 127.0.19.2/32", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
    // The log is in order: had the first been written, it would be there.
    let log = server.log_text();
    assert!(!log.contains("timed out 127.0.19.1/32"), "{log}");
    // A bad filter is refused; the running one is kept.
    std::fs::write(
        data.with_extension("toml"),
        "log_level = \"info,actors=bogus\"\n",
    )
    .unwrap();
    let (code, out, err) = server.admin_cli("reload", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("log_level"), "{err}");
    send_raw("127.0.19.3", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(
        server
            .wait_log("timed out 127.0.19.3/32", Duration::from_secs(5))
            .is_some()
    );
}

fn refused_at_accept_after_garbage(server: &Server, source: &str) -> bool {
    send_raw(source, server.addr, GARBAGE, Duration::from_secs(3));
    !server.served_from(source)
}

#[test]
fn a_broken_file_on_reload_keeps_the_running_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data)
        .config("[bans]\nnon_protocol = \"30m\"\n")
        .start();
    std::fs::write(
        data.with_extension("toml"),
        "[bans]\nnon_protocol = \"soon\"\n",
    )
    .unwrap();
    server.signal("-HUP");
    let line = server
        .wait_log("SIGHUP: reload failed", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(line.contains("the running settings are kept"), "{line}");
    assert!(line.contains("bans.non_protocol"), "{line}");
    // Still the old 30m, and still serving.
    send_raw("127.0.8.1", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(5), || server
        .ban_of("127.0.8.1/32")
        .is_some()));
    let ban = server.ban_of("127.0.8.1/32").unwrap();
    assert_eq!(ban.expires_at_ms - ban.banned_at_ms, 30 * 60 * 1000);

    // The admin command reloads too, and answers the summary.
    std::fs::write(
        data.with_extension("toml"),
        "[bans]\nnon_protocol = \"45m\"\nmode = \"monitor\"\n",
    )
    .unwrap();
    let (code, out, err) = server.admin_cli("reload", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("applied bans.mode, bans.non_protocol"),
        "{out}"
    );
    assert!(out.contains("monitor mode"), "{out}");
    // The log names the admin's key, for the session and for the action.
    let fingerprint = server.admin.public_key().fingerprint();
    let log = server.log_text();
    assert!(
        log.contains(&format!("admin reload by key {fingerprint} from 127.0.0.1")),
        "{log}"
    );
    assert!(
        log.contains(&format!("admin session, key {fingerprint}")),
        "{log}"
    );
    send_raw("127.0.8.2", server.addr, GARBAGE, Duration::from_secs(3));
    assert!(
        server
            .wait_log(
                "would time out 127.0.8.2/32 for 45m",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(server.ban_of("127.0.8.2/32").is_none());
}

#[test]
fn config_check_names_every_bad_line_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let data = dir.path().join("data-never-made");
    std::fs::write(
        &good,
        format!(
            "data_dir = {:?}\n[bans]\nallow = [\"10.0.0.0/8\"]\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&["config", "check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "data_dir = {:?}\n[bans]\nipv4_prefix = 40\nmode = \"maybe\"\nallow = [\"10.0.0.0/33\"]\n[limits]\nmax_connections = 0\n[keys]\nadmin_keys = \"/nonexistent/admins\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    for key in [
        "bans.ipv4_prefix",
        "bans.mode",
        "bans.allow[0]",
        "limits.max_connections",
        "keys.admin_keys",
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key} not named:\n{err}"));
        assert!(line.starts_with("penaltybox: config: "), "{line}");
    }
    assert_eq!(err.lines().count(), 5, "one line per problem:\n{err}");
    assert!(!data.exists(), "config check created the data dir");
}
