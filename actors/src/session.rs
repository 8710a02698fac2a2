//! The `Session` actor: one accepted connection, from first byte to close.
//!
//! 1. Handshake under a deadline: read the first message, classifying every
//!    read (foreign bytes are rejected on the read that brings them), check
//!    mac1 and run Noise, answer. Any rejection, or the deadline passing,
//!    sends a `Ban` to the registry and drops the connection.
//! 2. Established: the session tells the registry it is live
//!    (`SessionOpened`), so that a time-out of its prefix by any path can
//!    close it (`Kick`).
//! 3. Requests, one at a time, until the peer closes or goes idle. A frame
//!    that fails authentication or breaks a limit is a violation: `Ban`,
//!    drop.
//!
//! A peer that closes without sending a byte is not banned: that is a TCP
//! health check or a connect scan, and neither costs us anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use model::ban::{BanCause, FirstBytes};
use protocol::connection::{Connection, ConnectionError};
use protocol::initiation::{ReadInitiationError, read_initiation};
use protocol::{Request, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::admission::Slot;
use crate::policy::cause_of;
use crate::registry::{Ban, Kick, SessionClosed, SessionOpened};
use crate::requests;
use crate::startup::Shared;
use crate::stats::bump;

/// Session ids, for the registry's roster.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Session {
    id: u64,
    stream: Option<std::net::TcpStream>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Option<Slot>,
    /// Past the handshake, and on the registry's roster.
    established: bool,
}

/// An established session, between the handshake and the request loop.
struct Established {
    connection: Connection<TcpStream>,
    role: Role,
    /// The connection slot, held until the session ends.
    slot: Slot,
}

impl Session {
    pub fn new(
        stream: std::net::TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        slot: Slot,
    ) -> Self {
        Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream: Some(stream),
            peer,
            shared,
            slot: Some(slot),
            established: false,
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        bump(&self.shared.stats.sessions_active);
        let (Some(stream), Some(slot)) = (self.stream.take(), self.slot.take()) else {
            return ctx.stop();
        };
        let shared = self.shared.clone();
        let peer = self.peer;
        // Registered with this (the worker's) event loop here, not in the
        // acceptor's: a socket belongs to the runtime that polls it.
        let handshake = async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => handshake(stream, peer, &shared, slot).await,
                Err(error) => {
                    log::warn!("{peer}: cannot register the connection: {error}");
                    None
                }
            }
        };
        ctx.spawn(
            handshake
                .into_actor(self)
                .map(|established, session, ctx| match established {
                    Some(established) => session.serve(established, ctx),
                    None => ctx.stop(),
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared
            .stats
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
        if self.established {
            self.shared.registry.do_send(SessionClosed {
                id: self.id,
                peer: self.peer.ip(),
            });
        }
    }
}

impl Session {
    /// Joins the roster, then answers requests until the connection ends.
    fn serve(&mut self, established: Established, ctx: &mut Context<Self>) {
        self.established = true;
        self.shared.registry.do_send(SessionOpened {
            id: self.id,
            peer: self.peer.ip(),
            session: ctx.address().recipient(),
        });
        let shared = self.shared.clone();
        let peer = self.peer;
        let id = self.id;
        let Established {
            mut connection,
            role,
            slot,
        } = established;
        let requests = async move {
            serve(&mut connection, peer, id, &shared, role).await;
            drop(slot);
        };
        ctx.spawn(requests.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

impl Handler<Kick> for Session {
    type Result = ();

    /// Stopping the actor drops the request loop and with it the socket.
    fn handle(&mut self, kick: Kick, ctx: &mut Self::Context) {
        bump(&self.shared.stats.sessions_kicked);
        log::info!(
            "{}: session closed: {} was timed out",
            self.peer,
            kick.prefix
        );
        ctx.stop();
    }
}

async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut slot: Slot,
) -> Option<Established> {
    stream.set_nodelay(true).ok();
    let mut seen = Vec::new();
    let exchange = async {
        read_initiation(&mut stream, &mut seen).await?;
        match shared.responder.accept(&seen) {
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
    let accepted = match timeout(shared.handshake_timeout, exchange).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(ReadInitiationError::Rejected(rejection))) => {
            log::debug!("{peer}: rejected: {rejection}");
            ban(shared, peer, cause_of(&rejection), &seen);
            return None;
        }
        Ok(Err(ReadInitiationError::Closed(0))) => {
            log::debug!("{peer}: closed without sending anything");
            return None;
        }
        Ok(Err(ReadInitiationError::Closed(n))) => {
            log::debug!("{peer}: closed after {n} bytes of a first message");
            return None;
        }
        Ok(Err(ReadInitiationError::Io(error))) => {
            log::debug!("{peer}: read error during the handshake: {error}");
            return None;
        }
        Err(_) => {
            log::debug!(
                "{peer}: no complete handshake within {:?}",
                shared.handshake_timeout
            );
            ban(shared, peer, BanCause::HandshakeTimeout, &seen);
            return None;
        }
    };
    // Only the pending-handshake slot is freed here; the connection slot
    // goes with the session.
    slot.handshake_done();
    bump(&shared.stats.handshakes_completed);
    log::debug!(
        "{peer}: session open ({:?}, {:?})",
        accepted.peer,
        accepted.role
    );
    Some(Established {
        connection: Connection::new(stream, accepted.transport),
        role: accepted.role,
        slot,
    })
}

async fn serve(
    connection: &mut Connection<TcpStream>,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    role: Role,
) {
    loop {
        let request = match timeout(shared.idle_timeout, connection.receive::<Request>()).await {
            Err(_) => {
                log::debug!("{peer}: idle for {:?}, closing", shared.idle_timeout);
                return;
            }
            Ok(Ok(None))
            | Ok(Err(ConnectionError::Truncated))
            | Ok(Err(ConnectionError::Io(_))) => return,
            Ok(Err(ConnectionError::Frame(error))) => {
                log::debug!("{peer}: session violation: {error}");
                return ban(shared, peer, BanCause::SessionViolation, &[]);
            }
            Ok(Ok(Some(request))) => request,
        };
        let requester = requests::Requester {
            ip: peer.ip(),
            session: id,
        };
        let response = requests::handle(shared, role, requester, request).await;
        if let Err(error) = connection.send(&response).await {
            log::debug!("{peer}: cannot send a response: {error}");
            return;
        }
    }
}

fn ban(shared: &Shared, peer: SocketAddr, cause: BanCause, first_bytes: &[u8]) {
    shared.registry.do_send(Ban {
        peer: peer.ip(),
        cause,
        first_bytes: FirstBytes::truncated(first_bytes),
    });
}
