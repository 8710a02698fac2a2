//! The `Session` actor: one accepted connection, from first byte to close.
//!
//! 1. Handshake under a deadline: read the first message, classifying every
//!    read (foreign bytes are rejected on the read that brings them), check
//!    mac1 and run Noise, answer. Any rejection, or the deadline passing,
//!    sends a `Ban` to the registry and drops the connection.
//! 2. Requests, one at a time, until the peer closes or goes idle. A frame
//!    that fails authentication or breaks a limit is a violation: `Ban`,
//!    drop.
//!
//! A peer that closes without sending a byte is not banned: that is a TCP
//! health check or a connect scan, and neither costs us anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use protocol::connection::{Connection, ConnectionError};
use protocol::initiation::{ReadInitiationError, read_initiation};
use protocol::message::FirstBytes;
use protocol::{Request, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::limits::Slot;
use crate::policy::BanCause;
use crate::registry::Ban;
use crate::server::ServerContext;
use crate::service;
use crate::stats::bump;

pub struct Session {
    stream: Option<std::net::TcpStream>,
    peer: SocketAddr,
    server: Arc<ServerContext>,
    slot: Option<Slot>,
}

impl Session {
    pub fn new(
        stream: std::net::TcpStream,
        peer: SocketAddr,
        server: Arc<ServerContext>,
        slot: Slot,
    ) -> Self {
        Session {
            stream: Some(stream),
            peer,
            server,
            slot: Some(slot),
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        bump(&self.server.stats.sessions_active);
        let stream = self.stream.take().expect("started once");
        let slot = self.slot.take().expect("started once");
        let server = self.server.clone();
        let peer = self.peer;
        // Registered with this (the worker's) event loop here, not in the
        // acceptor's: a socket belongs to the runtime that polls it.
        let future = async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => run(stream, peer, &server, slot).await,
                Err(error) => log::warn!("{peer}: cannot register the connection: {error}"),
            }
        };
        ctx.spawn(future.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.server
            .stats
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(mut stream: TcpStream, peer: SocketAddr, server: &ServerContext, mut slot: Slot) {
    stream.set_nodelay(true).ok();
    let mut seen = Vec::new();
    let handshake = async {
        read_initiation(&mut stream, &mut seen).await?;
        match server.responder.accept(&seen) {
            Ok(accepted) => {
                stream.write_all(&accepted.response).await?;
                Ok(accepted)
            }
            Err(rejection) => {
                if let Some(notice) = rejection.notice() {
                    // Best effort: the peer may already be gone.
                    let _ = stream.write_all(&notice).await;
                }
                Err(ReadInitiationError::Rejected(rejection))
            }
        }
    };
    let accepted = match timeout(server.handshake_timeout, handshake).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(ReadInitiationError::Rejected(rejection))) => {
            log::debug!("{peer}: rejected: {rejection}");
            return ban(server, peer, BanCause::Rejected(rejection), &seen);
        }
        Ok(Err(ReadInitiationError::Closed(0))) => {
            log::debug!("{peer}: closed without sending anything");
            return;
        }
        Ok(Err(ReadInitiationError::Closed(n))) => {
            log::debug!("{peer}: closed after {n} bytes of a first message");
            return;
        }
        Ok(Err(ReadInitiationError::Io(error))) => {
            log::debug!("{peer}: read error during the handshake: {error}");
            return;
        }
        Err(_) => {
            log::debug!(
                "{peer}: no complete handshake within {:?}",
                server.handshake_timeout
            );
            return ban(server, peer, BanCause::HandshakeTimeout, &seen);
        }
    };
    slot.handshake_done();
    bump(&server.stats.handshakes_completed);
    log::debug!(
        "{peer}: session open ({:?}, {:?})",
        accepted.peer,
        accepted.role
    );

    let mut connection = Connection::new(stream, accepted.transport);
    serve(&mut connection, peer, server, accepted.role).await;
}

async fn serve(
    connection: &mut Connection<TcpStream>,
    peer: SocketAddr,
    server: &ServerContext,
    role: Role,
) {
    loop {
        let request = match timeout(server.idle_timeout, connection.receive::<Request>()).await {
            Err(_) => {
                log::debug!("{peer}: idle for {:?}, closing", server.idle_timeout);
                return;
            }
            Ok(Ok(None))
            | Ok(Err(ConnectionError::Truncated))
            | Ok(Err(ConnectionError::Io(_))) => return,
            Ok(Err(ConnectionError::Frame(error))) => {
                log::debug!("{peer}: session violation: {error}");
                return ban(server, peer, BanCause::SessionViolation, &[]);
            }
            Ok(Ok(Some(request))) => request,
        };
        let response = service::handle(server, role, request).await;
        if let Err(error) = connection.send(&response).await {
            log::debug!("{peer}: cannot send a response: {error}");
            return;
        }
    }
}

fn ban(server: &ServerContext, peer: SocketAddr, cause: BanCause, first_bytes: &[u8]) {
    server.registry.do_send(Ban {
        peer: peer.ip(),
        cause,
        first_bytes: FirstBytes::truncated(first_bytes),
    });
}
