//! The `Acceptor` actor, one per listen address.
//!
//! Every connection is accepted. A timed-out source costs one lookup in the
//! registry's view and a close with RST (SO_LINGER 0): nothing is read and
//! no server state lingers. Other connections get a limit slot and a
//! `Session` on the next worker arbiter.
//!
//! Accept errors such as EMFILE do not spin: the acceptor pauses, doubling
//! the pause up to a second, until accepting works again.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

use crate::now_ms;
use crate::session::Session;
use crate::startup::Shared;
use crate::stats::bump;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Acceptor {
    listener: Option<TcpListener>,
    local: SocketAddr,
    shared: Arc<Shared>,
    workers: Arc<Vec<ArbiterHandle>>,
    next_worker: usize,
    backoff: Duration,
    refusals: RateLimitedLog,
}

/// Stop accepting (shutdown); the listening socket closes with the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopAccepting;

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        shared: Arc<Shared>,
        workers: Arc<Vec<ArbiterHandle>>,
    ) -> io::Result<Self> {
        Ok(Acceptor {
            local: listener.local_addr()?,
            listener: Some(listener),
            shared,
            workers,
            next_worker: 0,
            backoff: MIN_BACKOFF,
            refusals: RateLimitedLog::new(Duration::from_secs(1)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn refuse(&mut self, stream: TcpStream, peer: SocketAddr, why: &str) {
        // SO_LINGER 0: close() sends RST and frees the socket at once.
        let _ = stream.set_zero_linger();
        drop(stream);
        if let Some(suppressed) = self.refusals.allow() {
            log::debug!(
                "{}: closed {peer} at accept: {why} ({suppressed} more since the last line)",
                self.local
            );
        }
    }
}

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let listener = self.listener.take().expect("started once");
        ctx.add_stream(TcpListenerStream::new(listener));
    }
}

impl StreamHandler<io::Result<TcpStream>> for Acceptor {
    fn handle(&mut self, accepted: io::Result<TcpStream>, ctx: &mut Self::Context) {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => return self.accept_failed(error, ctx),
        };
        self.backoff = MIN_BACKOFF;
        bump(&self.shared.stats.connections_accepted);
        let Ok(peer) = stream.peer_addr() else {
            return; // already reset by the peer
        };
        if let Some((prefix, _)) = self.shared.view.lookup(peer.ip(), now_ms())
            && !self.shared.is_allowed(peer.ip())
        {
            bump(&self.shared.stats.connections_refused);
            return self.refuse(stream, peer, &format!("timed out ({prefix})"));
        }
        let slot = match self.shared.admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(limit) => {
                bump(&self.shared.stats.connections_over_limit);
                return self.refuse(stream, peer, &format!("over limit: {limit:?}"));
            }
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => return log::warn!("{peer}: cannot hand the connection over: {error}"),
        };
        let worker = &self.workers[self.next_worker % self.workers.len()];
        self.next_worker = self.next_worker.wrapping_add(1);
        let shared = self.shared.clone();
        Session::start_in_arbiter(worker, move |_| Session::new(stream, peer, shared, slot));
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Acceptor {
    fn accept_failed(&mut self, error: io::Error, ctx: &mut Context<Self>) {
        let resource_exhausted = error
            .raw_os_error()
            .is_some_and(|code| RESOURCE_ERRORS.contains(&code));
        if !resource_exhausted {
            // ECONNABORTED and friends: that one connection is gone.
            log::debug!("{}: accept: {error}", self.local);
            return;
        }
        log::warn!(
            "{}: accept: {error}; pausing {:?}",
            self.local,
            self.backoff
        );
        // `wait` holds back every event of this actor, the listener stream
        // included, until the pause is over.
        ctx.wait(actix::clock::sleep(self.backoff).into_actor(self));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM (Linux numbers): out of a resource,
/// where retrying at once would spin.
const RESOURCE_ERRORS: [i32; 4] = [24, 23, 105, 12];

impl Handler<StopAccepting> for Acceptor {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, ctx: &mut Self::Context) {
        log::info!("{}: no longer accepting", self.local);
        ctx.stop();
    }
}

/// Allows one line per interval; reports how many were held back.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
