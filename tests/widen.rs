//! Prefix widening against real servers: time-outs of a rotating scanner's
//! addresses widen into its network, which is then refused at accept and,
//! with the kernel tier, dropped in XDP; an allow-listed address inside it
//! is still served. Loopback for the userspace tier; for the kernel tier,
//! network namespaces and a veth pair this test makes (documentation
//! prefixes only, removed afterwards; needs root).

mod common;

use std::time::Duration;

use common::*;

#[path = "common/netns.rs"]
mod netns;
#[path = "common/testbed.rs"]
mod testbed;

use netns::{SERVER_V4, SERVER_V6};
use testbed::*;

const WIDEN_ON: (&str, &str) = ("PENALTYBOX_BANS__WIDEN__ENABLED", "true");

/// Garbage from each of `sources`; waits until the server has timed each
/// out (its own entry, or the widened one that covers it).
fn garbage_from(server: &Server, sources: &[&str]) {
    for source in sources {
        send_raw(
            source,
            server.addr,
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(2),
        );
        assert!(
            server
                .wait_log(&format!("source {source},"), Duration::from_secs(5))
                .is_some(),
            "{source}: {}",
            server.log_text()
        );
    }
}

#[test]
fn four_loopback_sources_of_one_24_widen_it_and_the_allow_list_still_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .config("[bans]\nallow = [\"127.0.40.200/32\"]\n")
        .env(WIDEN_ON.0, WIDEN_ON.1)
        .start();
    garbage_from(&server, &["127.0.40.1", "127.0.40.2", "127.0.40.3"]);
    assert!(
        server.served_from("127.0.40.9"),
        "three are not yet a pattern"
    );
    garbage_from(&server, &["127.0.40.4"]);
    let line = server
        .wait_log("widened: timed out 127.0.40.0/24", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        line.contains("4 time-outs inside it within 1h")
            && line.contains("127.0.40.4/32")
            && line.contains("cause widened, repeat 1"),
        "{line}"
    );
    // Another address of the /24 is refused at accept; the allow-listed
    // one inside it is served.
    assert!(refused_at_accept("127.0.40.9", server.addr));
    assert!(server.served_from("127.0.40.200"));
    // The members stay; `bans show` lists them under the wide one.
    assert_eq!(server.stats().bans_active, 5);
    let (code, out, err) = server.bans_cli(&["show", "127.0.40.9"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("timed out by 127.0.40.0/24 (cause widened")
            && out.contains("widened over 4 time-outs inside it: 127.0.40.1/32, 127.0.40.2/32, 127.0.40.3/32, 127.0.40.4/32"),
        "{out}"
    );
    let (code, out, _) = server.bans_cli(&["list", "--json"]);
    assert_eq!(code, 0);
    let wide = out
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|ban| ban["prefix"] == "127.0.40.0/24")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(wide["cause"], "widened");
    assert!(
        wide["widened_from"]
            .as_str()
            .unwrap()
            .starts_with("4 time-outs")
    );
    assert!(server.stop().success());
}

#[test]
fn monitor_mode_reports_would_widen_and_refuses_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .config("[bans]\nmode = \"monitor\"\n")
        .env(WIDEN_ON.0, WIDEN_ON.1)
        .start();
    for i in 1..=4 {
        let source = format!("127.0.41.{i}");
        send_raw(&source, server.addr, b"GET /", Duration::from_secs(2));
    }
    let line = server
        .wait_log(
            "would widen: would time out 127.0.41.0/24",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(line.contains("(monitor mode)"), "{line}");
    assert!(server.served_from("127.0.41.9"));
    assert_eq!(server.stats().bans_active, 0);
    assert!(server.stop().success());
}

/// A server in the test bed's namespace with the kernel tier and widening
/// on (three members a step, so that five /64s make a /56 and a /48).
fn widening_server(bed: &Testbed, data: &std::path::Path, allow: &str) -> Server {
    let pin = bed.pin_dir.display().to_string();
    let config = format!("[bans]\nallow = [\"{allow}\"]\n[bans.widen]\nmembers = 3\n");
    ServerSpec::new(data)
        .netns(&bed.pair.server_ns)
        .listen(&[&format!("{SERVER_V4}:5000"), &format!("[{SERVER_V6}]:5000")])
        .args(&["-B", &pin])
        .config(&config)
        .env(WIDEN_ON.0, WIDEN_ON.1)
        .start()
}

/// Client-side addresses outside the pair's own subnets (the server side
/// routes `route` to the veth).
fn add_sources(bed: &Testbed, route: &str, addrs: &[&str]) {
    let pair = &bed.pair;
    for addr in addrs {
        let (len, extra) = if addr.contains(':') {
            ("128", vec!["nodad"])
        } else {
            ("32", vec![])
        };
        let mut args = vec!["-n", &pair.client_ns, "addr", "add"];
        let with_len = format!("{addr}/{len}");
        args.extend([with_len.as_str(), "dev", pair.client_if.as_str()]);
        args.extend(extra);
        let output = run("ip", &args);
        assert!(output.status.success(), "{output:?}");
    }
    let family = if route.contains(':') { "-6" } else { "-4" };
    let output = run(
        "ip",
        &[
            family,
            "-n",
            &pair.server_ns,
            "route",
            "replace",
            route,
            "dev",
            &pair.server_if,
        ],
    );
    assert!(output.status.success(), "{output:?}");
}

/// Garbage from `source` in the client namespace (the replay tool binds it).
fn garbage_in_bed(bed: &Testbed, server: &Server, server_addr: &str, source: &str) {
    let fixture = format!("{}/../fixtures/http-get.pcap", env!("CARGO_MANIFEST_DIR"));
    let target = if server_addr.contains(':') {
        format!("[{server_addr}]:5000")
    } else {
        format!("{server_addr}:5000")
    };
    let (code, out, err) = bed.penaltybox(
        &bed.pair.client_ns,
        &["replay", &fixture, "--server", &target, "--bind", source],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        server
            .wait_log(&format!("source {source},"), Duration::from_secs(5))
            .is_some(),
        "{source}: {}",
        server.log_text()
    );
}

/// A ping from `source` in the client namespace.
fn ping_from(
    bed: &Testbed,
    server_addr: &str,
    key: &std::path::Path,
    source: &str,
) -> Result<(), String> {
    let target = if server_addr.contains(':') {
        format!("[{server_addr}]:5000")
    } else {
        format!("{server_addr}:5000")
    };
    let key = key.display().to_string();
    let (code, _, err) = bed.penaltybox(
        &bed.pair.client_ns,
        &[
            "client",
            "--server",
            &target,
            "--server-key",
            &key,
            "--bind",
            source,
            "--timeout",
            "1",
            "ping",
        ],
    );
    if code == 0 { Ok(()) } else { Err(err) }
}

#[test]
fn ipv6_scanners_of_five_64s_widen_to_the_56_then_the_48_dropped_in_xdp() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let scanners = [
        "2001:db8:77:1::2",
        "2001:db8:77:2::2",
        "2001:db8:77:3::2",
        "2001:db8:77:100::2",
        "2001:db8:77:200::2",
    ];
    let (other, allowed) = ("2001:db8:77:300::2", "2001:db8:77:ff::2");
    let mut all = scanners.to_vec();
    all.extend([other, allowed]);
    add_sources(&bed, "2001:db8:77::/48", &all);
    let dir = tempfile::tempdir().unwrap();
    let server = widening_server(&bed, &dir.path().join("data"), &format!("{allowed}/128"));
    let server_pub = server.data_dir.join("server.pub");
    ping_from(&bed, SERVER_V6, &server_pub, other).expect("served before");

    for scanner in &scanners[..3] {
        garbage_in_bed(&bed, &server, SERVER_V6, scanner);
    }
    assert!(
        server
            .wait_log(
                "widened: timed out 2001:db8:77::/56",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(bed.entry("2001:db8:77::/56").is_some(), "{}", bed.status());
    for scanner in &scanners[3..] {
        garbage_in_bed(&bed, &server, SERVER_V6, scanner);
    }
    let line = server
        .wait_log(
            "widened: timed out 2001:db8:77::/48",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        line.contains("2001:db8:77::/56"),
        "the /56 is one of its members: {line}"
    );
    assert!(bed.entry("2001:db8:77::/48").is_some(), "{}", bed.status());

    // Another /64 of the /48: dropped in XDP (the SYN never reaches the
    // server), and timed out in userspace too.
    let drops_before = drops(&bed.status());
    let error = ping_from(&bed, SERVER_V6, &server_pub, other).expect_err("dropped");
    assert!(error.contains("no answer within"), "{error}");
    assert!(drops(&bed.status()) > drops_before);
    let (code, out, err) = bed.admin(&server.admin_key, &server_pub, &["show", other]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("timed out by 2001:db8:77::/48 (cause widened"),
        "{out}"
    );
    // The allow-listed address inside it is served, through the kernel too.
    ping_from(&bed, SERVER_V6, &server_pub, allowed).expect("allow-listed inside the /48");
    assert!(server.stop().success());
}

#[test]
fn ipv4_scanners_of_one_24_widen_it_dropped_in_xdp_with_the_allow_list_winning() {
    let Some(bed) = Testbed::new() else { return };
    bed.attach();
    let scanners = ["198.18.78.1", "198.18.78.2", "198.18.78.3"];
    let (other, allowed) = ("198.18.78.50", "198.18.78.200");
    let mut all = scanners.to_vec();
    all.extend([other, allowed]);
    add_sources(&bed, "198.18.78.0/24", &all);
    let dir = tempfile::tempdir().unwrap();
    let server = widening_server(&bed, &dir.path().join("data"), &format!("{allowed}/32"));
    let server_pub = server.data_dir.join("server.pub");
    for scanner in scanners {
        garbage_in_bed(&bed, &server, SERVER_V4, scanner);
    }
    assert!(
        server
            .wait_log("widened: timed out 198.18.78.0/24", Duration::from_secs(5))
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(bed.entry("198.18.78.0/24").is_some(), "{}", bed.status());
    let error = ping_from(&bed, SERVER_V4, &server_pub, other).expect_err("dropped");
    assert!(error.contains("no answer within"), "{error}");
    ping_from(&bed, SERVER_V4, &server_pub, allowed).expect("allow-listed inside the /24");
    // The members stay in the kernel map beside the wide entry.
    for scanner in scanners {
        assert!(bed.entry(&format!("{scanner}/32")).is_some(), "{scanner}");
    }
    assert!(server.stop().success());
}
