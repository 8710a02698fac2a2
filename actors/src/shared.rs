//! What the acceptors and every session share, and nothing that calls
//! back into them: the connection path reads this and sends messages to
//! the registry; it is never read back.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use actix::Addr;
use model::Cidr;
use protocol::Responder;
use protocol::message::{CauseCount, KernelTierView, ServerStats, TopView};
use storage::Store;

use crate::admission::Admission;
use crate::allow_list::AllowList;
use crate::registry::BanRegistry;
use crate::stats::Stats;
use crate::view::BanView;

pub(crate) struct Shared {
    pub responder: Responder,
    pub registry: Addr<BanRegistry>,
    pub store: Store,
    pub view: Arc<BanView>,
    pub stats: Arc<Stats>,
    pub admission: Arc<Admission>,
    /// Never refused at accept, whatever time-out covers them (read only
    /// when a time-out matched). The ban core holds the same list.
    pub allow: AllowList,
    /// Their connections begin with a PROXY header naming the client.
    pub proxy_trusted: Vec<Cidr>,
    /// The admin `Reload` request's handler (the binary's).
    pub reloader: OnceLock<Arc<dyn Reloader>>,
    /// The kernel tier's and the fleet's state for `top` (the binary's).
    pub tiers: OnceLock<Arc<dyn TierStatus>>,
    /// The time-out prefix lengths, for per-source admission.
    pub aggregation: (u8, u8),
    /// Replaced by a reload; each connection reads them as it needs them.
    pub deadlines: RwLock<Deadlines>,
    pub service: ServiceConfig,
}

/// Limits on what clients may do with the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Anonymous (Noise NK) sessions may write the inventory.
    pub anonymous_writes: bool,
    pub max_volumes: usize,
    /// Inventory writes stop below this many free bytes on the data disk.
    pub min_free_bytes: u64,
    /// Requests per second one session may send, sustained, and in a burst.
    pub requests_per_second: u32,
    pub request_burst: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            anonymous_writes: false,
            max_volumes: 100_000,
            min_free_bytes: 64 << 20,
            requests_per_second: 1_000,
            request_burst: 2_000,
        }
    }
}

/// How long a connection may take: to finish its handshake, between
/// requests, and to take a response. (A *deadline* is a connection's; a
/// *time-out* is a source's stay in the table.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub handshake: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Re-reads the settings and applies them (the binary knows where they
/// come from); answers the one-line summary, or why nothing changed.
pub trait Reloader: Send + Sync {
    fn reload(&self) -> Result<String, ReloadError>;
}

/// What the binary knows of the tiers around the actors (the kernel's maps,
/// the fleet's link), for the admin `Top` request.
pub trait TierStatus: Send + Sync {
    /// `None`: no kernel tier configured.
    fn kernel(&self) -> Option<KernelTierView>;
    /// `None`: no fleet configured.
    fn fleet_connected(&self) -> Option<bool>;
}

/// Why a reload changed nothing (the running settings are kept).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ReloadError {
    pub reason: String,
}

impl Shared {
    pub fn deadlines(&self) -> Deadlines {
        *self
            .deadlines
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.proxy_trusted.iter().any(|entry| entry.contains(ip))
    }

    /// The time-out prefix `ip` falls in: admission counts per source by it.
    pub fn source_of(&self, ip: IpAddr) -> Cidr {
        Cidr::aggregate(ip, self.aggregation.0, self.aggregation.1)
    }

    pub fn stats(&self) -> ServerStats {
        self.stats.snapshot(self.view.len(), &self.store)
    }

    pub fn metrics(&self) -> crate::MetricsSnapshot {
        self.stats.metrics(self.stats(), self.view.len_by_family())
    }

    /// The admin `Top` answer: counters, causes, the newest `recent`
    /// time-outs, and the tiers.
    pub fn top(&self, recent: usize) -> TopView {
        let metrics = self.metrics();
        let tiers = self.tiers.get();
        TopView {
            now_ms: crate::now_ms(),
            active_ipv4: metrics.bans_active_ipv4,
            active_ipv6: metrics.bans_active_ipv6,
            by_cause: metrics
                .bans_by_cause
                .iter()
                .map(|(cause, total)| CauseCount {
                    cause: (*cause).to_owned(),
                    total: *total,
                })
                .collect(),
            // Those still in force: released or replaced ones are not.
            recent: self
                .stats
                .recent(usize::from(protocol::message::MAX_TOP_RECENT))
                .into_iter()
                .filter(|ban| self.view.expiry(&ban.prefix) == Some(ban.expires_at_ms))
                .take(recent)
                .collect(),
            kernel: tiers.and_then(|tiers| tiers.kernel()),
            fleet_connected: tiers.and_then(|tiers| tiers.fleet_connected()),
            stats: metrics.stats,
        }
    }
}
