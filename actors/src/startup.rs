//! Starting and stopping the whole server inside an actix `System`: bind,
//! restore the ban core, start the registry, the worker arbiters for
//! sessions, and one acceptor per listen address; and [`ServerHandle`], the
//! cheap handle the binary's wiring holds on what runs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use actix_rt::Arbiter;
use model::Cidr;
use protocol::message::ServerStats;
use protocol::{AccessPolicy, PrivateKey, Responder};
use storage::Store;

use crate::BanError;
use crate::acceptor::{Acceptor, StopAccepting};
use crate::admission::{Admission, LimitConfig};
use crate::allow_list::AllowList;
use crate::ban_core::{BanCore, CoreParts};
use crate::ban_table::BootReport;
use crate::kernel_table::KernelTable;
use crate::policy::BanPolicy;
use crate::registry::{BanRegistry, Flush};
use crate::shared::{Deadlines, Reloader, ServiceConfig, Shared};
use crate::stats::Stats;
use crate::view::BanView;

/// Everything the server needs, already parsed and validated.
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub server_key: PrivateKey,
    pub access: AccessPolicy,
    pub policy: BanPolicy,
    /// `bans.allow`: never timed out.
    pub allow: Vec<Cidr>,
    /// Load balancers whose connections begin with a PROXY header. They
    /// join the allow-list (a proxy carries every client).
    pub proxy_trusted: Vec<Cidr>,
    pub limits: LimitConfig,
    pub deadlines: Deadlines,
    pub service: ServiceConfig,
    /// Worker threads (arbiters) running sessions.
    pub workers: usize,
    /// The kernel tier's table, when there is one.
    pub kernel: Option<Box<dyn KernelTable>>,
    /// Where time-outs made here go for the other nodes (fleet on).
    pub fleet: Option<crate::FleetOutlet>,
}

pub struct RunningServer {
    /// The bound addresses (a `:0` port resolved).
    pub local_addrs: Vec<SocketAddr>,
    pub boot: BootReport,
    shared: Arc<Shared>,
    acceptors: Vec<Addr<Acceptor>>,
    workers: Vec<Arbiter>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot restore the ban table: {0}")]
    Restore(#[from] storage::StorageError),
}

/// Starts the server; call from inside a running actix `System`.
pub fn start(config: ServerConfig, store: Store) -> Result<RunningServer, StartError> {
    // Bind first: a port in use should fail before anything else starts.
    let listeners = config
        .listen
        .iter()
        .map(|addr| {
            crate::listener::bind(*addr)
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| StartError::Listen {
                    addr: *addr,
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let view = Arc::new(BanView::default());
    let stats = Arc::new(Stats::default());
    let allow = AllowList::new(config.allow, &config.proxy_trusted);
    let aggregation = (config.policy.ipv4_prefix, config.policy.ipv6_prefix);
    let parts = CoreParts {
        allow: allow.clone(),
        store: store.clone(),
        view: view.clone(),
        stats: stats.clone(),
        kernel: config.kernel,
    };
    let (mut core, boot) = BanCore::restore(config.policy, parts, crate::now_ms())?;
    if let Some(fleet) = config.fleet {
        core.set_fleet(fleet);
    }
    let registry = BanRegistry::new(core).start();

    let shared = Arc::new(Shared {
        responder: Responder::new(&config.server_key, config.access),
        registry,
        store,
        view,
        stats,
        admission: Admission::new(config.limits),
        allow,
        proxy_trusted: config.proxy_trusted,
        reloader: std::sync::OnceLock::new(),
        tiers: std::sync::OnceLock::new(),
        aggregation,
        deadlines: std::sync::RwLock::new(config.deadlines),
        service: config.service,
    });
    let workers: Vec<Arbiter> = (0..config.workers.max(1)).map(|_| Arbiter::new()).collect();
    let handles = Arc::new(workers.iter().map(Arbiter::handle).collect::<Vec<_>>());

    let mut local_addrs = Vec::new();
    let mut acceptors = Vec::new();
    for listener in listeners {
        let acceptor =
            Acceptor::new(listener, shared.clone(), handles.clone()).map_err(|source| {
                StartError::Listen {
                    addr: config.listen[acceptors.len()],
                    source,
                }
            })?;
        local_addrs.push(acceptor.local_addr());
        acceptors.push(acceptor.start());
    }
    Ok(RunningServer {
        local_addrs,
        boot,
        shared,
        acceptors,
        workers,
    })
}

/// A cheap, cloneable handle on a running server, usable from any thread:
/// what the binary's wiring (and a bench) reads and asks, apart from the
/// actors that serve.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Every counter now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Every counter and histogram now (the metrics endpoint).
    pub fn metrics(&self) -> crate::MetricsSnapshot {
        self.shared.metrics()
    }

    /// Is `ip` timed out now (the acceptors' own lookup)?
    pub fn is_timed_out(&self, ip: std::net::IpAddr) -> bool {
        self.shared.view.is_banned(ip, crate::now_ms())
    }

    /// A kernel detection: timed out through the registry like any other
    /// cause. Counted; never waits (the registry's mailbox queues it).
    pub fn report_detection(
        &self,
        source: std::net::IpAddr,
        cause: model::BanCause,
        seen: model::KernelSeen,
        evidence: String,
    ) {
        crate::stats::bump(&self.shared.stats.kernel_detections);
        self.shared
            .registry
            .do_send(crate::registry::KernelDetection {
                source,
                cause,
                seen,
                evidence,
                detected_at: std::time::Instant::now(),
            });
    }

    /// Hands the ban core a new kernel table and replays every live
    /// time-out into it; `None` if the registry is gone.
    pub async fn replace_kernel(
        &self,
        table: Box<dyn crate::KernelTable>,
    ) -> Option<crate::KernelReplay> {
        self.shared
            .registry
            .send(crate::registry::ReplaceKernel { table })
            .await
            .ok()
    }

    /// Other fleet nodes' time-outs: applied through the registry, in
    /// order, in one message (our allow-list wins, each record's expiry
    /// holds). Never waits.
    pub fn apply_remote(&self, records: Vec<model::BanInfo>) {
        self.shared
            .registry
            .do_send(crate::registry::ApplyRemote { records });
    }

    /// A reload: who may connect, the limits and deadlines for new
    /// connections, the allow-list (in force at accept at once), and the
    /// ban policy from the next decision on; nothing established is
    /// dropped. The registry releases what the allow-list now covers.
    pub fn reload(
        &self,
        access: protocol::AccessPolicy,
        limits: crate::LimitConfig,
        policy: crate::BanPolicy,
        allow: Vec<Cidr>,
        deadlines: Deadlines,
    ) {
        self.shared.responder.set_access(access);
        self.shared.admission.set_limits(limits);
        *self
            .shared
            .deadlines
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = deadlines;
        let newly_allowed = self.shared.allow.replace(allow);
        // The registry logs what the new policy released.
        self.shared.registry.do_send(crate::registry::SetPolicy {
            policy,
            newly_allowed,
        });
    }

    /// What `penaltybox reload` over the admin connection runs (the
    /// binary's settings reload); set once the server runs.
    /// What the admin `Top` request says of the kernel tier and the fleet.
    pub fn set_tier_status(&self, tiers: Arc<dyn crate::shared::TierStatus>) {
        let _ = self.shared.tiers.set(tiers);
    }

    pub fn set_reloader(&self, reloader: Arc<dyn Reloader>) {
        let _ = self.shared.reloader.set(reloader);
    }

    /// A blocklist feed's refresh, applied through the registry as a
    /// difference; `None` if the registry is gone.
    pub async fn apply_feed(&self, list: crate::FeedList) -> Option<crate::FeedApplied> {
        self.shared
            .registry
            .send(crate::registry::ApplyFeed { list })
            .await
            .ok()
    }

    /// Feed `name` comes from `source` (its runner says so once).
    pub fn feed_source(&self, name: &str, source: &str) {
        self.shared.stats.feed_source(name, source);
    }

    /// A refresh of feed `name` failed (its list before stays in force).
    pub fn feed_failed(&self, name: &str, error: &str) {
        self.shared.stats.feed_failed(name, error);
    }

    /// Another fleet node's admin released `prefix`. Never waits.
    pub fn release_remote(&self, prefix: model::Cidr) {
        self.shared
            .registry
            .do_send(crate::registry::ReleaseRemote { prefix });
    }

    /// An admin time-out, through the registry like the admin command's.
    pub async fn admin_ban(&self, ban: crate::AdminBan) -> Result<model::BanInfo, BanError> {
        let request = crate::registry::AdminBanFrom { ban, session: None };
        match self.shared.registry.send(request).await {
            Ok(result) => result,
            Err(_) => Err(BanError::RegistryGone),
        }
    }
}

impl RunningServer {
    /// Every counter now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Shuts down (see [`RunningServer::shutdown`]) and returns the counters
    /// as they were once nothing was accepted any more.
    pub async fn stats_then_shutdown(self) -> (ServerStats, Result<(), BanError>) {
        let shared = self.shared.clone();
        let flushed = self.shutdown().await;
        (shared.stats(), flushed)
    }

    /// Stops accepting, makes every ban durable, stops the workers. The
    /// final flush's failure is returned: the caller must not report a
    /// clean stop when time-outs were not persisted.
    pub async fn shutdown(self) -> Result<(), BanError> {
        for acceptor in &self.acceptors {
            let _ = acceptor.send(StopAccepting).await;
        }
        let flushed = match self.shared.registry.send(Flush).await {
            Ok(result) => result,
            Err(_) => Err(BanError::RegistryGone),
        };
        for worker in self.workers {
            worker.stop();
            let _ = worker.join();
        }
        flushed
    }
}
