//! # penaltybox-replay
//!
//! Replays captured traffic against a live server: reads a capture (pcap or
//! pcapng, with the `pcap-file` crate; headers with `etherparse`), splits it
//! into TCP streams, and sends each stream's client-to-server payload, in its
//! original segments, from a source address of our choosing. Reports what
//! the server did with each stream.
//!
//! Used by the fixture tests and by `penaltybox replay`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

/// The most payload one stream may carry; captures are test inputs, and a
/// bigger one is more likely a wrong file than a scanner.
const MAX_STREAM_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a pcap or pcapng capture: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error(
        "{path}: link type {link:?} is not supported (Ethernet, raw IP or Linux cooked captures are)"
    )]
    LinkType { path: PathBuf, link: DataLink },
    #[error("{path}: a stream carries more than {MAX_STREAM_BYTES} bytes")]
    TooBig { path: PathBuf },
    #[error("cannot connect from {source_addr} to {server}: {error}")]
    Connect {
        source_addr: String,
        server: SocketAddr,
        error: std::io::Error,
    },
}

/// The client side of one captured TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Payload segments in capture order, retransmissions removed.
    pub segments: Vec<Vec<u8>>,
    /// The client closed its side (sent FIN) in the capture.
    pub client_closed: bool,
}

impl Stream {
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }
}

/// What the server did with a replayed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Closed (or reset) before we sent anything: the source was timed out.
    RefusedAtAccept,
    /// Closed after we sent `sent` bytes; `answer` is what it sent first.
    Closed { sent: usize, answer: Vec<u8> },
    /// Still open when we stopped waiting: a session the server kept.
    Open { sent: usize, answer: Vec<u8> },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::RefusedAtAccept => {
                write!(f, "refused at accept (closed before anything was sent)")
            }
            Outcome::Closed { sent, answer } => {
                write!(
                    f,
                    "closed by the server after {sent} bytes sent, {} bytes answered",
                    answer.len()
                )
            }
            Outcome::Open { sent, answer } => {
                write!(
                    f,
                    "served: still open after {sent} bytes sent, {} bytes answered",
                    answer.len()
                )
            }
        }
    }
}

/// Reads the TCP streams of a capture, in the order their SYNs appear.
/// Only the client-to-server direction is kept: that is what a replay sends.
pub fn read_streams(path: &Path) -> Result<Vec<Stream>, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut magic = [0u8; 4];
    BufReader::new(&file)
        .read_exact(&mut magic)
        .map_err(|source| ReplayError::Open {
            path: path.to_owned(),
            source,
        })?;
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.to_owned(),
        source,
    })?;
    let format = |e: pcap_file::PcapError| ReplayError::Format {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let mut assembler = Assembler::default();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(BufReader::new(file)).map_err(format)?;
        let mut links = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.map_err(format)? {
                Block::InterfaceDescription(interface) => links.push(interface.linktype),
                Block::EnhancedPacket(packet) => {
                    let link = links
                        .get(packet.interface_id as usize)
                        .copied()
                        .unwrap_or(DataLink::ETHERNET);
                    assembler.add(path, link, &packet.data)?;
                }
                _ => {}
            }
        }
    } else {
        let mut reader = PcapReader::new(BufReader::new(file)).map_err(format)?;
        let link = reader.header().datalink;
        while let Some(packet) = reader.next_packet() {
            assembler.add(path, link, &packet.map_err(format)?.data)?;
        }
    }
    Ok(assembler.finish())
}

#[derive(Default)]
struct Assembler {
    /// (client, server) → stream index and the next sequence number expected.
    open: HashMap<(SocketAddr, SocketAddr), (usize, Option<u32>)>,
    streams: Vec<Stream>,
}

impl Assembler {
    fn add(&mut self, path: &Path, link: DataLink, data: &[u8]) -> Result<(), ReplayError> {
        let sliced = match link {
            DataLink::ETHERNET => SlicedPacket::from_ethernet(data),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data),
            DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data),
            other => {
                return Err(ReplayError::LinkType {
                    path: path.to_owned(),
                    link: other,
                });
            }
        };
        // Packets that do not parse (truncated, non-IP) are not TCP payload.
        let Ok(sliced) = sliced else { return Ok(()) };
        let (source, destination) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            ),
            _ => return Ok(()),
        };
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            return Ok(());
        };
        let from = SocketAddr::new(source, tcp.source_port());
        let to = SocketAddr::new(destination, tcp.destination_port());
        if tcp.syn() && !tcp.ack() {
            // A new connection: the SYN's sender is the client.
            self.streams.push(Stream {
                client: from,
                server: to,
                segments: Vec::new(),
                client_closed: false,
            });
            self.open.insert(
                (from, to),
                (
                    self.streams.len() - 1,
                    Some(tcp.sequence_number().wrapping_add(1)),
                ),
            );
            return Ok(());
        }
        let Some((index, next)) = self.open.get_mut(&(from, to)) else {
            return Ok(()); // server to client, or a stream whose SYN we missed
        };
        if tcp.fin() {
            self.streams[*index].client_closed = true;
        }
        let payload = tcp.payload();
        if payload.is_empty() {
            return Ok(());
        }
        let seq = tcp.sequence_number();
        // Drop retransmissions: anything starting before what we have.
        if let Some(expected) = *next
            && (seq.wrapping_sub(expected) as i32) < 0
        {
            return Ok(());
        }
        *next = Some(seq.wrapping_add(payload.len() as u32));
        let stream = &mut self.streams[*index];
        if stream.bytes() + payload.len() > MAX_STREAM_BYTES {
            return Err(ReplayError::TooBig {
                path: path.to_owned(),
            });
        }
        stream.segments.push(payload.to_vec());
        Ok(())
    }

    fn finish(self) -> Vec<Stream> {
        self.streams
    }
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The live server.
    pub server: SocketAddr,
    /// Source address to connect from.
    pub bind: Option<IpAddr>,
    /// Pause between segments, so that they arrive as separate reads.
    pub gap: Duration,
    /// How long to wait for the server after the last segment.
    pub wait: Duration,
}

impl ReplayOptions {
    pub fn new(server: SocketAddr) -> Self {
        ReplayOptions {
            server,
            bind: None,
            gap: Duration::from_millis(20),
            wait: Duration::from_millis(1500),
        }
    }
}

/// Replays one stream's client payload and reports what the server did.
pub fn replay_stream(stream: &Stream, options: &ReplayOptions) -> Result<Outcome, ReplayError> {
    let connect_error = |error| ReplayError::Connect {
        source_addr: options.bind.map_or("any address".into(), |b| b.to_string()),
        server: options.server,
        error,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(options.server),
        socket2::Type::STREAM,
        None,
    )
    .map_err(connect_error)?;
    if let Some(bind) = options.bind {
        socket
            .bind(&SocketAddr::new(bind, 0).into())
            .map_err(connect_error)?;
    }
    match socket.connect_timeout(&options.server.into(), Duration::from_secs(5)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Outcome::RefusedAtAccept),
        Err(e) => return Err(connect_error(e)),
    }
    let mut connection: TcpStream = socket.into();
    // A server that refuses at accept resets at once: look before sending.
    connection
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(connect_error)?;
    let mut answer = Vec::new();
    if closed(&mut connection, &mut answer) && answer.is_empty() {
        return Ok(Outcome::RefusedAtAccept);
    }
    let mut sent = 0;
    for segment in &stream.segments {
        if connection.write_all(segment).is_err() {
            return Ok(Outcome::Closed { sent, answer });
        }
        sent += segment.len();
        std::thread::sleep(options.gap);
        if closed(&mut connection, &mut answer) {
            return Ok(Outcome::Closed { sent, answer });
        }
    }
    if stream.client_closed {
        // As the captured client did: no more data from us.
        let _ = connection.shutdown(std::net::Shutdown::Write);
    }
    let deadline = Instant::now() + options.wait;
    while Instant::now() < deadline {
        if closed(&mut connection, &mut answer) {
            return Ok(Outcome::Closed { sent, answer });
        }
    }
    Ok(Outcome::Open { sent, answer })
}

/// Reads what is there (up to the read timeout); true if the server closed.
fn closed(connection: &mut TcpStream, answer: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match connection.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => answer.extend_from_slice(&buf[..n.min(4096)]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name)
    }

    #[test]
    fn splits_captures_into_client_streams() {
        let streams = read_streams(&fixture("ssh-banner.pcap")).unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].server.port(), 5000);
        assert!(streams[0].segments[0].starts_with(b"SSH-2.0-"));

        let nmap = read_streams(&fixture("nmap-sv.pcap")).unwrap();
        assert!(nmap.len() >= 3, "{} streams", nmap.len());
        assert!(nmap[0].segments.is_empty(), "the NULL probe sends nothing");

        let empty = read_streams(&fixture("empty-connection.pcap")).unwrap();
        assert_eq!((empty.len(), empty[0].bytes()), (1, 0));
        assert!(empty[0].client_closed, "nc -z closes with a FIN");
    }

    #[test]
    fn rejects_files_that_are_not_captures() {
        let error = read_streams(&fixture("README.md")).unwrap_err();
        assert!(matches!(error, ReplayError::Format { .. }), "{error}");
        let error = read_streams(&fixture("no-such.pcap")).unwrap_err();
        assert!(matches!(error, ReplayError::Open { .. }), "{error}");
    }
}
