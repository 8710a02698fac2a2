//! `penaltybox`: the command line. Parses arguments, sets up logging and hands
//! each subcommand to its module; the logic lives in the library crates.
//!
//! Every failure ends in one line on stderr (`penaltybox: error: ...`) and a
//! non-zero exit: 1 for a failed operation, 2 for bad usage (clap's).

mod client_cmd;
mod keygen;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "penaltybox",
    version,
    about = "A TCP server that speaks only its own encrypted protocol and times out every source that sends anything else.",
    long_about = "A TCP server that speaks only its own compressed and encrypted protocol. \
A source whose first bytes are not that protocol (TLS hellos, HTTP, UPnP, SSH banners, \
random scans) goes into a time-out table; while it is timed out, its connections are \
closed as soon as they are accepted.\n\n\
Log verbosity: RUST_LOG=debug|info|warn (default info for serve, warn otherwise)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a static key pair: writes the private key (mode 0600) and prints the public key.
    Keygen(keygen::Args),
    /// Talk to a penaltybox server: ping it, or use its tape-volume inventory.
    Client(client_cmd::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Client(args) => client_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("penaltybox: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (our errors often quote their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}
