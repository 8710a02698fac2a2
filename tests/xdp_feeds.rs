//! A blocklist feed of 100,000 prefixes through the kernel tier: loaded at
//! start into the kernel's maps (70,000 of them IPv6 /56s in its prefix
//! trie, more than the 65,536 it held before `kernel.max_prefixes`), its
//! sources dropped in XDP and refused in userspace; a refresh with 10 %
//! changed applied as a difference while a source listed in both versions
//! is flooded with SYNs, none of which gets an answer; what left the list
//! is served. Network namespaces and a veth pair this test makes
//! (documentation prefixes only, removed afterwards; needs root).

mod common;

use std::time::Duration;

use common::*;

#[path = "common/netns.rs"]
mod netns;
#[path = "common/testbed.rs"]
mod testbed;

use netns::{SERVER_V4, SERVER_V6};
use testbed::*;

/// IPv6 /56s of the list: number `i` is 2001:db8:(0x1000 + i/256):(i%256)00::/56,
/// inside 2001:db8:1000::/36 (the veth pair's own /64 is 2001:db8:77::).
fn v6_entry(i: u32) -> String {
    format!("2001:db8:{:x}:{:x}00::/56", 0x1000 + (i >> 8), i & 0xff)
}

/// IPv4 addresses of the list: number `i` of 198.19.0.0/16.
fn v4_entry(i: u32) -> String {
    format!("198.19.{}.{}", i >> 8, i & 0xff)
}

/// A list of the IPv6 entries `v6` and the IPv4 ones `v4`.
fn write_list(path: &std::path::Path, v6: std::ops::Range<u32>, v4: std::ops::Range<u32>) {
    let mut text = String::from("# a documentation-range drop list\n");
    for i in v6 {
        text.push_str(&v6_entry(i));
        text.push('\n');
    }
    for i in v4 {
        text.push_str(&v4_entry(i));
        text.push_str(" ; listed\n");
    }
    std::fs::write(path, text).unwrap();
}

/// Puts `addrs` on the client side and routes `route` back to it.
fn add_sources(bed: &Testbed, route: &str, addrs: &[&str]) {
    let pair = &bed.pair;
    for addr in addrs {
        let with_len = if addr.contains(':') {
            format!("{addr}/128")
        } else {
            format!("{addr}/32")
        };
        let mut args = vec!["-n", &pair.client_ns, "addr", "add", &with_len];
        args.extend(["dev", pair.client_if.as_str()]);
        if addr.contains(':') {
            args.push("nodad");
        }
        let output = run("ip", &args);
        assert!(output.status.success(), "{output:?}");
    }
    let family = if route.contains(':') { "-6" } else { "-4" };
    let args = [family, "-n", &pair.server_ns, "route", "replace", route];
    let mut args = args.to_vec();
    args.extend(["dev", pair.server_if.as_str()]);
    let output = run("ip", &args);
    assert!(output.status.success(), "{output:?}");
}

/// A ping from `source` in the client namespace: `Ok` if served, else
/// the client's one line.
fn ping_from(bed: &Testbed, server: &Server, source: &str) -> Result<(), String> {
    let target = if source.contains(':') {
        format!("[{SERVER_V6}]:5000")
    } else {
        format!("{SERVER_V4}:5000")
    };
    let key = server.data_dir.join("server.pub").display().to_string();
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

fn dropped_in_xdp(bed: &Testbed, server: &Server, source: &str) {
    let error = ping_from(bed, server, source).expect_err(source);
    assert!(error.contains("no answer within"), "{source}: {error}");
}

#[test]
fn a_feed_of_100000_prefixes_is_dropped_in_xdp_and_refreshed_without_a_gap() {
    let Some(bed) = Testbed::new() else { return };
    if !have("hping3") {
        skip_or_fail("hping3 is not installed");
        return;
    }
    bed.attach();
    // Listed in both versions, only in the first, only in the second.
    let (kept_v6, gone_v6, new_v6) = (
        "2001:db8:109c:4000::2",
        "2001:db8:1000:500::2",
        "2001:db8:1124:f800::2",
    );
    let (kept_v4, gone_v4, new_v4) = ("198.19.78.32", "198.19.0.5", "198.19.121.24");
    add_sources(&bed, "2001:db8:1000::/36", &[kept_v6, gone_v6, new_v6]);
    add_sources(&bed, "198.19.0.0/16", &[kept_v4, gone_v4, new_v4]);

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("drop.txt");
    write_list(&list, 0..70_000, 0..30_000);
    let config = format!(
        "[[feeds]]\nname = \"drop\"\npath = \"{}\"\nrefresh = \"1h\"\nmax_entries = 200000\n",
        list.display()
    );
    let server = bed.start_server(&dir.path().join("data"), &config);
    let line = server
        .wait_log(
            "feed drop: 100000 entries in force",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    eprintln!("{line}");
    let status = bed.status();
    let in_kernel = status["entries"].as_array().unwrap().len();
    assert!(in_kernel >= 100_000, "{in_kernel} entries in the kernel");
    for source in [kept_v6, gone_v6, kept_v4, gone_v4] {
        dropped_in_xdp(&bed, &server, source);
    }
    ping_from(&bed, &server, new_v6).expect("not listed yet");
    ping_from(&bed, &server, new_v4).expect("not listed yet");
    let server_pub = server.data_dir.join("server.pub");
    let (code, out, err) = bed.admin(&server.admin_key, &server_pub, &["show", kept_v6]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("feed:drop"), "{out}");

    // 10 % changed: the first 7,000 and 3,000 gone, as many new. A SYN
    // flood from a source listed in both runs throughout the refresh.
    write_list(&list, 7_000..77_000, 3_000..33_000);
    let drops_before = drops(&bed.status());
    let flood = {
        let ns = bed.pair.client_ns.clone();
        std::thread::spawn(move || {
            run_in_bounded(
                &ns,
                60,
                &[
                    "hping3", "-S", "-p", "5000", "-a", kept_v4, "-i", "u100", "-c", "20000",
                    SERVER_V4,
                ],
            )
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || drops(&bed.status())
            > drops_before),
        "the flood did not start"
    );
    server.signal("-HUP");
    let line = server
        .wait_log("10000 released", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(
        line.contains("100000 entries in force (10000 added, 90000 kept"),
        "{line}"
    );
    let report = flood.join().unwrap();
    let received: u64 = report
        .split(" packets received")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no statistics line: {report}"));
    assert_eq!(
        received, 0,
        "a SYN of the kept source was answered: {report}"
    );
    assert!(drops(&bed.status()) >= drops_before + 20_000, "{report}");

    // After: what left the list is served, what came in is dropped.
    ping_from(&bed, &server, gone_v6).expect("left the list");
    ping_from(&bed, &server, gone_v4).expect("left the list");
    for source in [kept_v6, new_v6, kept_v4, new_v4] {
        dropped_in_xdp(&bed, &server, source);
    }
    assert!(bed.entry("198.19.0.5/32").is_none());
    assert!(bed.entry(&v6_entry(76_999)).is_some());
    assert!(server.stop().success());
}
