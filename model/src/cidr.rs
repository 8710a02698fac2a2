//! IP prefixes in canonical form: the unit of a time-out (an address, an
//! aggregated IPv6 /64, an admin's CIDR). One value per network, so two
//! spellings of a network are one ban.
//!
//! The bincode encoding is the wire's and the fleet's; decoding goes through
//! [`Cidr::new`], so no peer can smuggle in a non-canonical prefix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bincode::{Decode, Encode};

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
    #[error(
        "{written} has host bits set: write {network} for the network, or {host} for the one address"
    )]
    HostBits {
        written: String,
        network: Cidr,
        host: Cidr,
    },
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

    /// The longest prefix of this family: 32 or 128.
    pub fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// A single address (/32, /128).
    pub fn is_host(&self) -> bool {
        self.len == self.max_len()
    }

    /// Every address of `other` is inside this prefix (a prefix covers
    /// itself).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }

    /// The two share addresses: one of them covers the other.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The time-out table's entry for `addr`: its prefix of `ipv4` bits for
    /// IPv4 (IPv4-mapped IPv6 included), of `ipv6` bits for IPv6. A length
    /// too long for the family (the settings refuse them) gives the whole
    /// address.
    pub fn aggregate(addr: IpAddr, ipv4: u8, ipv6: u8) -> Cidr {
        let addr = addr.to_canonical();
        let len = if addr.is_ipv4() { ipv4 } else { ipv6 };
        Cidr::new(addr, len).unwrap_or_else(|_| Cidr::host(addr))
    }
}

impl Cidr {
    /// What an operator writes (an allow-list entry, an admin's time-out, a
    /// feed's line): `ADDR` or `ADDR/LEN`, and a prefix with host bits set
    /// (`10.0.0.1/8`) is refused rather than read one way or the other: it
    /// may mean `10.0.0.0/8` or be a typo for `10.0.0.1/32`, and that is
    /// the operator's to say. (`FromStr` canonicalises, as the wire does.)
    pub fn parse_exact(text: &str) -> Result<Cidr, CidrError> {
        let cidr: Cidr = text.parse()?;
        let written: IpAddr = match text.split_once('/') {
            Some((addr, _)) => addr
                .parse()
                .map_err(|_| CidrError::BadAddress(text.into()))?,
            None => return Ok(cidr),
        };
        if written.to_canonical() == cidr.addr {
            return Ok(cidr);
        }
        Err(CidrError::HostBits {
            written: text.to_owned(),
            network: cidr,
            host: Cidr::host(written),
        })
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
    fn what_an_operator_writes_has_no_host_bits() {
        assert_eq!(
            Cidr::parse_exact("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Cidr::parse_exact("10.0.0.1").unwrap().to_string(),
            "10.0.0.1/32"
        );
        let error = Cidr::parse_exact("10.0.0.1/8").unwrap_err();
        assert_eq!(
            error.to_string(),
            "10.0.0.1/8 has host bits set: write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the one address"
        );
        assert!(matches!(
            Cidr::parse_exact("2001:db8::1/64"),
            Err(CidrError::HostBits { .. })
        ));
        assert!(Cidr::parse_exact("2001:db8::/64").is_ok());
        assert!(
            Cidr::parse_exact("::ffff:10.0.0.0/8").is_ok(),
            "v4-mapped is v4"
        );
        assert!(matches!(
            Cidr::parse_exact("10.0.0.0/40"),
            Err(CidrError::BadLength { .. })
        ));
    }

    #[test]
    fn containment_between_prefixes() {
        let p = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(p("10.0.0.0/8").covers(&p("10.1.0.0/16")));
        assert!(p("10.0.0.0/8").covers(&p("10.0.0.0/8")));
        assert!(!p("10.1.0.0/16").covers(&p("10.0.0.0/8")));
        assert!(!p("10.0.0.0/8").covers(&p("11.0.0.0/16")));
        assert!(p("10.1.0.0/16").overlaps(&p("10.0.0.0/8")));
        assert!(p("10.0.0.0/8").overlaps(&p("10.1.0.0/16")));
        assert!(!p("10.1.0.0/16").overlaps(&p("10.2.0.0/16")));
        assert!(!p("::/0").covers(&p("10.0.0.0/8")), "families never mix");
        assert!(p("192.0.2.7").is_host() && p("2001:db8::1").is_host());
        assert!(!p("2001:db8::/64").is_host());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Cidr::aggregate(ip("2001:db8:1:2:3:4:5:6"), 32, 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Cidr::aggregate(ip("::ffff:192.0.2.1"), 24, 64).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            Cidr::aggregate(ip("192.0.2.1"), 40, 64).to_string(),
            "192.0.2.1/32"
        );
    }
}
