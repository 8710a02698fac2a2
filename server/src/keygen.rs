//! `penaltybox keygen`: makes a client (or admin) key pair.

use std::path::PathBuf;
use std::process::ExitCode;

use protocol::PrivateKey;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the private key. Never overwritten.
    #[arg(long, short, default_value = "penaltybox.key")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = PrivateKey::generate();
    key.write_new(&args.out)?;
    eprintln!(
        "wrote private key to {} (mode 0600); public key:",
        args.out.display()
    );
    println!("{}", key.public_key());
    Ok(ExitCode::SUCCESS)
}
