//! The async client: connect (optionally from a chosen source address),
//! handshake under a deadline, then request/response calls.
//!
//! Runs on any tokio runtime, actix-rt's included. Every failure is a
//! `ClientError` whose message is one line a user can act on.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::connection::{Connection, ConnectionError};
use crate::handshake::{HandshakeError, Initiator, RESPONSE_LEN, Role};
use crate::initiation::Notice;
use crate::keys::{PrivateKey, PublicKey};
use crate::message::{Request, Response};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's static public key, pinned: a server that does not hold the
    /// matching private key cannot complete the handshake.
    pub server_key: PublicKey,
    /// With a key the handshake is Noise IK (the server sees who we are);
    /// without, NK (anonymous).
    pub client_key: Option<PrivateKey>,
    /// Local address to connect from.
    pub bind: Option<IpAddr>,
    pub connect_deadline: Duration,
    pub handshake_deadline: Duration,
    pub request_deadline: Duration,
}

impl ClientConfig {
    pub fn new(server_key: PublicKey) -> Self {
        ClientConfig {
            server_key,
            client_key: None,
            bind: None,
            connect_deadline: Duration::from_secs(5),
            handshake_deadline: Duration::from_secs(5),
            request_deadline: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {server}: {source}")]
    Resolve {
        server: String,
        source: std::io::Error,
    },
    #[error("{server} resolves to no address{family}", family = if *.bind_filtered { " of the --bind address's family" } else { "" })]
    NoAddress { server: String, bind_filtered: bool },
    #[error("cannot bind to {addr}: {source}")]
    Bind {
        addr: IpAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: no answer within {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("{addr} did not complete the handshake within {after:?}")]
    HandshakeTimeout { addr: SocketAddr, after: Duration },
    #[error("{addr} rejected the handshake: {notice}{}", time_out_text(*timed_out))]
    Rejected {
        addr: SocketAddr,
        notice: Notice,
        /// The time-out the rejection put this address in, if the server
        /// said (no new connection will be served before it ends).
        timed_out: Option<Duration>,
    },
    #[error(
        "{addr} closed the connection during the handshake: this source address is probably timed out, or it is not a penaltybox server"
    )]
    ClosedDuringHandshake { addr: SocketAddr },
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: HandshakeError,
    },
    #[error("the server closed the connection")]
    Closed,
    #[error("no response within {0:?}")]
    RequestTimeout(Duration),
    #[error("{0}")]
    Connection(#[from] ConnectionError),
}

pub struct Client {
    connection: Connection<TcpStream>,
    role: Role,
    request_deadline: Duration,
}

impl Client {
    /// Resolves `server` (HOST:PORT) and connects to the first address that
    /// answers, then runs the handshake.
    ///
    /// Send the first request at once: a penaltybox server counts a session
    /// as established only when its first request has authenticated, and a
    /// connection without one by the handshake deadline (5 s by default,
    /// shorter under load) is a `handshake-timeout`, which times the
    /// client's address out.
    pub async fn connect(server: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
            .await
            .map_err(|source| ClientError::Resolve {
                server: server.to_owned(),
                source,
            })?
            .filter(|addr| {
                config
                    .bind
                    .is_none_or(|bind| bind.is_ipv4() == addr.is_ipv4())
            })
            .collect();
        let mut last_error = None;
        for addr in addrs {
            match Self::connect_addr(addr, config).await {
                Ok(client) => return Ok(client),
                Err(error @ (ClientError::Connect { .. } | ClientError::ConnectTimeout { .. })) => {
                    last_error = Some(error)
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(ClientError::NoAddress {
            server: server.to_owned(),
            bind_filtered: config.bind.is_some(),
        }))
    }

    pub async fn connect_addr(
        addr: SocketAddr,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| ClientError::Connect { addr, source })?;
        if let Some(bind) = config.bind {
            socket
                .bind(SocketAddr::new(bind, 0))
                .map_err(|source| ClientError::Bind { addr: bind, source })?;
        }
        let mut stream = timeout(config.connect_deadline, socket.connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr,
                after: config.connect_deadline,
            })?
            .map_err(|source| match source.kind() {
                // Accepted, then reset at once: what a timed-out source sees.
                ErrorKind::ConnectionReset => ClientError::ClosedDuringHandshake { addr },
                _ => ClientError::Connect { addr, source },
            })?;
        stream.set_nodelay(true).ok();

        let (transport, role) = timeout(
            config.handshake_deadline,
            handshake(&mut stream, addr, config),
        )
        .await
        .map_err(|_| ClientError::HandshakeTimeout {
            addr,
            after: config.handshake_deadline,
        })??;
        Ok(Client {
            connection: Connection::new(stream, transport),
            role,
            request_deadline: config.request_deadline,
        })
    }

    /// The role the server granted this session.
    pub fn role(&self) -> Role {
        self.role
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.connection.get_ref().local_addr()
    }

    /// Sends one request and waits for its response.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let exchange = async {
            self.connection.send(request).await?;
            self.connection.receive::<Response>().await
        };
        match timeout(self.request_deadline, exchange).await {
            Err(_) => Err(ClientError::RequestTimeout(self.request_deadline)),
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) | Ok(Err(ConnectionError::Truncated)) => Err(ClientError::Closed),
            Ok(Err(ConnectionError::Io(e))) if is_closed(&e) => Err(ClientError::Closed),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

async fn handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<(crate::frame::Transport, Role), ClientError> {
    let (initiator, message) = Initiator::start(&config.server_key, config.client_key.as_ref())
        .map_err(|source| ClientError::Handshake { addr, source })?;
    let closed = |e: std::io::Error| {
        if is_closed(&e) {
            ClientError::ClosedDuringHandshake { addr }
        } else {
            ClientError::Connect { addr, source: e }
        }
    };
    stream.write_all(&message).await.map_err(closed)?;

    let mut response = [0u8; RESPONSE_LEN];
    let mut filled = 0;
    while filled < RESPONSE_LEN {
        let n = stream.read(&mut response[filled..]).await.map_err(closed)?;
        if n == 0 {
            return Err(match Notice::parse_with_time_out(&response[..filled]) {
                Some((notice, timed_out)) => ClientError::Rejected {
                    addr,
                    notice,
                    timed_out,
                },
                None => ClientError::ClosedDuringHandshake { addr },
            });
        }
        filled += n;
    }
    initiator
        .finish(&response)
        .map_err(|source| ClientError::Handshake { addr, source })
}

fn time_out_text(timed_out: Option<Duration>) -> String {
    match timed_out {
        Some(left) => format!(
            ", and this address is now timed out for {}",
            humantime_secs(left)
        ),
        None => String::new(),
    }
}

/// "1m", "15m", "1h 30m": whole seconds, the largest units first.
fn humantime_secs(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 {
        parts.push(format!("{m}m"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s}s"));
    }
    parts.join(" ")
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}
