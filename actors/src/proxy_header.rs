//! The PROXY protocol header a trusted load balancer sends before the
//! client's bytes (v1 text or v2 binary, as HAProxy, AWS NLB and nginx
//! send it). The `ppp` crate parses it; this module only takes exactly the
//! header's bytes off the socket, never one past it (what follows is the
//! client's first message), under the handshake deadline and a size limit
//! set before anything is allocated.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// v1: "PROXY " … "\r\n", at most 107 bytes (the spec's limit).
const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v2 addresses and TLVs we accept after the 16-byte fixed part: far
/// above what HAProxy or AWS NLB send (about 60 bytes with TLVs).
const V2_MAX_PAYLOAD: usize = 512;

/// Who the proxy says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedSource {
    /// A proxied client.
    Client(SocketAddr),
    /// The proxy's own connection (v2 LOCAL, v1 UNKNOWN: a health check).
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header (the connection began with {0:02x?})")]
    Missing(Vec<u8>),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
}

/// Reads the header under `deadline`.
pub async fn read(
    stream: &mut TcpStream,
    deadline: Duration,
) -> Result<ProxiedSource, ProxyHeaderError> {
    match tokio::time::timeout(deadline, read_header(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout(deadline)),
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxiedSource, ProxyHeaderError> {
    let mut head = [0u8; 16];
    read_exact(stream, &mut head[..8]).await?;
    if head[..6] == *b"PROXY " {
        let mut line = head[..8].to_vec();
        // One byte at a time: the line's end is where the client's bytes
        // begin, and nothing past it may be taken.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyHeaderError::TooLong(V1_MAX));
            }
            let mut byte = [0u8; 1];
            read_exact(stream, &mut byte).await?;
            line.push(byte[0]);
        }
        return parse_v1(&line);
    }
    if head[..8] != V2_SIGNATURE[..8] {
        return Err(ProxyHeaderError::Missing(head[..8].to_vec()));
    }
    read_exact(stream, &mut head[8..]).await?;
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing(head[..12].to_vec()));
    }
    let payload = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::TooLong(16 + V2_MAX_PAYLOAD));
    }
    let mut header = Vec::with_capacity(16 + payload);
    header.extend_from_slice(&head);
    header.resize(16 + payload, 0);
    read_exact(stream, &mut header[16..]).await?;
    parse_v2(&header)
}

async fn read_exact(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyHeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(_) => Err(ProxyHeaderError::Closed),
    }
}

/// A complete v1 line (ending in CRLF).
pub fn parse_v1(line: &[u8]) -> Result<ProxiedSource, ProxyHeaderError> {
    use ppp::v1::{Addresses, Header};
    let header =
        Header::try_from(line).map_err(|e| ProxyHeaderError::Malformed(format!("v1: {e:?}")))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => client(IpAddr::V4(a.source_address), a.source_port),
        Addresses::Tcp6(a) => client(IpAddr::V6(a.source_address), a.source_port),
        Addresses::Unknown => ProxiedSource::Proxy,
    })
}

/// A complete v2 header (fixed part and payload).
pub fn parse_v2(bytes: &[u8]) -> Result<ProxiedSource, ProxyHeaderError> {
    use ppp::v2::{Addresses, Command, Header};
    let header =
        Header::try_from(bytes).map_err(|e| ProxyHeaderError::Malformed(format!("v2: {e:?}")))?;
    if header.command == Command::Local {
        return Ok(ProxiedSource::Proxy);
    }
    match header.addresses {
        Addresses::IPv4(a) => Ok(client(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::IPv6(a) => Ok(client(IpAddr::V6(a.source_address), a.source_port)),
        Addresses::Unspecified => Ok(ProxiedSource::Proxy),
        Addresses::Unix(_) => Err(ProxyHeaderError::Malformed(
            "v2: a UNIX-socket source is no client address".into(),
        )),
    }
}

fn client(ip: IpAddr, port: u16) -> ProxiedSource {
    ProxiedSource::Client(SocketAddr::new(ip.to_canonical(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v1_and_v2_give_the_client() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 198.18.0.7 127.0.0.1 40000 5000\r\n"),
            Ok(ProxiedSource::Client("198.18.0.7:40000".parse().unwrap()))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 ::1 40000 5000\r\n"),
            Ok(ProxiedSource::Client(
                "[2001:db8::1]:40000".parse().unwrap()
            ))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(ProxiedSource::Proxy));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.18.0.9:41000".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:5000".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(
            parse_v2(&v2),
            Ok(ProxiedSource::Client("198.18.0.9:41000".parse().unwrap()))
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        for bad in [
            &b"PROXY TCP4 198.18.0.7 127.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 nonsense 127.0.0.1 1 2\r\n",
            b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{bad:?}");
        }
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(
            parse_v2(&v2).is_err(),
            "an IPv4 header with 4 address bytes"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&tail);
            let _ = parse_v1(&v1);
            let mut v2 = V2_SIGNATURE.to_vec();
            v2.extend_from_slice(&tail);
            let _ = parse_v2(&v2);
        }
    }
}
