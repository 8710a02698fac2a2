//! `penaltybox xdp attach | status | detach`: the kernel tier's program,
//! loaded from the object embedded in this binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use xdp::{AttachMode, DEFAULT_PIN_DIR};

use crate::kernel_wiring::parse_mode;

#[derive(clap::Args)]
pub struct Args {
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
        #[arg(long, default_value = "auto", value_parser = parse_mode)]
        mode: AttachMode,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Which program of the object: the bench attaches `drop_all` as its baseline.
        #[arg(long, default_value = xdp::PROGRAM, hide = true)]
        program: String,
    },
    /// Where the program is attached, the banned entries and drop counters.
    Status {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Detach the program and remove its pins.
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        XdpCommand::Attach {
            iface,
            mode,
            pin_dir,
            program,
        } => {
            xdp::attach(&iface, mode, &pin_dir, &program)?;
            println!(
                "attached to {iface}; ban table pinned at {} (serve -B {})",
                pin_dir.display(),
                pin_dir.display()
            );
        }
        XdpCommand::Status { pin_dir } => {
            let status = xdp::status(&pin_dir)?;
            let now = xdp::monotonic_ns();
            println!(
                "attached to {}; pinned at {}",
                status.interface.as_deref().unwrap_or("(unknown interface)"),
                status.pin_dir.display()
            );
            println!(
                "{} entries; dropped {} packets by address, {} by prefix; {} passed after their ban ended",
                status.entries.len(),
                status.dropped_by_address,
                status.dropped_by_prefix,
                status.passed_expired
            );
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
