//! `penaltybox`: the command line. Parses arguments, sets up logging and hands
//! each subcommand to its module; the logic lives in the library crates.
//!
//! Every failure ends in one line on stderr (`penaltybox: error: ...`) and a
//! non-zero exit: 1 for a failed operation, 2 for bad usage (clap's).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use penaltybox::{
    bans_cmd, capabilities, client_cmd, config_print, db_cmd, keygen, logging, replay_cmd, serve,
    top_cmd, xdp_cmd,
};

#[derive(Parser)]
#[command(
    name = "penaltybox",
    version,
    about = "A TCP server that speaks only its own encrypted protocol and times out every source that sends anything else.",
    long_about = "A TCP server that speaks only its own compressed and encrypted protocol. \
A source whose first bytes are not that protocol (TLS hellos, HTTP, UPnP, SSH banners, \
random scans) goes into a time-out table; while it is timed out, its connections are \
closed as soon as they are accepted.\n\n\
Log verbosity: RUST_LOG=debug|info|warn (default info for serve, warn otherwise; \
other crates such as sled at warn unless RUST_LOG names them)."
)]
struct Cli {
    /// Log lines as text, or as JSON (one object per line: ts, level,
    /// target, message, and a time-out's fields as their own keys).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PENALTYBOX_LOG_FORMAT"
    )]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (defaults: 0.0.0.0:5000 and [::]:5000, data in ./penaltybox-data,
    /// server key generated on first start).
    Serve(serve::ServeArgs),
    /// List, add or remove time-outs, online (admin key) or offline (stopped server).
    Bans(bans_cmd::BansArgs),
    /// Make a running server re-read its settings, as SIGHUP does (admin key).
    Reload(bans_cmd::ReloadArgs),
    /// A live view of a running server: rates, time-outs by cause, the newest
    /// time-outs (q quits, p pauses, / filters, Enter shows, r releases; admin key).
    Top(top_cmd::TopArgs),
    /// The kernel tier: attach, inspect or detach the XDP program (Linux, CAP_BPF + CAP_NET_ADMIN).
    Xdp(xdp_cmd::XdpArgs),
    /// Replay the client side of a capture's TCP streams against a live server.
    Replay(replay_cmd::ReplayArgs),
    /// Check a stopped server's database record by record, or salvage what is readable.
    Db(db_cmd::DbArgs),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a static key pair: writes the private key (mode 0600) and prints the public key.
    Keygen(keygen::KeygenArgs),
    /// Inspect a key file.
    #[command(subcommand)]
    Key(keygen::KeyCommand),
    /// Talk to a penaltybox server: ping it, or use its tape-volume inventory.
    Client(client_cmd::ClientArgs),
    /// Print a shell completion script: `source <(penaltybox completions bash)`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `penaltybox man > penaltybox.1`.
    Man,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every setting `serve` would use (defaults < file < environment < flags),
    /// as commented TOML: one line of help and the environment variable each,
    /// unset optional ones commented out.
    Print(serve::ServeArgs),
    /// Check everything `serve` would check (settings, key files, the kernel
    /// table path) without starting or creating anything; one line per
    /// problem, exit 1 if there is any.
    Check(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    logging::init(default_level, cli.log_format);
    exit_on_panic();
    capabilities::raise_permitted_capabilities();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bans(args) => bans_cmd::run(args),
        Command::Reload(args) => bans_cmd::run_reload(args),
        Command::Top(args) => top_cmd::run(args),
        Command::Db(args) => db_cmd::run(args),
        Command::Xdp(args) => xdp_cmd::run(args),
        Command::Replay(args) => replay_cmd::run(args),
        Command::Config(ConfigCommand::Print(args)) => args
            .settings()
            .and_then(|s| config_print::render(&s))
            .map(|toml| {
                print!("{toml}");
                ExitCode::SUCCESS
            }),
        Command::Config(ConfigCommand::Check(args)) => args.check(),
        Command::Keygen(args) => keygen::run(args),
        Command::Key(command) => keygen::run_key(command),
        Command::Client(args) => client_cmd::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "penaltybox",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                // `penaltybox man | head` is not an error.
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("penaltybox: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// A panic anywhere ends the process with status 70 (EX_SOFTWARE) after one
/// log line. Without this, a panic inside an actor kills only that actor's
/// task: a dead ban registry would leave a server that accepts every
/// connection and never times anyone out again. Exiting lets the supervisor
/// (systemd, Docker) restart it with the table restored from disk.
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        log::error!("internal error (panic in thread {name}): {info}; exiting");
        eprintln!("penaltybox: internal error (panic in thread {name}): {info}");
        std::process::exit(70);
    }));
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (our errors often quote their source).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = flatten(&error.to_string());
    for cause in error.chain().skip(1) {
        let text = flatten(&cause.to_string());
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Multi-line messages (a TOML parser's source excerpt with a caret) as
/// one line: the prose lines, without the drawing.
fn flatten(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l.contains(" | ")
                && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(": ")
}
