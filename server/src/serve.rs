//! `penaltybox serve`: settings, keys and database, then the actors, until
//! SIGINT or SIGTERM; then stop accepting, flush, exit 0. SIGHUP reloads
//! the settings (`reload.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use actors::ServerConfig;
use anyhow::{Context, bail};
use protocol::{AccessPolicy, PrivateKey};
use storage::Store;

use crate::settings::{self, FlagOverrides, Settings, read_key_list};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see `penaltybox config print` for every key).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on; repeat for several. Replaces the configured
    /// list [default: 0.0.0.0:5000 and [::]:5000].
    #[arg(long, short)]
    listen: Vec<SocketAddr>,
    /// Directory for the database and the server key pair
    /// [default: ./penaltybox-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kernel tier: the pinned ban table of `penaltybox xdp attach` (its pin
    /// directory, e.g. /sys/fs/bpf/penaltybox, or the banned_addrs map in it).
    /// Bans are added to it and removed as they begin and end.
    #[arg(short = 'B', long = "bpf-table", value_name = "PINNED_MAP_PATH")]
    bpf_table: Option<PathBuf>,
    /// Kernel tier in one step: load and attach the XDP program to IFACE at
    /// start (pinned under -B, default /sys/fs/bpf/penaltybox; a program an
    /// earlier start left there is replaced), and attach it again, with the
    /// live time-outs, if it goes away while the server runs.
    #[arg(long, value_name = "IFACE")]
    xdp_iface: Option<String>,
    /// Once the server accepts connections, write a JSON object here (pid,
    /// bound addresses, the server's public key and fingerprint): a
    /// readiness signal for supervisors and scripts. Replaced atomically.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

impl ServeArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        (self.settings_loader())()
    }

    fn flags(&self) -> FlagOverrides {
        FlagOverrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            kernel_table: self.bpf_table.clone(),
            xdp_iface: self.xdp_iface.clone(),
        }
    }

    /// `config check`: everything `serve` would check before it starts,
    /// every problem on its own line (none: "ok"). Creates nothing.
    pub fn check(&self) -> anyhow::Result<ExitCode> {
        let settings = settings::load_unchecked(self.config.as_deref(), &self.flags())?;
        let mut problems = settings.problems();
        let server_key = settings.server_key_path();
        if server_key.exists() {
            if let Err(error) = PrivateKey::read(&server_key) {
                problems.push(format!("keys.server_key: {error:#}"));
            }
        } else if settings.keys.server_key.is_some() {
            problems.push(format!(
                "keys.server_key: {} does not exist",
                server_key.display()
            ));
        }
        for (name, path) in [
            ("keys.authorized_keys", &settings.keys.authorized_keys),
            ("keys.admin_keys", &settings.keys.admin_keys),
        ] {
            if let Err(error) = read_key_list(name, path.as_deref()) {
                problems.push(format!("{error:#}"));
            }
        }
        if let Some(table) = &settings.kernel.bpf_table
            && !table.exists()
        {
            problems.push(format!(
                "kernel.bpf_table: {} does not exist (attach first: penaltybox xdp attach IFACE)",
                table.display()
            ));
        }
        if problems.is_empty() {
            println!(
                "ok: {}",
                match &self.config {
                    Some(file) => file.display().to_string(),
                    None => "defaults, environment and flags".into(),
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        for problem in &problems {
            eprintln!("penaltybox: config: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }

    /// Loads the settings as this command line does, again and again (a
    /// reload reads the same file, environment and flags).
    pub fn settings_loader(&self) -> crate::reload::Loader {
        let file = self.config.clone();
        let flags = self.flags();
        Box::new(move || settings::load(file.as_deref(), &flags))
    }
}

/// `serve`, step by step: resolve the settings into a plan (nothing on
/// disk yet), open the store, open the kernel tier, the fleet and the
/// metrics endpoint, then serve until a signal stops it.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::resolve(&args)?;
    let store = Store::open(
        &plan.settings.database_dir(),
        &plan.settings.store_options(),
    )?;
    let tiers = Tiers::open(&plan.settings)?;
    // Once nothing before the start can fail any more.
    log_summary(&args, &plan.settings, &plan.access);
    // The actors' clones of the store are never dropped (their threads are
    // not joined), so what a drop would clean up is cleaned up here, on
    // every way out.
    let store_at_exit = store.clone();
    let served = actix_rt::System::new().block_on(serve(args, plan, store, tiers));
    store_at_exit.remove_copy();
    served
}

/// What `serve` decided before the start: the settings, who may connect,
/// the server key (generated on first start), the worker count.
struct Plan {
    settings: Settings,
    access: AccessPolicy,
    server_key: PrivateKey,
    workers: usize,
}

impl Plan {
    /// Everything that can fail without touching the disk fails first: a
    /// bad key list or a busy port (a listen address, the metrics
    /// endpoint's) must not leave a new key pair behind.
    fn resolve(args: &ServeArgs) -> anyhow::Result<Plan> {
        let settings = args.settings()?;
        if let Some(spec) = &settings.log_level {
            crate::logging::set_filter(Some(spec))
                .map_err(|e| anyhow::anyhow!("log_level: {e}"))?;
        }
        let access = settings.access_policy()?;
        probe_listen(&settings.listen)?;
        if let Some(metrics) = settings.metrics_listen()? {
            actors::bind(metrics).with_context(|| {
                format!(
                    "metrics.listen: cannot listen on {metrics} (set metrics.listen to a free address, or \"\" to turn /metrics off)"
                )
            })?;
        }
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("data_dir: cannot create {}", settings.data_dir.display()))?;
        let server_key = server_key(&settings)?;
        let workers = match settings.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(Plan {
            settings,
            access,
            server_key,
            workers,
        })
    }

    /// The actors' configuration, with the kernel table and the fleet's
    /// outlet when there are.
    fn server_config(&self, tiers: &mut Tiers, store: &Store) -> anyhow::Result<ServerConfig> {
        let settings = &self.settings;
        Ok(ServerConfig {
            listen: settings.listen.clone(),
            server_key: self.server_key.clone(),
            access: self.access.clone(),
            policy: settings.policy(),
            allow: settings.allow_list()?,
            proxy_trusted: settings.proxy_trusted()?,
            limits: settings.limits(),
            deadlines: settings.deadlines(),
            service: settings.service(),
            workers: self.workers,
            kernel: tiers.kernel.as_mut().and_then(|k| k.table.take()),
            fleet: tiers.fleet.as_ref().map(|fleet| fleet.outlet(store)),
        })
    }
}

/// What serves beside the actors: the kernel tier, the fleet link and the
/// metrics endpoint.
struct Tiers {
    kernel: Option<KernelTier>,
    fleet: Option<crate::fleet_wiring::Fleet>,
    metrics: Option<crate::metrics::MetricsServer>,
}

/// The kernel tier once attached: its table goes to the ban core, the rest
/// stays for the detectors and the watchdog.
struct KernelTier {
    table: Option<Box<dyn actors::KernelTable>>,
    events: Option<xdp::EventReader>,
    pins: PathBuf,
}

impl Tiers {
    fn open(settings: &Settings) -> anyhow::Result<Tiers> {
        let kernel = crate::kernel_wiring::open(settings).map(|attached| KernelTier {
            table: Some(attached.table),
            events: attached.events,
            pins: attached.table_path,
        });
        let fleet = settings
            .fleet_to_serve()?
            .map(crate::fleet_wiring::Fleet::new);
        // Before the restore, so that /readyz can say "not yet" meanwhile.
        let metrics = settings
            .metrics_listen()?
            .map(crate::metrics::MetricsServer::start)
            .transpose()?;
        Ok(Tiers {
            kernel,
            fleet,
            metrics,
        })
    }
}

/// Starts the actors and what serves beside them, waits for a signal, and
/// shuts down. A failure after the start (the fleet link, the ready file)
/// stops the actors inside the runtime: they cannot be dropped outside it.
async fn serve(
    args: ServeArgs,
    plan: Plan,
    store: Store,
    mut tiers: Tiers,
) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new()?;
    let running = actors::start(plan.server_config(&mut tiers, &store)?, store.clone())?;
    let kernel_pins = tiers.kernel.as_ref().map(|k| k.pins.clone());
    let reloader = std::sync::Arc::new(crate::reload::Reload::new(
        args.settings_loader(),
        plan.settings.clone(),
        running.handle(),
        kernel_pins.clone(),
        running.local_addrs.clone(),
    ));
    running.handle().set_reloader(reloader.clone());
    reloader.set_feeds(std::sync::Arc::new(
        crate::feeds_wiring::FeedRunners::start(running.handle(), &plan.settings.feeds),
    ));
    if let Some(handle) = tiers.fleet.as_ref().and_then(|f| f.trust_handle()) {
        reloader.set_fleet_trust(handle);
    }
    if let Some(fleet) = &tiers.fleet
        && let Err(error) = fleet.start(&store, running.handle())
    {
        let _ = running.stats_then_shutdown().await;
        return Err(anyhow::Error::new(error).context("cannot start the fleet link"));
    }
    if let Some(kernel) = tiers.kernel.as_mut() {
        let server = running.handle();
        let bound = &running.local_addrs;
        let settings = &plan.settings;
        crate::kernel_wiring::serve_detectors(
            settings,
            &kernel.pins,
            kernel.events.take(),
            &server,
            bound,
        );
        crate::kernel_wiring::watchdog(
            settings.clone(),
            kernel.pins.clone(),
            server,
            bound.clone(),
        );
    }
    log_started(&plan, &running);
    running
        .handle()
        .set_tier_status(std::sync::Arc::new(crate::tier_status::Tiers {
            kernel: kernel_pins.clone(),
            fleet: tiers.fleet.as_ref().map(|f| f.stats()),
        }));
    if let Some(metrics) = &tiers.metrics {
        let fleet = tiers
            .fleet
            .as_ref()
            .map(|f| (f.stats(), store.outbox().clone()));
        metrics.ready(running.handle(), kernel_pins, fleet);
        log::info!(
            "metrics on http://{0}/metrics (health: /healthz, /readyz)",
            metrics.local_addr()
        );
    } else {
        log::info!("metrics off (metrics.listen = \"\")");
    }
    if let Some(path) = &args.ready_file {
        let metrics = tiers
            .metrics
            .as_ref()
            .map(crate::metrics::MetricsServer::local_addr);
        let ready = write_ready_file(
            path,
            &running.local_addrs,
            &plan.server_key.public_key(),
            metrics,
        );
        if let Err(error) = ready {
            let _ = running.stats_then_shutdown().await;
            return Err(error);
        }
    }
    let signal = loop {
        match signals.next().await {
            Received::Stop(signal) => break signal,
            Received::Reload => reloader.on_signal(),
        }
    };
    log::info!("{signal}: stopping");
    shut_down(running).await
}

/// Where the server listens, what it restored, and how to connect.
fn log_started(plan: &Plan, running: &actors::RunningServer) {
    let addrs: Vec<String> = running
        .local_addrs
        .iter()
        .map(ToString::to_string)
        .collect();
    log::info!(
        "penaltybox {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", ")
    );
    log::info!(
        "data dir {}: {} bans restored, {} expired ones discarded{}, in {:.1} ms",
        plan.settings.data_dir.display(),
        running.boot.restored,
        running.boot.discarded,
        match running.boot.feed_entries {
            0 => String::new(),
            n => format!(", {n} feed entries restored"),
        },
        running.boot.elapsed.as_secs_f64() * 1e3
    );
    if let Some(kernel) = running.boot.kernel {
        log::info!(
            "kernel table: {} bans replayed, {} stale entries removed, {} failed, in {:.1} ms",
            kernel.replayed,
            kernel.removed_stale,
            kernel.failed,
            kernel.elapsed.as_secs_f64() * 1e3
        );
    }
    let port = running.local_addrs.first().map_or(5000, SocketAddr::port);
    let public = plan.server_key.public_key();
    log::info!(
        "server key fingerprint {}; connect with:",
        public.fingerprint()
    );
    log::info!("  penaltybox client --server HOST:{port} --server-key {public} ping");
}

/// Stops accepting, flushes, and says whether every write was persisted.
async fn shut_down(running: actors::RunningServer) -> anyhow::Result<ExitCode> {
    let (stats, flushed) = running.stats_then_shutdown().await;
    log::info!(
        "stopped after {} connections ({} refused at accept), {} bans",
        stats.connections_accepted,
        stats.connections_refused,
        stats.bans_total,
    );
    match flushed {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            log::error!(
                "stopped, but {} writes (time-outs, releases, their history) were not persisted: {error}",
                stats.storage_unflushed
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What this server runs with, before it starts: where the settings came
/// from, who may connect, who is never timed out, and the kernel tier.
fn log_summary(args: &ServeArgs, settings: &Settings, access: &AccessPolicy) {
    match &args.config {
        Some(file) => log::info!(
            "settings: {} (with PENALTYBOX_* environment and flags)",
            file.display()
        ),
        None => log::info!("settings: defaults, PENALTYBOX_* environment and flags (no --config)"),
    }
    let clients = match &access.authorized {
        Some(keys) => format!("{} authorized client keys", keys.len()),
        None => "any client (anonymous included; keys.authorized_keys unset)".to_owned(),
    };
    log::info!("keys: {clients}, {} admin keys", access.admins.len());
    let allow = &settings.bans.allow;
    if allow.is_empty() {
        log::info!("allow-list: empty (any source can be timed out)");
    } else {
        log::info!("allow-list (never timed out): {}", allow.join(", "));
    }
    if settings.fleet.servers.is_empty() {
        log::info!("fleet off: no fleet.servers (time-outs stay on this node)");
    }
    for feed in &settings.feeds {
        log::info!(
            "feed {}: {} every {}, at most {} entries (cause feed:{})",
            feed.name,
            feed.source(),
            humantime::format_duration(feed.refresh.0),
            feed.max_entries,
            feed.name
        );
    }
    if !settings.proxy.trusted.is_empty() {
        log::info!(
            "PROXY protocol expected from: {} (their own address is never timed out)",
            settings.proxy.trusted.join(", ")
        );
    }
    if settings.kernel.bpf_table.is_none() && settings.kernel.xdp_iface.is_none() {
        log::info!(
            "kernel tier off: no -B/--bpf-table and no --xdp-iface (userspace time-outs only)"
        );
    }
}

/// The readiness signal: written to a temporary name, then renamed, so a
/// reader never sees half of it.
fn write_ready_file(
    path: &Path,
    addrs: &[SocketAddr],
    public: &protocol::PublicKey,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let ready = serde_json::json!({
        "pid": std::process::id(),
        "listen": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "metrics": metrics.map(|a| a.to_string()),
        "public_key": public.to_string(),
        "fingerprint": public.fingerprint(),
    });
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{ready}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("--ready-file: cannot write {}", path.display()))
}

/// Reads the configured server key, or generates the default one on first
/// start (with `server.pub` beside it for clients).
fn server_key(settings: &Settings) -> anyhow::Result<PrivateKey> {
    let path = settings.server_key_path();
    if path.exists() {
        return PrivateKey::read(&path).context("keys.server_key");
    }
    if settings.keys.server_key.is_some() {
        bail!("keys.server_key: {} does not exist", path.display());
    }
    let key = PrivateKey::generate();
    key.write_new(&path)?;
    let public_path = settings.data_dir.join("server.pub");
    if public_path.exists() {
        // A stale one from an earlier key: replaced, it names no secret.
        std::fs::remove_file(&public_path)
            .with_context(|| format!("cannot replace {}", public_path.display()))?;
    }
    protocol::keys::write_public_key_file(&key.public_key(), &public_path)?;
    log::info!(
        "generated a server key pair: {} (0600) and {}",
        path.display(),
        public_path.display()
    );
    Ok(key)
}

/// Binds each listen address for a moment, as the acceptors will (the
/// same helper), so a port in use is one line before anything is created.
/// The acceptors bind again for real; a port taken in between still fails
/// there, clearly.
fn probe_listen(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for addr in addrs {
        actors::bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    Ok(())
}

/// The signals `serve` answers: SIGTERM and SIGINT stop it, SIGHUP
/// reloads. Listened for from the start, so an early SIGHUP does not kill
/// the server.
struct Signals {
    terminate: actix_rt::signal::unix::Signal,
    interrupt: actix_rt::signal::unix::Signal,
    hangup: actix_rt::signal::unix::Signal,
}

enum Received {
    Stop(&'static str),
    Reload,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use actix_rt::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.terminate.recv() => Received::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Received::Stop("SIGINT"),
            _ = self.hangup.recv() => Received::Reload,
        }
    }
}
