//! Two network namespaces joined by a veth pair, made for one test or bench
//! and removed when dropped (deleting a namespace deletes its veth end).
//! Shared by tests/xdp.rs and server/benches/xdp.rs.

#![allow(dead_code)] // each user needs a different subset

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const SERVER_V4: &str = "198.18.77.1";
pub const CLIENT_V4: &str = "198.18.77.2";
pub const SERVER_V6: &str = "2001:db8:77::1";
pub const CLIENT_V6: &str = "2001:db8:77::2";

pub struct NetnsPair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetnsPair {
    /// Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN).
    pub fn create() -> NetnsPair {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetnsPair {
            server_ns: format!("pbx-s{id}"),
            client_ns: format!("pbx-c{id}"),
            server_if: format!("pbs{id}"),
            client_if: format!("pbc{id}"),
        };
        ip(&["netns", "add", &pair.server_ns]);
        ip(&["netns", "add", &pair.client_ns]);
        ip(&[
            "link",
            "add",
            &pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
        ]);
        ip(&["link", "set", &pair.server_if, "netns", &pair.server_ns]);
        ip(&["link", "set", &pair.client_if, "netns", &pair.client_ns]);
        for (ns, dev, v4, v6) in [
            (&pair.server_ns, &pair.server_if, SERVER_V4, SERVER_V6),
            (&pair.client_ns, &pair.client_if, CLIENT_V4, CLIENT_V6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Moves the calling thread into namespace `ns` (threads have their own).
    pub fn enter(ns: &str) {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
        // SAFETY: setns on a namespace fd we hold; affects this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client_ns])
            .status();
    }
}
