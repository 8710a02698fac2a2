//! The time-out table's records and the names of its causes: what storage
//! keeps, the admin interface shows and (later) the fleet shares.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

use crate::cidr::Cidr;
use crate::inline::{InlineBytes, InlineStr};

pub const MAX_CAUSE_LEN: usize = 64;
/// Most first bytes of a banned connection kept with its ban.
pub const MAX_FIRST_BYTES: usize = 16;
/// Longest fleet node name (`fleet.node_id`).
pub const MAX_ORIGIN_LEN: usize = 64;

/// Why a prefix was timed out, as stored: a [`BanCause`] name or an admin's note.
pub type Cause = InlineStr<MAX_CAUSE_LEN>;
pub type FirstBytes = InlineBytes<MAX_FIRST_BYTES>;
/// The fleet node that made a time-out; empty for one made here.
pub type Origin = InlineStr<MAX_ORIGIN_LEN>;

/// One entry of the time-out table, as the admin interface shows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BanInfo {
    pub prefix: Cidr,
    pub cause: Cause,
    /// First bytes the banned connection sent (at most [`MAX_FIRST_BYTES`]).
    pub first_bytes: FirstBytes,
    pub banned_at_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// How many times this prefix was banned within the escalation window.
    pub repeat: u32,
    /// Which fleet node made it: empty when this server did.
    pub origin: Origin,
}

/// What the kernel saw of a source it reported: the detector's figure
/// (distinct ports, SYNs, strays or unparseable packets; for bad flags, the
/// flags byte) and a sample destination port. A kernel detection has no
/// first bytes of its own, so this is what its time-out keeps in
/// `first_bytes` (tagged, so it is never read from a client's bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSeen {
    pub figure: u32,
    pub port: u16,
}

const KERNEL_SEEN_TAG: [u8; 2] = *b"k1";

impl KernelSeen {
    pub fn to_first_bytes(self) -> FirstBytes {
        let mut bytes = [0u8; 8];
        bytes[..2].copy_from_slice(&KERNEL_SEEN_TAG);
        bytes[2..6].copy_from_slice(&self.figure.to_be_bytes());
        bytes[6..].copy_from_slice(&self.port.to_be_bytes());
        FirstBytes::truncated(&bytes)
    }

    /// What a kernel detection's time-out kept; `None` for anything else
    /// (a client's first bytes, an older record).
    pub fn from_first_bytes(bytes: &[u8]) -> Option<KernelSeen> {
        let bytes: [u8; 8] = bytes.try_into().ok()?;
        (bytes[..2] == KERNEL_SEEN_TAG).then(|| KernelSeen {
            figure: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
            port: u16::from_be_bytes([bytes[6], bytes[7]]),
        })
    }
}

/// The time-outs that made a widened one (cause `widened`): kept in its
/// record's `first_bytes`, tagged like [`KernelSeen`], so that `bans show`
/// lists them after they have ended. Each member is its length and the 16
/// address bits that follow the wide prefix (`/64`s of a `/48`, `/32`s of
/// a `/24`, `/56`s of a `/48` all fit), so four fit in the 16 bytes;
/// members that do not fit are left out, and the count says how many
/// there were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WidenedFrom {
    /// How many time-outs fell inside the wide prefix.
    pub count: u8,
    /// Up to [`WidenedFrom::KEPT`] of them.
    pub members: Vec<Cidr>,
}

const WIDENED_TAG: [u8; 2] = *b"w1";

impl WidenedFrom {
    /// Members kept in the record.
    pub const KEPT: usize = (MAX_FIRST_BYTES - 3) / 3;

    /// The record's bytes for the widened `wide`.
    pub fn to_first_bytes(&self, wide: &Cidr) -> FirstBytes {
        let mut bytes = Vec::with_capacity(MAX_FIRST_BYTES);
        bytes.extend_from_slice(&WIDENED_TAG);
        bytes.push(self.count);
        for member in self.members.iter().take(Self::KEPT) {
            if let Some(bits) = bits_after(wide, member) {
                bytes.push(member.len());
                bytes.extend_from_slice(&bits.to_be_bytes());
            }
        }
        FirstBytes::truncated(&bytes)
    }

    /// What a widened time-out of `wide` kept; `None` for anything else.
    pub fn from_first_bytes(wide: &Cidr, bytes: &[u8]) -> Option<WidenedFrom> {
        let rest = bytes.strip_prefix(&WIDENED_TAG)?;
        let (&count, rest) = rest.split_first()?;
        let members = rest
            .chunks_exact(3)
            .filter_map(|chunk| {
                let bits = u16::from_be_bytes([chunk[1], chunk[2]]);
                member_of(wide, chunk[0], bits)
            })
            .collect();
        Some(WidenedFrom { count, members })
    }
}

/// An address as 128 bits from its first (an IPv4 one in the top 32), so
/// that prefix lengths count from the top for both families.
fn top_aligned(addr: std::net::IpAddr) -> u128 {
    match addr {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The 16 bits of `member`'s address after `wide`'s length, if `member`
/// lies in `wide` and is no more than 16 bits longer.
fn bits_after(wide: &Cidr, member: &Cidr) -> Option<u16> {
    let extra = member.len().checked_sub(wide.len())?;
    if extra == 0 || extra > 16 || !wide.covers(member) {
        return None;
    }
    let shifted = top_aligned(member.addr()).checked_shl(u32::from(wide.len()))?;
    Some((shifted >> 112) as u16)
}

fn member_of(wide: &Cidr, len: u8, bits: u16) -> Option<Cidr> {
    let extra = len.checked_sub(wide.len())?;
    if extra == 0 || extra > 16 {
        return None;
    }
    let offset = 112u32.checked_sub(u32::from(wide.len()))?;
    let addr = top_aligned(wide.addr()) | (u128::from(bits) << offset);
    let addr = match wide.addr() {
        std::net::IpAddr::V4(_) => std::net::IpAddr::V4(((addr >> 96) as u32).into()),
        std::net::IpAddr::V6(_) => std::net::IpAddr::V6(addr.into()),
    };
    Cidr::new(addr, len).ok()
}

/// What the server knows about one address or prefix (`bans show`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BanReport {
    /// The live time-out that covers it, if any.
    pub covering: Option<BanInfo>,
    /// The escalation history of its table entry (the aggregate it falls
    /// into), if it was timed out within the escalation window.
    pub history: Option<BanHistory>,
    /// The kernel map's entry for the covering time-out: `None` when the
    /// server runs without a kernel tier (or nothing covers it).
    pub kernel: Option<KernelEntry>,
    /// Monitor mode: the time-out of its entry that would be in force now
    /// (decided, logged and counted, not enforced).
    pub monitored: Option<BanInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BanHistory {
    pub prefix: Cidr,
    pub last_banned_at_ms: u64,
    pub last_duration_ms: u64,
    /// Time-outs within the window, counting the last.
    pub repeat: u32,
    /// When the history no longer escalates (last ban + window).
    pub resets_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct KernelEntry {
    pub in_map: bool,
    /// Packets dropped for it (exact-address entries count; 0 for prefixes).
    pub drops: u64,
}

/// Why the server timed a source out. The names are stable: they are stored
/// with each ban and shown by `bans list`, so renaming one is a format change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanCause {
    /// Foreign bytes: not penaltybox's magic.
    BadMagic,
    BadVersion,
    BadPattern,
    BadLength,
    /// A penaltybox-shaped message from a sender that lacks the server key.
    BadMac1,
    /// The Noise message did not decrypt.
    HandshakeFailed,
    /// Anonymous client where only keys may connect, or a key not authorized.
    Unauthorized,
    /// A first message seen before: its ephemeral key was in a recent
    /// accepted initiation, or (IK) its timestamp is not newer than the last.
    Replayed,
    /// An IK initiation whose timestamp is far ahead of the server's clock.
    FutureTimestamp,
    /// No complete handshake before the deadline (slowloris, stalled scanner).
    HandshakeTimeout,
    /// An established session sent a frame that failed authentication or
    /// broke a limit.
    SessionViolation,
    /// The kernel tier saw connection-opening probes to many ports (or one
    /// to a trap port).
    PortScan,
    /// The kernel tier saw more SYNs to the service than the per-source
    /// rate limit allows.
    SynFlood,
    /// The kernel tier saw a TCP flag set no real stack sends (NULL, FIN
    /// without ACK, Xmas, SYN+FIN, SYN+RST, a short header).
    BadTcpFlags,
    /// The kernel tier saw segments that belonged to no connection (ACK,
    /// Window and Maimon scans, SYN-ACK and ACK floods, replayed TCP): the
    /// host's stack reset each of them.
    StraySegments,
    /// The kernel tier saw packets it could not parse (a TCP fragment after
    /// the first, an IPv6 extension chain it cannot follow): an evasion.
    UnparsedFlood,
    /// Several time-outs fell inside one wider prefix within the widening
    /// window (a scanner rotating through its network): the wider prefix
    /// is timed out.
    Widened,
}

/// What kind of offence a cause is; each kind has its own base time-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CauseClass {
    /// Not our protocol at all (decided before mac1).
    ForeignProtocol,
    /// A penaltybox client that failed to authenticate.
    HandshakeFailure,
    HandshakeTimeout,
    SessionViolation,
    /// Found by the kernel tier's detectors; each has its own time-out.
    PortScan,
    SynFlood,
    BadTcpFlags,
    StraySegments,
    UnparsedFlood,
    /// Several time-outs inside one wider prefix.
    Widened,
}

impl BanCause {
    pub const ALL: [BanCause; 17] = [
        BanCause::BadMagic,
        BanCause::BadVersion,
        BanCause::BadPattern,
        BanCause::BadLength,
        BanCause::BadMac1,
        BanCause::HandshakeFailed,
        BanCause::Unauthorized,
        BanCause::Replayed,
        BanCause::FutureTimestamp,
        BanCause::HandshakeTimeout,
        BanCause::SessionViolation,
        BanCause::PortScan,
        BanCause::SynFlood,
        BanCause::BadTcpFlags,
        BanCause::StraySegments,
        BanCause::UnparsedFlood,
        BanCause::Widened,
    ];

    /// The stable name stored with the ban and shown by `bans list`.
    pub fn name(self) -> &'static str {
        match self {
            BanCause::BadMagic => "bad-magic",
            BanCause::BadVersion => "bad-version",
            BanCause::BadPattern => "bad-pattern",
            BanCause::BadLength => "bad-length",
            BanCause::BadMac1 => "bad-mac1",
            BanCause::HandshakeFailed => "handshake-failed",
            BanCause::Unauthorized => "unauthorized",
            BanCause::Replayed => "replayed",
            BanCause::FutureTimestamp => "future-timestamp",
            BanCause::HandshakeTimeout => "handshake-timeout",
            BanCause::SessionViolation => "session-violation",
            BanCause::PortScan => "port-scan",
            BanCause::SynFlood => "syn-flood",
            BanCause::BadTcpFlags => "bad-tcp-flags",
            BanCause::StraySegments => "stray-segments",
            BanCause::UnparsedFlood => "unparsed-flood",
            BanCause::Widened => "widened",
        }
    }

    pub fn class(self) -> CauseClass {
        match self {
            BanCause::BadMagic
            | BanCause::BadVersion
            | BanCause::BadPattern
            | BanCause::BadLength => CauseClass::ForeignProtocol,
            BanCause::BadMac1
            | BanCause::HandshakeFailed
            | BanCause::Unauthorized
            | BanCause::Replayed
            | BanCause::FutureTimestamp => CauseClass::HandshakeFailure,
            BanCause::HandshakeTimeout => CauseClass::HandshakeTimeout,
            BanCause::SessionViolation => CauseClass::SessionViolation,
            BanCause::PortScan => CauseClass::PortScan,
            BanCause::SynFlood => CauseClass::SynFlood,
            BanCause::BadTcpFlags => CauseClass::BadTcpFlags,
            BanCause::StraySegments => CauseClass::StraySegments,
            BanCause::UnparsedFlood => CauseClass::UnparsedFlood,
            BanCause::Widened => CauseClass::Widened,
        }
    }

    /// The name as the stored [`Cause`] field.
    pub fn as_cause(self) -> Cause {
        // Every name is far below the limit (checked by a test).
        Cause::new(self.name()).expect("cause names fit MAX_CAUSE_LEN")
    }
}

impl fmt::Display for BanCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`BanCause`] (an admin's cause, or a newer node's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ban cause {0:?}")]
pub struct UnknownCause(pub String);

impl FromStr for BanCause {
    type Err = UnknownCause;

    fn from_str(s: &str) -> Result<Self, UnknownCause> {
        BanCause::ALL
            .into_iter()
            .find(|cause| cause.name() == s)
            .ok_or_else(|| UnknownCause(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_kernel_saw_round_trips_through_first_bytes() {
        let seen = KernelSeen {
            figure: 16,
            port: 5000,
        };
        let bytes = seen.to_first_bytes();
        assert_eq!(KernelSeen::from_first_bytes(bytes.as_slice()), Some(seen));
        assert_eq!(KernelSeen::from_first_bytes(b"GET / HT"), None);
        assert_eq!(KernelSeen::from_first_bytes(b""), None);
    }

    #[test]
    fn the_members_of_a_widened_time_out_round_trip_through_first_bytes() {
        let cases: [(&str, &[&str]); 3] = [
            (
                "2001:db8:77::/48",
                &[
                    "2001:db8:77:1::/64",
                    "2001:db8:77:ff00::/56",
                    "2001:db8:77:ab::/64",
                    "2001:db8:77:ffff::/64",
                ],
            ),
            (
                "198.18.78.0/24",
                &["198.18.78.10/32", "198.18.78.255/32", "198.18.78.0/32"],
            ),
            ("2001:db8:77:100::/56", &["2001:db8:77:1ff::/64"]),
        ];
        for (wide, members) in cases {
            let wide: Cidr = wide.parse().unwrap();
            let from = WidenedFrom {
                count: members.len() as u8 + 1,
                members: members.iter().map(|m| m.parse().unwrap()).collect(),
            };
            let bytes = from.to_first_bytes(&wide);
            assert_eq!(
                WidenedFrom::from_first_bytes(&wide, bytes.as_slice()),
                Some(from)
            );
        }
        // Not a widening's bytes; a member outside, or too far below.
        let wide: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(WidenedFrom::from_first_bytes(&wide, b"GET / HT"), None);
        let from = WidenedFrom {
            count: 2,
            members: vec![
                "2001:db8:1:2::/64".parse().unwrap(),
                "192.0.2.1/32".parse().unwrap(),
            ],
        };
        let back = WidenedFrom::from_first_bytes(&wide, from.to_first_bytes(&wide).as_slice());
        assert_eq!(
            back,
            Some(WidenedFrom {
                count: 2,
                members: vec![]
            })
        );
    }

    #[test]
    fn cause_names_round_trip_and_fit() {
        for cause in BanCause::ALL {
            assert_eq!(cause.name().parse::<BanCause>(), Ok(cause));
            assert_eq!(cause.as_cause().as_str(), cause.name());
        }
    }
}
