//! The map layouts shared by penaltybox's XDP program (kernel, `no_std`) and
//! its userspace (the `xdp` crate): key and value types, map and pin names,
//! sizes. `#[repr(C)]`, so both sides agree on every byte.
#![no_std]

/// A source address as a map key: IPv6, or IPv4 as IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`), so one map and one trie serve both families.
pub type AddrKey = [u8; 16];

/// The value of every ban entry, in both maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// When the ban ends, in CLOCK_MONOTONIC nanoseconds (what
    /// `bpf_ktime_get_ns` reads); 0 = until removed. The program checks it,
    /// so a ban whose userspace died still ends on time.
    pub expires_ns: u64,
    /// Packets dropped for this entry (exact-address map), counted with an
    /// atomic add: exact even when several CPUs drop for one source.
    pub drops: u64,
}

/// Exact banned addresses (/32, /128): a hash map.
pub const ADDRS_MAP: &str = "BANNED_ADDRS";
/// Banned prefixes (IPv6 /64 aggregates, admin CIDRs): an LPM trie keyed by
/// (prefix length, AddrKey); IPv4 prefixes have 96 added to their length.
pub const PREFIXES_MAP: &str = "BANNED_PREFIXES";
/// Allow-listed prefixes (an LPM trie like `BANNED_PREFIXES`, any value):
/// a source in it is never dropped, whatever ban covers it.
pub const ALLOWED_MAP: &str = "ALLOWED";
/// Per-CPU counters, indexed by the `COUNTER_*` constants.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// The XDP program's name in the object.
pub const PROGRAM: &str = "penaltybox";

pub const MAX_ADDRS: u32 = 1_048_576;
pub const MAX_PREFIXES: u32 = 65_536;
pub const MAX_ALLOWED: u32 = 4_096;

pub const COUNTER_DROPPED_ADDR: u32 = 0;
pub const COUNTER_DROPPED_PREFIX: u32 = 1;
/// Matched an entry whose ban had ended: passed.
pub const COUNTER_PASSED_EXPIRED: u32 = 2;
/// Matched a ban, but the source is allow-listed: passed.
pub const COUNTER_PASSED_ALLOWED: u32 = 3;
pub const COUNTER_SLOTS: u32 = 4;

/// File names under the pin directory.
pub const PIN_ADDRS: &str = "banned_addrs";
pub const PIN_PREFIXES: &str = "banned_prefixes";
pub const PIN_COUNTERS: &str = "counters";
pub const PIN_ALLOWED: &str = "allowed";
pub const PIN_LINK: &str = "link";

/// `a.b.c.d` as `::ffff:a.b.c.d`.
#[inline(always)]
pub fn v4_mapped(octets: [u8; 4]) -> AddrKey {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Is a ban with this expiry in force at `now_ns`?
#[inline(always)]
pub fn in_force(expires_ns: u64, now_ns: u64) -> bool {
    expires_ns == 0 || now_ns < expires_ns
}

#[cfg(feature = "user")]
// SAFETY: plain old data: two u64, no padding, every bit pattern valid.
unsafe impl aya::Pod for BanValue {}
