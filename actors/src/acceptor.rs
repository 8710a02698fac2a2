//! The `Acceptor` actor, one per listen address.
//!
//! Every connection is accepted. A timed-out source costs one lookup in the
//! registry's view and a close with RST (SO_LINGER 0): nothing is read and
//! no server state lingers (allow-listed sources are never refused). Other
//! connections get an admission slot and a `Session` on the next worker
//! arbiter. A connection over a limit is told so in a two-byte notice
//! ("server busy", "too many connections from your address"), never left to
//! think it was timed out; refusals and evictions are summed up in one log
//! line a second.
//!
//! A connection from a trusted proxy (`proxy.trusted`) first has its PROXY
//! header read (under the handshake deadline); everything after, the
//! time-out check included, is about the client the header names.
//!
//! Accept errors such as EMFILE do not spin: the acceptor pauses, doubling
//! the pause up to a second, until accepting works again.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use protocol::initiation::Notice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

use crate::now_ms;
use crate::session::Session;
use crate::shared::Shared;
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
    load: LoadReport,
    /// Notices being delivered (each holds its socket up to NOTICE_LINGER).
    lingering: Rc<Cell<usize>>,
    /// PROXY headers being read from trusted proxies.
    reading_headers: Rc<Cell<usize>>,
    /// Bad PROXY headers, one log line a second.
    header_errors: RateLimitedLog,
}

/// Refusals and evictions since the last summary line.
#[derive(Default)]
struct LoadReport {
    at_connection_limit: u64,
    over_source_limit: u64,
    evicted: u64,
}

/// How long a refused connection is kept to deliver its notice.
const NOTICE_LINGER: Duration = Duration::from_millis(500);
/// At most this many notices in flight; past it, refusals are plain resets.
const MAX_LINGERING: usize = 256;
const LOAD_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// PROXY headers read at once (each under the handshake deadline); past
/// it, a trusted proxy's new connections are dropped, counted.
const MAX_HEADER_READS: usize = 4096;

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
            load: LoadReport::default(),
            lingering: Rc::new(Cell::new(0)),
            reading_headers: Rc::new(Cell::new(0)),
            header_errors: RateLimitedLog::new(Duration::from_secs(1)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Writes `notice`, closes the write side (FIN), and drains what the
    /// client sent for a moment, so that the close carries no RST that
    /// could discard the notice before the client reads it.
    fn refuse_with_notice(&mut self, stream: TcpStream, peer: SocketAddr, notice: [u8; 2]) {
        if self.lingering.get() >= MAX_LINGERING {
            return self.refuse(stream, peer, "over a limit (no notice: too many in flight)");
        }
        self.lingering.set(self.lingering.get() + 1);
        let lingering = self.lingering.clone();
        actix::spawn(async move {
            let mut stream = stream;
            let _ = stream.try_write(&notice);
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 512];
            let _ = actix::clock::timeout(NOTICE_LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            lingering.set(lingering.get().saturating_sub(1));
        });
    }

    fn report_load(&mut self) {
        let load = std::mem::take(&mut self.load);
        if load.at_connection_limit + load.over_source_limit + load.evicted > 0 {
            log::info!(
                "{}: under load in the last second: refused {} connections at the connection limit and {} over a per-source limit; closed {} pending connections to make room",
                self.local,
                load.at_connection_limit,
                load.over_source_limit,
                load.evicted
            );
        }
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
        ctx.run_interval(LOAD_REPORT_INTERVAL, |acceptor, _| acceptor.report_load());
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
        if self.shared.is_trusted_proxy(peer.ip()) {
            return self.read_proxy_header(stream, peer, ctx);
        }
        self.admit(stream, peer);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Acceptor {
    /// A source that passed the proxy step (if any): refused at once if it
    /// is timed out, else given an admission slot and a session.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if let Some((prefix, _)) = self.shared.view.lookup(peer.ip(), now_ms())
            && !self.shared.allow.contains(peer.ip())
        {
            bump(&self.shared.stats.connections_refused);
            return self.refuse(stream, peer, &format!("timed out ({prefix})"));
        }
        let source = self.shared.source_of(peer.ip());
        let sent_data = has_data_waiting(&stream);
        let deadline = self.shared.deadlines().handshake;
        let slot = match self
            .shared
            .admission
            .admit(source, deadline, sent_data, Instant::now())
        {
            Ok(admitted) => {
                if admitted.evicted_another {
                    self.load.evicted += 1;
                }
                admitted.slot
            }
            Err(limit) => {
                bump(&self.shared.stats.connections_over_limit);
                if limit.is_per_source() {
                    self.load.over_source_limit += 1;
                } else {
                    self.load.at_connection_limit += 1;
                }
                let notice = Notice::over_limit(limit.is_per_source());
                return self.refuse_with_notice(stream, peer, notice);
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

    /// A trusted proxy's connection: its PROXY header names the client,
    /// which is then admitted as if it had connected itself (time-out
    /// check included). A missing or malformed header drops the
    /// connection, counted; the proxy is never timed out.
    fn read_proxy_header(&mut self, stream: TcpStream, proxy: SocketAddr, ctx: &mut Context<Self>) {
        if self.reading_headers.get() >= MAX_HEADER_READS {
            bump(&self.shared.stats.proxy_header_rejected);
            return self.refuse(stream, proxy, "too many PROXY headers being read");
        }
        self.reading_headers.set(self.reading_headers.get() + 1);
        let deadline = self.shared.deadlines().handshake;
        let read = async move {
            let mut stream = stream;
            let result = crate::proxy_header::read(&mut stream, deadline).await;
            (stream, result)
        };
        ctx.spawn(read.into_actor(self).map(move |(stream, result), acceptor, _| {
            let reading = &acceptor.reading_headers;
            reading.set(reading.get().saturating_sub(1));
            match result {
                Ok(crate::proxy_header::ProxiedSource::Client(client)) => {
                    acceptor.admit(stream, client)
                }
                // The proxy's own connection (a health check): served as
                // itself; it is allow-listed, never timed out.
                Ok(crate::proxy_header::ProxiedSource::Proxy) => acceptor.admit(stream, proxy),
                Err(error) => {
                    bump(&acceptor.shared.stats.proxy_header_rejected);
                    if let Some(suppressed) = acceptor.header_errors.allow() {
                        log::warn!(
                            "{}: dropped a connection from trusted proxy {proxy}: {error} ({suppressed} more since the last line)",
                            acceptor.local
                        );
                    }
                    let _ = stream.set_zero_linger();
                }
            }
        }));
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

/// Bytes are waiting on the socket (a non-blocking one-byte peek).
fn has_data_waiting(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
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
