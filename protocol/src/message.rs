//! The messages carried in frames: requests from clients, responses from the
//! server. Encoding is bincode 2 (see `frame`); this module owns the types and
//! the semantic limits a server checks after decoding (`Request::validate`).
//!
//! The conversation is strictly request/response in order, so messages carry
//! no request ids.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bincode::{Decode, Encode};

use crate::inline::{InlineBytes, InlineStr};

/// Limits on text fields; they keep any list page far below the frame limit.
pub const MAX_VOLUME_ID_LEN: usize = 32;
pub const MAX_MEDIA_TYPE_LEN: usize = 16;
pub const MAX_LOCATION_LEN: usize = 64;
pub const MAX_CAUSE_LEN: usize = 64;
/// Most first bytes of a banned connection kept with its ban.
pub const MAX_FIRST_BYTES: usize = 16;
/// Largest page a list request may ask for; a server may return fewer.
pub const MAX_PAGE: u16 = 256;

/// Volume serial, e.g. "A00001L9".
pub type VolumeId = InlineStr<MAX_VOLUME_ID_LEN>;
/// e.g. "LTO-9".
pub type MediaType = InlineStr<MAX_MEDIA_TYPE_LEN>;
pub type Location = InlineStr<MAX_LOCATION_LEN>;
/// Why a prefix was timed out, e.g. "bad-magic" or an admin's note.
pub type Cause = InlineStr<MAX_CAUSE_LEN>;
pub type FirstBytes = InlineBytes<MAX_FIRST_BYTES>;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    Ping {
        nonce: u64,
    },
    /// Creates or replaces a volume; the server stamps `updated_at`.
    PutVolume(VolumeSpec),
    GetVolume {
        id: VolumeId,
    },
    MoveVolume {
        id: VolumeId,
        location: Location,
    },
    /// Volumes in id order, starting after `after`.
    ListVolumes {
        after: Option<VolumeId>,
        limit: u16,
    },
    /// Accepted only on sessions whose key is an admin key.
    Admin(AdminRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AdminRequest {
    /// Bans in prefix order, starting after `after`.
    ListBans {
        after: Option<Cidr>,
        limit: u16,
    },
    /// `duration_secs: None` uses the server's default for admin bans.
    AddBan {
        prefix: Cidr,
        duration_secs: Option<u64>,
        cause: Cause,
    },
    RemoveBan {
        prefix: Cidr,
    },
    Stats,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    Pong {
        nonce: u64,
    },
    Volume(Volume),
    Volumes {
        volumes: Vec<Volume>,
        next_after: Option<VolumeId>,
    },
    Bans {
        bans: Vec<BanInfo>,
        next_after: Option<Cidr>,
    },
    BanAdded(BanInfo),
    BanRemoved {
        prefix: Cidr,
        existed: bool,
    },
    Stats(ServerStats),
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorCode {
    NotFound,
    InvalidRequest,
    /// An admin request on a session without an admin key.
    Forbidden,
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum VolumeStatus {
    Scratch,
    Active,
    Full,
    Offsite,
    InTransit,
    Retired,
}

impl VolumeStatus {
    pub const ALL: [VolumeStatus; 6] = [
        VolumeStatus::Scratch,
        VolumeStatus::Active,
        VolumeStatus::Full,
        VolumeStatus::Offsite,
        VolumeStatus::InTransit,
        VolumeStatus::Retired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VolumeStatus::Scratch => "scratch",
            VolumeStatus::Active => "active",
            VolumeStatus::Full => "full",
            VolumeStatus::Offsite => "offsite",
            VolumeStatus::InTransit => "in-transit",
            VolumeStatus::Retired => "retired",
        }
    }
}

impl FromStr for VolumeStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown status {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What a client supplies for a volume.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VolumeSpec {
    pub id: VolumeId,
    pub media_type: MediaType,
    pub location: Location,
    pub status: VolumeStatus,
}

/// A volume as stored by the server.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Volume {
    pub spec: VolumeSpec,
    /// Milliseconds since the Unix epoch, set by the server.
    pub updated_at_ms: u64,
}

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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ServerStats {
    pub uptime_secs: u64,
    pub connections_accepted: u64,
    /// Connections closed at accept because their source was timed out.
    pub connections_refused: u64,
    pub sessions_active: u64,
    pub handshakes_completed: u64,
    pub bans_active: u64,
    pub bans_total: u64,
    pub storage_errors: u64,
    /// Kernel-tier table updates that failed.
    pub kernel_errors: u64,
}

impl VolumeSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_token("volume id", self.id.as_str())?;
        check_token("media type", self.media_type.as_str())?;
        check_text("location", self.location.as_str())
    }
}

impl Request {
    /// Semantic checks a server applies after decoding. A failure is answered
    /// with `ErrorCode::InvalidRequest`, not a ban: the frame authenticated,
    /// so it came from a real client with a bug, not a scanner.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::Ping { .. } => Ok(()),
            Request::PutVolume(spec) => spec.validate(),
            Request::GetVolume { id } => check_token("volume id", id.as_str()),
            Request::MoveVolume { id, location } => {
                check_token("volume id", id.as_str())?;
                check_text("location", location.as_str())
            }
            Request::ListVolumes { after, limit } => {
                if let Some(after) = after {
                    check_token("volume id", after.as_str())?;
                }
                check_page(*limit)
            }
            Request::Admin(AdminRequest::ListBans { limit, .. }) => check_page(*limit),
            Request::Admin(AdminRequest::AddBan { cause, .. }) => {
                check_text("cause", cause.as_str())
            }
            Request::Admin(AdminRequest::RemoveBan { .. } | AdminRequest::Stats) => Ok(()),
        }
    }
}

fn check_page(limit: u16) -> Result<(), String> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(format!("page limit must be 1..={MAX_PAGE}, got {limit}"));
    }
    Ok(())
}

/// Identifiers: ASCII letters, digits, '-', '_', '.'.
fn check_token(what: &str, value: &str) -> Result<(), String> {
    check_text(what, value)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{what} {value:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Free text: non-empty, no control characters. (Lengths are bounded by
/// the field types and enforced when decoding.)
fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// An IP prefix in canonical form: host bits are zero, so two spellings of
/// one network are one value (and one ban).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR prefix")]
    BadAddress(String),
    #[error("prefix length {len} is too long for {addr} (max {max})")]
    BadLength { addr: IpAddr, len: u8, max: u8 },
}

impl Cidr {
    /// The prefix of `addr` with `len` bits, host bits cleared. IPv4-mapped
    /// IPv6 addresses are treated as the IPv4 address they carry.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, CidrError> {
        let addr = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::BadLength { addr, len, max });
        }
        let addr = match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Ok(Cidr { addr, len })
    }

    /// A single address: /32 or /128.
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        Cidr::new(addr, len).expect("full-length prefix is valid")
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Cidr::new(addr, self.len).is_ok_and(|c| c.addr == self.addr)
    }
}

/// Decoding goes through [`Cidr::new`], so a peer cannot smuggle in a
/// prefix longer than its address or one with host bits set.
impl<Context> Decode<Context> for Cidr {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let addr = IpAddr::decode(decoder)?;
        let len = u8::decode(decoder)?;
        Cidr::new(addr, len).map_err(|e| bincode::error::DecodeError::OtherString(e.to_string()))
    }
}
bincode::impl_borrow_decode!(Cidr);

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Accepts `ADDR` (a single host) or `ADDR/LEN`.
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError::BadAddress(s.to_owned());
        match s.split_once('/') {
            None => Ok(Cidr::host(s.parse().map_err(|_| bad())?)),
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                Cidr::new(addr, len)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_is_canonical() {
        let a: Cidr = "2001:db8::1234/64".parse().unwrap();
        let b: Cidr = "2001:db8::ffff/64".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8::/64");
        assert!(a.contains("2001:db8::9".parse().unwrap()));
        assert!(!a.contains("2001:db9::9".parse().unwrap()));
        assert_eq!(
            "::ffff:10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert!(matches!(
            "10.0.0.1/33".parse::<Cidr>(),
            Err(CidrError::BadLength { .. })
        ));
        assert!(matches!(
            "example.com".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.1/x".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = VolumeSpec {
            id: "A00001L9".parse().unwrap(),
            media_type: "LTO-9".parse().unwrap(),
            location: "Vault 3, shelf 12".parse().unwrap(),
            status: VolumeStatus::Active,
        };
        assert_eq!(spec.validate(), Ok(()));
        spec.id = "A 1".parse().unwrap();
        assert!(spec.validate().unwrap_err().contains("volume id"));
        spec.id = "A1".parse().unwrap();
        spec.location = "shelf\n12".parse().unwrap();
        assert!(spec.validate().unwrap_err().contains("location"));
        spec.location = "".parse().unwrap();
        assert!(spec.validate().unwrap_err().contains("location"));
        let list = Request::ListVolumes {
            after: None,
            limit: 0,
        };
        assert!(list.validate().unwrap_err().contains("page limit"));
    }

    #[test]
    fn status_names_round_trip() {
        for status in VolumeStatus::ALL {
            assert_eq!(status.name().parse::<VolumeStatus>(), Ok(status));
        }
        assert!(
            "lost"
                .parse::<VolumeStatus>()
                .unwrap_err()
                .contains("in-transit")
        );
    }
}
