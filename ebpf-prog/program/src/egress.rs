//! The egress program (TC clsact): the stray-segment detector.
//!
//! A *stray* is a segment that belongs to no connection and opens none:
//! an ACK, FIN+ACK, SYN+ACK or data for which the host has no socket and
//! no pending handshake. The program does not rebuild connection tracking:
//! the host's TCP stack already judges every such segment, and answers it
//! with a reset of its own (RFC 793: a reset without ACK, whose sequence
//! number is the stray's acknowledgment). So this program looks only at
//! the resets the host sends, and counts per destination those the stack
//! sent for no connection:
//!
//! - no socket (`skb->sk` NULL), or the per-CPU control socket the stack
//!   answers through (a raw TCP socket): the segment fit nothing;
//! - a listener, or a socket still connecting: no connection either;
//! - any other socket (an orphan closing down, TIME_WAIT): the peer had a
//!   connection here, and its late segments are no offence.
//!
//! (Since Linux 6.13 the stack hands such resets the socket they answer
//! for; before, they all carry the control socket or none, and count.)
//! Resets with ACK are not strays' answers: a socket's own reset (a close
//! with SO_LINGER 0, `ss -K`, a time-out at accept) always carries ACK,
//! and so does the stack's answer to a SYN or a NULL/FIN probe (the other
//! detectors' business). A socket's reset to a peer forgives the strays
//! its in-flight segments will earn ([`STRAY_CREDIT_PER_RESET`]).
//!
//! Past `stray_segments` in `stray_window` a source is reported (once per
//! window) and the XDP program drops its further segments with ACK until
//! its time-out is in the table. Everything but resets costs a few reads.

use aya_ebpf::bindings::{TC_ACT_OK, bpf_sock};
use aya_ebpf::helpers::generated::bpf_sk_fullsock;
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use ebpf_common::{
    AddrKey, COUNTER_STRAYS, DETECT_STRAY, DetectConfig, STRAY_CREDIT_MAX, STRAY_CREDIT_PER_RESET,
    SourceState, v4_mapped,
};

use crate::detect::{ACK, RST, is_allowed, report, source_state};
use crate::maps::{CONFIG, STRAY_HINT};
use crate::parse::IPPROTO_TCP;
use crate::{count, now_ns};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const SOCK_STREAM: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;

#[classifier]
pub fn penaltybox_egress(ctx: TcContext) -> i32 {
    let Some((peer, port, flags)) = reset(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_OK as i32;
    };
    if config.enabled == 0 || is_allowed(&peer, config) {
        return TC_ACT_OK as i32;
    }
    if flags & ACK != 0 {
        if sent_by_a_connection(&ctx) {
            forgive(&peer, config);
        }
    } else if sent_for_no_connection(&ctx) {
        stray(&peer, port, config);
    }
    TC_ACT_OK as i32
}

/// A TCP reset this host is sending: to whom (as a map key), from which of
/// its ports, and its flags. The stack builds resets without IP options
/// or extension headers, so every read is at a fixed offset.
#[inline(always)]
fn reset(ctx: &TcContext) -> Option<(AddrKey, u16, u8)> {
    match u16::from_be(read::<u16>(ctx, 12)?) {
        ETHERTYPE_IPV4 => {
            if read::<u8>(ctx, 14)? != 0x45 || read::<u8>(ctx, 14 + 9)? != IPPROTO_TCP {
                return None;
            }
            let flags = read::<u8>(ctx, 34 + 13)?;
            if flags & RST == 0 {
                return None;
            }
            let peer = v4_mapped(read::<[u8; 4]>(ctx, 14 + 16)?);
            Some((peer, u16::from_be(read::<u16>(ctx, 34)?), flags))
        }
        ETHERTYPE_IPV6 => {
            if read::<u8>(ctx, 14 + 6)? != IPPROTO_TCP {
                return None;
            }
            let flags = read::<u8>(ctx, 54 + 13)?;
            if flags & RST == 0 {
                return None;
            }
            let peer = read::<AddrKey>(ctx, 14 + 24)?;
            Some((peer, u16::from_be(read::<u16>(ctx, 54)?), flags))
        }
        _ => None,
    }
}

/// The socket the reset goes out for, if it is a full one.
#[inline(always)]
fn socket(ctx: &TcContext) -> Option<(*mut bpf_sock, *mut bpf_sock)> {
    // SAFETY: `skb` is the context the kernel handed us; `sk` is one of
    // its fields (a pointer the verifier tracks as maybe-NULL).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-NULL socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    Some((sk, full))
}

/// Sent by a socket that had (or was making) a connection with the peer:
/// a full TCP stream socket.
#[inline(always)]
fn sent_by_a_connection(ctx: &TcContext) -> bool {
    match socket(ctx) {
        // SAFETY: a full socket the helper vouched for, for this run.
        Some((_, full)) if !full.is_null() => unsafe { (*full).type_ == SOCK_STREAM },
        _ => false,
    }
}

/// Sent by the stack for no connection: everything but a stream socket
/// that had one (closing, or in TIME_WAIT). No socket, the control socket
/// (a raw one), a listener and a connecting socket count (see the top of
/// this file); so does any other kind (a test run's dummy socket).
#[inline(always)]
fn sent_for_no_connection(ctx: &TcContext) -> bool {
    let Some((sk, full)) = socket(ctx) else {
        return true;
    };
    // SAFETY: `state` is readable on any socket the context hands out.
    if unsafe { (*sk).state } == TCP_TIME_WAIT {
        return false;
    }
    if full.is_null() {
        return true;
    }
    // SAFETY: a full socket the helper vouched for, for this run.
    let (kind, state) = unsafe { ((*full).type_, (*full).state) };
    kind != SOCK_STREAM || state == TCP_LISTEN || state == TCP_SYN_SENT
}

/// Starts a new stray window if the last one is over: strays, credit and
/// the report start afresh.
#[inline(always)]
fn roll_stray_window(state: &mut SourceState, now: u64, config: &DetectConfig) {
    if now.saturating_sub(state.stray_window_start_ns) < config.stray_window_ns {
        return;
    }
    state.stray_window_start_ns = now;
    // Volatile stores: LLVM would merge plain ones into a memset call.
    // SAFETY: fields of the live map value `state`.
    unsafe {
        core::ptr::write_volatile(&mut state.strays, 0);
        core::ptr::write_volatile(&mut state.stray_credit, 0);
        core::ptr::write_volatile(&mut state.reported, state.reported & !(1 << DETECT_STRAY));
    }
}

/// One of this host's sockets reset its connection with `peer`: the
/// segments the peer had in flight will be strays, and are forgiven.
#[inline(always)]
fn forgive(peer: &AddrKey, config: &DetectConfig) {
    let now = now_ns();
    let Some(state) = source_state(peer) else {
        return;
    };
    roll_stray_window(state, now, config);
    state.stray_credit = state
        .stray_credit
        .saturating_add(STRAY_CREDIT_PER_RESET)
        .min(STRAY_CREDIT_MAX);
}

/// A stray from `peer` to our `port`: forgiven while it has credit,
/// counted, and reported past the threshold.
#[inline(always)]
fn stray(peer: &AddrKey, port: u16, config: &DetectConfig) {
    count(COUNTER_STRAYS);
    let now = now_ns();
    let Some(state) = source_state(peer) else {
        return;
    };
    roll_stray_window(state, now, config);
    if state.stray_credit > 0 {
        state.stray_credit -= 1;
        return;
    }
    state.strays = state.strays.saturating_add(1);
    if state.strays >= config.stray_segments
        && report(peer, state, DETECT_STRAY, state.strays, port)
    {
        let until = now.saturating_add(config.stray_window_ns);
        state.stray_reported_until_ns = until;
        if let Some(hint) = STRAY_HINT.get_ptr_mut(0) {
            // SAFETY: the one slot of an array map, live for this run; a
            // race with another CPU's report only keeps the earlier end
            // (and userspace clears it once past).
            unsafe {
                if *hint < until {
                    *hint = until;
                }
            }
        }
    }
}

/// Reads a `T` at a fixed `offset` into the packet (direct packet access,
/// bounds-checked as the verifier requires).
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: within [data, data_end), checked above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}
