//! The `Session` actor: one accepted connection, from first byte to close.
//!
//! 1. Handshake under the slot's deadline (shorter under load): read the
//!    first message, classifying every read (foreign bytes are rejected on
//!    the read that brings them), check mac1 and run Noise, answer. Any
//!    rejection sends a `Ban` to the registry and drops the connection.
//!    Admission may evict a pending connection to make room: it closes, no
//!    ban.
//! 2. Within the same deadline, the first transport frame must arrive and
//!    authenticate; only then is the session established (its slot leaves
//!    the pending table) and does it tell the registry it is live
//!    (`SessionOpened`), so that a time-out of its prefix by any path can
//!    close it (`Kick`). The deadline passing, in step 1 or 2, is a
//!    `handshake-timeout` ban.
//! 3. Requests, one at a time, until the peer closes or goes idle. A frame
//!    that fails authentication or breaks a limit is a violation: `Ban`,
//!    drop. A response not taken by the peer within the write deadline
//!    closes the session (counted).
//!
//! A peer that closes without sending a byte is not banned: that is a TCP
//! health check or a connect scan, and neither costs us anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::prelude::*;
use model::ban::{BanCause, FirstBytes};
use protocol::connection::{Connection, ConnectionError};
use protocol::initiation::{ReadInitiationError, notice_with_time_out, read_initiation};
use protocol::message::ErrorCode;
use protocol::{Request, Response, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::admission::Slot;
use crate::policy::cause_of;
use crate::rate_limit::TokenBucket;
use crate::registry::{Ban, Kick, SessionClosed, SessionOpened};
use crate::requests;
use crate::shared::Shared;
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
    /// The client's static key (Noise IK); `None`: anonymous (NK).
    key: Option<protocol::PublicKey>,
    /// The connection slot, held until the session ends.
    slot: Slot,
    /// The first request, which authenticated the session.
    first: Request,
}

/// The socket send buffer of a session (the kernel doubles it): a few
/// responses' worth.
const SEND_BUFFER: usize = 128 * 1024;

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
            key,
            slot,
            first,
        } = established;
        let requester = requests::Requester {
            ip: peer.ip(),
            session: id,
            key,
        };
        let requests = async move {
            serve(&mut connection, peer, requester, &shared, role, first).await;
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

/// How an attempt to open a session ended when it did not open: one flat
/// list, each with the time-out it implies (if any).
#[derive(Debug, thiserror::Error)]
enum Unopened {
    #[error("closed to make room: the pending-handshake table is full")]
    Evicted,
    #[error("no complete handshake and first frame within {0:?}")]
    DeadlineMissed(std::time::Duration),
    #[error("rejected: {0}")]
    Rejected(protocol::Rejection),
    /// A penaltybox client: timed out already, and told so in a notice.
    #[error("rejected, and told so: {0}")]
    Noticed(protocol::Rejection),
    #[error("closed without sending anything")]
    ClosedSilent,
    #[error("closed after {0} bytes of a first message")]
    ClosedEarly(usize),
    #[error("read error during the handshake: {0}")]
    Io(std::io::Error),
    #[error("first frame: session violation: {0}")]
    Violation(protocol::frame::FrameError),
    #[error("closed after the handshake, before any request")]
    ClosedBeforeRequest,
}

impl Unopened {
    /// The time-out this ending earns, if any.
    fn ban_cause(&self) -> Option<BanCause> {
        match self {
            Unopened::DeadlineMissed(_) => Some(BanCause::HandshakeTimeout),
            Unopened::Rejected(rejection) => Some(cause_of(rejection)),
            Unopened::Violation(_) => Some(BanCause::SessionViolation),
            // Noticed: timed out before the notice was sent.
            Unopened::Noticed(_)
            | Unopened::Evicted
            | Unopened::ClosedSilent
            | Unopened::ClosedEarly(_)
            | Unopened::Io(_)
            | Unopened::ClosedBeforeRequest => None,
        }
    }

    /// The bytes worth keeping with its time-out: the first message's, for
    /// a rejected or stalled one; none for a bad frame.
    fn keeps_first_bytes(&self) -> bool {
        !matches!(self, Unopened::Violation(_))
    }
}

impl From<ReadInitiationError> for Unopened {
    fn from(error: ReadInitiationError) -> Self {
        match error {
            ReadInitiationError::Rejected(rejection) => Unopened::Rejected(rejection),
            ReadInitiationError::Closed(0) => Unopened::ClosedSilent,
            ReadInitiationError::Closed(n) => Unopened::ClosedEarly(n),
            ReadInitiationError::Io(error) => Unopened::Io(error),
        }
    }
}

/// What opening a session yields: the connection, its role, who the client
/// is, and its first request.
type Opened = (Connection<TcpStream>, Role, protocol::Peer, Request);

/// Steps 1 and 2: the handshake and the first transport frame, both within
/// the slot's deadline. Until the first frame has authenticated the
/// connection stays pending, so a replayed first message (answered, but
/// useless without the initiator's keys) never holds a session.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut slot: Slot,
) -> Option<Established> {
    let started = Instant::now();
    stream.set_nodelay(true).ok();
    // A bounded send queue: with the write deadline, a peer that does not
    // read cannot make us hold megabytes for it.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
    let mut seen = Vec::new();
    let deadline = slot.deadline;
    let opened = tokio::select! {
        biased;
        () = slot.evicted() => Err(Unopened::Evicted),
        result = timeout(deadline, open(stream, peer, shared, &slot, &mut seen)) => {
            result.unwrap_or(Err(Unopened::DeadlineMissed(deadline)))
        }
    };
    let (connection, role, who, first) = match opened {
        Ok(opened) => opened,
        Err(unopened) => {
            if matches!(unopened, Unopened::Evicted) {
                bump(&shared.stats.pending_evicted);
            }
            log::debug!("{peer}: {unopened}");
            if let Some(cause) = unopened.ban_cause() {
                let bytes = if unopened.keeps_first_bytes() {
                    &seen[..]
                } else {
                    &[]
                };
                ban(shared, peer, cause, bytes);
            }
            return None;
        }
    };
    slot.established();
    bump(&shared.stats.handshakes_completed);
    shared.stats.handshake_seconds.observe(started.elapsed());
    let key = match who {
        protocol::Peer::Key(key) => Some(key),
        protocol::Peer::Anonymous => None,
    };
    match (&key, role) {
        (Some(key), Role::Admin) => log::info!("{peer}: admin session, key {}", key.fingerprint()),
        (Some(key), _) => log::info!("{peer}: session, client key {}", key.fingerprint()),
        (None, _) => log::debug!("{peer}: anonymous session"),
    }
    Some(Established {
        connection,
        role,
        key,
        slot,
        first,
    })
}

/// Reads and answers the first message, then reads the first frame. A
/// rejected penaltybox client is timed out first and told for how long.
async fn open(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    slot: &Slot,
    seen: &mut Vec<u8>,
) -> Result<Opened, Unopened> {
    slot.reading(Instant::now());
    read_initiation(&mut stream, seen).await?;
    slot.heard(Instant::now());
    let accepted = match shared.responder.accept(seen) {
        Ok(accepted) => accepted,
        Err(rejection) => return Err(refuse(&mut stream, peer, shared, rejection, seen).await),
    };
    stream
        .write_all(&accepted.response)
        .await
        .map_err(Unopened::Io)?;
    let mut connection = Connection::new(stream, accepted.transport);
    match connection.receive::<Request>().await {
        Ok(Some(first)) => Ok((connection, accepted.role, accepted.peer, first)),
        Ok(None) | Err(ConnectionError::Truncated) | Err(ConnectionError::Io(_)) => {
            Err(Unopened::ClosedBeforeRequest)
        }
        Err(ConnectionError::Frame(error)) => Err(Unopened::Violation(error)),
    }
}

/// A rejected first message. A penaltybox client (one whose rejection has
/// a notice) is timed out first, so that the notice can say for how long
/// (its user would otherwise only see every next connection closed).
async fn refuse(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    rejection: protocol::Rejection,
    seen: &[u8],
) -> Unopened {
    let Some(notice) = rejection.notice() else {
        return Unopened::Rejected(rejection);
    };
    let timed_out = shared
        .registry
        .send(Ban {
            peer: peer.ip(),
            cause: cause_of(&rejection),
            first_bytes: FirstBytes::truncated(seen),
            detected_at: Instant::now(),
        })
        .await
        .ok()
        .flatten();
    // Best effort: the peer may already be gone.
    let _ = match timed_out {
        Some(secs) => stream.write_all(&notice_with_time_out(notice, secs)).await,
        None => stream.write_all(&notice).await,
    };
    Unopened::Noticed(rejection)
}

/// Step 3: answers `first`, then every request until the peer closes, goes
/// idle, breaks the protocol, or stops reading.
async fn serve(
    connection: &mut Connection<TcpStream>,
    peer: SocketAddr,
    requester: requests::Requester,
    shared: &Shared,
    role: Role,
    first: Request,
) {
    let service = &shared.service;
    let mut bucket = TokenBucket::new(
        service.requests_per_second,
        service.request_burst,
        Instant::now(),
    );
    let mut next = Some(first);
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match timeout(shared.deadlines().idle, connection.receive::<Request>()).await {
                Err(_) => {
                    log::debug!("{peer}: idle for {:?}, closing", shared.deadlines().idle);
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
            },
        };
        let response = if bucket.try_take(Instant::now()) {
            requests::handle(shared, role, requester, request).await
        } else {
            bump(&shared.stats.requests_rate_limited);
            Response::Error {
                code: ErrorCode::LimitExceeded,
                message: format!(
                    "too many requests: at most {} a second on one session (try again in {} ms)",
                    service.requests_per_second,
                    bucket.wait().as_millis().max(1)
                ),
            }
        };
        let write_deadline = shared.deadlines().write;
        match timeout(write_deadline, connection.send(&response)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                log::debug!("{peer}: cannot send a response: {error}");
                return;
            }
            Err(_) => {
                bump(&shared.stats.sessions_not_reading);
                log::info!(
                    "{peer}: closed: not reading its responses (none taken within {write_deadline:?})"
                );
                return;
            }
        }
    }
}

fn ban(shared: &Shared, peer: SocketAddr, cause: BanCause, first_bytes: &[u8]) {
    shared.registry.do_send(Ban {
        peer: peer.ip(),
        cause,
        first_bytes: FirstBytes::truncated(first_bytes),
        detected_at: Instant::now(),
    });
}
