//! penaltybox's XDP program: drops the packets of timed-out sources before
//! any socket sees them, and inspects TCP for what userspace never sees
//! (sources that send no payload): port scans, SYN floods from one source,
//! and flag sets no real stack opens a connection with. A detection is an
//! event in a ring buffer (at most one per source, detector and window);
//! the ban registry times the source out, and its ban comes back here.
//!
//! From the probe that makes a source a scanner (or a bad-flags prober),
//! its further connection-opening probes are dropped here at once, within
//! the drop scope, for the rest of the window: the time-out follows through
//! userspace, and a fast scanner sends hundreds of probes meanwhile.
//!
//! What passes untouched: non-IP frames (ARP...), short or odd packets,
//! sources not banned, bans that have ended (the expiry is checked here, so
//! a ban never outlives its time even if userspace is gone), allow-listed
//! sources (never dropped, counted, limited or reported), and everything
//! whose TCP header is not where it is looked for: IPv4 fragments after the
//! first, IPv6 with extension headers (both counted as unparsed).
//!
//! The common path stays cheap: one hash lookup per packet, the prefix and
//! allow-list tries only while userspace says they hold something, and
//! per-source state only for connection-opening probes, never for the
//! ACKs of established traffic. State races between CPUs (two probes of
//! one source on two CPUs at once) can lose a count; the only effect is a
//! detection one probe later.
#![no_std]
#![no_main]
// atomic_xadd: an atomic add on a map value (see `banned`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::mem::{self, MaybeUninit};

use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, xdp_action};
use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes};
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use aya_ebpf::programs::XdpContext;
use ebpf_common::{
    AddrKey, BanValue, COUNTER_DROPPED_ADDR, COUNTER_DROPPED_PREFIX, COUNTER_EVENTS_LOST,
    COUNTER_EVENTS_SENT, COUNTER_FLOODS, COUNTER_MALFORMED, COUNTER_PASSED_ALLOWED,
    COUNTER_PASSED_EXPIRED, COUNTER_PROBES_DROPPED, COUNTER_SCANS, COUNTER_SLOTS,
    COUNTER_SYN_DROPPED, COUNTER_SYN_SEEN, COUNTER_UNPARSED, DETECT_BAD_FLAGS, DETECT_PORT_SCAN,
    DETECT_SYN_FLOOD, DetectConfig, EVENTS_BYTES, Event, MAX_ADDRS, MAX_ALLOWED, MAX_PREFIXES,
    MAX_SCAN_PORTS, MAX_SOURCES, SourceState, in_force, v4_mapped,
};

#[map(name = "BANNED_ADDRS")]
static BANNED_ADDRS: HashMap<AddrKey, BanValue> =
    HashMap::with_max_entries(MAX_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "BANNED_PREFIXES")]
static BANNED_PREFIXES: LpmTrie<AddrKey, BanValue> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map(name = "ALLOWED")]
static ALLOWED: LpmTrie<AddrKey, u8> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<DetectConfig> = Array::with_max_entries(1, 0);

#[map(name = "SOURCES")]
static SOURCES: LruHashMap<AddrKey, SourceState> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// One all-zero SourceState: what a new source's entry is copied from.
#[map(name = "ZERO_STATE")]
static ZERO_STATE: Array<SourceState> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV6_HEADER: usize = 40;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
/// FIN, SYN, RST, PSH, ACK, URG: the flags a first packet is judged by.
const BASE_FLAGS: u8 = 0x3f;

/// The TCP fields the program looks at. Not an `Option`: every field is
/// written on every path (`NO_TCP` when there is no header), because
/// without CAP_PERFMON the verifier also walks mispredicted branches, and
/// there an `Option`'s unwritten payload is an uninitialised register.
#[derive(Clone, Copy)]
struct Tcp {
    present: bool,
    dest_port: u16,
    flags: u8,
    /// Header length in 32-bit words (5 at least in any real segment).
    data_offset: u8,
}

#[xdp]
pub fn penaltybox(ctx: XdpContext) -> u32 {
    let Some((source, tcp)) = parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let to_service = tcp.present && is_service_port(config, tcp.dest_port);
    match banned(&source, config) {
        Ban::None => {}
        // Already timed out: its probes are not news.
        Ban::Address(_) | Ban::Prefix if config.drop_service_only != 0 && !to_service => {
            return xdp_action::XDP_PASS;
        }
        Ban::Address(_) | Ban::Prefix if is_allowed(&source, config) => {
            count(COUNTER_PASSED_ALLOWED);
            return xdp_action::XDP_PASS;
        }
        Ban::Address(value) => {
            // SAFETY: `drops` is an aligned u64 inside the live map value
            // (see `banned`); every writer on every CPU uses this atomic add
            // (BPF_ATOMIC_ADD, "lock xadd"), so no increment is lost.
            // (The bpfel target has no `AtomicU64::fetch_add`; the intrinsic
            // is what it would lower to.)
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    core::ptr::addr_of_mut!((*value).drops),
                    1,
                )
            };
            count(COUNTER_DROPPED_ADDR);
            return xdp_action::XDP_DROP;
        }
        Ban::Prefix => {
            count(COUNTER_DROPPED_PREFIX);
            return xdp_action::XDP_DROP;
        }
    }
    if tcp.present && config.enabled != 0 {
        inspect(&source, tcp, to_service, config)
    } else {
        xdp_action::XDP_PASS
    }
}

/// Drops everything, counting like `penaltybox` does: the baseline the
/// benchmark compares `penaltybox` with. Only in the bench object
/// (`--features bench`), never in the one the server embeds.
#[cfg(feature = "bench")]
#[xdp]
pub fn drop_all(_ctx: XdpContext) -> u32 {
    count(COUNTER_DROPPED_ADDR);
    xdp_action::XDP_DROP
}

/// The packet's source address, if it is IPv4 or IPv6 and long enough,
/// and its TCP header if it has one where the program looks.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<(AddrKey, Tcp)> {
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    match ethertype {
        ETHERTYPE_IPV4 => {
            let source = v4_mapped(read::<[u8; 4]>(ctx, ETH_HEADER + 12)?);
            let version_ihl = read::<u8>(ctx, ETH_HEADER)?;
            let header = usize::from(version_ihl & 0x0f) * 4;
            let protocol = read::<u8>(ctx, ETH_HEADER + 9)?;
            if version_ihl >> 4 != 4 || header < 20 || protocol != IPPROTO_TCP {
                return Some((source, NO_TCP));
            }
            let fragment_offset = u16::from_be(read::<u16>(ctx, ETH_HEADER + 6)?) & 0x1fff;
            if fragment_offset != 0 {
                count(COUNTER_UNPARSED);
                return Some((source, NO_TCP));
            }
            Some((source, tcp_after_ipv4(ctx, header)))
        }
        ETHERTYPE_IPV6 => {
            let source = read::<AddrKey>(ctx, ETH_HEADER + 8)?;
            let next_header = read::<u8>(ctx, ETH_HEADER + 6)?;
            if next_header == IPPROTO_TCP {
                return Some((source, tcp_at(ctx, ETH_HEADER + IPV6_HEADER)));
            }
            if is_extension_header(next_header) {
                count(COUNTER_UNPARSED);
            }
            Some((source, NO_TCP))
        }
        _ => None,
    }
}

/// Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility,
/// HIP, shim6 and the two experimental numbers (RFC 7045's list).
#[inline(always)]
fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

const NO_TCP: Tcp = Tcp {
    present: false,
    dest_port: 0,
    flags: 0,
    data_offset: 0,
};

/// The TCP header after an IPv4 header of `header` bytes (20..=60). A
/// header with options (rare) is copied out with `bpf_xdp_load_bytes`
/// instead of read at `offset + header`: without CAP_PERFMON the verifier
/// refuses a packet pointer moved by a variable, and the server is meant
/// to run with CAP_BPF and CAP_NET_ADMIN alone.
#[inline(always)]
fn tcp_after_ipv4(ctx: &XdpContext, header: usize) -> Tcp {
    if header == 20 {
        return tcp_at(ctx, ETH_HEADER + 20);
    }
    // Uninitialised, so that no memset call zeroes it first (the helper's
    // buffer may be uninitialised memory).
    let mut buffer = MaybeUninit::<[u8; 14]>::uninit();
    // SAFETY: the helper writes exactly 14 bytes into our 14-byte buffer,
    // bounds-checked by the kernel against the packet (an error if short).
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (ETH_HEADER + header) as u32,
            buffer.as_mut_ptr().cast(),
            14,
        )
    };
    if rc != 0 {
        return NO_TCP;
    }
    // SAFETY: rc == 0: the helper filled all 14 bytes.
    let bytes = unsafe { buffer.assume_init() };
    Tcp {
        present: true,
        dest_port: u16::from_be_bytes([bytes[2], bytes[3]]),
        flags: bytes[13],
        data_offset: bytes[12] >> 4,
    }
}

/// The TCP header at `offset`, if the packet holds its first 14 bytes.
#[inline(always)]
fn tcp_at(ctx: &XdpContext, offset: usize) -> Tcp {
    let (Some(port), Some([offset_byte, flags])) = (
        read::<u16>(ctx, offset + 2),
        read::<[u8; 2]>(ctx, offset + 12),
    ) else {
        return NO_TCP;
    };
    Tcp {
        present: true,
        dest_port: u16::from_be(port),
        flags,
        data_offset: offset_byte >> 4,
    }
}

enum Ban {
    None,
    /// By its exact address: the entry, to count the drop on.
    Address(*mut BanValue),
    Prefix,
}

/// CLOCK_MONOTONIC now, at tick resolution (CLOCK_MONOTONIC_COARSE, a few
/// ms: a ban may end that much late, a window start that much off; the
/// SYN limit's 20 ms interval is coarser still). Read only where a
/// decision needs it (a ban matched, a probe): the clock is a fair part of
/// a packet's cost, and the coarse one costs a fraction of the precise.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no preconditions (Linux >= 5.11).
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Is `source` timed out now, by its address or a prefix?
#[inline(always)]
fn banned(source: &AddrKey, config: &DetectConfig) -> Ban {
    if let Some(value) = BANNED_ADDRS.get_ptr_mut(source) {
        // SAFETY: a map value returned by lookup stays valid until this
        // program run ends (RCU), even if userspace deletes the entry.
        // Several CPUs may hold it at once, so `expires_ns` is only read
        // (and `drops` only changed through an atomic add).
        let expires_ns = unsafe { core::ptr::addr_of!((*value).expires_ns).read_volatile() };
        if in_force(expires_ns, now_ns()) {
            return Ban::Address(value);
        }
        count(COUNTER_PASSED_EXPIRED);
    }
    if config.prefixes_empty == 0
        && let Some(value) = BANNED_PREFIXES.get(Key::new(128, *source))
    {
        if in_force(value.expires_ns, now_ns()) {
            return Ban::Prefix;
        }
        count(COUNTER_PASSED_EXPIRED);
    }
    Ban::None
}

/// Is `source` allow-listed?
#[inline(always)]
fn is_allowed(source: &AddrKey, config: &DetectConfig) -> bool {
    config.allowed_empty == 0 && ALLOWED.get(Key::new(128, *source)).is_some()
}

#[inline(always)]
fn is_service_port(config: &DetectConfig, port: u16) -> bool {
    contains(&config.service_ports, config.service_port_count, port)
}

#[inline(always)]
fn is_trap_port(config: &DetectConfig, port: u16) -> bool {
    contains(&config.trap_ports, config.trap_port_count, port)
}

/// Is `port` among the first `count` of `ports`? Stops at `count`: the
/// common lists are short (one listen port, no trap ports).
#[inline(always)]
fn contains<const N: usize>(ports: &[u16; N], count: u32, port: u16) -> bool {
    let mut i = 0;
    while i < N {
        if i as u32 >= count {
            return false;
        }
        if ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// Flag sets no real stack opens a connection with, nor sends within one:
/// NULL, FIN without ACK (Xmas included), SYN+FIN, SYN+RST, and a header
/// shorter than the fixed 20 bytes.
#[inline(always)]
fn is_malformed(tcp: Tcp) -> bool {
    let flags = tcp.flags & BASE_FLAGS;
    tcp.data_offset < 5
        || flags == 0
        || (flags & FIN != 0 && flags & ACK == 0)
        || (flags & SYN != 0 && flags & (FIN | RST) != 0)
}

/// The detectors, for a TCP packet of a source that is not timed out.
#[inline(always)]
fn inspect(source: &AddrKey, tcp: Tcp, to_service: bool, config: &DetectConfig) -> u32 {
    let syn = tcp.flags & (SYN | ACK) == SYN;
    let malformed = is_malformed(tcp);
    // Established traffic (anything with ACK, a plain RST) costs no state.
    if !syn && !malformed {
        return xdp_action::XDP_PASS;
    }
    if is_allowed(source, config) {
        return xdp_action::XDP_PASS;
    }
    if syn {
        count(COUNTER_SYN_SEEN);
    }
    let now = now_ns();
    let state = match SOURCES.get_ptr_mut(source) {
        Some(state) => state,
        None => {
            // A new source starts as all zeroes, copied from a map entry
            // nobody writes: its window (started at 0) rolls over at once
            // below, and its SYN limit starts full. (A value built on the
            // stack becomes a memset call, whose byte loop the verifier
            // refuses without CAP_PERFMON.)
            let Some(zero) = ZERO_STATE.get(0) else {
                return xdp_action::XDP_PASS;
            };
            if SOURCES.insert(source, zero, 0).is_err() {
                return xdp_action::XDP_PASS;
            }
            match SOURCES.get_ptr_mut(source) {
                Some(state) => state,
                None => return xdp_action::XDP_PASS,
            }
        }
    };
    // SAFETY: a live LRU map value, valid for this run (RCU); only this
    // program writes it (races between CPUs are tolerated, see the top).
    let state = unsafe { &mut *state };
    if now.saturating_sub(state.window_start_ns) >= config.scan_window_ns {
        state.window_start_ns = now;
        // `ports` beyond `distinct_ports` is never read. Volatile stores:
        // LLVM would merge plain ones into a memset call (see ZERO_STATE).
        // SAFETY: fields of the live map value `state`.
        unsafe {
            core::ptr::write_volatile(&mut state.distinct_ports, 0);
            core::ptr::write_volatile(&mut state.reported, 0);
            core::ptr::write_volatile(&mut state.syns, 0);
            core::ptr::write_volatile(&mut state.syn_drops, 0);
        }
    }

    if drops_reported_probe(state, to_service, config) {
        return xdp_action::XDP_DROP;
    }
    note_port(state, tcp.dest_port);
    if is_trap_port(config, tcp.dest_port) || state.distinct_ports >= config.scan_ports {
        report(
            source,
            state,
            DETECT_PORT_SCAN,
            state.distinct_ports,
            tcp.dest_port,
        );
    }
    if malformed {
        let short_header = if tcp.data_offset < 5 {
            u32::from(tcp.data_offset) << 8
        } else {
            0
        };
        let figure = u32::from(tcp.flags) | short_header;
        report(source, state, DETECT_BAD_FLAGS, figure, tcp.dest_port);
    }
    // The probe that made it a scanner is dropped like the ones after.
    if drops_reported_probe(state, to_service, config) {
        return xdp_action::XDP_DROP;
    }
    if syn && to_service {
        state.syns = state.syns.saturating_add(1);
        // GCRA: the bucket is empty when the theoretical arrival time is
        // more than the burst tolerance ahead of now.
        let tat = if state.syn_tat_ns > now {
            state.syn_tat_ns
        } else {
            now
        };
        if tat - now > config.syn_tolerance_ns {
            // Over the limit: counted towards a flood either way, dropped
            // unless in monitor mode.
            state.syn_drops = state.syn_drops.saturating_add(1);
            if state.syn_drops >= config.syn_flood_drops {
                report(source, state, DETECT_SYN_FLOOD, state.syns, tcp.dest_port);
            }
            if config.monitor == 0 {
                count(COUNTER_SYN_DROPPED);
                return xdp_action::XDP_DROP;
            }
            return xdp_action::XDP_PASS;
        }
        state.syn_tat_ns = tat.saturating_add(config.syn_interval_ns);
    }
    xdp_action::XDP_PASS
}

/// Reported as a scanner (or for bad flags) this window: its time-out is on
/// the way through userspace, and its further probes need not wait for it.
/// Only probes, and only within the drop scope, as its ban will be.
#[inline(always)]
fn drops_reported_probe(state: &SourceState, to_service: bool, config: &DetectConfig) -> bool {
    let reported = state.reported & ((1 << DETECT_PORT_SCAN) | (1 << DETECT_BAD_FLAGS)) != 0;
    if reported && config.monitor == 0 && (to_service || config.drop_service_only == 0) {
        count(COUNTER_PROBES_DROPPED);
        return true;
    }
    false
}

/// Adds `port` to the window's distinct ports (exactly, up to
/// `MAX_SCAN_PORTS`; the threshold is never higher).
#[inline(always)]
fn note_port(state: &mut SourceState, port: u16) {
    if contains(&state.ports, state.distinct_ports, port) {
        return;
    }
    // The new port goes in front and the others move back one: the first
    // `distinct_ports` slots are always the window's distinct ports. Each
    // move is its own volatile access at a constant offset: writing
    // `ports[distinct]` (or a loop LLVM folds into it) moves a map value
    // pointer by a variable, which the verifier refuses without CAP_PERFMON.
    let ports = state.ports.as_mut_ptr();
    macro_rules! shift {
        ($($to:literal <- $from:literal),*) => {
            // SAFETY: constant indices below MAX_SCAN_PORTS (16), inside
            // the live map value.
            unsafe {
                $(core::ptr::write_volatile(
                    ports.add($to),
                    core::ptr::read_volatile(ports.add($from)),
                );)*
                core::ptr::write_volatile(ports, port);
            }
        };
    }
    shift!(15 <- 14, 14 <- 13, 13 <- 12, 12 <- 11, 11 <- 10, 10 <- 9, 9 <- 8, 8 <- 7,
        7 <- 6, 6 <- 5, 5 <- 4, 4 <- 3, 3 <- 2, 2 <- 1, 1 <- 0);
    const _: () = assert!(MAX_SCAN_PORTS == 16);
    if (state.distinct_ports as usize) < MAX_SCAN_PORTS {
        state.distinct_ports += 1;
    }
}

/// Writes one event for `detector`, unless this source's was written this
/// window already. A full ring is counted, and the next probe tries again.
#[inline(always)]
fn report(source: &AddrKey, state: &mut SourceState, detector: u8, figure: u32, port: u16) {
    let bit = 1u32 << detector;
    if state.reported & bit != 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(COUNTER_EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // Field by field, byte by byte for the address: a struct copy becomes
    // a memcpy call, a byte loop the verifier refuses without CAP_PERFMON.
    // SAFETY: `event` points at reserved ring memory the size of an Event,
    // ours until submit.
    unsafe {
        let mut i = 0;
        while i < 16 {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*event).source[i]), source[i]);
            i += 1;
        }
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*event).figure), figure);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*event).port), port);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*event).detector), detector);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*event)._pad), 0);
    }
    entry.submit(0);
    state.reported |= bit;
    count(COUNTER_EVENTS_SENT);
    count(match detector {
        DETECT_PORT_SCAN => COUNTER_SCANS,
        DETECT_SYN_FLOOD => COUNTER_FLOODS,
        _ => COUNTER_MALFORMED,
    });
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array, and XDP runs with
        // preemption off: nothing else writes it while we do.
        unsafe { *counter += 1 };
    }
}

/// Reads a `T` at `offset` into the packet, bounds-checked the way the
/// verifier requires (against data_end, before the access).
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: within [data, data_end), checked above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
