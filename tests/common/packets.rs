//! Ethernet frames made byte by byte for `BPF_PROG_TEST_RUN`: TCP over IPv4
//! (with options, fragmented) and IPv6 (with chains of extension headers,
//! fragmented), behind VLAN tags, UDP; and the resets this host sends, for
//! the egress program. Shared by the program-level tests and
//! server/benches/xdp.rs. Checksums are left zero: the programs never look
//! at them.

#![allow(dead_code)] // each user needs a different subset

use std::net::IpAddr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// One TCP segment to build; `Segment::new` then adjust fields.
#[derive(Clone, Debug)]
pub struct Segment {
    pub source: IpAddr,
    pub dest_port: u16,
    pub flags: u8,
    /// TCP header length in 32-bit words.
    pub data_offset: u8,
    /// IPv4 only: option words after the fixed header (IHL = 5 + this).
    pub ipv4_option_words: u8,
    /// The fragment offset (8-byte units): IPv4's field, or for IPv6 the
    /// fragment header's (when `ipv6_extensions` holds one).
    pub fragment_offset: u16,
    /// IPv6 only: extension headers before TCP, by type, in order (0
    /// hop-by-hop, 43 routing, 44 fragment, 51 AH, 60 destination options,
    /// or any other number, written as an 8-byte header).
    pub ipv6_extensions: Vec<u8>,
    /// IPv6 only: the next header after the last extension (TCP unless
    /// changed, e.g. to UDP for a non-TCP fragment).
    pub ipv6_upper: u8,
    /// 802.1Q/802.1ad tags in front of the IP header (0, 1 or 2).
    pub vlan_tags: u8,
}

impl Segment {
    pub fn new(source: &str, dest_port: u16, flags: u8) -> Segment {
        Segment {
            source: source.parse().expect("a source address"),
            dest_port,
            flags,
            data_offset: 5,
            ipv4_option_words: 0,
            fragment_offset: 0,
            ipv6_extensions: Vec::new(),
            ipv6_upper: 6,
            vlan_tags: 0,
        }
    }

    /// The same segment behind IPv6 extension headers of these types.
    pub fn with_extensions(mut self, types: &[u8]) -> Segment {
        self.ipv6_extensions = types.to_vec();
        self
    }

    pub fn frame(&self) -> Vec<u8> {
        let tcp = tcp_header(49153, self.dest_port, self.flags, self.data_offset);
        let frame = match self.source {
            IpAddr::V4(v4) => ipv4_frame(
                v4.octets(),
                6,
                self.ipv4_option_words,
                self.fragment_offset,
                &tcp,
            ),
            IpAddr::V6(v6) => {
                let (next, mut payload) = self.extension_chain();
                payload.extend_from_slice(&tcp);
                ipv6_frame(v6.octets(), SERVER_V6, next, &payload)
            }
        };
        tagged(frame, self.vlan_tags)
    }

    /// The first header's type, and the chain's bytes.
    fn extension_chain(&self) -> (u8, Vec<u8>) {
        let mut bytes = Vec::new();
        let types = &self.ipv6_extensions;
        for (i, kind) in types.iter().enumerate() {
            let next = types.get(i + 1).copied().unwrap_or(self.ipv6_upper);
            match *kind {
                // Fragment: next, reserved, offset << 3 (M set), id.
                44 => {
                    bytes.push(next);
                    bytes.push(0);
                    bytes.extend_from_slice(&((self.fragment_offset << 3) | 1).to_be_bytes());
                    bytes.extend_from_slice(&[0, 0, 0, 7]);
                }
                // AH: next, payload length in 4-byte units minus 2 (16
                // bytes: SPI, sequence, 4 bytes of ICV), reserved.
                51 => {
                    bytes.extend_from_slice(&[next, 2, 0, 0]);
                    bytes.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
                }
                // Hop-by-hop, routing, destination options (and the rest):
                // next, length 1 (16 bytes), padding.
                _ => {
                    bytes.extend_from_slice(&[next, 1, 1, 12]);
                    bytes.extend_from_slice(&[0; 12]);
                }
            }
        }
        (types.first().copied().unwrap_or(self.ipv6_upper), bytes)
    }
}

/// The address the IPv6 frames are sent to (the server's).
pub const SERVER_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// `frame` with `tags` VLAN tags (802.1ad outside, 802.1Q inside) between
/// the MAC addresses and the ethertype.
fn tagged(frame: Vec<u8>, tags: u8) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    let ethertypes: &[u16] = match tags {
        0 => &[],
        1 => &[0x8100],
        _ => &[0x88a8, 0x8100],
    };
    for (i, ethertype) in ethertypes.iter().enumerate() {
        out.extend_from_slice(&ethertype.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes()); // VLAN id
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// A TCP reset this host sends to `peer` from its port `from_port`, with
/// `flags` (RST, or RST+ACK): what the egress program sees.
pub fn reset_frame(peer: &str, from_port: u16, flags: u8) -> Vec<u8> {
    let tcp = tcp_header(from_port, 40000, flags, 5);
    match peer.parse::<IpAddr>().expect("a peer address") {
        IpAddr::V4(v4) => ipv4_frame_between([198, 18, 77, 1], v4.octets(), 6, 0, 0, &tcp),
        IpAddr::V6(v6) => ipv6_frame(SERVER_V6, v6.octets(), 6, &tcp),
    }
}

/// A UDP datagram from `source` (IPv4) to `dest_port`.
pub fn udp_frame(source: [u8; 4], dest_port: u16) -> Vec<u8> {
    let mut udp = vec![0x30, 0x39];
    udp.extend_from_slice(&dest_port.to_be_bytes());
    udp.extend_from_slice(&[0, 8, 0, 0]);
    ipv4_frame(source, 17, 0, 0, &udp)
}

fn tcp_header(source_port: u16, dest_port: u16, flags: u8, data_offset: u8) -> Vec<u8> {
    let mut tcp = source_port.to_be_bytes().to_vec();
    tcp.extend_from_slice(&dest_port.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
    tcp.push(data_offset << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    tcp
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn ipv4_frame(
    source: [u8; 4],
    protocol: u8,
    option_words: u8,
    fragment_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    ipv4_frame_between(
        source,
        [198, 18, 77, 1],
        protocol,
        option_words,
        fragment_offset,
        payload,
    )
}

fn ipv4_frame_between(
    source: [u8; 4],
    dest: [u8; 4],
    protocol: u8,
    option_words: u8,
    fragment_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    let header_len = 20 + 4 * usize::from(option_words);
    let total = (header_len + payload.len()) as u16;
    let mut frame = ethernet(0x0800);
    frame.push(0x40 | (5 + option_words));
    frame.push(0);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 1]); // identification
    frame.extend_from_slice(&(fragment_offset & 0x1fff).to_be_bytes());
    frame.extend_from_slice(&[64, protocol, 0, 0]);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&dest);
    // NOPs, then End of options: bytes a program that ignores IHL would
    // read as ports and flags.
    for i in 0..4 * usize::from(option_words) {
        frame.push(if i + 1 == 4 * usize::from(option_words) {
            0
        } else {
            1
        });
    }
    frame.extend_from_slice(payload);
    frame
}

fn ipv6_frame(source: [u8; 16], dest: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(&dest);
    frame.extend_from_slice(payload);
    frame
}
