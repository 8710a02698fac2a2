//! `penaltybox keygen`: makes a client (or admin) key pair: the private key
//! (0600) and its public key beside it (`.pub`), for an admins or
//! authorized-keys file.

use std::path::PathBuf;
use std::process::ExitCode;

use protocol::PrivateKey;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes beside it, with
    /// the extension `.pub`. Neither is ever overwritten.
    #[arg(long, short, default_value = "penaltybox.key")]
    out: PathBuf,
}

/// `penaltybox key pub FILE`: the public key and fingerprint of a private
/// key file.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Print the public key (base64) and fingerprint of a private key file:
    /// the server's key, a client's, or a fleet node key (`node.key`, whose
    /// public key goes into the other nodes' trusted_nodes with its name).
    Pub { file: PathBuf },
}

pub fn run_key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Pub { file } => {
            let text = protocol::keys::read_key_text(&file)?;
            if text.lines().next().map(str::trim) == Some(fleet::node_key::NODE_PRIVATE_HEADER) {
                let public = fleet::NodeKey::read(&file)?.public_key();
                println!("{public}");
                println!("fingerprint {}", public.fingerprint());
                eprintln!(
                    "a fleet node key: list it in the other nodes' trusted_nodes as `{public} NODE-NAME`"
                );
                return Ok(ExitCode::SUCCESS);
            }
            let key = PrivateKey::read(&file)?;
            let public = key.public_key();
            println!("{public}");
            println!("fingerprint {}", public.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    if args.out.extension().is_some_and(|e| e == "pub") {
        anyhow::bail!(
            "--out {}: a private key named .pub would pass for a public key; name it .key",
            args.out.display()
        );
    }
    let public_path = args.out.with_extension("pub");
    if public_path.exists() {
        anyhow::bail!(
            "{} exists already (keygen never overwrites a key)",
            public_path.display()
        );
    }
    let key = PrivateKey::generate();
    key.write_new(&args.out)?;
    protocol::keys::write_public_key_file(&key.public_key(), &public_path)?;
    eprintln!(
        "wrote the private key to {} (mode 0600) and the public key to {}; public key:",
        args.out.display(),
        public_path.display()
    );
    println!("{}", key.public_key());
    Ok(ExitCode::SUCCESS)
}
