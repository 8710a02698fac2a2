//! The on-disk encoding of records: storage's own, versioned, and
//! independent of the wire format, so that a change to the protocol can
//! never silently change what is on disk (or the other way round).
//!
//! Every value written today is format 1 (bans: format 2, which adds the
//! fleet origin): a format byte, then fixed-width
//! big-endian integers and length-prefixed bytes, in the order documented
//! on each function. Format 0 (the first release, before this module) was
//! the wire's bincode encoding; it is still read, never written.
//!
//! Telling the two apart needs no guessing:
//! - a ban value starts with its 8-byte expiry (so boot reads 8 bytes and
//!   decodes nothing else); the byte after it was, in format 0, bincode's
//!   tag of `IpAddr` (0 or 1), and is [`FORMAT_1`] now;
//! - a volume value in format 0 starts with the id's length (at most 32);
//!   in format 1 it starts with [`FORMAT_1`].
//!
//! Decoders check every length against the record's limits before they
//! copy, and a record that does not decode is a [`StorageError::Corrupt`]
//! naming its tree, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use model::Cidr;
use model::ban::{BanInfo, Cause, FirstBytes, Origin};
use model::inline::InlineStr;
use model::volume::{Volume, VolumeSpec, VolumeStatus};

use crate::{Result, StorageError};

/// The format byte of volume records, and of bans before the fleet.
pub const FORMAT_1: u8 = 0xF1;
/// The format byte of ban records written by this version: format 1 plus
/// the fleet origin.
pub const FORMAT_2: u8 = 0xF2;
/// Length of an encoded prefix: family, 16 address bytes, prefix length.
/// Also the key of the `bans` and `history` trees, so keys sort by family,
/// then address, then length.
pub const PREFIX_LEN: usize = 18;
pub const EXPIRY_LEN: usize = 8;

/// Largest format-0 record we agree to decode (far above any real one).
const FORMAT_0_LIMIT: usize = 4096;

pub fn encode_prefix(prefix: &Cidr) -> [u8; PREFIX_LEN] {
    let mut key = [0u8; PREFIX_LEN];
    match prefix.addr() {
        IpAddr::V4(v4) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key[0] = 6;
            key[1..17].copy_from_slice(&v6.octets());
        }
    }
    key[17] = prefix.len();
    key
}

pub fn decode_prefix(tree: &'static str, bytes: &[u8]) -> Result<Cidr> {
    let key: &[u8; PREFIX_LEN] = bytes
        .try_into()
        .map_err(|_| corrupt(tree, format!("prefix of {} bytes", bytes.len())))?;
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&key[1..17]);
    let addr = match key[0] {
        4 => IpAddr::V4(Ipv4Addr::new(key[1], key[2], key[3], key[4])),
        6 => IpAddr::V6(Ipv6Addr::from(v6)),
        other => return Err(corrupt(tree, format!("address family {other}"))),
    };
    Cidr::new(addr, key[17]).map_err(|e| corrupt(tree, e.to_string()))
}

/// A ban, format 2: expiry (u64 ms) · FORMAT_2 · banned-at (u64 ms) ·
/// repeat (u32) · cause (u8 length + UTF-8) · first bytes (u8 length +
/// bytes) · origin (u8 length + UTF-8). The prefix is the record's key,
/// not repeated in the value. Format 1 is the same without the origin.
pub fn encode_ban(ban: &BanInfo) -> Vec<u8> {
    let cause = ban.cause.as_str().as_bytes();
    let first = ban.first_bytes.as_slice();
    let origin = ban.origin.as_str().as_bytes();
    let mut out =
        Vec::with_capacity(EXPIRY_LEN + 1 + 12 + 3 + cause.len() + first.len() + origin.len());
    out.extend_from_slice(&ban.expires_at_ms.to_be_bytes());
    out.push(FORMAT_2);
    out.extend_from_slice(&ban.banned_at_ms.to_be_bytes());
    out.extend_from_slice(&ban.repeat.to_be_bytes());
    push_short(&mut out, cause);
    push_short(&mut out, first);
    push_short(&mut out, origin);
    out
}

/// The expiry alone: all that boot needs of a ban.
pub fn decode_expiry(value: &[u8]) -> Result<u64> {
    let mut reader = Reader::new("bans", value);
    reader.u64()
}

/// The cause of a ban record, read in place without decoding the rest
/// (boot reads a million records: a feed's entries are told by their cause,
/// `feed:NAME`). `None` for a record of format 0 or one too short.
pub fn cause_in_place(value: &[u8]) -> Option<&[u8]> {
    // expiry (8) · format (1) · banned-at (8) · repeat (4) · cause (u8 len + bytes)
    const CAUSE_AT: usize = EXPIRY_LEN + 1 + 8 + 4;
    if !matches!(value.get(EXPIRY_LEN), Some(&(FORMAT_1 | FORMAT_2))) {
        return None;
    }
    let len = usize::from(*value.get(CAUSE_AT)?);
    value.get(CAUSE_AT + 1..CAUSE_AT + 1 + len)
}

/// The ban stored under `key` (an encoded prefix).
pub fn decode_ban(key: &[u8], value: &[u8]) -> Result<BanInfo> {
    let mut reader = Reader::new("bans", value);
    let expires_at_ms = reader.u64()?;
    match reader.peek()? {
        format @ (FORMAT_1 | FORMAT_2) => {
            reader.byte()?;
            let prefix = decode_prefix("bans", key)?;
            let banned_at_ms = reader.u64()?;
            let repeat = reader.u32()?;
            let cause = reader.short_str::<{ model::ban::MAX_CAUSE_LEN }>()?;
            let first_bytes = FirstBytes::new(reader.short()?)
                .map_err(|e| corrupt("bans", format!("first bytes: {e}")))?;
            let origin = match format {
                FORMAT_2 => reader.short_str::<{ model::ban::MAX_ORIGIN_LEN }>()?,
                _ => Origin::default(),
            };
            reader.finish()?;
            Ok(BanInfo {
                prefix,
                cause,
                first_bytes,
                banned_at_ms,
                expires_at_ms,
                repeat,
                origin,
            })
        }
        0 | 1 => decode_format_0::<BanInfoV0>("bans", reader.rest()).map(BanInfoV0::into_ban),
        other => Err(corrupt(
            "bans",
            format!("unknown record format {other:#04x}"),
        )),
    }
}

/// A volume, format 1: FORMAT_1 · id · media type · location (each u8
/// length + UTF-8) · status (u8) · updated-at (u64 ms).
pub fn encode_volume(volume: &Volume) -> Vec<u8> {
    let spec = &volume.spec;
    let mut out = Vec::with_capacity(1 + 3 + 32 + 16 + 64 + 9);
    out.push(FORMAT_1);
    push_short(&mut out, spec.id.as_str().as_bytes());
    push_short(&mut out, spec.media_type.as_str().as_bytes());
    push_short(&mut out, spec.location.as_str().as_bytes());
    out.push(status_code(spec.status));
    out.extend_from_slice(&volume.updated_at_ms.to_be_bytes());
    out
}

/// The volume stored under a key (its id, which the value repeats).
pub fn decode_volume(_key: &[u8], value: &[u8]) -> Result<Volume> {
    let mut reader = Reader::new("volumes", value);
    if reader.peek()? != FORMAT_1 {
        return decode_format_0("volumes", value);
    }
    reader.byte()?;
    let id = reader.short_str()?;
    let media_type = reader.short_str()?;
    let location = reader.short_str()?;
    let status = status_of(reader.byte()?)?;
    let updated_at_ms = reader.u64()?;
    reader.finish()?;
    Ok(Volume {
        spec: VolumeSpec {
            id,
            media_type,
            location,
            status,
        },
        updated_at_ms,
    })
}

/// The status byte is storage's own numbering, fixed here: the wire's enum
/// order may change without touching the disk.
fn status_code(status: VolumeStatus) -> u8 {
    match status {
        VolumeStatus::Scratch => 0,
        VolumeStatus::Active => 1,
        VolumeStatus::Full => 2,
        VolumeStatus::Offsite => 3,
        VolumeStatus::InTransit => 4,
        VolumeStatus::Retired => 5,
    }
}

fn status_of(code: u8) -> Result<VolumeStatus> {
    VolumeStatus::ALL
        .into_iter()
        .find(|status| status_code(*status) == code)
        .ok_or_else(|| corrupt("volumes", format!("volume status {code}")))
}

/// A ban as format 0 held it (the wire's `BanInfo` of the first release).
#[derive(bincode::Decode)]
struct BanInfoV0 {
    prefix: Cidr,
    cause: Cause,
    first_bytes: FirstBytes,
    banned_at_ms: u64,
    expires_at_ms: u64,
    repeat: u32,
}

impl BanInfoV0 {
    fn into_ban(self) -> BanInfo {
        BanInfo {
            prefix: self.prefix,
            cause: self.cause,
            first_bytes: self.first_bytes,
            banned_at_ms: self.banned_at_ms,
            expires_at_ms: self.expires_at_ms,
            repeat: self.repeat,
            origin: Origin::default(),
        }
    }
}

/// Format 0: bincode 2's standard configuration, as the first release wrote
/// it (the wire's encoding of that day, frozen here).
fn decode_format_0<T: bincode::Decode<()>>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    let config = bincode::config::standard().with_limit::<FORMAT_0_LIMIT>();
    let (value, used) = bincode::decode_from_slice(bytes, config)
        .map_err(|e| corrupt(tree, format!("format 0 record: {e}")))?;
    if used != bytes.len() {
        return Err(corrupt(tree, "format 0 record with trailing bytes".into()));
    }
    Ok(value)
}

fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field written here is an inline value of at most 255 bytes.
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn corrupt(tree: &'static str, detail: String) -> StorageError {
    StorageError::Corrupt { tree, detail }
}

/// Bounds-checked reading of one record.
struct Reader<'a> {
    tree: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(tree: &'static str, bytes: &'a [u8]) -> Self {
        Reader { tree, bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(corrupt(
                self.tree,
                format!(
                    "record truncated ({} bytes left, {n} needed)",
                    self.bytes.len()
                ),
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn peek(&self) -> Result<u8> {
        self.bytes
            .first()
            .copied()
            .ok_or_else(|| corrupt(self.tree, "record truncated".into()))
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(buf))
    }

    fn short(&mut self) -> Result<&'a [u8]> {
        let len = self.byte()?;
        self.take(usize::from(len))
    }

    fn short_str<const N: usize>(&mut self) -> Result<InlineStr<N>> {
        let tree = self.tree;
        let bytes = self.short()?;
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(tree, e.to_string()))?;
        InlineStr::new(text).map_err(|e| corrupt(tree, e.to_string()))
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn finish(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(
                self.tree,
                format!("{} trailing bytes", self.bytes.len()),
            ))
        }
    }
}

#[cfg(test)]
mod cause_tests {
    use super::*;

    #[test]
    fn the_cause_is_read_in_place() {
        let mut ban = crate::test_ban("198.18.0.0/24", 5);
        ban.cause = "feed:spamhaus-drop".parse().unwrap();
        ban.first_bytes = FirstBytes::truncated(b"x");
        let value = encode_ban(&ban);
        assert_eq!(cause_in_place(&value), Some(&b"feed:spamhaus-drop"[..]));
        assert_eq!(cause_in_place(&value[..20]), None);
        assert_eq!(cause_in_place(&[0u8; 8]), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ban(prefix: &str, cause: &str, first: &[u8]) -> BanInfo {
        BanInfo {
            prefix: prefix.parse().unwrap(),
            cause: cause.parse::<model::ban::Cause>().unwrap(),
            first_bytes: FirstBytes::truncated(first),
            banned_at_ms: 1_764_000_000_000,
            expires_at_ms: 1_764_000_900_000,
            repeat: 3,
            origin: Origin::default(),
        }
    }

    #[test]
    fn format_2_round_trips_and_starts_with_the_expiry() {
        let mut original = ban("2001:db8:1:2::/64", "bad-magic", b"GET / HTTP/1.1\r\n");
        original.origin = Origin::new("node-b").unwrap();
        let key = encode_prefix(&original.prefix);
        let bytes = encode_ban(&original);
        assert_eq!(decode_expiry(&bytes).unwrap(), original.expires_at_ms);
        assert_eq!(bytes[EXPIRY_LEN], FORMAT_2);
        assert_eq!(decode_ban(&key, &bytes).unwrap(), original);
    }

    #[test]
    fn format_1_is_still_read_as_a_ban_made_here() {
        let original = ban("192.0.2.0/24", "port-scan", b"");
        let key = encode_prefix(&original.prefix);
        // Format 1 is format 2 without the origin's length byte.
        let mut bytes = encode_ban(&original);
        bytes[EXPIRY_LEN] = FORMAT_1;
        assert_eq!(bytes.pop(), Some(0));
        assert_eq!(decode_ban(&key, &bytes).unwrap(), original);
    }

    #[test]
    fn truncations_and_unknown_formats_are_corrupt_not_panics() {
        let key = encode_prefix(&"192.0.2.7".parse().unwrap());
        let bytes = encode_ban(&ban("192.0.2.7", "admin", b"\x16\x03"));
        for len in 0..bytes.len() {
            assert!(decode_ban(&key, &bytes[..len]).is_err(), "{len} bytes");
        }
        assert!(decode_ban(&key[..5], &bytes).is_err(), "a short key");
        let mut unknown = bytes.clone();
        unknown[EXPIRY_LEN] = 0x42;
        assert!(
            decode_ban(&key, &unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown record format 0x42")
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_ban(&bytes, &bytes);
            let _ = decode_volume(&bytes, &bytes);
        }

        #[test]
        fn volumes_round_trip(id in "[A-Z0-9]{1,32}", location in "[ -~]{1,64}", status in 0u8..6, at: u64) {
            let volume = Volume {
                spec: VolumeSpec {
                    id: id.parse().unwrap(),
                    media_type: "LTO-9".parse().unwrap(),
                    location: location.parse().unwrap(),
                    status: status_of(status).unwrap(),
                },
                updated_at_ms: at,
            };
            prop_assert_eq!(decode_volume(b"", &encode_volume(&volume)).unwrap(), volume);
        }
    }
}
