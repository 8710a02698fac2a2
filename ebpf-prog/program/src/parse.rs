//! Finding the source address and the TCP header of a frame, verifier-
//! friendly without CAP_PERFMON: fixed offsets are read in place; every
//! offset that depends on the packet (IPv4 options, the IPv6 extension
//! chain) is copied out with `bpf_xdp_load_bytes`, because the verifier
//! refuses a packet pointer moved by a variable.
//!
//! Understood: Ethernet with up to two VLAN tags (802.1Q, 802.1ad), IPv4
//! (options, fragments), IPv6 with up to [`MAX_EXTENSION_HEADERS`]
//! hop-by-hop, routing, destination-options, fragment and AH headers
//! before TCP. A packet whose TCP header cannot be found where it should be
//! (a longer or unknown chain, ESP, a TCP fragment after the first) is
//! *unparsed*: its port is unknown, which matters for the drop scope.

use core::mem::{self, MaybeUninit};

use aya_ebpf::helpers::generated::bpf_xdp_load_bytes;
use aya_ebpf::programs::XdpContext;
use ebpf_common::{Addr4Key, AddrKey, COUNTER_UNPARSED, v4_mapped};

use crate::count;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const NO_NEXT_HEADER: u8 = 59;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;
const IPV6_HEADER: usize = 40;
/// Extension headers followed before TCP; RFC 8200's recommended order
/// has at most six (hop-by-hop, destination options, routing, fragment,
/// AH, destination options), and a longer chain is unparsed.
pub const MAX_EXTENSION_HEADERS: u32 = 6;

/// Where a packet comes from: the address as the map key every map but the
/// IPv4 address map uses (IPv4 as IPv4-mapped IPv6), and the IPv4 address
/// alone for that one. Every field is written on every path (see [`Tcp`]).
#[derive(Clone, Copy)]
pub struct Source {
    pub key: AddrKey,
    pub v4: Addr4Key,
    pub is_v4: bool,
}

/// The TCP fields the program looks at. Not an `Option`: every field is
/// written on every path (`NO_TCP` when there is no header), because
/// without CAP_PERFMON the verifier also walks mispredicted branches, and
/// there an `Option`'s unwritten payload is an uninitialised register.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub present: bool,
    /// A packet that may be TCP but whose header the program cannot find:
    /// its port is unknown.
    pub unparsed: bool,
    pub dest_port: u16,
    pub flags: u8,
    /// Header length in 32-bit words (5 at least in any real segment).
    pub data_offset: u8,
}

pub const NO_TCP: Tcp = Tcp {
    present: false,
    unparsed: false,
    dest_port: 0,
    flags: 0,
    data_offset: 0,
};

const UNPARSED: Tcp = Tcp {
    unparsed: true,
    ..NO_TCP
};

/// The packet's source address, if it is IPv4 or IPv6 (behind at most two
/// VLAN tags) and long enough, and what it carries.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Option<(Source, Tcp)> {
    match u16::from_be(read::<u16>(ctx, 12)?) {
        ETHERTYPE_IPV4 => ipv4::<14>(ctx),
        ETHERTYPE_IPV6 => ipv6::<14>(ctx),
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => match u16::from_be(read::<u16>(ctx, 16)?) {
            ETHERTYPE_IPV4 => ipv4::<18>(ctx),
            ETHERTYPE_IPV6 => ipv6::<18>(ctx),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => match u16::from_be(read::<u16>(ctx, 20)?) {
                ETHERTYPE_IPV4 => ipv4::<22>(ctx),
                ETHERTYPE_IPV6 => ipv6::<22>(ctx),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// IPv4 at `L3` (a constant per VLAN depth, so every read is at a fixed
/// offset).
#[inline(always)]
fn ipv4<const L3: usize>(ctx: &XdpContext) -> Option<(Source, Tcp)> {
    let v4 = read::<Addr4Key>(ctx, L3 + 12)?;
    let source = Source {
        key: v4_mapped(v4),
        v4,
        is_v4: true,
    };
    let version_ihl = read::<u8>(ctx, L3)?;
    let header = usize::from(version_ihl & 0x0f) * 4;
    let protocol = read::<u8>(ctx, L3 + 9)?;
    if version_ihl >> 4 != 4 || header < 20 || protocol != IPPROTO_TCP {
        return Some((source, NO_TCP));
    }
    // Every fragment names its protocol; one of TCP after the first has no
    // TCP header, and TCP is not fragmented by real stacks.
    let fragment_offset = u16::from_be(read::<u16>(ctx, L3 + 6)?) & 0x1fff;
    if fragment_offset != 0 {
        count(COUNTER_UNPARSED);
        return Some((source, UNPARSED));
    }
    if header == 20 {
        return Some((source, tcp_at(ctx, L3 + 20)));
    }
    // Options (rare): the header's length is the packet's to say.
    Some((source, tcp_loaded(ctx, (L3 + header) as u32)))
}

/// IPv6 at `L3`: TCP right after the fixed header is read in place; a
/// chain of extension headers is walked.
#[inline(always)]
fn ipv6<const L3: usize>(ctx: &XdpContext) -> Option<(Source, Tcp)> {
    let source = Source {
        key: read::<AddrKey>(ctx, L3 + 8)?,
        v4: [0; 4],
        is_v4: false,
    };
    let next_header = read::<u8>(ctx, L3 + 6)?;
    if next_header == IPPROTO_TCP {
        return Some((source, tcp_at(ctx, L3 + IPV6_HEADER)));
    }
    if !is_extension_header(next_header) {
        return Some((source, NO_TCP));
    }
    let tcp = extension_chain(ctx, next_header, (L3 + IPV6_HEADER) as u32);
    if tcp.unparsed {
        count(COUNTER_UNPARSED);
    }
    Some((source, tcp))
}

/// Walks up to [`MAX_EXTENSION_HEADERS`] extension headers from `offset`,
/// `next` being the first one's type, to the TCP header. A fragment after
/// the first carries none: it is unparsed if it may be TCP (its fragment
/// header names TCP or another extension header), and not TCP otherwise.
#[inline(always)]
fn extension_chain(ctx: &XdpContext, first: u8, offset: u32) -> Tcp {
    let mut next = first;
    let mut offset = offset;
    let mut headers = 0;
    while headers < MAX_EXTENSION_HEADERS {
        // [next header, length, ...]: the first 4 bytes of any of them.
        let Some(bytes) = load::<4>(ctx, offset) else {
            return UNPARSED;
        };
        let length = match next {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => (u32::from(bytes[1]) + 1) * 8,
            AUTHENTICATION => (u32::from(bytes[1]) + 2) * 4,
            FRAGMENT => {
                let fragment_offset = u16::from_be_bytes([bytes[2], bytes[3]]) >> 3;
                if fragment_offset != 0 {
                    return match bytes[0] {
                        IPPROTO_UDP | IPPROTO_ICMPV6 | NO_NEXT_HEADER => NO_TCP,
                        _ => UNPARSED,
                    };
                }
                8
            }
            _ => return UNPARSED, // ESP and the rest: nothing to follow
        };
        next = bytes[0];
        offset += length;
        headers += 1;
        if next == IPPROTO_TCP {
            return tcp_loaded(ctx, offset);
        }
        if !is_extension_header(next) {
            return NO_TCP;
        }
    }
    UNPARSED
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

/// The TCP header at a fixed `offset`, if the packet holds its first 14
/// bytes. One bounds check for all of them: with one per field, LLVM drops
/// the cases it knows cannot happen (the flags there, the port not), and
/// the verifier, which walks them anyway, finds a register never set.
#[inline(always)]
fn tcp_at(ctx: &XdpContext, offset: usize) -> Tcp {
    let Some(bytes) = read::<[u8; 14]>(ctx, offset) else {
        return NO_TCP;
    };
    header(bytes)
}

/// The fields of a TCP header's first 14 bytes.
#[inline(always)]
fn header(bytes: [u8; 14]) -> Tcp {
    Tcp {
        present: true,
        unparsed: false,
        dest_port: u16::from_be_bytes([bytes[2], bytes[3]]),
        flags: bytes[13],
        data_offset: bytes[12] >> 4,
    }
}

/// The TCP header at an `offset` the packet decided, copied out. A packet
/// too short for it is unparsed (it claimed to carry TCP there).
#[inline(always)]
fn tcp_loaded(ctx: &XdpContext, offset: u32) -> Tcp {
    match load::<14>(ctx, offset) {
        Some(bytes) => header(bytes),
        None => UNPARSED,
    }
}

/// `N` bytes at a variable `offset`, copied out by the kernel (bounds
/// checked against the packet; `None` past its end).
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, offset: u32) -> Option<[u8; N]> {
    // Uninitialised, so that no memset call zeroes it first (the helper's
    // buffer may be uninitialised memory).
    let mut buffer = MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the helper writes exactly N bytes into our N-byte buffer,
    // bounds-checked by the kernel against the packet (an error if short).
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, offset, buffer.as_mut_ptr().cast(), N as u32) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0: the helper filled all N bytes.
    Some(unsafe { buffer.assume_init() })
}

/// Reads a `T` at a fixed `offset` into the packet, bounds-checked the way
/// the verifier requires (against data_end, before the access).
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: within [data, data_end), checked above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}
