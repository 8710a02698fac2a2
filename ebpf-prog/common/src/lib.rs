//! The map layouts shared by penaltybox's XDP program (kernel, `no_std`) and
//! its userspace (the `xdp` crate): key and value types, the detector
//! configuration and event records, map and pin names, sizes. `#[repr(C)]`,
//! so both sides agree on every byte.
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

/// Exact banned IPv6 addresses (/128): a hash map keyed by [`AddrKey`].
pub const ADDRS_MAP: &str = "BANNED_ADDRS";
/// Exact banned IPv4 addresses (/32): a hash map keyed by the 4 address
/// bytes ([`Addr4Key`]), so that an IPv4 packet hashes 4 bytes, not 16.
pub const ADDRS_V4_MAP: &str = "BANNED_ADDRS_V4";

/// An IPv4 address as a map key: its 4 bytes, in network order.
pub type Addr4Key = [u8; 4];
/// Banned prefixes (IPv6 /64 aggregates, admin CIDRs): an LPM trie keyed by
/// (prefix length, AddrKey); IPv4 prefixes have 96 added to their length.
pub const PREFIXES_MAP: &str = "BANNED_PREFIXES";
/// Allow-listed prefixes (an LPM trie like `BANNED_PREFIXES`, any value):
/// a source in it is never dropped, whatever ban covers it.
pub const ALLOWED_MAP: &str = "ALLOWED";
/// Per-CPU counters, indexed by the `COUNTER_*` constants.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// When a stray-segment report was last made plus the stray window
/// (CLOCK_MONOTONIC ns; one `u64`): while it lies ahead, the XDP program
/// looks up the senders of segments with ACK in `SOURCES`, to drop a
/// reported source's further strays. 0: none live (userspace clears it).
pub const STRAY_HINT_MAP: &str = "STRAY_HINT";
/// The XDP program's name in the object.
pub const PROGRAM: &str = "penaltybox";
/// The TC (clsact) egress program's name in the object: it counts the
/// resets the host's TCP stack sends on its own (stray segments).
pub const EGRESS_PROGRAM: &str = "penaltybox_egress";

pub const MAX_ADDRS: u32 = 1_048_576;
pub const MAX_PREFIXES: u32 = 65_536;
pub const MAX_ALLOWED: u32 = 4_096;

pub const COUNTER_DROPPED_ADDR: u32 = 0;
pub const COUNTER_DROPPED_PREFIX: u32 = 1;
/// Matched an entry whose ban had ended: passed.
pub const COUNTER_PASSED_EXPIRED: u32 = 2;
/// Matched a ban, but the source is allow-listed: passed.
pub const COUNTER_PASSED_ALLOWED: u32 = 3;
/// Connection-opening SYNs (SYN without ACK) the detectors looked at.
pub const COUNTER_SYN_SEEN: u32 = 4;
/// SYNs to a service port dropped by a source's SYN rate limit.
pub const COUNTER_SYN_DROPPED: u32 = 5;
/// Detections, once per source per window each (what became an event, or
/// was lost trying).
pub const COUNTER_SCANS: u32 = 6;
pub const COUNTER_FLOODS: u32 = 7;
pub const COUNTER_MALFORMED: u32 = 8;
pub const COUNTER_EVENTS_SENT: u32 = 9;
/// Events the ring buffer had no room for (the detection is retried on
/// the source's next probe).
pub const COUNTER_EVENTS_LOST: u32 = 10;
/// IP packets whose TCP header the program does not look for: IPv4
/// fragments after the first, IPv6 with extension headers.
pub const COUNTER_UNPARSED: u32 = 11;
/// Connection-opening probes of a source already reported as a scanner or
/// for bad flags this window, dropped at once (before its time-out is in
/// the map).
pub const COUNTER_PROBES_DROPPED: u32 = 12;
/// Packets of a timed-out source whose port the program cannot tell (an
/// IPv6 chain it cannot parse, a TCP fragment after the first), dropped
/// whatever the drop scope.
pub const COUNTER_DROPPED_UNPARSED: u32 = 13;
/// Stray segments: resets the host's TCP stack sent on its own, in answer
/// to a segment with ACK that fit no connection (counted by the egress
/// program; forgiven ones included).
pub const COUNTER_STRAYS: u32 = 14;
/// Stray-segment detections (once per source per stray window).
pub const COUNTER_STRAY_REPORTS: u32 = 15;
/// Unparsed-flood detections (once per source per window).
pub const COUNTER_UNPARSED_FLOODS: u32 = 16;
/// Segments with ACK of a source reported for strays, dropped at once
/// (before its time-out is in the map), and further unparseable packets
/// of a source reported for them.
pub const COUNTER_STRAYS_DROPPED: u32 = 17;
pub const COUNTER_SLOTS: u32 = 18;

/// The detector configuration (one entry of the `CONFIG` array), written by
/// userspace at start and on change. All zeroes, as a fresh attach leaves
/// it, means: detectors off, drop every packet of a banned source, always
/// look in both tries; so a program nobody configured behaves safely.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectConfig {
    /// 1: the detectors run.
    pub enabled: u32,
    /// Distinct destination ports within `scan_window_ns` that make a scan.
    pub scan_ports: u32,
    pub scan_window_ns: u64,
    /// SYN rate limit per source as a GCRA: one SYN per `syn_interval_ns`
    /// sustained, `syn_tolerance_ns` of burst ((burst - 1) × interval).
    pub syn_interval_ns: u64,
    pub syn_tolerance_ns: u64,
    /// Strays (see [`COUNTER_STRAYS`]) are counted per source within a
    /// window this long.
    pub stray_window_ns: u64,
    /// 1: drop a banned source's packets only when they are TCP to a
    /// service port (or their port cannot be told); 0: drop all its
    /// packets.
    pub drop_service_only: u32,
    /// 1: userspace knows `BANNED_PREFIXES` is empty (skip the trie lookup).
    pub prefixes_empty: u32,
    /// 1: userspace knows `ALLOWED` is empty.
    pub allowed_empty: u32,
    pub service_port_count: u32,
    pub trap_port_count: u32,
    /// SYNs dropped by the rate limit within a window that make a source a
    /// SYN flood (reported). A client that reconnects too fast only loses
    /// a SYN now and then (it retransmits a second later); a flood keeps
    /// sending into the limit.
    pub syn_flood_drops: u32,
    /// 1: monitor mode (`bans.mode = "monitor"`): the detectors decide and
    /// report as ever, but drop nothing themselves (neither SYNs over the
    /// rate nor a reported scanner's later probes).
    pub monitor: u32,
    /// Unparseable packets (an IPv6 chain over the bound or unknown, a TCP
    /// fragment after the first) from one source within `scan_window_ns`
    /// past which it is reported (`unparsed-flood`).
    pub unparsed_burst: u32,
    /// Strays from one source within `stray_window_ns` that make a report
    /// (`stray-segments`).
    pub stray_segments: u32,
    /// The server's listen ports (SYN rate limit, drop scope).
    pub service_ports: [u16; MAX_SERVICE_PORTS],
    /// A probe to one of these is a scan at once.
    pub trap_ports: [u16; MAX_TRAP_PORTS],
}

pub const MAX_SERVICE_PORTS: usize = 8;
pub const MAX_TRAP_PORTS: usize = 16;

/// Per-source detector state (the `SOURCES` LRU map), created only for
/// sources that send connection-opening probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Start of the current scan window (CLOCK_MONOTONIC ns).
    pub window_start_ns: u64,
    /// The SYN rate limit's theoretical arrival time (GCRA).
    pub syn_tat_ns: u64,
    /// Start of the current stray window (written by the egress program).
    pub stray_window_start_ns: u64,
    /// Until when a stray report of this source stands (its further strays
    /// are dropped in XDP until then); 0: none.
    pub stray_reported_until_ns: u64,
    /// The distinct destination ports probed this window, the first
    /// `distinct_ports` slots (exact: a scan is reported at exactly
    /// `scan_ports`, which is at most [`MAX_SCAN_PORTS`]).
    pub ports: [u16; MAX_SCAN_PORTS],
    pub distinct_ports: u32,
    /// `1 << detector` for each detector reported this window.
    pub reported: u32,
    /// Connection-opening SYNs to a service port this window (the SYN
    /// flood event's figure).
    pub syns: u32,
    /// SYNs the rate limit dropped this window.
    pub syn_drops: u32,
    /// Unparseable packets this window.
    pub unparsed: u32,
    /// Strays this stray window (past the credit).
    pub strays: u32,
    /// Strays still forgiven: each reset a socket of this host sent the
    /// source (it ended a real connection) forgives
    /// [`STRAY_CREDIT_PER_RESET`] of the strays its in-flight segments
    /// earn, up to [`STRAY_CREDIT_MAX`].
    pub stray_credit: u32,
    pub _pad: u32,
}

/// Strays forgiven per reset a socket of this host sent the source: a
/// ping-pong protocol has a segment or two in flight when its connection
/// is reset.
pub const STRAY_CREDIT_PER_RESET: u32 = 4;
/// At most this many strays forgiven at once: the credit of 64 reset
/// connections (the per-source session limit's default). It bounds what a
/// source can earn by getting its own connections reset.
pub const STRAY_CREDIT_MAX: u32 = 256;

/// The largest `scan_ports` threshold.
pub const MAX_SCAN_PORTS: usize = 16;

/// Detector numbers, as in [`Event::detector`].
pub const DETECT_PORT_SCAN: u8 = 1;
pub const DETECT_SYN_FLOOD: u8 = 2;
pub const DETECT_BAD_FLAGS: u8 = 3;
/// Segments that belong to no connection (the stack reset them itself).
pub const DETECT_STRAY: u8 = 4;
/// Packets the program cannot parse, past `unparsed_burst`.
pub const DETECT_UNPARSED: u8 = 5;

/// One detection, written to the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub source: AddrKey,
    /// Port scan: distinct ports; SYN flood: SYNs this window; bad flags:
    /// the TCP flags byte (data offset in the high byte when it was < 5);
    /// strays: strays this stray window; unparsed: packets this window.
    pub figure: u32,
    /// A destination port of the probe that triggered it (strays: the
    /// port of the last stray; unparsed: 0).
    pub port: u16,
    pub detector: u8,
    pub _pad: u8,
}

/// The ring buffer's size: 256 KiB holds 8,192 events (24 bytes + the
/// kernel's 8-byte header each), far more than the registry falls behind by.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Sources the detectors track at once. LRU: under a spoofed flood the
/// oldest one-SYN sources are evicted first, and a real scanner, whose
/// state is touched on every probe, stays. 262,144 entries cost about
/// 44 MiB (96-byte states) of kernel memory (preallocated; see docs/BENCHMARKS.md).
pub const MAX_SOURCES: u32 = 262_144;

pub const CONFIG_MAP: &str = "CONFIG";
pub const SOURCES_MAP: &str = "SOURCES";
pub const EVENTS_MAP: &str = "EVENTS";

/// File names under the pin directory.
pub const PIN_ADDRS: &str = "banned_addrs";
pub const PIN_ADDRS_V4: &str = "banned_addrs_v4";
pub const PIN_PREFIXES: &str = "banned_prefixes";
pub const PIN_COUNTERS: &str = "counters";
pub const PIN_ALLOWED: &str = "allowed";
pub const PIN_CONFIG: &str = "config";
pub const PIN_SOURCES: &str = "sources";
pub const PIN_EVENTS: &str = "events";
pub const PIN_STRAY_HINT: &str = "stray_hint";
pub const PIN_LINK: &str = "link";
/// The egress program's link (TCX), beside the XDP program's.
pub const PIN_EGRESS_LINK: &str = "egress_link";

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
#[cfg(feature = "user")]
// SAFETY: plain old data, explicit padding fields, every bit pattern valid.
unsafe impl aya::Pod for DetectConfig {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SourceState {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Event {}
