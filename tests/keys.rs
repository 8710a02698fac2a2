//! Key files end to end: `keygen`, the public key beside the private one,
//! and every mix-up of the two refused in one line before any connection.

mod common;

use common::*;

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
