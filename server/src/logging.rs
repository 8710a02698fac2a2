//! Log output: env_logger, as text (the default) or as JSON lines with
//! stable keys (`ts`, `level`, `target`, `message`, then the record's own
//! key-values: a time-out's `event`, `prefix`, `source`, `cause`...).
//! Without RUST_LOG, penaltybox's own crates log at the command's level,
//! sled not at all (every error it has reaches the storage crate as a
//! value, which says it in its own line, with what it did about it: sled's
//! lines would say the same in its internal words), and everything else at
//! `warn`.
//!
//! The filter can be replaced while running (the `log_level` setting, on
//! start and on reload): env_logger fixes its own filter when it is built,
//! so it is built to pass everything, and a filter of ours, behind a lock,
//! decides first.

use std::io::Write;
use std::sync::{OnceLock, RwLock};

use env_filter::Filter;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// penaltybox's crates, by their log targets.
const OWN_TARGETS: [&str; 7] = [
    "penaltybox",
    "actors",
    "storage",
    "protocol",
    "xdp",
    "model",
    "replay",
];

pub fn init(level: &str, format: Format) {
    let default_filter = ["warn", "sled=off"]
        .into_iter()
        .map(str::to_owned)
        .chain(OWN_TARGETS.iter().map(|t| format!("{t}={level}")))
        .collect::<Vec<_>>()
        .join(",");
    let start = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty())
        .unwrap_or(default_filter);
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Trace);
    if let Format::Json = format {
        builder.format(|out, record| {
            let mut line = serde_json::Map::new();
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            line.insert("ts".into(), now.to_string().into());
            line.insert(
                "level".into(),
                record.level().as_str().to_lowercase().into(),
            );
            line.insert("target".into(), record.target().into());
            line.insert("message".into(), record.args().to_string().into());
            let mut fields = Fields(&mut line);
            let _ = record.key_values().visit(&mut fields);
            writeln!(out, "{}", serde_json::Value::Object(line))
        });
    }
    let filter = env_filter::Builder::new().parse(&start).build();
    let max = filter.filter();
    let logger = LOGGER.get_or_init(|| Reloadable {
        inner: builder.build(),
        filter: RwLock::new(filter),
        start,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
    }
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

struct Reloadable {
    /// Formats and writes; passes everything.
    inner: env_logger::Logger,
    filter: RwLock<Filter>,
    /// RUST_LOG or the default, for when `log_level` is unset again.
    start: String,
}

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self
            .filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(record)
        {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Why `spec` is no log filter, if it is not (`log_level`).
pub fn check_filter(spec: &str) -> Result<(), String> {
    env_filter::Builder::new()
        .try_parse(spec)
        .map(drop)
        .map_err(|error| {
            format!(
                "{spec:?} is no log filter ({error}); write e.g. \"info\" or \"info,actors=debug\""
            )
        })
}

/// Filters from now on with `spec` (checked), or, with `None`, with what
/// the process started with. Says what it filters with.
pub fn set_filter(spec: Option<&str>) -> Result<String, String> {
    let Some(logger) = LOGGER.get() else {
        return Err("logging is not set up".into());
    };
    let spec = spec.unwrap_or(&logger.start);
    let mut builder = env_filter::Builder::new();
    builder
        .try_parse(spec)
        .map_err(|error| format!("{spec:?}: {error}"))?;
    let filter = builder.build();
    log::set_max_level(filter.filter());
    *logger.filter.write().unwrap_or_else(|p| p.into_inner()) = filter;
    Ok(spec.to_owned())
}

/// Copies a record's key-values into the JSON line (numbers and booleans
/// as such, everything else as text).
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}
