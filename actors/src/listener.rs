//! Binding a listen address, the one way both the start and the binary's
//! check before it (that every address can be bound, before anything is
//! created on disk) do it, so that the check cannot pass where the start
//! would fail.

use std::io;
use std::net::SocketAddr;

/// A listening socket, non-blocking. IPv6 sockets are v6-only so that
/// `0.0.0.0:5000` and `[::]:5000` can both be bound, as the defaults do.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
