//! Settings: embedded defaults < TOML file (`--config`) < `PENALTYBOX_*`
//! environment < command-line flags, merged with the `config` crate and
//! validated into the types the actors take. Every error names the key or
//! file it is about.
//!
//! Environment names: `PENALTYBOX_` + the key path with `__` between levels,
//! e.g. `PENALTYBOX_DATA_DIR`, `PENALTYBOX_BANS__NON_PROTOCOL=30m`;
//! lists are comma-separated (`PENALTYBOX_LISTEN=127.0.0.1:5000,[::1]:5000`).
//!
//! - this file: the keys, their defaults, and reading them;
//! - `values`: durations, port lists and modes ([`Choice`]);
//! - `check`: every problem, one line each ([`Settings::problems`]);
//! - `resolve`: what the other crates take (policy, allow-list, access
//!   policy, detectors, fleet, limits).

mod check;
mod resolve;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actors::{BanPolicy, LimitConfig};
use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

pub use resolve::{read_key_list, service_ports};
pub use values::{BanMode, Choice, DropScope, Dur, Named, OnDamage, XdpMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Database, server key pair.
    pub data_dir: PathBuf,
    /// Threads running sessions; 0 = one per CPU.
    pub workers: usize,
    /// The log filter, as RUST_LOG's (`info`, `info,actors=debug`); unset:
    /// RUST_LOG, else `info` for penaltybox. Applied by a reload.
    pub log_level: Option<String>,
    pub keys: KeySettings,
    /// Connection deadlines (the section keeps its users' name).
    pub timeouts: DeadlineSettings,
    pub bans: BanSettings,
    pub limits: LimitSettings,
    pub storage: StorageSettings,
    pub service: ServiceSettings,
    pub kernel: KernelSettings,
    pub metrics: MetricsSettings,
    pub fleet: FleetSettings,
    pub proxy: ProxySettings,
    /// Blocklist feeds (`[[feeds]]`), each read by this node on its own.
    pub feeds: Vec<FeedSettings>,
}

/// A blocklist feed: a file or URL of CIDRs, one a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Its time-outs' cause is `feed:NAME`.
    pub name: String,
    /// A file (or `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// An `https://` (or `http://`) URL (or `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How often it is read again.
    #[serde(default = "FeedSettings::default_refresh")]
    pub refresh: Dur,
    /// A longer list is refused whole.
    #[serde(default = "FeedSettings::default_max_entries")]
    pub max_entries: usize,
    /// A fetch's time limit.
    #[serde(default = "FeedSettings::default_timeout")]
    pub timeout: Dur,
}

impl FeedSettings {
    fn default_refresh() -> Dur {
        Dur(Duration::from_secs(3600))
    }

    fn default_max_entries() -> usize {
        1_000_000
    }

    fn default_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }

    /// Where it comes from (`path` wins if both are set: the check refuses that).
    pub fn source(&self) -> feeds::Source {
        match (&self.path, &self.url) {
            (Some(path), _) => feeds::Source::Path(path.clone()),
            (None, Some(url)) => feeds::Source::Url(url.clone()),
            (None, None) => feeds::Source::Path(PathBuf::new()),
        }
    }

    /// What a fetch of it may cost: the time limit, and room for
    /// `max_entries` lines of a generous 64 bytes (comments and all).
    pub fn limits(&self) -> feeds::Limits {
        feeds::Limits {
            max_bytes: (self.max_entries as u64)
                .saturating_mul(64)
                .saturating_add(1 << 20),
            timeout: self.timeout.0,
        }
    }
}

/// Time-outs shared with other servers through a NATS JetStream bucket.
/// Off while `servers` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSettings {
    /// NATS URLs, e.g. ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"].
    pub servers: Vec<String>,
    /// The key-value bucket (created with per-key TTLs if missing).
    pub bucket: String,
    /// This node's name in the fleet [default: the host name].
    pub node_id: Option<String>,
    /// Replicas of the bucket, when this node creates it.
    pub replicas: usize,
    /// A NATS `.creds` file; or `user` and `password`; or `token`.
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// TLS: the CA to trust, and a client certificate and key.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// This node's Ed25519 key, which signs its records [default:
    /// `<data_dir>/node.key`, generated on first start].
    pub node_key: Option<PathBuf>,
    /// `KEY node-name` lines: the nodes whose records are applied
    /// [default: `<data_dir>/trusted_nodes`; re-read on reload].
    pub trusted_nodes: Option<PathBuf>,
    /// Apply only signed records [true]; false while a fleet is upgraded
    /// from a release that did not sign.
    pub require_signatures: bool,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            servers: Vec::new(),
            bucket: "penaltybox_bans".into(),
            node_id: None,
            replicas: 1,
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert: None,
            tls_key: None,
            node_key: None,
            trusted_nodes: None,
            require_signatures: true,
        }
    }
}

/// Load balancers in front of the server that send the PROXY protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// Proxies whose connections must begin with a PROXY header (v1 or
    /// v2); the header's source is the client for everything.
    pub trusted: Vec<String>,
}

/// The Prometheus endpoint (with /healthz and /readyz).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of /metrics, /healthz and /readyz; "" turns them off.
    pub listen: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// What clients may do with the inventory (see actors' `ServiceConfig`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Anonymous (keyless) sessions may write the inventory.
    pub anonymous_writes: bool,
    pub max_volumes: usize,
    /// Inventory writes pause below this much free space on the data disk.
    pub min_free_mb: u64,
    /// Per session: requests a second, sustained and in a burst.
    pub requests_per_second: u32,
    pub request_burst: u32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        let service = actors::ServiceConfig::default();
        ServiceSettings {
            anonymous_writes: service.anonymous_writes,
            max_volumes: service.max_volumes,
            min_free_mb: service.min_free_bytes >> 20,
            requests_per_second: service.requests_per_second,
            request_burst: service.request_burst,
        }
    }
}

/// Room for a million-entry blocklist feed beside the table's own
/// prefixes.
pub const DEFAULT_MAX_PREFIXES: u32 = 1 << 20;
/// At most: about 100 bytes of kernel memory an entry in use.
pub const MAX_MAX_PREFIXES: u32 = 1 << 24;

/// The kernel tier (XDP). Off unless `table` or `xdp_iface` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelSettings {
    /// The pinned ban table (`-B`/`--bpf-table`): the pin directory of
    /// `xdp attach`, or its `banned_addrs` map. Flag, key and variable
    /// share the name (`PENALTYBOX_KERNEL__BPF_TABLE`); `table` is its old
    /// name, still read.
    #[serde(alias = "table")]
    pub bpf_table: Option<PathBuf>,
    /// Load and attach the program to this interface at start (if it is not
    /// pinned there already).
    pub xdp_iface: Option<String>,
    pub xdp_mode: Choice<XdpMode>,
    /// Entries the kernel's prefix map may hold when `xdp_iface` attaches
    /// the program: time-outs wider than one address (IPv6 /64s, widened
    /// prefixes, admins' CIDRs) and every feed's entries. The kernel
    /// allocates an entry when it is written, so the bound costs nothing
    /// until used. Read at attach (a restart, or `xdp attach`).
    pub max_prefixes: u32,
    /// The TCP detectors in the XDP program (port scan, SYN flood, bad
    /// flags); off: the kernel tier only drops what userspace timed out.
    pub detect: bool,
    /// Distinct destination ports probed within `scan_window` that make a
    /// port scan (2..=16).
    pub scan_ports: u32,
    pub scan_window: Dur,
    /// Ports nothing legitimate connects to here: one probe is a scan.
    #[serde(deserialize_with = "values::one_or_many")]
    pub trap_ports: Vec<u16>,
    /// SYNs per second per source to the listen ports, sustained; SYNs over
    /// the limit (after a burst of `syn_burst`) are dropped in XDP.
    pub syn_rate: u32,
    pub syn_burst: u32,
    /// Segments that belong to no connection (the stack resets them) from
    /// one source within `stray_window` that time it out (≥ 2).
    pub stray_segments: u32,
    pub stray_window: Dur,
    /// Packets whose headers the program cannot follow, from one source
    /// within `scan_window`, past which it is timed out.
    pub unparsed_burst: u32,
    pub drop_scope: Choice<DropScope>,
}

impl Default for KernelSettings {
    fn default() -> Self {
        let detection = xdp::Detection::default();
        KernelSettings {
            bpf_table: None,
            xdp_iface: None,
            xdp_mode: Choice::default(),
            max_prefixes: DEFAULT_MAX_PREFIXES,
            detect: detection.enabled,
            scan_ports: detection.scan_ports,
            scan_window: Dur(detection.scan_window),
            trap_ports: detection.trap_ports,
            syn_rate: detection.syn_rate,
            syn_burst: detection.syn_burst,
            stray_segments: detection.stray_segments,
            stray_window: Dur(detection.stray_window),
            unparsed_burst: detection.unparsed_burst,
            drop_scope: Choice::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// Server private key; default `<data_dir>/server.key`, generated on
    /// first start.
    pub server_key: Option<PathBuf>,
    /// When set, only these client keys (and the admin keys) may connect.
    pub authorized_keys: Option<PathBuf>,
    /// Keys allowed to send admin requests.
    pub admin_keys: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineSettings {
    pub handshake: Dur,
    pub idle: Dur,
    /// How long a response may wait for the peer to take it.
    pub write: Dur,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BanSettings {
    pub non_protocol: Dur,
    pub handshake_failure: Dur,
    pub handshake_timeout: Dur,
    pub session_violation: Dur,
    pub admin_default: Dur,
    /// The kernel detectors' causes.
    pub port_scan: Dur,
    pub syn_flood: Dur,
    pub bad_tcp_flags: Dur,
    pub stray_segments: Dur,
    pub unparsed_flood: Dur,
    pub escalation_window: Dur,
    pub max_duration: Dur,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub allow: Vec<String>,
    pub max_entries: usize,
    /// Monitor mode decides, logs and counts every time-out, and enforces
    /// none (a careful roll-out).
    pub mode: Choice<BanMode>,
    /// `[bans.widen]`: time-outs widen to the network a rotating scanner
    /// comes from.
    pub widen: WidenSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WidenSettings {
    pub enabled: bool,
    pub members: usize,
    pub window: Dur,
    #[serde(deserialize_with = "values::prefix_lengths")]
    pub ipv4: Vec<u8>,
    #[serde(deserialize_with = "values::prefix_lengths")]
    pub ipv6: Vec<u8>,
    pub duration: Dur,
}

impl Default for WidenSettings {
    fn default() -> Self {
        let policy = BanPolicy::default();
        WidenSettings {
            enabled: policy.widen.enabled,
            members: policy.widen.members,
            window: Dur(policy.widen.window),
            ipv4: policy.widen.ipv4_steps,
            ipv6: policy.widen.ipv6_steps,
            duration: Dur(policy.durations.widened),
        }
    }
}

impl BanSettings {
    /// The per-cause time-outs, with their keys.
    pub fn cause_durations(&self) -> [(&'static str, Dur); 11] {
        [
            ("bans.non_protocol", self.non_protocol),
            ("bans.handshake_failure", self.handshake_failure),
            ("bans.handshake_timeout", self.handshake_timeout),
            ("bans.session_violation", self.session_violation),
            ("bans.admin_default", self.admin_default),
            ("bans.port_scan", self.port_scan),
            ("bans.syn_flood", self.syn_flood),
            ("bans.bad_tcp_flags", self.bad_tcp_flags),
            ("bans.stray_segments", self.stray_segments),
            ("bans.unparsed_flood", self.unparsed_flood),
            ("bans.widen.duration", self.widen.duration),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_pending_handshakes: usize,
    pub max_pending_per_source: usize,
    pub max_sessions_per_source: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    pub flush_interval: Dur,
    pub cache_mb: u64,
    /// `"repair"` (move aside, else salvage, and serve) or `"refuse"`.
    pub on_damage: Choice<OnDamage>,
}

fn minutes(n: u64) -> Dur {
    Dur(Duration::from_secs(n * 60))
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec![
                "0.0.0.0:5000".parse().unwrap(),
                "[::]:5000".parse().unwrap(),
            ],
            data_dir: PathBuf::from("./penaltybox-data"),
            workers: 0,
            log_level: None,
            keys: KeySettings::default(),
            timeouts: DeadlineSettings::default(),
            bans: BanSettings::default(),
            limits: LimitSettings::default(),
            storage: StorageSettings::default(),
            service: ServiceSettings::default(),
            kernel: KernelSettings::default(),
            metrics: MetricsSettings::default(),
            fleet: FleetSettings::default(),
            proxy: ProxySettings::default(),
            feeds: Vec::new(),
        }
    }
}

impl Default for DeadlineSettings {
    fn default() -> Self {
        DeadlineSettings {
            handshake: Dur(Duration::from_secs(5)),
            idle: minutes(5),
            write: Dur(Duration::from_secs(10)),
        }
    }
}

impl Default for BanSettings {
    fn default() -> Self {
        let policy = BanPolicy::default();
        BanSettings {
            non_protocol: Dur(policy.durations.non_protocol),
            handshake_failure: Dur(policy.durations.handshake_failure),
            handshake_timeout: Dur(policy.durations.handshake_timeout),
            session_violation: Dur(policy.durations.session_violation),
            admin_default: Dur(policy.durations.admin_default),
            port_scan: Dur(policy.durations.port_scan),
            syn_flood: Dur(policy.durations.syn_flood),
            bad_tcp_flags: Dur(policy.durations.bad_tcp_flags),
            stray_segments: Dur(policy.durations.stray_segments),
            unparsed_flood: Dur(policy.durations.unparsed_flood),
            escalation_window: Dur(policy.escalation_window),
            max_duration: Dur(policy.max_duration),
            ipv4_prefix: policy.ipv4_prefix,
            ipv6_prefix: policy.ipv6_prefix,
            allow: Vec::new(),
            max_entries: policy.max_entries,
            mode: Choice::default(),
            widen: WidenSettings::default(),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        let limits = LimitConfig::default();
        LimitSettings {
            max_connections: limits.max_connections,
            max_pending_handshakes: limits.max_pending_handshakes,
            max_pending_per_source: limits.max_pending_per_source,
            max_sessions_per_source: limits.max_sessions_per_source,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            flush_interval: Dur(Duration::from_millis(100)),
            cache_mb: storage::StoreOptions::default().cache_bytes >> 20,
            on_damage: Choice::default(),
        }
    }
}

/// `PENALTYBOX_*` variables the command line reads, not the server
/// settings: the log format, and the client side of `client` and `bans`.
const NOT_SETTINGS: [&str; 4] = [
    "PENALTYBOX_LOG_FORMAT",
    "PENALTYBOX_SERVER",
    "PENALTYBOX_SERVER_KEY",
    "PENALTYBOX_KEY",
];

/// Values from command-line flags, which override everything else.
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    pub listen: Vec<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub kernel_table: Option<PathBuf>,
    pub xdp_iface: Option<String>,
}

/// The settings of an offline command: a config file and a data
/// directory flag at most.
pub fn load_offline(file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Settings> {
    load(
        file,
        &FlagOverrides {
            data_dir,
            ..FlagOverrides::default()
        },
    )
}

/// Loads and validates the effective settings.
pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Settings> {
    let settings = load_unchecked(file, flags)?;
    settings.validate()?;
    Ok(settings)
}

/// Reads and merges the settings, types checked but values not validated
/// (`config check` lists every problem of them).
pub fn load_unchecked(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Settings> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        // Read it ourselves first: "cannot read" is clearer than the config
        // crate's "not found" for a permission problem.
        std::fs::metadata(file).with_context(|| format!("config file {}", file.display()))?;
        builder = builder.add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    // Variables that are not server settings (read by the command line
    // itself) stay out of the settings.
    let environment: config::Map<String, String> = std::env::vars()
        .filter(|(key, _)| !NOT_SETTINGS.contains(&key.as_str()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("PENALTYBOX")
            .source(Some(environment))
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("listen")
            .with_list_parse_key("bans.allow")
            .with_list_parse_key("kernel.trap_ports")
            .with_list_parse_key("bans.widen.ipv4")
            .with_list_parse_key("bans.widen.ipv6")
            .with_list_parse_key("fleet.servers")
            .with_list_parse_key("proxy.trusted")
            .try_parsing(true),
    );
    if !flags.listen.is_empty() {
        let listen: Vec<String> = flags.listen.iter().map(ToString::to_string).collect();
        builder = builder.set_override("listen", listen)?;
    }
    if let Some(dir) = &flags.data_dir {
        builder = builder.set_override("data_dir", dir.to_string_lossy().into_owned())?;
    }
    if let Some(table) = &flags.kernel_table {
        builder = builder.set_override("kernel.bpf_table", table.to_string_lossy().into_owned())?;
    }
    if let Some(iface) = &flags.xdp_iface {
        builder = builder.set_override("kernel.xdp_iface", iface.clone())?;
    }
    let source = match file {
        Some(file) => format!(
            "settings (file {}, PENALTYBOX_* environment, flags)",
            file.display()
        ),
        None => "settings (PENALTYBOX_* environment, flags)".to_owned(),
    };
    let settings: Settings = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| anyhow!("{source}: {e}"))?;
    Ok(settings)
}

impl Settings {
    /// The defaults with every optional key set (to made-up values), so that
    /// each appears when serialized: for tests that hold a list of keys to
    /// the settings.
    #[cfg(test)]
    pub fn with_every_optional_key() -> Settings {
        let mut settings = Settings {
            log_level: Some("info".into()),
            ..Settings::default()
        };
        settings.keys.server_key = Some("/k".into());
        settings.keys.authorized_keys = Some("/a".into());
        settings.keys.admin_keys = Some("/b".into());
        settings.kernel.bpf_table = Some("/t".into());
        settings.feeds = vec![FeedSettings {
            name: "drop".into(),
            path: Some("/d".into()),
            url: None,
            refresh: Dur(Duration::from_secs(3600)),
            max_entries: 10,
            timeout: Dur(Duration::from_secs(30)),
        }];
        settings.kernel.xdp_iface = Some("eth0".into());
        let f = &mut settings.fleet;
        f.node_id = Some("n".into());
        f.creds_file = Some("/c".into());
        f.user = Some("u".into());
        f.password = Some("p".into());
        f.token = Some("t".into());
        f.tls_ca_file = Some("/ca".into());
        f.tls_cert = Some("/cert".into());
        f.tls_key = Some("/key".into());
        f.node_key = Some("/node.key".into());
        f.trusted_nodes = Some("/trusted".into());
        settings
    }

    /// Where sled keeps its files, inside the data directory.
    pub fn database_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.fleet
            .node_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("node.key"))
    }

    pub fn trusted_nodes_path(&self) -> PathBuf {
        self.fleet
            .trusted_nodes
            .clone()
            .unwrap_or_else(|| self.data_dir.join("trusted_nodes"))
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.keys
            .server_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.key"))
    }
}
