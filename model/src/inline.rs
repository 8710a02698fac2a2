//! Fixed-capacity byte strings for bounded message fields.
//!
//! Volume ids, locations, ban causes and the like have small hard limits.
//! Storing them inline means the decoder enforces the limit itself (a longer
//! field is a decode error, not an allocation) and decoding a page of
//! volumes allocates nothing per field. The encoding is bincode's for
//! `String`/`Vec<u8>` (varint length, then the bytes), so the wire format is
//! the same as with ordinary strings.

use std::fmt;
use std::str::FromStr;

use bincode::de::Decoder;
use bincode::de::read::Reader;
use bincode::enc::Encoder;
use bincode::enc::write::Writer;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

/// At most `N` bytes (N ≤ 255), stored inline.
#[derive(Clone, Copy)]
pub struct InlineBytes<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// At most `N` bytes of UTF-8, stored inline.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InlineStr<const N: usize>(InlineBytes<N>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes is longer than the maximum of {max}")]
pub struct TooLong {
    pub len: usize,
    pub max: usize,
}

impl<const N: usize> InlineBytes<N> {
    const FITS_IN_U8: () = assert!(N <= u8::MAX as usize);

    pub fn new(bytes: &[u8]) -> Result<Self, TooLong> {
        let () = Self::FITS_IN_U8;
        if bytes.len() > N {
            return Err(TooLong {
                len: bytes.len(),
                max: N,
            });
        }
        let mut inline = [0u8; N];
        inline[..bytes.len()].copy_from_slice(bytes);
        Ok(InlineBytes {
            len: bytes.len() as u8,
            bytes: inline,
        })
    }

    /// The first `N` bytes of `bytes`.
    pub fn truncated(bytes: &[u8]) -> Self {
        Self::new(&bytes[..bytes.len().min(N)]).expect("cut to capacity")
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl<const N: usize> InlineStr<N> {
    pub fn new(text: &str) -> Result<Self, TooLong> {
        InlineBytes::new(text.as_bytes()).map(InlineStr)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.0.as_slice()).expect("constructed from UTF-8 only")
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

impl<const N: usize> PartialEq for InlineBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl<const N: usize> Eq for InlineBytes<N> {}
impl<const N: usize> std::hash::Hash for InlineBytes<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}
impl<const N: usize> PartialOrd for InlineBytes<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<const N: usize> Ord for InlineBytes<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl<const N: usize> Default for InlineBytes<N> {
    fn default() -> Self {
        InlineBytes {
            len: 0,
            bytes: [0; N],
        }
    }
}

impl<const N: usize> fmt::Debug for InlineBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> FromStr for InlineStr<N> {
    type Err = TooLong;

    fn from_str(s: &str) -> Result<Self, TooLong> {
        InlineStr::new(s)
    }
}

impl<const N: usize> Encode for InlineBytes<N> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // Same as bincode's `[u8]`/`str`: usize length (as u64), then bytes.
        (u64::from(self.len)).encode(encoder)?;
        encoder.writer().write(self.as_slice())
    }
}

impl<Context, const N: usize> Decode<Context> for InlineBytes<N> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = u64::decode(decoder)?;
        if len > N as u64 {
            return Err(DecodeError::OtherString(format!(
                "field of {len} bytes exceeds its maximum of {N}"
            )));
        }
        let len = len as usize;
        decoder.claim_bytes_read(len)?;
        let mut bytes = [0u8; N];
        decoder.reader().read(&mut bytes[..len])?;
        Ok(InlineBytes {
            len: len as u8,
            bytes,
        })
    }
}
impl<'de, Context, const N: usize> bincode::BorrowDecode<'de, Context> for InlineBytes<N> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

impl<const N: usize> Encode for InlineStr<N> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Context, const N: usize> Decode<Context> for InlineStr<N> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let bytes = InlineBytes::<N>::decode(decoder)?;
        std::str::from_utf8(bytes.as_slice()).map_err(|inner| DecodeError::Utf8 { inner })?;
        Ok(InlineStr(bytes))
    }
}
impl<'de, Context, const N: usize> bincode::BorrowDecode<'de, Context> for InlineStr<N> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_config() -> impl bincode::config::Config {
        bincode::config::standard()
    }

    #[test]
    fn encodes_exactly_like_a_string() {
        for text in ["", "A00001L9", "Vault 3 — shelf 12"] {
            let inline: InlineStr<64> = text.parse().unwrap();
            let ours = bincode::encode_to_vec(inline, wire_config()).unwrap();
            assert_eq!(ours, bincode::encode_to_vec(text, wire_config()).unwrap());
            let (back, _): (InlineStr<64>, _) =
                bincode::decode_from_slice(&ours, wire_config()).unwrap();
            assert_eq!(back.as_str(), text);
        }
    }

    #[test]
    fn decoding_enforces_capacity_and_utf8() {
        let long = bincode::encode_to_vec("x".repeat(33), wire_config()).unwrap();
        assert!(bincode::decode_from_slice::<InlineStr<32>, _>(&long, wire_config()).is_err());
        let bad_utf8 = [2u8, 0xff, 0xfe];
        assert!(bincode::decode_from_slice::<InlineStr<32>, _>(&bad_utf8, wire_config()).is_err());
        let truncated = [5u8, b'a'];
        assert!(bincode::decode_from_slice::<InlineStr<32>, _>(&truncated, wire_config()).is_err());
        assert_eq!(
            "x".repeat(33).parse::<InlineStr<32>>(),
            Err(TooLong { len: 33, max: 32 })
        );
    }
}
