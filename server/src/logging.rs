//! Log output: env_logger, as text (the default) or as JSON lines with
//! stable keys (`ts`, `level`, `target`, `message`, then the record's own
//! key-values: a time-out's `event`, `prefix`, `source`, `cause`...).
//! Without RUST_LOG, penaltybox's own crates log at the command's level and
//! everything else (sled's internals) at `warn`.

use std::io::Write;

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
    let default_filter = std::iter::once("warn".to_owned())
        .chain(OWN_TARGETS.iter().map(|t| format!("{t}={level}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
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
    builder.init();
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
