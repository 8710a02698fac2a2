//! The bucket's value: one time-out, as the node that made it saw it.
//!
//! Format: a version byte ([`VERSION`]), then bincode 2 (standard
//! configuration) of [`Fields`]. The prefix is the key and is not
//! repeated. Every field is bounded (inline strings), and the decoder is
//! limited to [`MAX_RECORD_LEN`] bytes before it reads anything, so a
//! hostile writer of the bucket cannot make a node allocate.
//!
//! A record of a newer version than this node knows is skipped (logged by
//! the link), so nodes of two releases can share a bucket while they are
//! upgraded one by one.

use bincode::{Decode, Encode};
use model::Cidr;
use model::ban::{BanInfo, Cause, FirstBytes, Origin};

pub const VERSION: u8 = 1;
/// Far above a real record (about 120 bytes at most).
pub const MAX_RECORD_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct Fields {
    cause: Cause,
    banned_at_ms: u64,
    expires_at_ms: u64,
    repeat: u32,
    origin: Origin,
    first_bytes: FirstBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("record of {0} bytes (at most {MAX_RECORD_LEN})")]
    TooLong(usize),
    #[error("record version {0} (this node reads version {VERSION})")]
    UnknownVersion(u8),
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record without an origin node")]
    NoOrigin,
}

/// `ban` as the bucket holds it, made by node `origin`.
pub fn encode(ban: &BanInfo, origin: Origin) -> Vec<u8> {
    let fields = Fields {
        cause: ban.cause,
        banned_at_ms: ban.banned_at_ms,
        expires_at_ms: ban.expires_at_ms,
        repeat: ban.repeat,
        origin,
        first_bytes: ban.first_bytes,
    };
    let mut out = vec![VERSION];
    // Encoding bounded inline fields into a Vec cannot fail.
    bincode::encode_into_std_write(&fields, &mut out, bincode::config::standard())
        .expect("encoding into a Vec");
    out
}

/// The time-out `bytes` describes for `prefix` (its key).
pub fn decode(prefix: Cidr, bytes: &[u8]) -> Result<BanInfo, RecordError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLong(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != VERSION {
        return Err(RecordError::UnknownVersion(version));
    }
    let config = bincode::config::standard().with_limit::<MAX_RECORD_LEN>();
    let (fields, used): (Fields, usize) = bincode::decode_from_slice(body, config)
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(RecordError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    if fields.origin.is_empty() {
        return Err(RecordError::NoOrigin);
    }
    Ok(BanInfo {
        prefix,
        cause: fields.cause,
        first_bytes: fields.first_bytes,
        banned_at_ms: fields.banned_at_ms,
        expires_at_ms: fields.expires_at_ms,
        repeat: fields.repeat,
        origin: fields.origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ban() -> BanInfo {
        BanInfo {
            prefix: "2001:db8::/64".parse().unwrap(),
            cause: "port-scan".parse().unwrap(),
            first_bytes: FirstBytes::truncated(b"\x16\x03\x01"),
            banned_at_ms: 1_764_000_000_000,
            expires_at_ms: 1_764_003_600_000,
            repeat: 2,
            origin: Origin::default(),
        }
    }

    #[test]
    fn a_record_round_trips_with_its_origin() {
        let origin = Origin::new("node-a").unwrap();
        let bytes = encode(&ban(), origin);
        let decoded = decode(ban().prefix, &bytes).unwrap();
        assert_eq!(decoded, BanInfo { origin, ..ban() });
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let bytes = encode(&ban(), Origin::new("node-a").unwrap());
        let prefix = ban().prefix;
        for len in 0..bytes.len() {
            assert!(decode(prefix, &bytes[..len]).is_err(), "{len} bytes");
        }
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert_eq!(decode(prefix, &newer), Err(RecordError::UnknownVersion(2)));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(prefix, &long),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(
            decode(prefix, &vec![VERSION; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLong(MAX_RECORD_LEN + 1))
        );
        assert_eq!(
            decode(prefix, &encode(&ban(), Origin::default())),
            Err(RecordError::NoOrigin)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(ban().prefix, &bytes);
        }
    }
}
