//! The settings resolved into what the other crates take: the ban
//! policy, the allow-list, the access policy (key files read), the
//! detectors, the fleet link, the limits, the store's options.

use std::net::SocketAddr;
use std::path::Path;

use actors::{AllowList, BanPolicy, Durations, LimitConfig};
use anyhow::{Context, anyhow, bail};
use model::Cidr;
use protocol::AccessPolicy;
use protocol::keys::read_public_keys;

use super::Settings;
use super::values::{BanMode, DropScope};

impl Settings {
    /// The fleet link's settings, checked; `None` when the fleet is off.
    /// A node key not made yet is not made here (`check`, offline
    /// commands): a throwaway one stands in.
    pub fn fleet(&self) -> anyhow::Result<Option<fleet::FleetConfig>> {
        self.fleet_with(false)
    }

    /// The fleet link's settings to serve with: the node key is made on
    /// first start (with its `.pub`), as the server key is.
    pub fn fleet_to_serve(&self) -> anyhow::Result<Option<fleet::FleetConfig>> {
        self.fleet_with(true)
    }

    /// The nodes whose records apply: `fleet.trusted_nodes` and this node's
    /// own key. A missing file at the default path trusts this node alone.
    pub fn trusted_nodes(
        &self,
        own: fleet::NodePublicKey,
        name: model::ban::Origin,
    ) -> anyhow::Result<fleet::TrustedNodes> {
        let path = self.trusted_nodes_path();
        let own = fleet::TrustedNodes::own(own, name);
        if self.fleet.trusted_nodes.is_none() && !path.exists() {
            return Ok(own);
        }
        own.read(&path).context("fleet.trusted_nodes")
    }

    fn fleet_with(&self, make_node_key: bool) -> anyhow::Result<Option<fleet::FleetConfig>> {
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
        let Some(node_name) = fleet::trust::node_name(&node_id) else {
            bail!(
                "fleet.node_id: {node_id:?} is not a node name (1 to {} letters, digits, -, _ and .)",
                model::ban::MAX_ORIGIN_LEN
            );
        };
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
        // Last, so that nothing is written for settings refused above.
        let key_path = self.node_key_path();
        let node_key = if key_path.exists() {
            fleet::NodeKey::read(&key_path).context("fleet.node_key")?
        } else if f.node_key.is_some() {
            bail!("fleet.node_key: {} does not exist", key_path.display());
        } else if make_node_key {
            let key = fleet::NodeKey::generate()?;
            let public = key.write_new(&key_path).context("fleet.node_key")?;
            log::info!(
                "generated a fleet node key pair: {} (0600) and {}; add `{} {node_id}` to the other nodes' trusted_nodes",
                key_path.display(),
                public.display(),
                key.public_key()
            );
            key
        } else {
            fleet::NodeKey::generate()?
        };
        let trusted = self.trusted_nodes(node_key.public_key(), node_name)?;
        Ok(Some(fleet::FleetConfig {
            servers: f.servers.clone(),
            bucket: f.bucket.clone(),
            node_id: node_name,
            replicas: f.replicas,
            auth,
            tls,
            node_key: Some(std::sync::Arc::new(node_key)),
            trust: fleet::Trust::new(trusted),
            require_signatures: f.require_signatures,
        }))
    }

    /// The proxies whose connections start with a PROXY header.
    pub fn proxy_trusted(&self) -> anyhow::Result<Vec<Cidr>> {
        self.proxy
            .trusted
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Cidr::parse_exact(text.trim()).map_err(|e| anyhow!("proxy.trusted[{i}]: {e}"))
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
                Cidr::parse_exact(text.trim()).map_err(|e| anyhow!("bans.allow[{i}]: {e}"))
            })
            .collect()
    }

    /// The ban policy (who is never timed out is the allow-list's).
    pub fn policy(&self) -> BanPolicy {
        let b = &self.bans;
        BanPolicy {
            durations: Durations {
                non_protocol: b.non_protocol.0,
                handshake_failure: b.handshake_failure.0,
                handshake_timeout: b.handshake_timeout.0,
                session_violation: b.session_violation.0,
                admin_default: b.admin_default.0,
                port_scan: b.port_scan.0,
                syn_flood: b.syn_flood.0,
                bad_tcp_flags: b.bad_tcp_flags.0,
                stray_segments: b.stray_segments.0,
                unparsed_flood: b.unparsed_flood.0,
                widened: b.widen.duration.0,
            },
            escalation_window: b.escalation_window.0,
            max_duration: b.max_duration.0,
            ipv4_prefix: b.ipv4_prefix,
            ipv6_prefix: b.ipv6_prefix,
            max_entries: b.max_entries,
            monitor: b.mode.get() == BanMode::Monitor,
            widen: actors::WidenPolicy {
                enabled: b.widen.enabled,
                members: b.widen.members,
                window: b.widen.window.0,
                ipv4_steps: b.widen.ipv4.clone(),
                ipv6_steps: b.widen.ipv6.clone(),
            },
        }
    }

    /// `bans.allow` with the trusted proxies, as the server runs with it.
    pub fn allow(&self) -> anyhow::Result<AllowList> {
        Ok(AllowList::new(self.allow_list()?, &self.proxy_trusted()?))
    }

    /// Who may connect, from the key files the settings name.
    pub fn access_policy(&self) -> anyhow::Result<AccessPolicy> {
        Ok(AccessPolicy {
            authorized: read_key_list(
                "keys.authorized_keys",
                self.keys.authorized_keys.as_deref(),
            )?,
            admins: read_key_list("keys.admin_keys", self.keys.admin_keys.as_deref())?
                .unwrap_or_default(),
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
            drop_service_only: k.drop_scope.get() == DropScope::Service,
            service_ports,
            monitor: self.bans.mode.get() == BanMode::Monitor,
            unparsed_burst: k.unparsed_burst,
            stray_segments: k.stray_segments,
            stray_window: k.stray_window.0,
        }
    }

    /// What the connections are held to (`timeouts.*`).
    pub fn deadlines(&self) -> actors::Deadlines {
        actors::Deadlines {
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
            on_damage: self.storage.on_damage.get().into(),
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
        // Repairs are the server's, at its start: an offline command says
        // what is damaged and leaves the files as they are.
        let options = storage::StoreOptions {
            on_damage: storage::OnDamage::Refuse,
            ..self.store_options()
        };
        Ok(storage::Store::open(&dir, &options)?)
    }
}

/// A key list file as the setting `setting` names it; `None` when unset.
pub fn read_key_list(
    setting: &str,
    path: Option<&Path>,
) -> anyhow::Result<Option<std::collections::HashSet<protocol::PublicKey>>> {
    path.map(|path| read_public_keys(path).with_context(|| setting.to_owned()))
        .transpose()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet_settings(dir: &Path) -> Settings {
        let mut settings = Settings {
            data_dir: dir.to_owned(),
            ..Settings::default()
        };
        settings.fleet.servers = vec!["nats://127.0.0.1:4222".into()];
        settings.fleet.node_id = Some("edge-1".into());
        settings
    }

    #[test]
    fn the_node_key_is_made_only_to_serve_and_trust_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = fleet_settings(dir.path());
        let key = dir.path().join("node.key");
        // `check` and offline commands write nothing.
        let checked = settings.fleet().unwrap().unwrap();
        assert!(!key.exists());
        assert_eq!(checked.trust.get().len(), 1, "itself only");
        // Serving makes it once, then reads it.
        let served = settings.fleet_to_serve().unwrap().unwrap();
        let made = served.node_key.unwrap().public_key();
        assert!(key.exists() && dir.path().join("node.pub").exists());
        let again = settings.fleet_to_serve().unwrap().unwrap();
        assert_eq!(again.node_key.unwrap().public_key(), made);

        let error = |settings: &Settings| format!("{:#}", settings.fleet().unwrap_err());
        std::fs::write(dir.path().join("trusted_nodes"), "garbage\n").unwrap();
        let said = error(&settings);
        assert!(said.starts_with("fleet.trusted_nodes: "), "{said}");
        assert!(
            said.contains("trusted_nodes:1: expected `KEY node-name`"),
            "{said}"
        );
        settings.fleet.trusted_nodes = Some(dir.path().join("missing"));
        assert!(error(&settings).starts_with("fleet.trusted_nodes: "));
        settings.fleet.trusted_nodes = None;
        std::fs::remove_file(dir.path().join("trusted_nodes")).unwrap();
        settings.fleet.node_key = Some(dir.path().join("nope.key"));
        assert!(
            error(&settings).contains("fleet.node_key: "),
            "{}",
            error(&settings)
        );
        assert!(error(&settings).contains("does not exist"));
        settings.fleet.node_key = Some(dir.path().join("server.key"));
        protocol::PrivateKey::generate()
            .write_new(&dir.path().join("server.key"))
            .unwrap();
        assert!(
            error(&settings).contains("not a fleet node key"),
            "{}",
            error(&settings)
        );
    }
}
