//! Settings: embedded defaults < TOML file (`--config`) < `PENALTYBOX_*`
//! environment < command-line flags, merged with the `config` crate and
//! validated into the types the actors take. Every error names the key or
//! file it is about.
//!
//! Environment names: `PENALTYBOX_` + the key path with `__` between levels,
//! e.g. `PENALTYBOX_DATA_DIR`, `PENALTYBOX_BANS__NON_PROTOCOL=30m`;
//! lists are comma-separated (`PENALTYBOX_LISTEN=127.0.0.1:5000,[::1]:5000`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actors::{BanPolicy, Durations, LimitConfig};
use anyhow::{Context, anyhow, bail};
use protocol::Cidr;
use serde::{Deserialize, Serialize};

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
    pub timeouts: TimeoutSettings,
    pub bans: BanSettings,
    pub limits: LimitSettings,
    pub storage: StorageSettings,
    pub service: ServiceSettings,
    pub kernel: KernelSettings,
    pub metrics: MetricsSettings,
    pub fleet: FleetSettings,
    pub proxy: ProxySettings,
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
    /// auto, driver or skb.
    pub xdp_mode: String,
    /// The TCP detectors in the XDP program (port scan, SYN flood, bad
    /// flags); off: the kernel tier only drops what userspace timed out.
    pub detect: bool,
    /// Distinct destination ports probed within `scan_window` that make a
    /// port scan (2..=16).
    pub scan_ports: u32,
    pub scan_window: Dur,
    /// Ports nothing legitimate connects to here: one probe is a scan.
    #[serde(deserialize_with = "one_or_many")]
    pub trap_ports: Vec<u16>,
    /// SYNs per second per source to the listen ports, sustained; SYNs over
    /// the limit (after a burst of `syn_burst`) are dropped in XDP.
    pub syn_rate: u32,
    pub syn_burst: u32,
    /// "service": a timed-out source's packets are dropped only when they
    /// are TCP to the listen ports (its SSH still works); "all": everything.
    pub drop_scope: String,
}

impl Default for KernelSettings {
    fn default() -> Self {
        let detection = xdp::Detection::default();
        KernelSettings {
            bpf_table: None,
            xdp_iface: None,
            xdp_mode: "auto".into(),
            detect: detection.enabled,
            scan_ports: detection.scan_ports,
            scan_window: Dur(detection.scan_window),
            trap_ports: detection.trap_ports,
            syn_rate: detection.syn_rate,
            syn_burst: detection.syn_burst,
            drop_scope: "service".into(),
        }
    }
}

impl KernelSettings {
    pub fn mode(&self) -> xdp::AttachMode {
        crate::kernel_wiring::parse_mode(&self.xdp_mode).expect("validated with the settings")
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
pub struct TimeoutSettings {
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
    pub escalation_window: Dur,
    pub max_duration: Dur,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub allow: Vec<String>,
    pub max_entries: usize,
    /// "enforce", or "monitor": decide, log and count every time-out,
    /// enforce none (a careful roll-out).
    pub mode: String,
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
}

/// A list of ports, or one port alone: what the environment gives for a
/// one-item list (`PENALTYBOX_KERNEL__TRAP_PORTS=23` reads as a number).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    // The environment's list items arrive as text, the file's as numbers.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(i64),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Port),
        Many(Vec<Port>),
    }
    let ports = match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a port or a list of ports, e.g. [23, 3389]")
    })? {
        OneOrMany::One(port) => vec![port],
        OneOrMany::Many(ports) => ports,
    };
    ports
        .into_iter()
        .map(|port| {
            let (text, number) = match port {
                Port::Number(n) => (n.to_string(), Some(n)),
                Port::Text(t) => (t.clone(), t.trim().parse::<i64>().ok()),
            };
            match number.and_then(|n| u16::try_from(n).ok()) {
                Some(port) if port > 0 => Ok(port),
                _ => Err(serde::de::Error::custom(format!(
                    "{text} is not a port (1..=65535)"
                ))),
            }
        })
        .collect()
}

/// A duration written the human way ("100ms", "15m", "24h").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. 100ms, 30s, 15m, 24h"
            ))
        })
    }
}

/// The longest any time-out or window may be: long enough for any real
/// policy, short enough that no expiry arithmetic comes near overflowing.
const MAX_TIME_OUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Session worker threads at most.
const MAX_WORKERS: usize = 256;

/// A duration setting: longer than 0 and at most `max` (named `max_name`).
fn check_duration(key: &str, value: Dur, max: Duration, max_name: &str) -> anyhow::Result<()> {
    if value.0.is_zero() {
        bail!("{key}: must be longer than 0s");
    }
    if value.0 > max {
        bail!(
            "{key}: {} is longer than {max_name} ({})",
            humantime::format_duration(value.0),
            humantime::format_duration(max)
        );
    }
    Ok(())
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
            timeouts: TimeoutSettings::default(),
            bans: BanSettings::default(),
            limits: LimitSettings::default(),
            storage: StorageSettings::default(),
            service: ServiceSettings::default(),
            kernel: KernelSettings::default(),
            metrics: MetricsSettings::default(),
            fleet: FleetSettings::default(),
            proxy: ProxySettings::default(),
        }
    }
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings {
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
            escalation_window: Dur(policy.escalation_window),
            max_duration: Dur(policy.max_duration),
            ipv4_prefix: policy.ipv4_prefix,
            ipv6_prefix: policy.ipv6_prefix,
            allow: Vec::new(),
            max_entries: policy.max_entries,
            mode: "enforce".into(),
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
        }
    }
}

/// The distinct ports of `addrs`, sorted: the kernel detectors' service
/// ports (the configured listen addresses, or the bound ones).
pub fn service_ports(addrs: &[SocketAddr]) -> Vec<u16> {
    let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The host name, as a fleet node name (the kernel's, else "penaltybox").
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "penaltybox".into())
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
    /// Validates; the first problem is the error (`problems` has them all).
    fn validate(&self) -> anyhow::Result<()> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(anyhow!(problem)),
            None => Ok(()),
        }
    }

    /// Every problem of these settings, one line each, in key order.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        let mut note = |result: anyhow::Result<()>| {
            if let Err(error) = result {
                problems.push(format!("{error:#}"));
            }
        };
        if self.listen.is_empty() {
            note(Err(anyhow!("listen: at least one address is needed")));
        }
        if self.bans.ipv4_prefix == 0 || self.bans.ipv4_prefix > 32 {
            note(Err(anyhow!(
                "bans.ipv4_prefix: {} is not in 1..=32",
                self.bans.ipv4_prefix
            )));
        }
        if self.bans.ipv6_prefix == 0 || self.bans.ipv6_prefix > 128 {
            note(Err(anyhow!(
                "bans.ipv6_prefix: {} is not in 1..=128",
                self.bans.ipv6_prefix
            )));
        }
        if self.bans.max_entries == 0 {
            note(Err(anyhow!("bans.max_entries: must be at least 1")));
        }
        if self.workers > MAX_WORKERS {
            note(Err(anyhow!(
                "workers: {} is more than {MAX_WORKERS} (each is a thread with its own event loop; 0 = one per CPU)",
                self.workers
            )));
        }
        let b = &self.bans;
        note(check_duration(
            "bans.max_duration",
            b.max_duration,
            MAX_TIME_OUT,
            "10 years",
        ));
        note(check_duration(
            "bans.escalation_window",
            b.escalation_window,
            MAX_TIME_OUT,
            "10 years",
        ));
        for (key, value) in [
            ("bans.non_protocol", b.non_protocol),
            ("bans.handshake_failure", b.handshake_failure),
            ("bans.handshake_timeout", b.handshake_timeout),
            ("bans.session_violation", b.session_violation),
            ("bans.admin_default", b.admin_default),
            ("bans.port_scan", b.port_scan),
            ("bans.syn_flood", b.syn_flood),
            ("bans.bad_tcp_flags", b.bad_tcp_flags),
        ] {
            note(check_duration(
                key,
                value,
                b.max_duration.0,
                "bans.max_duration",
            ));
        }
        note(check_duration(
            "timeouts.handshake",
            self.timeouts.handshake,
            Duration::from_secs(600),
            "10m",
        ));
        note(check_duration(
            "timeouts.idle",
            self.timeouts.idle,
            MAX_TIME_OUT,
            "10 years",
        ));
        if self.service.requests_per_second == 0 || self.service.request_burst == 0 {
            note(Err(anyhow!(
                "service.requests_per_second and service.request_burst: must be at least 1"
            )));
        }
        note(check_duration(
            "storage.flush_interval",
            self.storage.flush_interval,
            Duration::from_secs(60),
            "1m",
        ));
        for (name, value) in [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_pending_handshakes",
                self.limits.max_pending_handshakes,
            ),
            (
                "limits.max_pending_per_source",
                self.limits.max_pending_per_source,
            ),
            (
                "limits.max_sessions_per_source",
                self.limits.max_sessions_per_source,
            ),
        ] {
            if value == 0 {
                note(Err(anyhow!("{name}: must be at least 1")));
            }
        }
        note(
            crate::kernel_wiring::parse_mode(&self.kernel.xdp_mode)
                .map(drop)
                .map_err(|e| anyhow!("kernel.xdp_mode: {e}")),
        );
        if let Some(spec) = &self.log_level {
            note(crate::logging::check_filter(spec).map_err(|e| anyhow!("log_level: {e}")));
        }
        if !matches!(self.bans.mode.as_str(), "enforce" | "monitor") {
            note(Err(anyhow!(
                "bans.mode: {:?} is neither \"enforce\" nor \"monitor\"",
                self.bans.mode
            )));
        }
        if !matches!(self.kernel.drop_scope.as_str(), "service" | "all") {
            note(Err(anyhow!(
                "kernel.drop_scope: {:?} is neither \"service\" nor \"all\"",
                self.kernel.drop_scope
            )));
        }
        let mut detection = self.detection();
        if self.kernel.bpf_table.is_none() && self.kernel.xdp_iface.is_none() {
            // No kernel tier: how many ports we listen on is no concern.
            detection.service_ports.clear();
        }
        note(detection.check().map_err(|e| anyhow!("kernel.{e}")));
        note(self.allow_list().map(drop));
        note(self.metrics_listen().map(drop));
        note(self.fleet().map(drop));
        note(self.proxy_trusted().map(drop));
        problems
    }

    /// The fleet link's settings; `None` when the fleet is off.
    pub fn fleet(&self) -> anyhow::Result<Option<fleet::FleetConfig>> {
        let f = &self.fleet;
        if f.servers.is_empty() {
            return Ok(None);
        }
        for (i, url) in f.servers.iter().enumerate() {
            fleet::link::check_server_url(url).map_err(|e| anyhow!("fleet.servers[{i}]: {e}"))?;
        }
        if f.bucket.is_empty()
            || !f
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!(
                "fleet.bucket: {:?} is not a bucket name (letters, digits, _ and -)",
                f.bucket
            );
        }
        if !(1..=5).contains(&f.replicas) {
            bail!("fleet.replicas: {} is not in 1..=5", f.replicas);
        }
        let node_id = match &f.node_id {
            Some(id) => id.clone(),
            None => host_name(),
        };
        let node_ok = !node_id.is_empty()
            && node_id.len() <= model::ban::MAX_ORIGIN_LEN
            && node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !node_ok {
            bail!(
                "fleet.node_id: {node_id:?} is not a node name (1 to {} letters, digits, -, _ and .)",
                model::ban::MAX_ORIGIN_LEN
            );
        }
        let auth = match (&f.creds_file, &f.user, &f.password, &f.token) {
            (None, None, None, None) => fleet::Auth::None,
            (Some(path), None, None, None) => {
                std::fs::metadata(path)
                    .with_context(|| format!("fleet.creds_file: {}", path.display()))?;
                fleet::Auth::CredsFile(path.clone())
            }
            (None, Some(user), Some(password), None) => fleet::Auth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (None, None, None, Some(token)) => fleet::Auth::Token(token.clone()),
            (None, Some(_), None, None) | (None, None, Some(_), None) => {
                bail!("fleet.user and fleet.password: give both, or neither")
            }
            _ => bail!("fleet: give one of creds_file, user and password, or token (not several)"),
        };
        let client_cert = match (&f.tls_cert, &f.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => bail!("fleet.tls_cert and fleet.tls_key: give both, or neither"),
        };
        let tls = (f.tls_ca_file.is_some() || client_cert.is_some()).then(|| fleet::Tls {
            ca_file: f.tls_ca_file.clone(),
            client_cert,
        });
        Ok(Some(fleet::FleetConfig {
            servers: f.servers.clone(),
            bucket: f.bucket.clone(),
            node_id: model::ban::Origin::new(&node_id).expect("length checked"),
            replicas: f.replicas,
            auth,
            tls,
        }))
    }

    /// The proxies whose connections start with a PROXY header.
    pub fn proxy_trusted(&self) -> anyhow::Result<Vec<Cidr>> {
        self.proxy
            .trusted
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim()
                    .parse()
                    .map_err(|e| anyhow!("proxy.trusted[{i}]: {e}"))
            })
            .collect()
    }

    /// Where the metrics endpoint listens; `None` when it is off.
    pub fn metrics_listen(&self) -> anyhow::Result<Option<SocketAddr>> {
        let text = self.metrics.listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            anyhow!(
                "metrics.listen: {text:?} is not an address and port (e.g. 127.0.0.1:9464; \"\" turns metrics off)"
            )
        })
    }

    pub fn allow_list(&self) -> anyhow::Result<Vec<Cidr>> {
        self.bans
            .allow
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim()
                    .parse()
                    .map_err(|e| anyhow!("bans.allow[{i}]: {e}"))
            })
            .collect()
    }

    pub fn policy(&self) -> anyhow::Result<BanPolicy> {
        let b = &self.bans;
        Ok(BanPolicy {
            durations: Durations {
                non_protocol: b.non_protocol.0,
                handshake_failure: b.handshake_failure.0,
                handshake_timeout: b.handshake_timeout.0,
                session_violation: b.session_violation.0,
                admin_default: b.admin_default.0,
                port_scan: b.port_scan.0,
                syn_flood: b.syn_flood.0,
                bad_tcp_flags: b.bad_tcp_flags.0,
            },
            escalation_window: b.escalation_window.0,
            max_duration: b.max_duration.0,
            ipv4_prefix: b.ipv4_prefix,
            ipv6_prefix: b.ipv6_prefix,
            allow: self.allow_list()?,
            max_entries: b.max_entries,
            monitor: b.mode == "monitor",
        })
    }

    /// What the kernel detectors run with; the service ports are the
    /// listen ports.
    pub fn detection(&self) -> xdp::Detection {
        let k = &self.kernel;
        let service_ports = service_ports(&self.listen);
        xdp::Detection {
            enabled: k.detect,
            scan_ports: k.scan_ports,
            scan_window: k.scan_window.0,
            trap_ports: k.trap_ports.clone(),
            syn_rate: k.syn_rate,
            syn_burst: k.syn_burst,
            drop_service_only: k.drop_scope == "service",
            service_ports,
            monitor: self.bans.mode == "monitor",
        }
    }

    pub fn connection_timeouts(&self) -> actors::Timeouts {
        actors::Timeouts {
            handshake: self.timeouts.handshake.0,
            idle: self.timeouts.idle.0,
            write: self.timeouts.write.0,
        }
    }

    pub fn limits(&self) -> LimitConfig {
        LimitConfig {
            max_connections: self.limits.max_connections,
            max_pending_handshakes: self.limits.max_pending_handshakes,
            max_pending_per_source: self.limits.max_pending_per_source,
            max_sessions_per_source: self.limits.max_sessions_per_source,
        }
    }

    pub fn service(&self) -> actors::ServiceConfig {
        let s = &self.service;
        actors::ServiceConfig {
            anonymous_writes: s.anonymous_writes,
            max_volumes: s.max_volumes,
            min_free_bytes: s.min_free_mb.saturating_mul(1 << 20),
            requests_per_second: s.requests_per_second,
            request_burst: s.request_burst,
        }
    }

    pub fn store_options(&self) -> storage::StoreOptions {
        storage::StoreOptions {
            flush_interval: self.storage.flush_interval.0,
            cache_bytes: self.storage.cache_mb << 20,
        }
    }

    /// Opens a stopped server's database (the offline commands); `hint` ends
    /// the error when there is none, saying what else to pass.
    pub fn open_stopped_database(&self, hint: &str) -> anyhow::Result<storage::Store> {
        let dir = self.database_dir();
        if !dir.exists() {
            bail!(
                "{}: no penaltybox database here ({hint})",
                self.data_dir.display()
            );
        }
        Ok(storage::Store::open(&dir, &self.store_options())?)
    }

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
        settings
    }

    /// Where sled keeps its files, inside the data directory.
    pub fn database_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.keys
            .server_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.key"))
    }
}
