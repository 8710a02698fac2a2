//! What the packaging hands an operator: the systemd unit passes
//! `systemd-analyze verify`, the completion scripts load, the man page
//! renders, the compose file names what the kernel tier needs.

mod common;

use std::process::Command;

use common::*;

fn contrib(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(name)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(contrib("penaltybox.service")).unwrap();
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=penaltybox",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip_or_fail("systemd-analyze not found (apt-get install systemd)");
    }
    // The unit as installed, pointing at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("penaltybox.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/penaltybox", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("penaltybox.service:"),
        "warnings: {stderr}"
    );
}

#[test]
fn the_completion_scripts_load_and_the_man_page_renders() {
    let (code, script, err) = cli(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("penaltybox.bash");
    std::fs::write(&file, &script).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p penaltybox",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-F _penaltybox penaltybox"));
    for shell in ["zsh", "fish"] {
        let (code, script, err) = cli(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(script.contains("reload"), "{shell}: subcommands listed");
    }
    let (code, man, err) = cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(man.contains(".TH penaltybox 1"), "{man}");
    assert!(man.contains("serve"), "subcommands in the man page");
}

#[test]
fn the_compose_file_gives_the_kernel_tier_what_it_needs() {
    let compose = std::fs::read_to_string(contrib("docker-compose.yml")).unwrap();
    for needed in [
        "cap_add: [BPF, NET_ADMIN]",
        "PENALTYBOX_KERNEL__XDP_IFACE",
        "PENALTYBOX_KEYS__ADMIN_KEYS: /etc/penaltybox/admins",
        "/sys/fs/bpf:/sys/fs/bpf",
        "PENALTYBOX_METRICS__LISTEN",
        "/var/lib/penaltybox",
    ] {
        assert!(compose.contains(needed), "compose file lacks {needed:?}");
    }
}
