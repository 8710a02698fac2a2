//! Blocklist feeds against a real server on loopback: a file of CIDRs is
//! loaded at start and refused at accept; a changed file is applied as a
//! difference on reload, with a source listed in both versions refused
//! throughout; bad lines, an empty file, a list over its bound, an HTTP
//! error and a hanging URL each give one log line and change nothing; the
//! entries survive a restart; `bans list --cause`, `bans stats`, the
//! metrics and `bans import` show and take them. (The kernel tier with a
//! list of 100,000: `xdp_feeds.rs`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(5);

fn feed_config(name: &str, source: &str) -> String {
    format!(
        "[[feeds]]\nname = \"{name}\"\n{source}\nrefresh = \"1h\"\nmax_entries = 100\ntimeout = \"1s\"\n"
    )
}

fn write(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn reload(server: &Server) -> String {
    let (code, out, err) = server.admin_cli("reload", &[]);
    assert_eq!(code, 0, "{err}");
    out
}

/// Waits for the `n`-th log line containing `needle` (counted from the
/// start of the log).
fn wait_nth(server: &Server, needle: &str, n: usize) -> String {
    assert!(
        eventually(SHORT, || server.log_text().matches(needle).count() >= n),
        "{needle} x{n}: {}",
        server.log_text()
    );
    server
        .log_text()
        .lines()
        .filter(|line| line.contains(needle))
        .nth(n - 1)
        .unwrap()
        .to_owned()
}

#[test]
fn a_feed_file_is_applied_refreshed_as_a_difference_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("drop.txt");
    write(
        &list,
        &[
            "; a Spamhaus-style list",
            "127.0.50.0/24 ; SBL1",
            "127.0.51.0/24",
            "127.0.53.7",
        ],
    );
    let config = feed_config("drop", &format!("path = \"{}\"", list.display()));
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data).config(&config).start();
    let line = wait_nth(&server, "entries in force", 1);
    assert!(
        line.contains("feed drop: 3 entries in force (3 added"),
        "{line}"
    );
    assert!(refused_at_accept("127.0.50.9", server.addr));
    assert!(refused_at_accept("127.0.53.7", server.addr));
    assert!(server.served_from("127.0.52.9"));

    // Listed by cause, counted in stats and the metrics.
    let (code, out, _) = server.bans_cli(&["list", "--cause", "feed:drop", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    let (_, stats, _) = server.bans_cli(&["stats"]);
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["feeds"][0]["name"], "drop");
    assert_eq!(stats["feeds"][0]["entries"], 3);
    assert_eq!(stats["feeds"][0]["refresh_errors"], 0);
    let metrics = http_get(server.metrics.unwrap(), "/metrics");
    assert!(
        metrics.contains("penaltybox_feed_entries{feed=\"drop\"} 3"),
        "{metrics}"
    );

    // A source listed in both versions is refused throughout the refresh.
    let probing = Arc::new(AtomicBool::new(true));
    let probe = {
        let probing = probing.clone();
        let addr = server.addr;
        std::thread::spawn(move || {
            let mut probes = 0;
            while probing.load(Ordering::Relaxed) && probes < 2000 {
                assert!(
                    refused_at_accept("127.0.50.9", addr),
                    "served during the refresh"
                );
                probes += 1;
            }
            probes
        })
    };
    write(&list, &["127.0.50.0/24", "127.0.52.0/24", "127.0.53.7"]);
    reload(&server);
    let line = wait_nth(&server, "entries in force", 2);
    assert!(
        line.contains("3 entries in force (1 added, 2 kept with their expiry moved, 1 released"),
        "{line}"
    );
    probing.store(false, Ordering::Relaxed);
    let probes = probe.join().unwrap();
    assert!(probes > 0);
    assert!(server.served_from("127.0.51.9"), "released");
    assert!(refused_at_accept("127.0.52.9", server.addr), "added");
    assert!(server.stop().success());

    // A restart: restored as the feed's, and the same list is all kept.
    let server = ServerSpec::new(&data).config(&config).start();
    assert!(refused_at_accept("127.0.52.9", server.addr));
    let line = wait_nth(&server, "entries in force", 1);
    assert!(line.contains("(0 added, 3 kept"), "{line}");
    assert!(server.stop().success());
}

/// A one-at-a-time HTTP server on loopback whose answer `mode` picks: 0 a
/// list, 1 HTTP 500, 2 no answer at all.
fn list_server(mode: Arc<AtomicU8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let reply = match mode.load(Ordering::Relaxed) {
                0 => {
                    let body = "127.0.60.0/24\n127.0.61.0/24\n";
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                1 => "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                _ => {
                    std::thread::sleep(Duration::from_secs(3));
                    continue;
                }
            };
            let _ = (&stream).write_all(reply.as_bytes());
        }
    });
    format!("http://{addr}/drop.txt")
}

#[test]
fn bad_feeds_give_one_line_each_and_the_list_before_stays() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drop.txt");
    write(
        &file,
        &[
            "127.0.70.0/24",
            "not-an-ip",
            "127.0.71.5/24",
            "127.0.72.0/24",
        ],
    );
    let mode = Arc::new(AtomicU8::new(0));
    let url = list_server(mode.clone());
    let config = format!(
        "{}{}",
        feed_config("file", &format!("path = \"{}\"", file.display())),
        feed_config("web", &format!("url = \"{url}\""))
    );
    let server = ServerSpec::new(&dir.path().join("data"))
        .config(&config)
        .start();
    // Bad lines: named with file and line, the rest applied.
    let bad = wait_nth(&server, "lines are not entries", 1);
    assert!(bad.contains("feed file: 2 lines are not entries"), "{bad}");
    assert!(
        bad.contains(&format!(
            "{}:2: \"not-an-ip\" is not an address or prefix",
            file.display()
        )),
        "{bad}"
    );
    assert!(
        bad.contains(&format!(
            "{}:3: 127.0.71.5/24 has host bits set",
            file.display()
        )),
        "{bad}"
    );
    wait_nth(&server, "feed file: 2 entries in force", 1);
    wait_nth(&server, "feed web: 2 entries in force", 1);
    assert!(refused_at_accept("127.0.72.1", server.addr));
    assert!(refused_at_accept("127.0.61.1", server.addr));

    // An empty file, then one over max_entries; the URL answers 500, then
    // hangs past its time limit. Each: one line, the list before in force.
    let failed = "refresh failed, the list before stays in force";
    let mut failures = 0;
    for (file_lines, web_mode, file_why, web_why) in [
        (vec![], 1, "lists no entries", "answered HTTP 500"),
        (
            (0..101)
                .map(|i| format!("127.1.{i}.0/24"))
                .collect::<Vec<_>>(),
            2,
            "lists more than 100 entries: refused whole",
            "no complete answer within the time limit",
        ),
    ] {
        let lines: Vec<&str> = file_lines.iter().map(String::as_str).collect();
        write(&file, &lines);
        mode.store(web_mode, Ordering::Relaxed);
        reload(&server);
        failures += 2;
        assert!(
            eventually(SHORT, || server.log_text().matches(failed).count()
                >= failures),
            "{}",
            server.log_text()
        );
        let log = server.log_text();
        assert!(
            log.contains(&format!("feed file: {failed}: ")) && log.contains(file_why),
            "{log}"
        );
        assert!(
            log.contains(&format!("feed web: {failed}: {url}")) && log.contains(web_why),
            "{log}"
        );
        assert!(
            refused_at_accept("127.0.72.1", server.addr),
            "the file's list before"
        );
        assert!(
            refused_at_accept("127.0.61.1", server.addr),
            "the URL's list before"
        );
    }
    let (_, stats, _) = server.bans_cli(&["stats"]);
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    let web = stats["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["refresh_errors"], 2, "{web}");
    assert_eq!(web["entries"], 2, "{web}");
    let metrics = http_get(server.metrics.unwrap(), "/metrics");
    assert!(
        metrics.contains("penaltybox_feed_refresh_errors_total{feed=\"web\"} 2"),
        "{metrics}"
    );
    assert!(server.stop().success());
}

#[test]
fn bans_import_takes_a_list_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("hand.txt");
    write(
        &list,
        &[
            "# by hand",
            "127.0.80.0/24",
            "127.0.81.7",
            "bogus",
            "127.0.82.0/24",
        ],
    );
    let list_arg = list.display().to_string();
    let data = dir.path().join("data");
    let server = ServerSpec::new(&data)
        .config("[bans]\nallow = [\"127.0.82.0/24\"]\n")
        .start();
    let (code, out, err) =
        server.bans_cli(&["import", &list_arg, "--cause", "hand", "--for", "2h"]);
    assert_eq!(code, 1, "one refused: {out}{err}");
    assert!(
        err.contains(":4: \"bogus\" is not an address or prefix (skipped)"),
        "{err}"
    );
    assert!(
        out.contains("imported 2 time-outs (cause hand); 1 refused, the first: 127.0.82.0/24: "),
        "{out}"
    );
    assert!(refused_at_accept("127.0.80.9", server.addr));
    let (_, out, _) = server.bans_cli(&["list", "--cause", "hand"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(server.stop().success());

    // Offline, into the stopped server's database.
    write(&list, &["127.0.83.0/24"]);
    let data_arg = data.display().to_string();
    let (code, out, err) = cli(&[
        "bans",
        "import",
        &list_arg,
        "--cause",
        "hand",
        "--data-dir",
        &data_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 1 time-outs"), "{out}");
    let server = ServerSpec::new(&data).start();
    assert!(refused_at_accept("127.0.83.9", server.addr));
    assert!(server.stop().success());
}
