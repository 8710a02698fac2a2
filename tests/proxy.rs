//! PROXY protocol behind a real HAProxy (Debian's package) on loopback:
//! one frontend sends v2 (`send-proxy-v2`), one v1 (`send-proxy`), both
//! from 127.0.0.9, the only trusted proxy. Clients and scanners connect
//! to HAProxy from their own 127.0.4.x addresses.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const GARBAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const PROXY_SOURCE: &str = "127.0.0.9";

/// HAProxy in the foreground, stopped by pid when dropped.
struct Haproxy {
    child: Child,
    v2: SocketAddr,
    v1: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_haproxy(backend: SocketAddr) -> Option<Haproxy> {
    let binary = ["/usr/sbin/haproxy", "haproxy"].into_iter().find(|b| {
        Command::new(b)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(binary) = binary else {
        skip_or_fail("haproxy not found (apt-get install haproxy)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (v2, v1) = (free_addr(), free_addr());
    let config = format!(
        "global\n  maxconn 512\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend v2\n  bind {v2}\n  default_backend penaltybox_v2\n\
         backend penaltybox_v2\n  server pbx {backend} source {PROXY_SOURCE} send-proxy-v2\n\
         frontend v1\n  bind {v1}\n  default_backend penaltybox_v1\n\
         backend penaltybox_v1\n  server pbx {backend} source {PROXY_SOURCE} send-proxy\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let proxy = Haproxy {
        child,
        v2,
        v1,
        _dir: dir,
    };
    let listening = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(v2).is_ok() && std::net::TcpStream::connect(v1).is_ok()
    });
    assert!(listening, "haproxy did not listen");
    Some(proxy)
}

#[test]
fn clients_behind_haproxy_are_timed_out_and_served_by_their_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .config(&format!("[proxy]\ntrusted = [\"{PROXY_SOURCE}/32\"]\n"))
        .start();
    let Some(proxy) = start_haproxy(server.addr) else {
        return;
    };

    for (version, via, scanner, client) in [
        ("v2", proxy.v2, "127.0.4.1", "127.0.4.2"),
        ("v1", proxy.v1, "127.0.4.3", "127.0.4.4"),
    ] {
        assert!(server.served_via(client, via), "{version}: client before");
        send_raw(scanner, via, GARBAGE, Duration::from_secs(3));
        assert!(
            eventually(Duration::from_secs(5), || server
                .ban_of(&format!("{scanner}/32"))
                .is_some()),
            "{version}: scanner not timed out by its own address; log:\n{}",
            server.log_text()
        );
        assert!(server.served_via(client, via), "{version}: client during");
        let refused_before = server.stats().connections_refused;
        assert!(
            refused_at_accept(scanner, via),
            "{version}: scanner served again"
        );
        assert!(server.stats().connections_refused > refused_before);
        assert!(server.served_via(client, via), "{version}: client after");
    }
    let logged = server.log_text();
    assert!(
        logged.contains("timed out 127.0.4.1/32") && logged.contains("source 127.0.4.1"),
        "{logged}"
    );

    // The proxy's own connection without a header: dropped and counted;
    // the proxy is never timed out.
    send_raw(PROXY_SOURCE, server.addr, GARBAGE, Duration::from_secs(3));
    assert!(
        server
            .wait_log(
                "dropped a connection from trusted proxy 127.0.0.9",
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        server.log_text()
    );
    assert!(server.ban_of(&format!("{PROXY_SOURCE}/32")).is_none());
    assert!(
        server.served_via("127.0.4.2", proxy.v2),
        "proxy still passes clients"
    );

    // A PROXY header straight from an address that is not trusted is not
    // our protocol: that address is timed out, not the one it claims.
    send_raw(
        "127.0.4.5",
        server.addr,
        b"PROXY TCP4 198.18.0.1 127.0.0.1 4000 5000\r\n",
        Duration::from_secs(3),
    );
    assert!(
        eventually(Duration::from_secs(5), || server
            .ban_of("127.0.4.5/32")
            .is_some()),
        "{}",
        server.log_text()
    );
    assert!(server.ban_of("198.18.0.1/32").is_none());
}
