//! `penaltybox replay CAPTURE --server HOST:PORT`: sends the client side of
//! every TCP stream in a capture to a live server and reports, per stream,
//! what the server did; with an admin key, also whether the source ended up
//! timed out and why.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use model::Cidr;
use protocol::PublicKey;
use replay::{ReplayOptions, read_streams, replay_stream};

use crate::bans_cmd::connect_admin;
use crate::client_cmd::parse_server_key;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// A pcap or pcapng capture.
    capture: PathBuf,
    /// The live server, HOST:PORT.
    #[arg(long, short)]
    server: String,
    /// Source address to replay from.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// With --key: the server's public key, to ask it afterwards whether the source was timed out.
    #[arg(long, value_parser = parse_server_key, requires = "key")]
    server_key: Option<PublicKey>,
    /// An admin key file (see --server-key).
    #[arg(long, short, requires = "server_key")]
    key: Option<PathBuf>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let server: SocketAddr = args
        .server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.server))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.server))?;
    let streams = read_streams(&args.capture)?;
    if streams.is_empty() {
        bail!(
            "{}: no TCP stream with a SYN in this capture",
            args.capture.display()
        );
    }
    let mut options = ReplayOptions::new(server);
    options.bind = args.bind;
    for (index, stream) in streams.iter().enumerate() {
        let outcome = replay_stream(stream, &options)?;
        println!(
            "stream {}: {} -> {}, {} segments, {} bytes: {outcome}",
            index + 1,
            stream.client,
            stream.server,
            stream.segments.len(),
            stream.bytes()
        );
    }
    if let (Some(server_key), Some(key)) = (args.server_key, &args.key) {
        let source = match args.bind {
            Some(bind) => bind,
            None => bail!("--bind is needed to ask which source to look up"),
        };
        match ban_of(&args.server, server_key, key, source)? {
            Some((prefix, cause)) => {
                println!("source {source}: timed out as {prefix} (cause {cause})")
            }
            None => println!("source {source}: not timed out"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The live ban covering `source`, asked of the server with an admin key.
fn ban_of(
    server: &str,
    server_key: PublicKey,
    key: &Path,
    source: IpAddr,
) -> anyhow::Result<Option<(Cidr, String)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut backend = connect_admin(server, server_key, key, None).await?;
        let mut found = None;
        backend
            .each_ban(None, |ban| {
                if ban.prefix.contains(source) {
                    found = Some((ban.prefix, ban.cause.to_string()));
                }
                found.is_none()
            })
            .await?;
        Ok(found)
    })
}
