//! The kernel detectors as userspace sees them: the thresholds written into
//! the program's `CONFIG` map ([`Detection`], through
//! [`PinnedMaps::set_detection`](crate::PinnedMaps::set_detection)), and
//! the detections read back from its `EVENTS` ring buffer ([`EventReader`]).

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Map, MapData, RingBuf};
use ebpf_common::{
    DETECT_BAD_FLAGS, DETECT_PORT_SCAN, DETECT_STRAY, DETECT_SYN_FLOOD, DETECT_UNPARSED,
    DetectConfig, Event, MAX_SCAN_PORTS, MAX_SERVICE_PORTS, MAX_TRAP_PORTS, PIN_EVENTS,
};

use crate::XdpError;

/// What the detectors look for, and what a ban drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Detectors on at all (off: the program only drops banned sources).
    pub enabled: bool,
    /// Distinct destination ports within `scan_window` that make a scan
    /// (2..=[`MAX_SCAN_PORTS`]).
    pub scan_ports: u32,
    pub scan_window: Duration,
    /// A probe to any of these is a scan at once (at most [`MAX_TRAP_PORTS`]).
    pub trap_ports: Vec<u16>,
    /// SYNs per second per source to a service port, sustained (≥ 1).
    pub syn_rate: u32,
    /// SYNs a source may send at once (≥ 1); also how many SYNs past the
    /// limit, within one scan window, make it a SYN flood.
    pub syn_burst: u32,
    /// Drop a banned source's packets only when they are TCP to a service
    /// port (else everything from it).
    pub drop_service_only: bool,
    /// The server's listen ports (at most [`MAX_SERVICE_PORTS`]).
    pub service_ports: Vec<u16>,
    /// Monitor mode: detect and report, drop nothing on the detectors' own
    /// account (a ban in the table still drops; in monitor mode there are
    /// none).
    pub monitor: bool,
    /// Packets the program cannot parse (their port unknown) from one
    /// source within `scan_window` past which it is reported (≥ 1).
    pub unparsed_burst: u32,
    /// Segments that belong to no connection, from one source within
    /// `stray_window`, that make it reported (≥ 2).
    pub stray_segments: u32,
    pub stray_window: Duration,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            enabled: true,
            scan_ports: 8,
            scan_window: Duration::from_secs(60),
            trap_ports: Vec::new(),
            syn_rate: 50,
            syn_burst: 100,
            drop_service_only: true,
            service_ports: vec![5000],
            monitor: false,
            unparsed_burst: 32,
            stray_segments: 16,
            stray_window: Duration::from_secs(10),
        }
    }
}

impl Detection {
    /// Why these settings cannot go into the program, if they cannot.
    pub fn check(&self) -> Result<(), DetectionError> {
        if !(2..=MAX_SCAN_PORTS as u32).contains(&self.scan_ports) {
            return Err(DetectionError::ScanPorts(self.scan_ports));
        }
        if self.scan_window.is_zero() || self.scan_window > Duration::from_secs(24 * 3600) {
            return Err(DetectionError::ScanWindow);
        }
        if self.trap_ports.len() > MAX_TRAP_PORTS {
            return Err(DetectionError::TrapPorts(self.trap_ports.len()));
        }
        if self.syn_rate == 0 || self.syn_burst == 0 {
            return Err(DetectionError::SynRate);
        }
        if self.unparsed_burst == 0 {
            return Err(DetectionError::UnparsedBurst);
        }
        if self.stray_segments < 2 {
            return Err(DetectionError::StraySegments(self.stray_segments));
        }
        if self.stray_window.is_zero() || self.stray_window > Duration::from_secs(24 * 3600) {
            return Err(DetectionError::StrayWindow);
        }
        if self.service_ports.len() > MAX_SERVICE_PORTS {
            return Err(DetectionError::ServicePorts(self.service_ports.len()));
        }
        Ok(())
    }

    /// The map value (assumes [`Detection::check`] passed; the two
    /// `*_empty` flags are the table's to set).
    pub(crate) fn to_config(&self) -> DetectConfig {
        let interval_ns = 1_000_000_000 / u64::from(self.syn_rate.max(1));
        let mut config = DetectConfig {
            enabled: u32::from(self.enabled),
            scan_ports: self.scan_ports,
            scan_window_ns: u64::try_from(self.scan_window.as_nanos()).unwrap_or(u64::MAX),
            syn_interval_ns: interval_ns,
            syn_tolerance_ns: interval_ns.saturating_mul(u64::from(self.syn_burst.max(1) - 1)),
            drop_service_only: u32::from(self.drop_service_only),
            service_port_count: self.service_ports.len().min(MAX_SERVICE_PORTS) as u32,
            trap_port_count: self.trap_ports.len().min(MAX_TRAP_PORTS) as u32,
            // Past the limit by a second burst: far more than a client that
            // reconnects too fast ever loses (one SYN per retransmission
            // timeout, a second or more), at once for a flood.
            syn_flood_drops: self.syn_burst.max(1),
            monitor: u32::from(self.monitor),
            unparsed_burst: self.unparsed_burst,
            stray_segments: self.stray_segments,
            stray_window_ns: u64::try_from(self.stray_window.as_nanos()).unwrap_or(u64::MAX),
            ..DetectConfig::default()
        };
        for (slot, port) in config.service_ports.iter_mut().zip(&self.service_ports) {
            *slot = *port;
        }
        for (slot, port) in config.trap_ports.iter_mut().zip(&self.trap_ports) {
            *slot = *port;
        }
        config
    }

    /// Back from the map value (for `xdp status`).
    pub(crate) fn from_config(config: &DetectConfig) -> Detection {
        let interval = config.syn_interval_ns.max(1);
        let count = |n: u32, max: usize| (n as usize).min(max);
        Detection {
            enabled: config.enabled != 0,
            scan_ports: config.scan_ports,
            scan_window: Duration::from_nanos(config.scan_window_ns),
            trap_ports: config.trap_ports[..count(config.trap_port_count, MAX_TRAP_PORTS)].to_vec(),
            syn_rate: u32::try_from(1_000_000_000 / interval).unwrap_or(u32::MAX),
            syn_burst: u32::try_from(config.syn_tolerance_ns / interval + 1).unwrap_or(u32::MAX),
            drop_service_only: config.drop_service_only != 0,
            service_ports: config.service_ports
                [..count(config.service_port_count, MAX_SERVICE_PORTS)]
                .to_vec(),
            monitor: config.monitor != 0,
            unparsed_burst: config.unparsed_burst,
            stray_segments: config.stray_segments,
            stray_window: Duration::from_nanos(config.stray_window_ns),
        }
    }
}

/// A detector setting the program cannot take; the message starts with
/// the setting's name (under `kernel.`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectionError {
    #[error("scan_ports: {0} is not in 2..={MAX_SCAN_PORTS}")]
    ScanPorts(u32),
    #[error("scan_window: must be longer than 0s and at most 1 day")]
    ScanWindow,
    #[error("trap_ports: {0} ports; at most {MAX_TRAP_PORTS}")]
    TrapPorts(usize),
    #[error("syn_rate and syn_burst: must be at least 1")]
    SynRate,
    #[error("unparsed_burst: must be at least 1")]
    UnparsedBurst,
    #[error("stray_segments: {0} is under 2 (one late segment is no evidence)")]
    StraySegments(u32),
    #[error("stray_window: must be longer than 0s and at most 1 day")]
    StrayWindow,
    #[error(
        "service ports: {0} distinct listen ports; the kernel tier watches at most {MAX_SERVICE_PORTS}"
    )]
    ServicePorts(usize),
}

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    PortScan,
    SynFlood,
    BadTcpFlags,
    /// Segments that belonged to no connection (the stack reset them).
    StraySegments,
    /// Packets the program could not parse (their port unknown).
    UnparsedFlood,
}

/// One detection from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub source: IpAddr,
    pub detector: Detector,
    /// Port scan: distinct ports this window; SYN flood: SYNs this window;
    /// bad flags: the TCP flags byte (data offset × 256 added when it was
    /// under 5); strays: strays this stray window; unparsed: packets this
    /// window.
    pub figure: u32,
    /// The destination port of the probe that triggered it (strays: of the
    /// last stray; unparsed: 0).
    pub port: u16,
}

impl Detected {
    /// A record from the ring buffer; `None` for one of the wrong size or
    /// an unknown detector (a newer program than this userspace).
    pub fn from_bytes(bytes: &[u8]) -> Option<Detected> {
        if bytes.len() != std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: exactly size_of::<Event>() bytes; Event is plain old data
        // (every bit pattern valid); read_unaligned needs no alignment.
        let event: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let detector = match event.detector {
            DETECT_PORT_SCAN => Detector::PortScan,
            DETECT_SYN_FLOOD => Detector::SynFlood,
            DETECT_BAD_FLAGS => Detector::BadTcpFlags,
            DETECT_STRAY => Detector::StraySegments,
            DETECT_UNPARSED => Detector::UnparsedFlood,
            _ => return None,
        };
        let v6 = Ipv6Addr::from(event.source);
        let source = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        Some(Detected {
            source,
            detector,
            figure: event.figure,
            port: event.port,
        })
    }
}

/// The program's pinned event ring buffer. Poll its fd for readability
/// (epoll, tokio's `AsyncFd`), then drain it with [`EventReader::next`].
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records that were not events this userspace understands.
    pub skipped: u64,
}

impl EventReader {
    /// Opens the ring buffer under the pin directory of `xdp attach`.
    pub fn open(pin_dir: &Path) -> Result<Self, XdpError> {
        let path = pin_dir.join(PIN_EVENTS);
        if !path.exists() {
            return Err(XdpError::WrongMap {
                path: pin_dir.to_owned(),
                detail: "attached by an older penaltybox (no event ring buffer): detach and attach it again".into(),
            });
        }
        let data = MapData::from_pin(&path)
            .map_err(|e| XdpError::from_os(path.display().to_string(), &e))?;
        let ring = match Map::from_map_data(data) {
            Ok(map @ Map::RingBuf(_)) => {
                RingBuf::try_from(map).map_err(|e| XdpError::WrongMap {
                    path: path.clone(),
                    detail: e.to_string(),
                })?
            }
            Ok(_) => {
                return Err(XdpError::WrongMap {
                    path,
                    detail: "not a ring buffer".into(),
                });
            }
            Err(e) => {
                return Err(XdpError::WrongMap {
                    path,
                    detail: e.to_string(),
                });
            }
        };
        Ok(EventReader { ring, skipped: 0 })
    }
}

/// Drains what the ring holds now: `None` once it is empty (poll the fd
/// before asking again).
impl Iterator for EventReader {
    type Item = Detected;

    fn next(&mut self) -> Option<Detected> {
        loop {
            let item = self.ring.next()?;
            match Detected::from_bytes(&item) {
                Some(detected) => return Some(detected),
                None => self.skipped += 1,
            }
        }
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to `self.ring`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_map_layout() {
        let detection = Detection {
            trap_ports: vec![23, 3389],
            service_ports: vec![5000, 5001],
            syn_rate: 40,
            syn_burst: 7,
            stray_segments: 9,
            stray_window: Duration::from_secs(3),
            unparsed_burst: 5,
            ..Detection::default()
        };
        assert_eq!(detection.check(), Ok(()));
        let config = detection.to_config();
        assert_eq!(config.syn_interval_ns, 25_000_000);
        assert_eq!(config.syn_tolerance_ns, 6 * 25_000_000);
        assert_eq!(Detection::from_config(&config), detection);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |d: Detection| d.check().unwrap_err().to_string();
        assert!(
            bad(Detection {
                scan_ports: 1,
                ..Detection::default()
            })
            .starts_with("scan_ports")
        );
        assert!(
            bad(Detection {
                scan_ports: 17,
                ..Detection::default()
            })
            .starts_with("scan_ports")
        );
        assert!(
            bad(Detection {
                trap_ports: (1..=17).collect(),
                ..Detection::default()
            })
            .starts_with("trap_ports")
        );
        assert!(
            bad(Detection {
                syn_rate: 0,
                ..Detection::default()
            })
            .starts_with("syn_rate")
        );
        assert!(
            bad(Detection {
                stray_segments: 1,
                ..Detection::default()
            })
            .starts_with("stray_segments")
        );
        assert!(
            bad(Detection {
                stray_window: Duration::ZERO,
                ..Detection::default()
            })
            .starts_with("stray_window")
        );
        assert!(
            bad(Detection {
                unparsed_burst: 0,
                ..Detection::default()
            })
            .starts_with("unparsed_burst")
        );
    }

    #[test]
    fn events_decode_and_odd_records_do_not() {
        let event = Event {
            source: ebpf_common::v4_mapped([198, 18, 77, 2]),
            figure: 8,
            port: 5000,
            detector: DETECT_PORT_SCAN,
            _pad: 0,
        };
        // SAFETY: Event is plain old data; viewing it as bytes is sound.
        let bytes: [u8; 24] = unsafe { std::mem::transmute(event) };
        assert_eq!(
            Detected::from_bytes(&bytes),
            Some(Detected {
                source: "198.18.77.2".parse().unwrap(),
                detector: Detector::PortScan,
                figure: 8,
                port: 5000,
            })
        );
        assert_eq!(Detected::from_bytes(&bytes[..23]), None);
        let mut stray = bytes;
        stray[22] = DETECT_STRAY;
        assert_eq!(
            Detected::from_bytes(&stray).map(|d| d.detector),
            Some(Detector::StraySegments)
        );
        let mut unknown = bytes;
        unknown[22] = 9;
        assert_eq!(Detected::from_bytes(&unknown), None);
    }
}
