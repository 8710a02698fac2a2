//! Starting and stopping the whole server inside an actix `System`: bind,
//! restore the ban core, start the registry, the worker arbiters for
//! sessions, and one acceptor per listen address.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::Arbiter;
use protocol::{AccessPolicy, PrivateKey, Responder};
use storage::Store;

use crate::BanError;
use crate::acceptor::{Acceptor, StopAccepting};
use crate::admission::{Admission, LimitConfig};
use crate::ban_core::{BanCore, BootReport};
use crate::kernel_sync::KernelSync;
use crate::policy::BanPolicy;
use crate::registry::{BanRegistry, Flush};
use crate::requests::ServiceConfig;
use crate::stats::Stats;
use crate::view::BanView;
use protocol::message::ServerStats;

/// Everything the server needs, already parsed and validated.
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub server_key: PrivateKey,
    pub access: AccessPolicy,
    pub policy: BanPolicy,
    pub limits: LimitConfig,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a response may wait for the peer to take it.
    pub write_timeout: Duration,
    pub service: ServiceConfig,
    /// Worker threads (arbiters) running sessions.
    pub workers: usize,
    /// The kernel tier's table, when there is one.
    pub kernel: Option<Box<dyn KernelSync>>,
    /// Where time-outs made here go for the other nodes (fleet on).
    pub fleet: Option<crate::FleetOutlet>,
    /// Load balancers whose connections begin with a PROXY header.
    pub proxy_trusted: Vec<model::Cidr>,
}

/// What the acceptors and every session share.
pub(crate) struct Shared {
    pub responder: Responder,
    pub registry: Addr<BanRegistry>,
    pub store: Store,
    pub view: Arc<BanView>,
    pub stats: Arc<Stats>,
    pub admission: Arc<Admission>,
    /// Never refused at accept, whatever time-out covers them (replaced by
    /// a reload; read only when a time-out matched).
    pub allow: std::sync::RwLock<Vec<model::Cidr>>,
    /// Their connections begin with a PROXY header naming the client.
    pub proxy_trusted: Vec<model::Cidr>,
    /// The admin `Reload` request's handler (the binary's).
    pub reloader: std::sync::OnceLock<Arc<dyn Reloader>>,
    /// The time-out prefix lengths, for per-source admission.
    pub aggregation: (u8, u8),
    /// Replaced by a reload; each connection reads them as it needs them.
    pub timeouts: std::sync::RwLock<Timeouts>,
    pub service: ServiceConfig,
}

/// How long a connection may take: to finish its handshake, between
/// requests, and to take a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub handshake: Duration,
    pub idle: Duration,
    pub write: Duration,
}

impl Shared {
    pub fn timeouts(&self) -> Timeouts {
        *self
            .timeouts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.allow
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .any(|entry| entry.contains(ip))
    }

    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.proxy_trusted.iter().any(|entry| entry.contains(ip))
    }

    /// The time-out prefix `ip` falls in: admission counts per source by it.
    pub fn source_of(&self, ip: std::net::IpAddr) -> model::Cidr {
        crate::policy::aggregate(ip, self.aggregation.0, self.aggregation.1)
    }

    pub fn stats(&self) -> ServerStats {
        self.stats.snapshot(self.view.len(), &self.store)
    }

    pub fn metrics(&self) -> crate::MetricsSnapshot {
        self.stats.metrics(self.stats(), self.view.len_by_family())
    }
}

/// Re-reads the settings and applies them (the binary knows where they
/// come from); answers the one-line summary, or why nothing changed.
pub trait Reloader: Send + Sync {
    fn reload(&self) -> Result<String, String>;
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
            bind(*addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let view = Arc::new(BanView::default());
    let stats = Arc::new(Stats::default());
    let allow = config.policy.allow.clone();
    let aggregation = (config.policy.ipv4_prefix, config.policy.ipv6_prefix);
    let (mut core, boot) = BanCore::restore(
        config.policy,
        store.clone(),
        view.clone(),
        stats.clone(),
        config.kernel,
        crate::now_ms(),
    )?;
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
        allow: std::sync::RwLock::new(allow),
        proxy_trusted: config.proxy_trusted,
        reloader: std::sync::OnceLock::new(),
        aggregation,
        timeouts: std::sync::RwLock::new(Timeouts {
            handshake: config.handshake_timeout,
            idle: config.idle_timeout,
            write: config.write_timeout,
        }),
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
        evidence: String,
    ) {
        crate::stats::bump(&self.shared.stats.kernel_detections);
        self.shared.registry.do_send(crate::registry::Detected {
            source,
            cause,
            evidence,
            detected_at: std::time::Instant::now(),
        });
    }

    /// Hands the ban core a new kernel table and replays every live
    /// time-out into it; `None` if the registry is gone.
    pub async fn replace_kernel(
        &self,
        table: Box<dyn crate::KernelSync>,
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

    /// A reload: who may connect, the limits for new connections, and the
    /// ban policy (durations, allow-list, mode) from now on; nothing
    /// established is dropped. Answers what the policy change released.
    pub fn reload(
        &self,
        access: protocol::AccessPolicy,
        limits: crate::LimitConfig,
        policy: crate::BanPolicy,
        timeouts: Timeouts,
    ) {
        self.shared.responder.set_access(access);
        self.shared.admission.set_limits(limits);
        *self
            .shared
            .timeouts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = timeouts;
        *self
            .shared
            .allow
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = policy.allow.clone();
        // The registry logs what the new policy released.
        self.shared
            .registry
            .do_send(crate::registry::SetPolicy { policy });
    }

    /// What `penaltybox reload` over the admin connection runs (the
    /// binary's settings reload); set once the server runs.
    pub fn set_reloader(&self, reloader: Arc<dyn Reloader>) {
        let _ = self.shared.reloader.set(reloader);
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

/// A listening socket; IPv6 sockets are v6-only so that `0.0.0.0:5000` and
/// `[::]:5000` can both be bound, as the defaults do.
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}
