//! penaltybox's kernel programs: an XDP program that drops the packets of
//! timed-out sources before any socket sees them and inspects TCP for what
//! userspace never sees (sources that send no payload), and a TC egress
//! program that counts the resets the host's TCP stack sends on its own
//! (segments that belonged to no connection). A detection is an event in a
//! ring buffer (at most one per source, detector and window); the ban
//! registry times the source out, and its ban comes back here.
//!
//! - `parse`: the source address and the TCP header, behind up to two VLAN
//!   tags and up to six IPv6 extension headers;
//! - `detect`: the XDP detectors (port scan, SYN flood, bad flags,
//!   unparseable packets) and their per-source state;
//! - `egress`: the stray-segment detector;
//! - `maps`: every map, pinned by userspace and shared by both programs.
//!
//! From the packet that makes a source a scanner (or a bad-flags prober,
//! or a sender of strays or of unparseable packets), its further packets
//! of that kind are dropped here at once, within the drop scope, while its
//! time-out is on the way through userspace.
//!
//! What passes untouched: non-IP frames (ARP...), short packets, sources
//! not timed out, time-outs that have ended (the expiry is checked here,
//! so a ban never outlives its time even if userspace is gone), and
//! allow-listed sources (never dropped, counted, limited or reported). A
//! timed-out source's packets are dropped within the drop scope (TCP to
//! the service ports) and, whatever the scope, when their port cannot be
//! told (unparsed).
//!
//! The common path stays cheap: one hash lookup per packet, the prefix and
//! allow-list tries only while userspace says they hold something, and
//! per-source state only for connection-opening probes and unparseable
//! packets, never for the ACKs of established traffic (one array read,
//! unless a stray report is live). State races between CPUs (two probes
//! of one source on two CPUs at once) can lose a count; the only effect is
//! a detection one probe later.
#![no_std]
#![no_main]
// atomic_xadd: an atomic add on a map value (see `penaltybox`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod detect;
mod egress;
mod maps;
mod parse;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use aya_ebpf::macros::xdp;
use aya_ebpf::programs::XdpContext;
use ebpf_common::{
    COUNTER_DROPPED_ADDR, COUNTER_DROPPED_PREFIX, COUNTER_DROPPED_UNPARSED, COUNTER_PASSED_ALLOWED,
};

use crate::detect::{Ban, banned, inspect, inspect_unparsed, is_allowed, is_service_port};
use crate::maps::{CLOCK, CONFIG, COUNTERS};
use crate::parse::parse;

#[xdp]
pub fn penaltybox(ctx: XdpContext) -> u32 {
    let Some((source, tcp)) = parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let to_service = tcp.present && is_service_port(config, tcp.dest_port);
    // A packet whose port is unknown is dropped whatever the drop scope:
    // the scope keeps an admin's SSH, not what hides its port.
    let in_scope = to_service || tcp.unparsed || config.drop_service_only == 0;
    match banned(&source, config) {
        Ban::None => {}
        // Already timed out: its probes are not news.
        Ban::Address(_) | Ban::Prefix if !in_scope => return xdp_action::XDP_PASS,
        Ban::Address(_) | Ban::Prefix if is_allowed(&source.key, config) => {
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
            count(if tcp.unparsed {
                COUNTER_DROPPED_UNPARSED
            } else {
                COUNTER_DROPPED_ADDR
            });
            return xdp_action::XDP_DROP;
        }
        Ban::Prefix => {
            count(if tcp.unparsed {
                COUNTER_DROPPED_UNPARSED
            } else {
                COUNTER_DROPPED_PREFIX
            });
            return xdp_action::XDP_DROP;
        }
    }
    if config.enabled == 0 {
        xdp_action::XDP_PASS
    } else if tcp.unparsed {
        inspect_unparsed(&source.key, config)
    } else if tcp.present {
        inspect(&source.key, tcp, to_service, config)
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

/// Design (b) of the stray detector, for the benchmark only: what a socket
/// lookup (`bpf_skc_lookup_tcp`) for every IPv4 segment with ACK costs,
/// against `parse_only` (the same parse, no lookup). Not in the embedded
/// object; see docs/BENCHMARKS.md for why design (a) was built instead.
#[cfg(feature = "bench")]
#[xdp]
pub fn socket_lookup(ctx: XdpContext) -> u32 {
    use aya_ebpf::bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple};
    use aya_ebpf::helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp};
    // The addresses and ports of an IPv4 header without options: one read
    // (two would leave the verifier a branch with one of them unset).
    let Some(b) = parse::read::<[u8; 12]>(&ctx, 14 + 12) else {
        return xdp_action::XDP_PASS;
    };
    let mut tuple = core::mem::MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: the IPv4 half of the tuple, written field by field (a struct
    // literal becomes a memset the verifier refuses), then read by the
    // helper for exactly its size.
    let sk = unsafe {
        let v4 = core::ptr::addr_of_mut!((*tuple.as_mut_ptr()).__bindgen_anon_1.ipv4);
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*v4).saddr),
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        );
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*v4).daddr),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        );
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*v4).sport),
            u16::from_ne_bytes([b[8], b[9]]),
        );
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*v4).dport),
            u16::from_ne_bytes([b[10], b[11]]),
        );
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            tuple.as_mut_ptr(),
            12,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if !sk.is_null() {
        // SAFETY: a socket the lookup returned, released once.
        unsafe { bpf_sk_release(sk.cast()) };
    }
    xdp_action::XDP_PASS
}

/// The same parse as `socket_lookup`, without the lookup (bench only).
#[cfg(feature = "bench")]
#[xdp]
pub fn parse_only(ctx: XdpContext) -> u32 {
    match parse::read::<[u8; 12]>(&ctx, 14 + 12) {
        Some(b) if b[0] == b[8] && b[4] == b[10] => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Passes everything: the baseline the benchmark compares the egress
/// program's cost with (bench object only).
#[cfg(feature = "bench")]
#[aya_ebpf::macros::classifier]
pub fn pass_all(_ctx: aya_ebpf::programs::TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_OK as i32
}

/// CLOCK_MONOTONIC now, at tick resolution (CLOCK_MONOTONIC_COARSE, a few
/// ms: a ban may end that much late, a window start that much off; the
/// SYN limit's 20 ms interval is coarser still). Read only where a
/// decision needs it (a ban matched, a probe). The coarse clock moves once
/// a tick, as jiffies do, so it is read (a helper call, most of a banned
/// packet's cost) once per tick and CPU and kept in `CLOCK`; every other
/// read is a jiffies load (`bpf_jiffies64`, which the verifier inlines).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no preconditions (Linux >= 5.5; inlined by the verifier on
    // 64-bit JITs).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: no preconditions (Linux >= 5.11).
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's own slot of a per-CPU array; XDP and TC egress do
    // not interrupt each other on one CPU (see `count`).
    unsafe {
        if (*cached)[0] != jiffies {
            (*cached)[1] = bpf_ktime_get_coarse_ns();
            (*cached)[0] = jiffies;
        }
        (*cached)[1]
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array; XDP runs in
        // softirq and TC egress with bottom halves off, so neither is
        // interrupted by the other on this CPU while it adds.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
