//! Transport frames: what follows a completed handshake, both ways.
//!
//! ```text
//! offset  size  field
//! 0       4     length L of the ciphertext, big-endian; 17 <= L <= 65535
//! 4       L     Noise transport message: ChaCha20-Poly1305 under the session
//!               key, nonce = count of frames before it in this direction,
//!               16-byte tag at the end. Plaintext:
//!                 0   1     flags: bit 0 = body is snappy (raw) compressed; others 0
//!                 1   ...   body: bincode-2 (standard config) Request or Response
//! ```
//!
//! The nonce is implicit, so a replayed, reordered, dropped, truncated or
//! tampered frame fails authentication and ends the session. Every size is
//! checked before anything is allocated: the length prefix against
//! [`MAX_FRAME_LEN`], the snappy header against [`MAX_MESSAGE_LEN`], and
//! bincode decodes with the same limit.

use bincode::config::{Config, standard};
use bincode::{Decode, Encode};

/// Size of the big-endian length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest ciphertext of one frame: Noise's message limit.
pub const MAX_FRAME_LEN: usize = 65_535;
pub const TAG_LEN: usize = 16;
/// Smallest valid ciphertext: the flags byte and the tag.
pub const MIN_FRAME_LEN: usize = 1 + TAG_LEN;
/// Largest encoded message, before compression. Senders keep under it (lists
/// are paginated), so compression only ever saves bandwidth.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN - TAG_LEN - 1;
/// Bodies shorter than this are sent as they are: snappy cannot shrink them
/// enough to pay for trying.
pub const COMPRESS_MIN_LEN: usize = 64;
const FLAG_SNAPPY: u8 = 0b0000_0001;

/// Most memory one decoded message may claim. bincode counts the in-memory
/// size of every collection it allocates (a `Vec<Volume>` of n entries
/// claims n × size_of::<Volume>()), so this is larger than the wire limit.
pub const MAX_DECODED_MEMORY: usize = 1 << 20;

/// The bincode configuration of every body, with the decode limit that
/// bounds what a hostile length field inside a body can make us allocate.
pub fn wire_config() -> impl Config {
    standard().with_limit::<MAX_DECODED_MEMORY>()
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME_LEN}")]
    TooLong(u64),
    #[error("frame length {0} is below the minimum of {MIN_FRAME_LEN}")]
    TooShort(usize),
    #[error("frame failed authentication (tampered, truncated, replayed or reordered)")]
    Decrypt,
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    #[error("compressed body is corrupt")]
    Decompress,
    #[error("message of {0} bytes exceeds the maximum of {MAX_MESSAGE_LEN}")]
    MessageTooLong(usize),
    #[error("message does not fit in one frame (more than {MAX_MESSAGE_LEN} bytes encoded)")]
    DoesNotFit,
    #[error("body does not decode: {0}")]
    Decode(String),
    #[error("body has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Reads a length prefix. This is the allocation guard: a caller allocates
/// the returned length, never the raw prefix.
pub fn frame_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len as u64));
    }
    if len < MIN_FRAME_LEN {
        return Err(FrameError::TooShort(len));
    }
    Ok(len)
}

/// One direction-pair of session keys with reusable buffers, so that sealing
/// and opening allocate nothing once warmed up.
pub struct Transport {
    state: snow::TransportState,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl Transport {
    pub(crate) fn new(state: snow::TransportState) -> Self {
        Transport {
            state,
            plain: Vec::new(),
            scratch: Vec::new(),
            encoder: snap::raw::Encoder::new(),
        }
    }

    /// Encodes, maybe compresses, and encrypts `message`, appending the whole
    /// frame (prefix included) to `out`.
    pub fn seal<M: Encode>(&mut self, message: &M, out: &mut Vec<u8>) -> Result<(), FrameError> {
        // Encoding into a slice is markedly faster than through io::Write.
        // The buffer keeps its full size between calls, so this zero-fills
        // only once per transport.
        self.plain.resize(1 + MAX_MESSAGE_LEN, 0);
        self.plain[0] = 0;
        let body_len = bincode::encode_into_slice(message, &mut self.plain[1..], wire_config())
            .map_err(|e| match e {
                bincode::error::EncodeError::UnexpectedEnd => FrameError::DoesNotFit,
                other => FrameError::Encode(other.to_string()),
            })?;

        let mut payload: &[u8] = &self.plain[..1 + body_len];
        if body_len >= COMPRESS_MIN_LEN {
            self.scratch
                .resize(1 + snap::raw::max_compress_len(body_len), 0);
            self.scratch[0] = FLAG_SNAPPY;
            let compressed = self
                .encoder
                .compress(&self.plain[1..1 + body_len], &mut self.scratch[1..])
                .map_err(|e| FrameError::Encode(e.to_string()))?;
            if compressed < body_len {
                payload = &self.scratch[..1 + compressed];
            }
        }

        let start = out.len();
        out.resize(start + LEN_PREFIX + payload.len() + TAG_LEN, 0);
        let written = self
            .state
            .write_message(payload, &mut out[start + LEN_PREFIX..])
            .map_err(|e| FrameError::Encode(e.to_string()))?;
        out[start..start + LEN_PREFIX].copy_from_slice(&(written as u32).to_be_bytes());
        out.truncate(start + LEN_PREFIX + written);
        Ok(())
    }

    /// Authenticates, decrypts, decompresses and decodes one frame's
    /// ciphertext (the bytes after the length prefix).
    pub fn open<M: Decode<()>>(&mut self, ciphertext: &[u8]) -> Result<M, FrameError> {
        if ciphertext.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(ciphertext.len() as u64));
        }
        if ciphertext.len() < MIN_FRAME_LEN {
            return Err(FrameError::TooShort(ciphertext.len()));
        }
        // Grow only: shrinking here would make the next seal zero-fill again.
        if self.plain.len() < ciphertext.len() {
            self.plain.resize(ciphertext.len(), 0);
        }
        let n = self
            .state
            .read_message(ciphertext, &mut self.plain[..ciphertext.len()])
            .map_err(|_| FrameError::Decrypt)?;
        decode_plaintext(&self.plain[..n], &mut self.scratch)
    }
}

/// Decodes a decrypted frame plaintext (flags byte + body). Public so that it
/// can be fuzzed directly: behind the AEAD, random bytes never reach it.
/// `scratch` receives the decompressed body, at most [`MAX_MESSAGE_LEN`] bytes.
pub fn decode_plaintext<M: Decode<()>>(
    plaintext: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<M, FrameError> {
    let Some((&flags, body)) = plaintext.split_first() else {
        return Err(FrameError::TooShort(0));
    };
    if flags & !FLAG_SNAPPY != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let decoded: &[u8] = if flags & FLAG_SNAPPY != 0 {
        let len = snap::raw::decompress_len(body).map_err(|_| FrameError::Decompress)?;
        if len > MAX_MESSAGE_LEN {
            return Err(FrameError::MessageTooLong(len));
        }
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let written = snap::raw::Decoder::new()
            .decompress(body, &mut scratch[..len])
            .map_err(|_| FrameError::Decompress)?;
        &scratch[..written]
    } else {
        body
    };
    let (message, used) = bincode::decode_from_slice(decoded, wire_config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != decoded.len() {
        return Err(FrameError::TrailingBytes(decoded.len() - used));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Request;

    #[test]
    fn plaintext_decoder_limits() {
        let mut scratch = Vec::new();
        assert!(matches!(
            decode_plaintext::<Request>(&[0x80, 0], &mut scratch),
            Err(FrameError::BadFlags(0x80))
        ));
        // A snappy header claiming a 4 GiB body: refused before allocating.
        let claim = [FLAG_SNAPPY, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_plaintext::<Request>(&claim, &mut scratch),
            Err(FrameError::MessageTooLong(_))
        ));
        assert!(scratch.capacity() < MAX_MESSAGE_LEN);
        assert!(matches!(
            decode_plaintext::<Request>(&[0, 0, 1, 9], &mut scratch),
            Err(FrameError::TrailingBytes(1))
        ));
        assert_eq!(
            decode_plaintext::<Request>(&[0, 0, 1], &mut scratch).unwrap(),
            Request::Ping { nonce: 1 }
        );
        // A string claiming 1 GiB inside the body: bincode's limit refuses it.
        let huge_string = [0, 0x02, 0xfc, 0x00, 0x00, 0x00, 0x40];
        assert!(matches!(
            decode_plaintext::<Request>(&huge_string, &mut scratch),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn length_prefix_limits() {
        assert_eq!(frame_len(17u32.to_be_bytes()).unwrap(), 17);
        assert_eq!(frame_len(65_535u32.to_be_bytes()).unwrap(), 65_535);
        assert!(matches!(
            frame_len(16u32.to_be_bytes()),
            Err(FrameError::TooShort(16))
        ));
        assert!(matches!(
            frame_len(65_536u32.to_be_bytes()),
            Err(FrameError::TooLong(65_536))
        ));
        assert!(matches!(
            frame_len([0xff; 4]),
            Err(FrameError::TooLong(0xffff_ffff))
        ));
    }
}
