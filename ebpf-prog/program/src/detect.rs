//! The detectors' side of the XDP program: per-source state, the port-scan,
//! SYN-flood, bad-flags and unparsed-flood detectors, the drop of a
//! reported source's further probes, and the events they write. The stray
//! detector counts in the egress program (`egress.rs`); what it reports is
//! dropped here.

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::maps::lpm_trie::Key;
use ebpf_common::{
    AddrKey, BanValue, COUNTER_EVENTS_LOST, COUNTER_EVENTS_SENT, COUNTER_FLOODS, COUNTER_MALFORMED,
    COUNTER_PASSED_EXPIRED, COUNTER_PROBES_DROPPED, COUNTER_SCANS, COUNTER_STRAY_REPORTS,
    COUNTER_STRAYS_DROPPED, COUNTER_SYN_DROPPED, COUNTER_SYN_SEEN, COUNTER_UNPARSED_FLOODS,
    DETECT_BAD_FLAGS, DETECT_PORT_SCAN, DETECT_STRAY, DETECT_SYN_FLOOD, DetectConfig, Event,
    MAX_SCAN_PORTS, SourceState, in_force,
};

use crate::maps::{
    ALLOWED, BANNED_ADDRS, BANNED_ADDRS_V4, BANNED_PREFIXES, EVENTS, SOURCES, STRAY_HINT,
    ZERO_STATE,
};
use crate::parse::{Source, Tcp};
use crate::{count, now_ns};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
/// FIN, SYN, RST, PSH, ACK, URG: the flags a first packet is judged by.
const BASE_FLAGS: u8 = 0x3f;

pub enum Ban {
    None,
    /// By its exact address: the entry, to count the drop on.
    Address(*mut BanValue),
    Prefix,
}

/// Is `source` timed out now, by its address or a prefix?
#[inline(always)]
pub fn banned(source: &Source, config: &DetectConfig) -> Ban {
    let entry = if source.is_v4 {
        BANNED_ADDRS_V4.get_ptr_mut(&source.v4)
    } else {
        BANNED_ADDRS.get_ptr_mut(&source.key)
    };
    if let Some(value) = entry {
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
        && let Some(value) = BANNED_PREFIXES.get(Key::new(128, source.key))
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
pub fn is_allowed(source: &AddrKey, config: &DetectConfig) -> bool {
    config.allowed_empty == 0 && ALLOWED.get(Key::new(128, *source)).is_some()
}

#[inline(always)]
pub fn is_service_port(config: &DetectConfig, port: u16) -> bool {
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

/// `source`'s detector state, made (all zeroes) if it has none yet.
#[inline(always)]
pub fn source_state(source: &AddrKey) -> Option<&'static mut SourceState> {
    let state = match SOURCES.get_ptr_mut(source) {
        Some(state) => state,
        None => {
            // A new source starts as all zeroes, copied from a map entry
            // nobody writes: its windows (started at 0) roll over at once,
            // and its SYN limit starts full. (A value built on the stack
            // becomes a memset call, whose byte loop the verifier refuses
            // without CAP_PERFMON.)
            let zero = ZERO_STATE.get(0)?;
            SOURCES.insert(source, zero, 0).ok()?;
            SOURCES.get_ptr_mut(source)?
        }
    };
    // SAFETY: a live LRU map value, valid for this run (RCU); only these
    // programs write it (races between CPUs are tolerated: a lost count
    // means a detection one packet later).
    Some(unsafe { &mut *state })
}

/// Starts a new scan window if the last one is over.
#[inline(always)]
fn roll_window(state: &mut SourceState, now: u64, config: &DetectConfig) {
    if now.saturating_sub(state.window_start_ns) < config.scan_window_ns {
        return;
    }
    state.window_start_ns = now;
    // `ports` beyond `distinct_ports` is never read. Volatile stores:
    // LLVM would merge plain ones into a memset call (see ZERO_STATE).
    // SAFETY: fields of the live map value `state`.
    unsafe {
        core::ptr::write_volatile(&mut state.distinct_ports, 0);
        core::ptr::write_volatile(&mut state.reported, state.reported & (1 << DETECT_STRAY));
        core::ptr::write_volatile(&mut state.syns, 0);
        core::ptr::write_volatile(&mut state.syn_drops, 0);
        core::ptr::write_volatile(&mut state.unparsed, 0);
    }
}

/// The detectors, for a TCP packet of a source that is not timed out.
#[inline(always)]
pub fn inspect(source: &AddrKey, tcp: Tcp, to_service: bool, config: &DetectConfig) -> u32 {
    let syn = tcp.flags & (SYN | ACK) == SYN;
    let malformed = is_malformed(tcp);
    // Established traffic (anything with ACK, a plain RST) costs no state,
    // unless a stray report is live.
    if !syn && !malformed {
        return drop_reported_stray(source, to_service, config);
    }
    if is_allowed(source, config) {
        return xdp_action::XDP_PASS;
    }
    if syn {
        count(COUNTER_SYN_SEEN);
    }
    let now = now_ns();
    let Some(state) = source_state(source) else {
        return xdp_action::XDP_PASS;
    };
    roll_window(state, now, config);
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
        return limit_syn(source, state, tcp, now, config);
    }
    xdp_action::XDP_PASS
}

/// The per-source SYN rate limit (GCRA): the bucket is empty when the
/// theoretical arrival time is more than the burst tolerance ahead of now.
#[inline(always)]
fn limit_syn(
    source: &AddrKey,
    state: &mut SourceState,
    tcp: Tcp,
    now: u64,
    config: &DetectConfig,
) -> u32 {
    state.syns = state.syns.saturating_add(1);
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
    xdp_action::XDP_PASS
}

/// A packet whose port the program cannot tell, from a source that is not
/// timed out: counted, and past `unparsed_burst` in a window the source is
/// reported; from then on its further unparseable packets are dropped.
#[inline(always)]
pub fn inspect_unparsed(source: &AddrKey, config: &DetectConfig) -> u32 {
    if is_allowed(source, config) {
        return xdp_action::XDP_PASS;
    }
    let now = now_ns();
    let Some(state) = source_state(source) else {
        return xdp_action::XDP_PASS;
    };
    roll_window(state, now, config);
    state.unparsed = state.unparsed.saturating_add(1);
    if state.unparsed > config.unparsed_burst {
        report(
            source,
            state,
            ebpf_common::DETECT_UNPARSED,
            state.unparsed,
            0,
        );
        if config.monitor == 0 {
            count(COUNTER_PROBES_DROPPED);
            return xdp_action::XDP_DROP;
        }
    }
    xdp_action::XDP_PASS
}

/// A segment with ACK: dropped if its source was reported for strays and
/// the report stands (its time-out is on the way through userspace). The
/// common case costs one array read: no report is live.
#[inline(always)]
fn drop_reported_stray(source: &AddrKey, to_service: bool, config: &DetectConfig) -> u32 {
    let Some(hint) = STRAY_HINT.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if *hint == 0 || config.monitor != 0 || (config.drop_service_only != 0 && !to_service) {
        return xdp_action::XDP_PASS;
    }
    let now = now_ns();
    if now >= *hint {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: a live LRU map value, valid for this run (RCU); only read.
    let Some(state) = (unsafe { SOURCES.get(source) }) else {
        return xdp_action::XDP_PASS;
    };
    if now < state.stray_reported_until_ns && !is_allowed(source, config) {
        count(COUNTER_STRAYS_DROPPED);
        return xdp_action::XDP_DROP;
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
/// window already. A full ring is counted, and the next packet tries
/// again. Says whether it wrote one.
#[inline(always)]
pub fn report(
    source: &AddrKey,
    state: &mut SourceState,
    detector: u8,
    figure: u32,
    port: u16,
) -> bool {
    let bit = 1u32 << detector;
    if state.reported & bit != 0 {
        return false;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(COUNTER_EVENTS_LOST);
        return false;
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
        DETECT_STRAY => COUNTER_STRAY_REPORTS,
        DETECT_BAD_FLAGS => COUNTER_MALFORMED,
        _ => COUNTER_UNPARSED_FLOODS,
    });
    true
}
