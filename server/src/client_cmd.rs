//! `penaltybox client`: the protocol client as a command, for people and for
//! tests (`--bind` picks the source address, so 127.0.0.x act as distinct
//! sources on one machine).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use protocol::message::{
    ErrorCode, Location, MediaType, Volume, VolumeId, VolumeSpec, VolumeStatus,
};
use protocol::{Client, ClientConfig, PrivateKey, PublicKey, Request, Response};

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Server address, HOST:PORT.
    #[arg(long, short, env = "PENALTYBOX_SERVER")]
    server: String,
    /// The server's public key (base64), or the path of its server.pub file.
    #[arg(long, value_parser = parse_server_key, env = "PENALTYBOX_SERVER_KEY")]
    server_key: PublicKey,
    /// Private key file to authenticate with (Noise IK). Without it the
    /// session is anonymous (Noise NK).
    #[arg(long, short, env = "PENALTYBOX_KEY")]
    key: Option<PathBuf>,
    /// Local address to connect from.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Seconds to wait for the connection, the handshake, and each response.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Round trip a ping and print the time it took.
    Ping {
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// The tape-volume inventory.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create or replace a volume.
    Put {
        /// Volume serial, e.g. A00001L9 (at most 32 characters).
        id: VolumeId,
        /// Media type, e.g. LTO-9 (at most 16 characters).
        #[arg(long)]
        media: MediaType,
        /// Where the volume is (at most 64 bytes).
        #[arg(long)]
        location: Location,
        /// One of: scratch, active, full, offsite, in-transit, retired.
        #[arg(long, default_value = "scratch")]
        status: VolumeStatus,
    },
    /// Show one volume.
    Get { id: VolumeId },
    /// Record that a volume moved to a new location.
    Move { id: VolumeId, location: Location },
    /// List volumes in id order.
    List {
        /// Start after this id.
        #[arg(long)]
        after: Option<VolumeId>,
        /// Page size (1-256); with --all, fetch every page.
        #[arg(long, default_value_t = 100)]
        limit: u16,
        #[arg(long)]
        all: bool,
    },
}

pub fn parse_server_key(value: &str) -> Result<PublicKey, String> {
    use protocol::keys::{KeyError, parse_public_key_text};
    // The key itself: bare base64, or a server.pub's whole text
    // (`--server-key "$(cat server.pub)"`).
    match parse_public_key_text(value, "--server-key") {
        Ok(key) => return Ok(key),
        Err(error @ KeyError::PrivateWherePublic { .. }) => return Err(error.to_string()),
        Err(_) => {} // a path, then
    }
    if !std::path::Path::new(value).exists() {
        return Err(format!(
            "{value:?} is neither a base64 public key nor a readable server.pub file"
        ));
    }
    protocol::keys::read_public_key_file(std::path::Path::new(value)).map_err(|e| e.to_string())
}

pub fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut config = ClientConfig::new(args.server_key);
    if let Some(path) = &args.key {
        config.client_key = Some(PrivateKey::read(path)?);
    }
    config.bind = args.bind;
    let timeout = Duration::from_secs(args.timeout);
    config.connect_deadline = timeout;
    config.handshake_deadline = timeout;
    config.request_deadline = timeout;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut client = Client::connect(&args.server, &config).await?;
        match args.command {
            ClientCommand::Ping { count } => ping(&mut client, count).await,
            ClientCommand::Volume(command) => volume(&mut client, command).await,
        }
    })
}

async fn ping(client: &mut Client, count: u32) -> anyhow::Result<ExitCode> {
    for nonce in 0..u64::from(count) {
        let started = Instant::now();
        match client.call(&Request::Ping { nonce }).await? {
            Response::Pong { nonce: echoed } if echoed == nonce => {
                println!(
                    "pong from server in {:.3} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            other => return unexpected(other),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn volume(client: &mut Client, command: VolumeCommand) -> anyhow::Result<ExitCode> {
    let request = match command {
        VolumeCommand::Put {
            id,
            media,
            location,
            status,
        } => {
            let spec = VolumeSpec {
                id,
                media_type: media,
                location,
                status,
            };
            spec.validate().map_err(anyhow::Error::msg)?;
            Request::PutVolume(spec)
        }
        VolumeCommand::Get { id } => Request::GetVolume { id },
        VolumeCommand::Move { id, location } => Request::MoveVolume { id, location },
        VolumeCommand::List { after, limit, all } => return list(client, after, limit, all).await,
    };
    request.validate().map_err(anyhow::Error::msg)?;
    match client.call(&request).await? {
        Response::Volume(volume) => {
            print_volume(&volume);
            Ok(ExitCode::SUCCESS)
        }
        other => unexpected(other),
    }
}

async fn list(
    client: &mut Client,
    mut after: Option<VolumeId>,
    limit: u16,
    all: bool,
) -> anyhow::Result<ExitCode> {
    loop {
        let request = Request::ListVolumes { after, limit };
        request.validate().map_err(anyhow::Error::msg)?;
        match client.call(&request).await? {
            Response::Volumes {
                volumes,
                next_after,
            } => {
                volumes.iter().for_each(print_volume);
                match next_after {
                    Some(next) if all => after = Some(next),
                    Some(next) => {
                        eprintln!("(more: --after {next}, or --all)");
                        return Ok(ExitCode::SUCCESS);
                    }
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
            other => return unexpected(other),
        }
    }
}

fn print_volume(volume: &Volume) {
    let spec = &volume.spec;
    println!(
        "{}\t{}\t{}\t{}\t{}",
        spec.id,
        spec.media_type,
        spec.status.name(),
        spec.location,
        actors::format_time(volume.updated_at_ms)
    );
}

/// A server error or an answer that does not fit the request.
fn unexpected(response: Response) -> anyhow::Result<ExitCode> {
    match response {
        Response::Error { code, message } => {
            let what = match code {
                ErrorCode::NotFound => "not found",
                ErrorCode::InvalidRequest => "invalid request",
                ErrorCode::Forbidden => "forbidden",
                ErrorCode::Internal => "internal error",
                ErrorCode::LimitExceeded => "limit exceeded",
            };
            anyhow::bail!("server: {what}: {message}")
        }
        other => anyhow::bail!("unexpected response from server: {other:?}"),
    }
}
