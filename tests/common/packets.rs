//! Ethernet frames made byte by byte for `BPF_PROG_TEST_RUN`: TCP over IPv4
//! (with options, fragmented) and IPv6 (with an extension header), UDP.
//! Shared by tests/xdp_program.rs and server/benches/xdp.rs. Checksums are
//! left zero: the program never looks at them.

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
    /// IPv4 only: the fragment offset field (8-byte units).
    pub fragment_offset: u16,
    /// IPv6 only: put a hop-by-hop options header before TCP.
    pub ipv6_hop_by_hop: bool,
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
            ipv6_hop_by_hop: false,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let tcp = tcp_header(self.dest_port, self.flags, self.data_offset);
        match self.source {
            IpAddr::V4(v4) => ipv4_frame(
                v4.octets(),
                6,
                self.ipv4_option_words,
                self.fragment_offset,
                &tcp,
            ),
            IpAddr::V6(v6) => {
                let mut payload = Vec::new();
                let next = if self.ipv6_hop_by_hop {
                    // Hop-by-hop: next header TCP, length 0 (8 bytes), PadN.
                    payload.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
                    0
                } else {
                    6
                };
                payload.extend_from_slice(&tcp);
                ipv6_frame(v6.octets(), next, &payload)
            }
        }
    }
}

/// A UDP datagram from `source` (IPv4) to `dest_port`.
pub fn udp_frame(source: [u8; 4], dest_port: u16) -> Vec<u8> {
    let mut udp = vec![0x30, 0x39];
    udp.extend_from_slice(&dest_port.to_be_bytes());
    udp.extend_from_slice(&[0, 8, 0, 0]);
    ipv4_frame(source, 17, 0, 0, &udp)
}

fn tcp_header(dest_port: u16, flags: u8, data_offset: u8) -> Vec<u8> {
    let mut tcp = vec![0xc0, 0x01]; // source port 49153
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
    frame.extend_from_slice(&[198, 18, 77, 1]);
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

fn ipv6_frame(source: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&source);
    frame.extend_from_slice(
        &"2001:db8:77::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    frame.extend_from_slice(payload);
    frame
}
