//! The bucket's value: one change of a prefix (a time-out, or its
//! release), as the node that made it saw it, signed by that node.
//!
//! Format 2 (signed): `[2] ‖ body ‖ signer ‖ signature`, where body is
//! bincode 2 (standard configuration) of [`Fields`], signer the origin
//! node's Ed25519 public key (32 bytes) and signature (64 bytes) covers
//! [`CONTEXT`], the bucket key, the version byte and the body, exactly as
//! written: the record cannot be moved to another prefix, changed in any
//! field or passed off as another version. A release is a record too (a
//! tombstone, `released`), so it is signed like a time-out; the bucket's
//! TTL purges it.
//!
//! Format 1 (unsigned, the previous release's): `[1] ‖ bincode` of the
//! same fields but `released`; read only while `fleet.require_signatures`
//! is off. The previous release skips format 2 as a newer version.
//!
//! The prefix is the key and is not repeated. Every field is bounded
//! (inline strings), and the decoder is limited to [`MAX_RECORD_LEN`] bytes
//! before it reads anything, so a hostile writer of the bucket cannot make
//! a node allocate.

use bincode::{Decode, Encode};
use model::Cidr;
use model::ban::{BanInfo, Cause, FirstBytes, Origin};

use crate::node_key::{NodeKey, NodePublicKey, SIGNATURE_LEN};

/// The version this node writes.
pub const VERSION: u8 = 2;
/// The previous release's unsigned records.
pub const UNSIGNED_VERSION: u8 = 1;
/// Far above a real record (about 220 bytes at most).
pub const MAX_RECORD_LEN: usize = 512;
/// Signed first, so that a signature over a record can never be taken
/// for one over anything else this key signs.
pub const CONTEXT: &[u8] = b"penaltybox fleet record\0";
const SEAL_LEN: usize = 32 + SIGNATURE_LEN;

/// Format 2's fields.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct Fields {
    /// A release (tombstone): `cause`, `repeat` and `first_bytes` are
    /// empty, `changed_at_ms` is when it was released, and `expires_at_ms`
    /// when the tombstone may be forgotten.
    released: bool,
    cause: Cause,
    /// When the change was made (a time-out's `banned_at`): a node never
    /// applies a change older than one it applied for the prefix.
    changed_at_ms: u64,
    expires_at_ms: u64,
    repeat: u32,
    origin: Origin,
    first_bytes: FirstBytes,
}

/// Format 1's fields.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct FieldsV1 {
    cause: Cause,
    banned_at_ms: u64,
    expires_at_ms: u64,
    repeat: u32,
    origin: Origin,
    first_bytes: FirstBytes,
}

/// What a record asks of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    TimeOut(BanInfo),
    Release {
        prefix: Cidr,
        released_at_ms: u64,
        /// When the tombstone may be forgotten.
        until_ms: u64,
        origin: Origin,
    },
}

impl Change {
    /// The prefix it changes (the bucket key's).
    pub fn prefix(&self) -> Cidr {
        match self {
            Change::TimeOut(ban) => ban.prefix,
            Change::Release { prefix, .. } => *prefix,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            Change::TimeOut(ban) => ban.origin,
            Change::Release { origin, .. } => *origin,
        }
    }

    /// When the change was made.
    pub fn changed_at_ms(&self) -> u64 {
        match self {
            Change::TimeOut(ban) => ban.banned_at_ms,
            Change::Release { released_at_ms, .. } => *released_at_ms,
        }
    }

    /// Until when the change matters.
    pub fn until_ms(&self) -> u64 {
        match self {
            Change::TimeOut(ban) => ban.expires_at_ms,
            Change::Release { until_ms, .. } => *until_ms,
        }
    }

    fn fields(&self) -> Fields {
        match self {
            Change::TimeOut(ban) => Fields {
                released: false,
                cause: ban.cause,
                changed_at_ms: ban.banned_at_ms,
                expires_at_ms: ban.expires_at_ms,
                repeat: ban.repeat,
                origin: ban.origin,
                first_bytes: ban.first_bytes,
            },
            Change::Release {
                released_at_ms,
                until_ms,
                origin,
                ..
            } => Fields {
                released: true,
                cause: Cause::default(),
                changed_at_ms: *released_at_ms,
                expires_at_ms: *until_ms,
                repeat: 0,
                origin: *origin,
                first_bytes: FirstBytes::default(),
            },
        }
    }
}

/// A decoded record: its change, and for format 2 what proves who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub change: Change,
    pub seal: Option<Seal>,
}

/// A format 2 record's signer and signature, with the bytes signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub signer: [u8; 32],
    signature: [u8; SIGNATURE_LEN],
    message: Vec<u8>,
}

impl Seal {
    /// Whether `key` made this signature over this record.
    pub fn verify(&self, key: &NodePublicKey) -> bool {
        key.as_bytes() == &self.signer && key.verify(&self.message, &self.signature)
    }

    /// The bytes signed and the signature, for verifying many at once.
    pub(crate) fn signed(&self) -> (&[u8], &[u8; SIGNATURE_LEN]) {
        (&self.message, &self.signature)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("record of {0} bytes (at most {MAX_RECORD_LEN})")]
    TooLong(usize),
    #[error("record version {0} (this node reads versions {UNSIGNED_VERSION} and {VERSION})")]
    UnknownVersion(u8),
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record without an origin node")]
    NoOrigin,
}

/// What is signed: the context, the bucket key (length first), the
/// version byte, the body.
fn signed_message(key: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + 1 + key.len() + 1 + body.len());
    message.extend_from_slice(CONTEXT);
    // Keys are at most 64 bytes (`key::MAX_KEY_LEN`).
    message.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
    message.extend_from_slice(key.as_bytes());
    message.push(VERSION);
    message.extend_from_slice(body);
    message
}

/// `change` as the bucket holds it under `key`, signed with `node_key`.
/// The change's origin must be the node's own name (the caller's).
pub fn encode_signed(key: &str, change: &Change, node_key: &NodeKey) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Encoding bounded inline fields into a Vec cannot fail.
    bincode::encode_into_std_write(change.fields(), &mut out, bincode::config::standard())
        .expect("encoding into a Vec");
    let signature = node_key.sign(&signed_message(key, &out[1..]));
    out.extend_from_slice(node_key.public_key().as_bytes());
    out.extend_from_slice(&signature);
    out
}

/// A time-out as the previous release wrote it (unsigned, format 1): for
/// nodes that do not sign (benches against signing, roll-out tests).
pub fn encode_unsigned(ban: &BanInfo) -> Vec<u8> {
    let fields = FieldsV1 {
        cause: ban.cause,
        banned_at_ms: ban.banned_at_ms,
        expires_at_ms: ban.expires_at_ms,
        repeat: ban.repeat,
        origin: ban.origin,
        first_bytes: ban.first_bytes,
    };
    let mut out = vec![UNSIGNED_VERSION];
    bincode::encode_into_std_write(&fields, &mut out, bincode::config::standard())
        .expect("encoding into a Vec");
    out
}

/// Bincode of `T` that must fill `body` exactly.
fn decode_exact<T: Decode<()>>(body: &[u8]) -> Result<T, RecordError> {
    let config = bincode::config::standard().with_limit::<MAX_RECORD_LEN>();
    let (fields, used): (T, usize) = bincode::decode_from_slice(body, config)
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(RecordError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(fields)
}

/// The record `bytes` holds under bucket key `key` (naming `prefix`).
/// Decoding checks the form only; [`Seal::verify`] says who made it.
pub fn decode(key: &str, prefix: Cidr, bytes: &[u8]) -> Result<Record, RecordError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLong(bytes.len()));
    }
    let (&version, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    let record = match version {
        VERSION => {
            let Some(body_len) = rest.len().checked_sub(SEAL_LEN) else {
                return Err(RecordError::Malformed("shorter than its signature".into()));
            };
            let (body, seal) = rest.split_at(body_len);
            let fields: Fields = decode_exact(body)?;
            let (signer, signature) = seal.split_at(32);
            let seal = Seal {
                signer: signer.try_into().expect("32 bytes"),
                signature: signature.try_into().expect("64 bytes"),
                message: signed_message(key, body),
            };
            let change = if fields.released {
                Change::Release {
                    prefix,
                    released_at_ms: fields.changed_at_ms,
                    until_ms: fields.expires_at_ms,
                    origin: fields.origin,
                }
            } else {
                Change::TimeOut(BanInfo {
                    prefix,
                    cause: fields.cause,
                    first_bytes: fields.first_bytes,
                    banned_at_ms: fields.changed_at_ms,
                    expires_at_ms: fields.expires_at_ms,
                    repeat: fields.repeat,
                    origin: fields.origin,
                })
            };
            Record {
                change,
                seal: Some(seal),
            }
        }
        UNSIGNED_VERSION => {
            let fields: FieldsV1 = decode_exact(rest)?;
            Record {
                change: Change::TimeOut(BanInfo {
                    prefix,
                    cause: fields.cause,
                    first_bytes: fields.first_bytes,
                    banned_at_ms: fields.banned_at_ms,
                    expires_at_ms: fields.expires_at_ms,
                    repeat: fields.repeat,
                    origin: fields.origin,
                }),
                seal: None,
            }
        }
        other => return Err(RecordError::UnknownVersion(other)),
    };
    if record.change.origin().is_empty() {
        return Err(RecordError::NoOrigin);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::key_of;
    use proptest::prelude::*;

    fn ban() -> BanInfo {
        BanInfo {
            prefix: "2001:db8::/64".parse().unwrap(),
            cause: "port-scan".parse().unwrap(),
            first_bytes: FirstBytes::truncated(b"\x16\x03\x01"),
            banned_at_ms: 1_764_000_000_000,
            expires_at_ms: 1_764_003_600_000,
            repeat: 2,
            origin: Origin::new("node-a").unwrap(),
        }
    }

    fn key() -> String {
        key_of(&ban().prefix)
    }

    #[test]
    fn signed_records_round_trip_and_verify_under_their_key_only() {
        let node = NodeKey::generate().unwrap();
        let release = Change::Release {
            prefix: ban().prefix,
            released_at_ms: 1_764_000_100_000,
            until_ms: 1_764_000_160_000,
            origin: ban().origin,
        };
        for change in [Change::TimeOut(ban()), release] {
            let bytes = encode_signed(&key(), &change, &node);
            let record = decode(&key(), ban().prefix, &bytes).unwrap();
            assert_eq!(record.change, change);
            let seal = record.seal.unwrap();
            assert_eq!(&seal.signer, node.public_key().as_bytes());
            assert!(seal.verify(&node.public_key()));
            assert!(!seal.verify(&NodeKey::generate().unwrap().public_key()));
        }
    }

    #[test]
    fn a_signed_record_moved_to_another_key_fails() {
        let node = NodeKey::generate().unwrap();
        let bytes = encode_signed(&key(), &Change::TimeOut(ban()), &node);
        let other: Cidr = "198.18.0.0/15".parse().unwrap();
        let moved = decode(&key_of(&other), other, &bytes).unwrap();
        assert!(!moved.seal.unwrap().verify(&node.public_key()));
    }

    #[test]
    fn unsigned_records_of_the_previous_release_decode_without_a_seal() {
        let record = decode(&key(), ban().prefix, &encode_unsigned(&ban())).unwrap();
        assert_eq!(record.change, Change::TimeOut(ban()));
        assert_eq!(record.seal, None);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let prefix = ban().prefix;
        for bytes in [
            encode_signed(
                &key(),
                &Change::TimeOut(ban()),
                &NodeKey::generate().unwrap(),
            ),
            encode_unsigned(&ban()),
        ] {
            for len in 0..bytes.len() {
                assert!(
                    decode(&key(), prefix, &bytes[..len]).is_err(),
                    "{len} bytes"
                );
            }
            let mut newer = bytes.clone();
            newer[0] = 3;
            assert_eq!(
                decode(&key(), prefix, &newer),
                Err(RecordError::UnknownVersion(3))
            );
        }
        let mut long = encode_unsigned(&ban());
        long.push(0);
        assert!(matches!(
            decode(&key(), prefix, &long),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(
            decode(&key(), prefix, &vec![VERSION; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLong(MAX_RECORD_LEN + 1))
        );
        let nameless = BanInfo {
            origin: Origin::default(),
            ..ban()
        };
        assert_eq!(
            decode(&key(), prefix, &encode_unsigned(&nameless)),
            Err(RecordError::NoOrigin)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&key(), ban().prefix, &bytes);
        }

        /// Any change to a signed record's bytes (version, any field, the
        /// signer, the signature) fails: it does not decode, or it does
        /// not verify under the key that signed it.
        #[test]
        fn any_change_to_a_signed_record_fails(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let node = NodeKey::generate().unwrap();
            let mut bytes = encode_signed(&key(), &Change::TimeOut(ban()), &node);
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            match decode(&key(), ban().prefix, &bytes) {
                Err(_) => {}
                Ok(record) => prop_assert!(
                    !record.seal.is_some_and(|seal| seal.verify(&node.public_key())),
                    "byte {} changed and still verified", at
                ),
            }
        }
    }
}
