//! `penaltybox db check | salvage` and the database's own checks at start,
//! on real sled databases on disk.

mod common;

use common::*;

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
