//! `penaltybox db check | salvage`: for a stopped server's database that
//! sled still opens but that is damaged: some records no longer decode, or
//! flushes that had completed are gone (storage's `watermark.rs`). `check`
//! reads every record and says how many decode, and whether flushes were
//! lost; `salvage --to DIR` copies every record that decodes into a fresh
//! database under DIR.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use storage::{CheckReport, Store};

use crate::settings;

#[derive(clap::Args)]
pub struct DbArgs {
    /// The stopped server's data directory [default: ./penaltybox-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The server's config file (for data_dir).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Read every record; exit 1 if any does not decode, or if the database
    /// lost completed flushes to damage.
    Check,
    /// Copy every record that decodes into a fresh data directory.
    Salvage {
        /// The new data directory (must not hold a database yet).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

pub fn run(args: DbArgs) -> anyhow::Result<ExitCode> {
    let settings = settings::load_offline(args.config.as_deref(), args.data_dir.clone())?;
    let dir = settings.database_dir();
    let store = settings.open_stopped_database("pass --data-dir")?;
    match args.command {
        DbCommand::Check => {
            let report = store.salvage(None)?;
            println!("{}", summary(&report));
            let lost = store.lost_writes();
            if let Some(lost) = lost {
                println!("damaged: {lost}");
            }
            Ok(if report.is_clean() && lost.is_none() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "penaltybox: {}: `penaltybox db salvage --to NEW_DIR` copies every readable record into a fresh database",
                    if report.is_clean() {
                        "the database lost completed flushes"
                    } else {
                        "some records do not decode"
                    }
                );
                ExitCode::FAILURE
            })
        }
        DbCommand::Salvage { to } => {
            let target = to.join("db");
            if target.exists() {
                bail!("{}: a database is there already", target.display());
            }
            std::fs::create_dir_all(&to)
                .with_context(|| format!("cannot create {}", to.display()))?;
            let fresh = Store::open(&target, &settings.store_options())?;
            let report = store.salvage(Some(&fresh))?;
            println!("{}", summary(&report));
            println!(
                "salvaged into {}; to use it, with the server stopped: mv {} {}.old && mv {} {}",
                target.display(),
                dir.display(),
                dir.display(),
                target.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn summary(report: &CheckReport) -> String {
    format!(
        "time-outs: {} readable, {} not; history: {} readable, {} not; volumes: {} readable, {} not; fleet outbox: {} readable, {} not",
        report.bans.good,
        report.bans.bad,
        report.history.good,
        report.history.bad,
        report.volumes.good,
        report.volumes.bad,
        report.outbox.good,
        report.outbox.bad
    )
}
