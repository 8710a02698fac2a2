//! Settings end to end: precedence (file < environment < flags), one clear
//! line per bad setting, what the client commands read, and a start that
//! fails before it creates anything.

mod common;

use common::*;

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
        (
            "[bans]\nallow = [\"10.0.0.1/8\"]\n",
            "bans.allow[0]: 10.0.0.1/8 has host bits set: write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the one address",
        ),
        (
            "[proxy]\ntrusted = [\"192.0.2.9/24\"]\n",
            "proxy.trusted[0]: 192.0.2.9/24 has host bits set",
        ),
        ("[bans]\nipv6_prefix = 0\n", "bans.ipv6_prefix"),
        (
            "[bans.widen]\nipv6 = [48, 56]\n",
            "bans.widen.ipv6: /56 after /48: list the steps narrowest first",
        ),
        (
            "[bans.widen]\nipv4 = [24, 8]\n",
            "bans.widen.ipv4: /8 is wider than /16, a provider's allocation",
        ),
        (
            "[bans.widen]\nipv4 = [40]\n",
            "bans.widen.ipv4: /40 is longer than an address",
        ),
        ("[bans.widen]\nipv6 = [\"x\"]\n", "x is not a number"),
        (
            "[bans.widen]\nmembers = 1\n",
            "bans.widen.members: 1 is below 2",
        ),
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
            "[kernel]\nmax_prefixes = 0\n",
            "kernel.max_prefixes: 0 is not in 1..=16777216",
        ),
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
    // A busy metrics port (a second server on the host): one line naming
    // the setting, and nothing created.
    let output = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_arg])
        .env("PENALTYBOX_METRICS__LISTEN", &addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("metrics.listen: cannot listen on {addr}")),
        "{err}"
    );
    assert!(!data.exists(), "a data dir (and key pair) was created");
    drop(busy);
}
