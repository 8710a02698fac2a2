//! Starting and stopping the whole server inside an actix `System`:
//! restore the ban table, start the registry, the worker arbiters for
//! sessions, and one acceptor per listen address.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::Arbiter;
use protocol::{AccessPolicy, PrivateKey, Responder};
use storage::Store;

use crate::acceptor::{Acceptor, StopAccepting};
use crate::limits::{LimitConfig, Limits};
use crate::policy::BanPolicy;
use crate::registry::{BanRegistry, BootReport, Flush};
use crate::stats::Stats;
use crate::view::BanView;

/// Everything the server needs, already parsed and validated.
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub server_key: PrivateKey,
    pub access: AccessPolicy,
    pub policy: BanPolicy,
    pub limits: LimitConfig,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Worker threads (arbiters) running sessions.
    pub workers: usize,
    /// The kernel tier's table, when there is one.
    pub kernel: Option<Box<dyn crate::kernel::KernelSync>>,
}

/// What every session shares.
pub struct ServerContext {
    pub responder: Responder,
    pub registry: Addr<BanRegistry>,
    pub store: Store,
    pub view: Arc<BanView>,
    pub stats: Arc<Stats>,
    pub limits: Arc<Limits>,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

pub struct RunningServer {
    /// The bound addresses (a `:0` port resolved).
    pub local_addrs: Vec<SocketAddr>,
    pub boot: BootReport,
    pub context: Arc<ServerContext>,
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
    let (registry, boot) = BanRegistry::restore(
        config.policy,
        store.clone(),
        view.clone(),
        stats.clone(),
        config.kernel,
    )?;
    let registry = registry.start();

    let context = Arc::new(ServerContext {
        responder: Responder::new(&config.server_key, config.access),
        registry,
        store,
        view,
        stats,
        limits: Limits::new(config.limits),
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
    });
    let workers: Vec<Arbiter> = (0..config.workers.max(1)).map(|_| Arbiter::new()).collect();
    let handles = Arc::new(workers.iter().map(Arbiter::handle).collect::<Vec<_>>());

    let mut local_addrs = Vec::new();
    let mut acceptors = Vec::new();
    for listener in listeners {
        let acceptor =
            Acceptor::new(listener, context.clone(), handles.clone()).map_err(|source| {
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
        context,
        acceptors,
        workers,
    })
}

impl RunningServer {
    /// Stops accepting, makes every ban durable, stops the workers.
    pub async fn shutdown(self) {
        for acceptor in &self.acceptors {
            let _ = acceptor.send(StopAccepting).await;
        }
        let _ = self.context.registry.send(Flush).await;
        for worker in self.workers {
            worker.stop();
            let _ = worker.join();
        }
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
