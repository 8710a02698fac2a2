//! The program's maps: the time-out table (an exact-address hash and a
//! prefix trie), the allow-list, the detectors' configuration and
//! per-source state, their events, the counters. Userspace pins them all
//! (`xdp::attach`); the XDP and the egress programs share them.

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use ebpf_common::{
    Addr4Key, AddrKey, BanValue, COUNTER_SLOTS, DetectConfig, EVENTS_BYTES, MAX_ADDRS, MAX_ALLOWED,
    MAX_PREFIXES, MAX_SOURCES, SourceState,
};

#[map(name = "BANNED_ADDRS")]
pub static BANNED_ADDRS: HashMap<AddrKey, BanValue> =
    HashMap::with_max_entries(MAX_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "BANNED_ADDRS_V4")]
pub static BANNED_ADDRS_V4: HashMap<Addr4Key, BanValue> =
    HashMap::with_max_entries(MAX_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "BANNED_PREFIXES")]
pub static BANNED_PREFIXES: LpmTrie<AddrKey, BanValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map(name = "ALLOWED")]
pub static ALLOWED: LpmTrie<AddrKey, u8> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<DetectConfig> = Array::with_max_entries(1, 0);

#[map(name = "SOURCES")]
pub static SOURCES: LruHashMap<AddrKey, SourceState> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// One all-zero SourceState: what a new source's entry is copied from.
#[map(name = "ZERO_STATE")]
pub static ZERO_STATE: Array<SourceState> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// This CPU's coarse clock as of a tick (see `now_ns`): the jiffy it was
/// read at, and what it read.
#[map(name = "CLOCK")]
pub static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// See `ebpf_common::STRAY_HINT_MAP`.
#[map(name = "STRAY_HINT")]
pub static STRAY_HINT: Array<u64> = Array::with_max_entries(1, 0);
