//! A byte stream after the handshake: sends and receives whole messages as
//! frames. Shared by the client and the server's sessions, so both sides
//! read frames with the same limits.

use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{FrameError, LEN_PREFIX, MAX_FRAME_LEN, Transport, frame_len};

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

pub struct Connection<S> {
    stream: S,
    transport: Transport,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, transport: Transport) -> Self {
        Connection {
            stream,
            transport,
            read_buf: Vec::new(),
            write_buf: Vec::new(),
        }
    }

    pub async fn send<M: Encode>(&mut self, message: &M) -> Result<(), ConnectionError> {
        self.write_buf.clear();
        self.transport.seal(message, &mut self.write_buf)?;
        self.stream.write_all(&self.write_buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message, or `None` if the peer closed cleanly between frames.
    pub async fn receive<M: Decode<()>>(&mut self) -> Result<Option<M>, ConnectionError> {
        let mut prefix = [0u8; LEN_PREFIX];
        let first = self.stream.read(&mut prefix[..1]).await?;
        if first == 0 {
            return Ok(None);
        }
        read_exact_or_truncated(&mut self.stream, &mut prefix[1..]).await?;
        let len = frame_len(prefix)?;
        debug_assert!(len <= MAX_FRAME_LEN);
        self.read_buf.resize(len, 0);
        read_exact_or_truncated(&mut self.stream, &mut self.read_buf).await?;
        Ok(Some(self.transport.open(&self.read_buf)?))
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

async fn read_exact_or_truncated<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ConnectionError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ConnectionError::Truncated),
        Err(e) => Err(e.into()),
    }
}
