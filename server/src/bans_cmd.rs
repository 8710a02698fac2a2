//! `penaltybox bans list|add|remove`: the time-out table, online through a
//! running server (admin key over the protocol) or offline in the data
//! directory of a stopped one (sled allows one process at a time).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use actors::{AdminBan, BanCore};
use anyhow::{Context, bail};
use clap::Subcommand;
use model::Cidr;
use protocol::message::{BanInfo, Cause, ErrorCode, MAX_IMPORT, MAX_PAGE};
use protocol::{
    AdminRequest, Client, ClientConfig, PrivateKey, PublicKey, Request, Response, Role,
};

use crate::client_cmd::parse_server_key;
use crate::display::{ban_json, ban_line};
use crate::settings;

#[derive(clap::Args)]
#[command(
    after_help = "Online: --server HOST:PORT --server-key KEY --key ADMIN.key\n\
Offline (server stopped): --data-dir DIR [--config FILE] (or data_dir in the --config file); \
never chosen silently"
)]
pub struct BansArgs {
    /// Online: the running server, HOST:PORT.
    #[arg(long, short, global = true, requires_all = ["server_key", "key"], env = "PENALTYBOX_SERVER")]
    server: Option<String>,
    /// Online: the server's public key (base64) or its server.pub file.
    #[arg(long, global = true, value_parser = parse_server_key, env = "PENALTYBOX_SERVER_KEY")]
    server_key: Option<PublicKey>,
    /// Online: an admin private key file (listed in keys.admin_keys).
    #[arg(long, short, global = true, env = "PENALTYBOX_KEY")]
    key: Option<PathBuf>,
    /// Online: local address to connect from.
    #[arg(long, global = true)]
    bind: Option<IpAddr>,
    /// Offline: the stopped server's data directory.
    #[arg(long, global = true, conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// Offline: the server's config file (for data_dir and ban policy).
    #[arg(long, short, global = true, conflicts_with = "server")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: BansCommand,
}

#[derive(Subcommand)]
enum BansCommand {
    /// Every live time-out.
    List {
        /// One JSON object per line: prefix, cause, expires_at, remaining_s, repeat.
        #[arg(long)]
        json: bool,
        /// Only the time-outs of this cause (feed:NAME, widened, an admin's).
        #[arg(long)]
        cause: Option<Cause>,
    },
    /// Time out every address or prefix of a file (one a line, `#` and `;`
    /// comments, as a blocklist feed), each as `add` would.
    Import {
        /// The list; `-` reads standard input.
        file: PathBuf,
        /// Their cause (shown by list and show).
        #[arg(long)]
        cause: Cause,
        /// How long, e.g. 30m, 12h [default: bans.admin_default, 1h].
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Also prefixes that cover allow-listed addresses or your own.
        #[arg(long)]
        force: bool,
        /// A longer list is refused whole.
        #[arg(long, default_value_t = 1_000_000)]
        max_entries: usize,
    },
    /// Time out an address or CIDR prefix.
    Add {
        /// An address, or a network written without host bits (10.0.0.0/8).
        #[arg(value_parser = Cidr::parse_exact)]
        prefix: Cidr,
        /// How long, e.g. 30m, 12h [default: bans.admin_default, 1h].
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, default_value = "admin")]
        cause: Cause,
        /// Also when the prefix covers allow-listed addresses or your own
        /// (allow-listed addresses are still never refused nor dropped).
        #[arg(long)]
        force: bool,
    },
    /// What the server knows about an address or prefix: the time-out that
    /// covers it (cause, time left, first bytes as hex and text), its
    /// escalation history, and whether the kernel map holds it.
    Show {
        /// An address (the longest live prefix around it answers) or a
        /// CIDR prefix (its own entry).
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Release an address or prefix (and forget its escalation history).
    Remove { prefix: Cidr },
    /// The server's counters as JSON, with each blocklist feed's
    /// entries, last refresh and errors (online only).
    Stats,
}

pub(crate) enum Backend {
    Online(Box<Client>),
    Offline(Box<Offline>),
}

/// A stopped server's database, through the same ban core the server runs.
pub(crate) struct Offline {
    core: BanCore,
}

pub fn run(args: BansArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut backend = connect(&args).await?;
        match args.command {
            BansCommand::List { json, cause } => list(&mut backend, json, cause).await,
            BansCommand::Import {
                file,
                cause,
                duration,
                force,
                max_entries,
            } => import(&mut backend, &file, cause, duration, force, max_entries).await,
            BansCommand::Add {
                prefix,
                duration,
                cause,
                force,
            } => {
                let ban = backend
                    .add(AdminBan {
                        prefix,
                        duration,
                        cause,
                        force,
                        requester: None,
                    })
                    .await?;
                println!("{}", ban_line(&ban, actors::now_ms()));
                Ok(ExitCode::SUCCESS)
            }
            BansCommand::Stats => {
                let Backend::Online(client) = &mut backend else {
                    bail!("stats needs a running server: --server HOST:PORT --server-key KEY --key ADMIN.key");
                };
                let stats = match client.call(&Request::Admin(AdminRequest::Stats)).await? {
                    Response::Stats(stats) => stats,
                    other => return Err(server_error(other)),
                };
                let feeds = match client.call(&Request::Admin(AdminRequest::Feeds)).await? {
                    Response::Feeds(feeds) => feeds,
                    other => return Err(server_error(other)),
                };
                let mut json = crate::display::stats_json(&stats);
                json["feeds"] = crate::display::feeds_json(&feeds);
                println!("{json}");
                Ok(ExitCode::SUCCESS)
            }
            BansCommand::Show { target, json } => {
                let target = parse_target(&target)?;
                let report = backend.show(target).await?;
                let now = actors::now_ms();
                if json {
                    println!("{}", crate::display::report_json(&target, &report, now));
                } else {
                    println!("{}", crate::display::report_text(&target, &report, now));
                }
                Ok(ExitCode::SUCCESS)
            }
            BansCommand::Remove { prefix } => match backend.remove(prefix).await? {
                Some(removed) => {
                    println!("released {removed}");
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("{prefix} is not timed out"),
            },
        }
    })
}

/// `penaltybox reload`: the running server re-reads its settings (as on
/// SIGHUP) and answers what changed.
#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    session: AdminSession,
}

/// A running server and the admin key to talk to it with (`reload`, `top`).
#[derive(clap::Args)]
pub struct AdminSession {
    /// The running server, HOST:PORT.
    #[arg(long, short, env = "PENALTYBOX_SERVER")]
    server: String,
    /// The server's public key (base64) or its server.pub file.
    #[arg(long, value_parser = parse_server_key, env = "PENALTYBOX_SERVER_KEY")]
    server_key: PublicKey,
    /// An admin private key file (listed in keys.admin_keys).
    #[arg(long, short, env = "PENALTYBOX_KEY")]
    key: PathBuf,
    /// Local address to connect from.
    #[arg(long)]
    bind: Option<IpAddr>,
}

impl AdminSession {
    /// A session with the server, authenticated with the admin key.
    pub(crate) async fn connect(&self) -> anyhow::Result<Box<Client>> {
        match connect_admin(&self.server, self.server_key, &self.key, self.bind).await? {
            Backend::Online(client) => Ok(client),
            Backend::Offline(_) => unreachable!("connect_admin connects"),
        }
    }
}

pub fn run_reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut client = args.session.connect().await?;
        match client.call(&Request::Admin(AdminRequest::Reload)).await? {
            Response::Reloaded { summary } => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            other => Err(server_error(other)),
        }
    })
}

/// A session with a running server, authenticated with an admin key.
pub(crate) async fn connect_admin(
    server: &str,
    server_key: PublicKey,
    key: &Path,
    bind: Option<IpAddr>,
) -> anyhow::Result<Backend> {
    let mut config = ClientConfig::new(server_key);
    config.client_key = Some(PrivateKey::read(key)?);
    config.bind = bind;
    let client = Client::connect(server, &config).await?;
    if client.role() != Role::Admin {
        bail!(
            "{} is not an admin key on {server} (add its public key to keys.admin_keys)",
            key.display()
        );
    }
    Ok(Backend::Online(Box::new(client)))
}

async fn connect(args: &BansArgs) -> anyhow::Result<Backend> {
    if let (Some(server), Some(server_key), Some(key)) = (&args.server, args.server_key, &args.key)
    {
        return connect_admin(server, server_key, key, args.bind).await;
    }
    if args.data_dir.is_none() && args.config.is_none() {
        bail!(
            "which server? --server HOST:PORT --server-key KEY --key ADMIN.key for a running one, or --data-dir DIR for a stopped one"
        );
    }
    let settings = settings::load_offline(args.config.as_deref(), args.data_dir.clone())?;
    let store =
        settings.open_stopped_database("pass --data-dir, or --server for a running server")?;
    let mut core = BanCore::offline(settings.policy(), settings.allow()?, store.clone());
    if settings.fleet()?.is_some() {
        // Shared by the server's fleet link at its next start.
        core.set_fleet(actors::FleetOutlet::new(
            store.outbox().clone(),
            std::sync::Arc::new(|| {}),
        ));
    }
    Ok(Backend::Offline(Box::new(Offline { core })))
}

async fn list(backend: &mut Backend, json: bool, cause: Option<Cause>) -> anyhow::Result<ExitCode> {
    let now = actors::now_ms();
    let mut shown = 0usize;
    backend
        .each_ban(cause, |ban| {
            if ban.expires_at_ms > now {
                shown += 1;
                if json {
                    println!("{}", ban_json(ban, now));
                } else {
                    println!("{}", ban_line(ban, now));
                }
            }
            true
        })
        .await?;
    // Scripts get nothing to parse; a person gets told, on stderr.
    if shown == 0 && !json {
        eprintln!("no time-outs");
    }
    Ok(ExitCode::SUCCESS)
}

/// `bans import`: the file parsed as a feed is (bad lines named, the rest
/// imported), then one line of counts.
async fn import(
    backend: &mut Backend,
    file: &Path,
    cause: Cause,
    duration: Option<Duration>,
    force: bool,
    max_entries: usize,
) -> anyhow::Result<ExitCode> {
    let text = if file == Path::new("-") {
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), 64 << 20),
            &mut text,
        )
        .context("cannot read standard input")?;
        text
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let parsed = feeds::parse(&text, max_entries).map_err(|too_many| {
        anyhow::anyhow!(
            "{}: {too_many} (--max-entries): nothing imported",
            file.display()
        )
    })?;
    for bad in &parsed.bad {
        eprintln!("{}:{}: {} (skipped)", file.display(), bad.line, bad.reason);
    }
    if parsed.bad_count > parsed.bad.len() {
        eprintln!("{}: {} bad lines in all", file.display(), parsed.bad_count);
    }
    if parsed.entries.is_empty() {
        bail!("{}: no addresses or prefixes to import", file.display());
    }
    let (added, refused, first) = backend
        .import(&parsed.entries, duration, cause, force)
        .await?;
    println!(
        "imported {added} time-outs (cause {cause}){}",
        match first {
            Some(first) => format!("; {refused} refused, the first: {first}"),
            None => String::new(),
        }
    );
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An address alone (`203.0.113.7`, `2001:db8::1`) or a prefix.
fn parse_target(text: &str) -> anyhow::Result<Cidr> {
    if let Ok(ip) = text.trim().parse::<IpAddr>() {
        return Ok(Cidr::host(ip));
    }
    text.trim()
        .parse::<Cidr>()
        .map_err(|e| anyhow::anyhow!("{text:?} is neither an address nor a CIDR prefix: {e}"))
}

impl Backend {
    async fn show(&mut self, target: Cidr) -> anyhow::Result<protocol::message::BanReport> {
        match self {
            Backend::Online(client) => match client
                .call(&Request::Admin(AdminRequest::ShowBan { target }))
                .await?
            {
                Response::BanShown(report) => Ok(*report),
                other => Err(server_error(other)),
            },
            Backend::Offline(offline) => Ok(offline.core.show(target, actors::now_ms())?),
        }
    }

    /// Visits every ban (of `cause`, if given) in prefix order, page by
    /// page, until `visit` returns false.
    pub(crate) async fn each_ban(
        &mut self,
        cause: Option<Cause>,
        mut visit: impl FnMut(&BanInfo) -> bool,
    ) -> anyhow::Result<()> {
        let mut after = None;
        loop {
            let (bans, next) = self.page(cause, after).await?;
            if !bans.iter().all(&mut visit) {
                return Ok(());
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    async fn page(
        &mut self,
        cause: Option<Cause>,
        after: Option<Cidr>,
    ) -> anyhow::Result<(Vec<BanInfo>, Option<Cidr>)> {
        match self {
            Backend::Online(client) => {
                let request = Request::Admin(match cause {
                    Some(cause) => AdminRequest::ListBansByCause {
                        cause,
                        after,
                        limit: MAX_PAGE,
                    },
                    None => AdminRequest::ListBans {
                        after,
                        limit: MAX_PAGE,
                    },
                });
                match client.call(&request).await? {
                    Response::Bans { bans, next_after } => Ok((bans, next_after)),
                    other => Err(server_error(other)),
                }
            }
            Backend::Offline(offline) => {
                let limit = usize::from(MAX_PAGE);
                Ok(match cause {
                    Some(cause) => offline.core.list_by_cause(&cause, after.as_ref(), limit)?,
                    None => offline.core.list(after.as_ref(), limit)?,
                })
            }
        }
    }

    /// Admin time-outs of `prefixes`, in requests of at most
    /// [`MAX_IMPORT`] online; (added, refused, the first refusal).
    async fn import(
        &mut self,
        prefixes: &[Cidr],
        duration: Option<Duration>,
        cause: Cause,
        force: bool,
    ) -> anyhow::Result<(usize, usize, Option<String>)> {
        match self {
            Backend::Online(client) => {
                let (mut added, mut refused, mut first) = (0usize, 0usize, None);
                for chunk in prefixes.chunks(MAX_IMPORT) {
                    let request = Request::Admin(AdminRequest::ImportBans {
                        prefixes: chunk.to_vec(),
                        duration_secs: duration.map(|d| d.as_secs()),
                        cause,
                        force,
                    });
                    match client.call(&request).await? {
                        Response::Imported {
                            added: a,
                            refused: r,
                            first_refusal,
                        } => {
                            added += a as usize;
                            refused += r as usize;
                            if first.is_none() && !first_refusal.is_empty() {
                                first = Some(first_refusal);
                            }
                        }
                        other => return Err(server_error(other)),
                    }
                }
                Ok((added, refused, first))
            }
            Backend::Offline(offline) => {
                let imported =
                    offline
                        .core
                        .import(prefixes, duration, cause, force, None, actors::now_ms());
                offline.core.flush()?;
                Ok((imported.added, imported.refused, imported.first_refusal))
            }
        }
    }

    /// `ban.requester` is filled in by the server online (it sees where the
    /// request comes from) and is none offline.
    async fn add(&mut self, ban: AdminBan) -> anyhow::Result<BanInfo> {
        match self {
            Backend::Online(client) => {
                let request = Request::Admin(AdminRequest::AddBan {
                    prefix: ban.prefix,
                    duration_secs: ban.duration.map(|d| d.as_secs()),
                    cause: ban.cause,
                    force: ban.force,
                });
                match client.call(&request).await? {
                    Response::BanAdded(ban) => Ok(ban),
                    other => Err(server_error(other)),
                }
            }
            Backend::Offline(offline) => {
                let ban = offline.core.admin_ban(ban, actors::now_ms())?;
                offline.core.flush()?;
                Ok(ban)
            }
        }
    }

    async fn remove(&mut self, prefix: Cidr) -> anyhow::Result<Option<Cidr>> {
        match self {
            Backend::Online(client) => match client
                .call(&Request::Admin(AdminRequest::RemoveBan { prefix }))
                .await?
            {
                Response::BanRemoved { prefix, existed } => Ok(existed.then_some(prefix)),
                other => Err(server_error(other)),
            },
            Backend::Offline(offline) => {
                let released = offline.core.release(prefix)?;
                offline.core.flush()?;
                Ok(released)
            }
        }
    }
}

fn server_error(response: Response) -> anyhow::Error {
    match response {
        Response::Error {
            code: ErrorCode::Forbidden,
            message,
        } => anyhow::anyhow!("server refused: {message}"),
        Response::Error { message, .. } => anyhow::anyhow!("server: {message}"),
        other => anyhow::anyhow!("unexpected response from server: {other:?}"),
    }
}
