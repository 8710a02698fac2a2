//! penaltybox's XDP program: drops IPv4 and IPv6 packets whose source is
//! timed out, before any socket sees them. Everything else passes untouched:
//! non-IP frames (ARP...), short or odd packets, sources not banned, sources
//! whose ban has ended (the expiry is checked here, so a ban never outlives
//! its time even if userspace is gone), and allow-listed sources, whatever
//! ban covers them (checked only once a ban matched, so traffic that is not
//! banned pays nothing for it).
//!
//! Only the fixed IP header is read: the source address is there in every
//! IPv4 fragment and in IPv6 packets with extension headers alike.
#![no_std]
#![no_main]
// atomic_xadd: an atomic add on a map value (see `verdict`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::mem;

use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, xdp_action};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, PerCpuArray};
use aya_ebpf::programs::XdpContext;
use ebpf_common::{
    AddrKey, BanValue, COUNTER_DROPPED_ADDR, COUNTER_DROPPED_PREFIX, COUNTER_PASSED_ALLOWED,
    COUNTER_PASSED_EXPIRED, COUNTER_SLOTS, MAX_ADDRS, MAX_ALLOWED, MAX_PREFIXES, in_force,
    v4_mapped,
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

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

#[xdp]
pub fn penaltybox(ctx: XdpContext) -> u32 {
    match source(&ctx) {
        Some(source) => verdict(&source),
        None => xdp_action::XDP_PASS,
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

/// The packet's source address, if it is IPv4 or IPv6 and long enough.
#[inline(always)]
fn source(ctx: &XdpContext) -> Option<AddrKey> {
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    match ethertype {
        ETHERTYPE_IPV4 => {
            // Version/IHL is not needed: the source is at a fixed offset.
            Some(v4_mapped(read::<[u8; 4]>(ctx, ETH_HEADER + 12)?))
        }
        ETHERTYPE_IPV6 => read::<AddrKey>(ctx, ETH_HEADER + 8),
        _ => None,
    }
}

#[inline(always)]
fn verdict(source: &AddrKey) -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(value) = BANNED_ADDRS.get_ptr_mut(source) {
        // SAFETY: a map value returned by lookup stays valid until this
        // program run ends (RCU), even if userspace deletes the entry.
        // Several CPUs may hold it at once, so `expires_ns` is only read
        // and `drops` only changed through an atomic add.
        let expires_ns = unsafe { core::ptr::addr_of!((*value).expires_ns).read_volatile() };
        if in_force(expires_ns, now) {
            if allowed(source) {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: `drops` is an aligned u64 inside the live map value
            // (see above); every writer on every CPU uses this atomic add
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
        count(COUNTER_PASSED_EXPIRED);
    }
    if let Some(value) = BANNED_PREFIXES.get(Key::new(128, *source)) {
        if in_force(value.expires_ns, now) {
            if allowed(source) {
                return xdp_action::XDP_PASS;
            }
            count(COUNTER_DROPPED_PREFIX);
            return xdp_action::XDP_DROP;
        }
        count(COUNTER_PASSED_EXPIRED);
    }
    xdp_action::XDP_PASS
}

/// Is `source` allow-listed? Counted when it is: a ban covered it.
#[inline(always)]
fn allowed(source: &AddrKey) -> bool {
    let allowed = ALLOWED.get(Key::new(128, *source)).is_some();
    if allowed {
        count(COUNTER_PASSED_ALLOWED);
    }
    allowed
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
