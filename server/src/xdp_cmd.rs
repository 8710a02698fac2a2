//! `penaltybox xdp attach | status | detach`: the kernel tier's program,
//! loaded from the object embedded in this binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use xdp::DEFAULT_PIN_DIR;

use crate::settings::{DEFAULT_MAX_PREFIXES, MAX_MAX_PREFIXES, XdpMode};

#[derive(clap::Args)]
pub struct XdpArgs {
    #[command(subcommand)]
    command: XdpCommand,
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Load the XDP program, attach it to IFACE and pin link and maps, so it
    /// stays attached after this command exits. Mounts bpffs if needed.
    Attach {
        #[arg(long, value_name = "IFACE")]
        iface: String,
        /// driver, skb, or auto (driver where the driver has it).
        #[arg(long, value_enum, default_value = "auto")]
        mode: XdpMode,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Entries the kernel's prefix map may hold (time-outs wider than
        /// one address, blocklist feeds); memory is taken only when used.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PREFIXES,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MAX_PREFIXES)))]
        max_prefixes: u32,
    },
    /// Where the program is attached, the banned entries and drop counters.
    Status {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// One JSON object: interface, pin_dir, the drop counters, and
        /// entries (prefix, remaining_s or null for "until removed", drops).
        #[arg(long)]
        json: bool,
    },
    /// Detach the program and remove its pins.
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

pub fn run(args: XdpArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        XdpCommand::Attach {
            iface,
            mode,
            pin_dir,
            max_prefixes,
        } => {
            xdp::check_pins_outlive_us(&pin_dir)?;
            let sizes = xdp::MapSizes {
                prefixes: max_prefixes,
            };
            xdp::attach_sized(&iface, mode.into(), &pin_dir, sizes)?;
            println!(
                "attached to {iface}; ban table pinned at {} (serve -B {})",
                pin_dir.display(),
                pin_dir.display()
            );
        }
        XdpCommand::Status { pin_dir, json } => {
            let status = xdp::status(&pin_dir)?;
            let now = xdp::monotonic_ns();
            if json {
                println!("{}", status_json(&status, now));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "attached to {}; pinned at {}",
                status.interface.as_deref().unwrap_or("(unknown interface)"),
                status.pin_dir.display()
            );
            println!(
                "{} entries; dropped {} packets by address, {} by prefix, {} whose port was unknown (whatever the drop scope); {} passed after their ban ended",
                status.entries.len(),
                status.dropped_by_address,
                status.dropped_by_prefix,
                status.dropped_unparsed,
                status.passed_expired
            );
            if !status.allowed.is_empty() {
                let allowed: Vec<String> = status.allowed.iter().map(ToString::to_string).collect();
                println!(
                    "allow-listed (never dropped): {}; {} packets passed that a ban covered",
                    allowed.join(", "),
                    status.passed_allowed
                );
            }
            print_detectors(&status);
            for (prefix, value) in &status.entries {
                let left = match value.expires_ns {
                    0 => "until removed".to_owned(),
                    ns if ns <= now => "ended".to_owned(),
                    ns => format!("{}s left", (ns - now) / 1_000_000_000),
                };
                println!(
                    "{:<28} {left:<16} drops {}",
                    prefix.to_string(),
                    value.drops
                );
            }
        }
        XdpCommand::Detach { pin_dir } => {
            if !xdp::detach(&pin_dir)? {
                anyhow::bail!("nothing is attached at {}", pin_dir.display());
            }
            println!("detached; removed the pins under {}", pin_dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The detectors' lines of `xdp status`.
fn print_detectors(status: &xdp::Status) {
    let d = &status.detectors;
    let detection = match &status.detection {
        Some(detection) if detection.enabled => detection,
        Some(_) => return println!("detectors: off (kernel.detect = false)"),
        None => return println!("detectors: not configured (no server has run with -B yet)"),
    };
    println!(
        "detectors{}: {} SYNs seen, {} dropped by the SYN rate limit; {} port scans, {} SYN floods, {} bad-flag probes, {} unparsed floods reported ({} events sent, {} lost to a full ring), {} later probes of theirs dropped; {} packets unparsed (a TCP fragment after the first, an IPv6 extension chain it cannot follow); a time-out drops {}",
        if detection.monitor {
            " (monitor mode: they report, and drop nothing)"
        } else {
            ""
        },
        d.syns_seen,
        d.syns_dropped,
        d.scans,
        d.floods,
        d.malformed,
        d.unparsed_floods,
        d.events_sent,
        d.events_lost,
        d.probes_dropped,
        d.unparsed,
        if detection.drop_service_only {
            format!(
                "TCP to ports {:?} (and packets whose port is unknown)",
                detection.service_ports
            )
        } else {
            "all packets".to_owned()
        }
    );
    if status.egress_attached {
        println!(
            "stray segments (egress): {} counted, {} sources reported, {} of their later segments dropped",
            d.strays, d.stray_reports, d.strays_dropped
        );
    } else {
        println!("stray segments: off (the egress program is not attached)");
    }
}

fn status_json(status: &xdp::Status, now_ns: u64) -> serde_json::Value {
    let entries: Vec<_> = status
        .entries
        .iter()
        .map(|(prefix, value)| {
            let remaining_s = match value.expires_ns {
                0 => None,
                ns => Some(ns.saturating_sub(now_ns) / 1_000_000_000),
            };
            serde_json::json!({
                "prefix": prefix.to_string(),
                "remaining_s": remaining_s,
                "drops": value.drops,
            })
        })
        .collect();
    serde_json::json!({
        "interface": status.interface,
        "pin_dir": status.pin_dir.display().to_string(),
        "dropped_by_address": status.dropped_by_address,
        "dropped_by_address_per_cpu": status.dropped_by_address_per_cpu,
        "dropped_by_prefix": status.dropped_by_prefix,
        "dropped_unparsed": status.dropped_unparsed,
        "passed_expired": status.passed_expired,
        "egress_attached": status.egress_attached,
        "passed_allowed": status.passed_allowed,
        "allowed": status.allowed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "entries": entries,
        "detectors": {
            "enabled": status.detection.as_ref().is_some_and(|d| d.enabled),
            "drop_scope": status.detection.as_ref().map(|d| if d.drop_service_only { "service" } else { "all" }),
            "monitor": status.detection.as_ref().is_some_and(|d| d.monitor),
            "syns_seen": status.detectors.syns_seen,
            "syns_dropped": status.detectors.syns_dropped,
            "scans": status.detectors.scans,
            "floods": status.detectors.floods,
            "malformed": status.detectors.malformed,
            "events_sent": status.detectors.events_sent,
            "events_lost": status.detectors.events_lost,
            "unparsed": status.detectors.unparsed,
            "unparsed_floods": status.detectors.unparsed_floods,
            "probes_dropped": status.detectors.probes_dropped,
            "strays": status.detectors.strays,
            "stray_reports": status.detectors.stray_reports,
            "strays_dropped": status.detectors.strays_dropped,
        },
    })
}
