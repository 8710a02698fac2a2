//! Wiring of the kernel tier for `serve`: open the pinned maps named by
//! `-B` (attaching first with `--xdp-iface`), write the detector settings
//! into them, and hand them to the ban core as its kernel table
//! (`kernel_table.rs`); then watch the detectors' ring buffer and report
//! each detection to the registry. Any failure is one warning line and the
//! server goes on with what still works (the userspace tier at least).

use std::path::PathBuf;

use actors::{KernelTable, ServerHandle};
use model::BanCause;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use xdp::{Detected, Detection, Detector, EventReader, PinnedMaps};

use crate::kernel_table::Pinned;
use crate::settings::Settings;

/// What the server runs the kernel tier with: the kernel table, the
/// detectors' events, and where it is all pinned.
pub struct Attachment {
    pub table: Box<dyn KernelTable>,
    /// The detectors' events; `None` when they are off.
    pub events: Option<EventReader>,
    pub table_path: PathBuf,
}

/// The kernel table to keep in step, if the settings ask for one and the
/// kernel lets us have it.
pub fn open(all: &Settings) -> Option<Attachment> {
    let settings = &all.kernel;
    let table_path = settings.bpf_table.clone().or_else(|| {
        settings
            .xdp_iface
            .as_ref()
            .map(|_| PathBuf::from(xdp::DEFAULT_PIN_DIR))
    })?;
    if let Some(iface) = &settings.xdp_iface {
        // One-step mode owns its attachment: a pin left by an earlier start
        // may point at an interface that no longer exists (a restarted
        // container gets a new one), so start afresh. The live bans are
        // replayed from storage into the new table right after.
        match xdp::detach(&table_path) {
            Ok(true) => log::info!(
                "replacing the XDP program pinned under {}",
                table_path.display()
            ),
            Ok(false) => {}
            Err(error) => log::warn!("cannot detach the old XDP program: {error}"),
        }
        let sizes = xdp::MapSizes {
            prefixes: settings.max_prefixes,
        };
        match xdp::attach_sized(iface, settings.xdp_mode.get().into(), &table_path, sizes) {
            Ok(()) => log::info!(
                "attached the XDP program to {iface}, pinned under {}",
                table_path.display()
            ),
            Err(error) => {
                log::warn!("kernel tier off, userspace tier only: {error}");
                return None;
            }
        }
    }
    let mut table = match PinnedMaps::open(&table_path) {
        Ok(table) => table,
        Err(error) => {
            log::warn!("kernel tier off, userspace tier only: {error}");
            return None;
        }
    };
    log::info!("kernel tier on: ban table {}", table.location().display());
    let detection = all.detection();
    let events = match table.set_detection(&detection) {
        Ok(()) if detection.enabled => match EventReader::open(&table_path) {
            Ok(events) => {
                log::info!("kernel detectors on: {}", describe(&detection));
                Some(events)
            }
            Err(error) => {
                log::warn!("kernel detectors off (drops only): {error}");
                None
            }
        },
        Ok(()) => {
            log::info!("kernel detectors off (kernel.detect = false): drops only");
            None
        }
        Err(error) => {
            log::warn!("kernel detectors off (drops only): {error}");
            None
        }
    };
    Some(Attachment {
        table: Box::new(Pinned(table)),
        events,
        table_path,
    })
}

/// The detection settings with the ports the server really bound (a
/// configured port 0 is only known once bound), written into the program
/// if they differ from what `open` wrote.
fn use_bound_ports(
    table_path: &std::path::Path,
    mut detection: Detection,
    bound: &[std::net::SocketAddr],
) -> Detection {
    let ports = crate::settings::service_ports(bound);
    if ports != detection.service_ports {
        detection.service_ports = ports;
        let written = PinnedMaps::open(table_path).and_then(|mut t| t.set_detection(&detection));
        match written {
            Ok(()) => log::info!(
                "kernel detectors: service ports {:?} (as bound)",
                detection.service_ports
            ),
            Err(error) => log::warn!("kernel detectors: cannot set the bound ports: {error}"),
        }
    }
    detection
}

fn describe(d: &Detection) -> String {
    let trap = if d.trap_ports.is_empty() {
        String::new()
    } else {
        format!(" or one probe to {:?}", d.trap_ports)
    };
    format!(
        "port scan at {} ports within {}{trap}; SYN flood above {}/s (burst {}) to ports {:?}; bad TCP flags; {} stray segments within {}; over {} unparseable packets within the scan window; a time-out drops {}",
        d.scan_ports,
        humantime::format_duration(d.scan_window),
        d.syn_rate,
        d.syn_burst,
        d.service_ports,
        d.stray_segments,
        humantime::format_duration(d.stray_window),
        d.unparsed_burst,
        if d.drop_service_only {
            "TCP to those ports (and packets whose port is unknown)"
        } else {
            "all packets"
        }
    )
}

/// Once the server is bound (at start, and after the watchdog attached the
/// program again): the detectors learn the bound ports, and their events
/// are watched (when they are on).
pub fn serve_detectors(
    all: &Settings,
    table_path: &std::path::Path,
    events: Option<EventReader>,
    server: &ServerHandle,
    bound: &[std::net::SocketAddr],
) {
    let detection = use_bound_ports(table_path, all.detection(), bound);
    if let Some(events) = events
        && let Err(error) = watch(events, server.clone(), detection)
    {
        log::warn!("kernel detectors: cannot watch their events: {error}");
    }
}

/// How often the watchdog checks the kernel tier.
const WATCHDOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Watches the kernel tier while the server runs (and clears the stray
/// hint once the reports it stands for are over): every two seconds, are
/// the pinned maps there and answering (and, with `--xdp-iface`, the
/// program's link)? When not: one error line, `penaltybox_kernel_tier_up`
/// reads 0 (it is computed from the same maps), and
/// - with `--xdp-iface`: the program is attached again and every live
///   time-out replayed into it, retried each check until it works;
/// - with `-B` alone (someone else attaches): it waits for the pinned table
///   to come back, then takes it up and replays into it.
pub fn watchdog(
    all: Settings,
    table_path: PathBuf,
    server: ServerHandle,
    bound: Vec<std::net::SocketAddr>,
) {
    let one_step = all.kernel.xdp_iface.is_some();
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(WATCHDOG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lost = false;
        loop {
            tick.tick().await;
            let problem = kernel_problem(&table_path, one_step);
            if problem.is_none() {
                let _ = xdp::expire_stray_hint(&table_path);
            }
            if let Some(why) = &problem
                && !lost
            {
                lost = true;
                let next = if one_step {
                    "attaching the program again"
                } else {
                    "userspace time-outs only until the pinned table is back (`penaltybox xdp attach`)"
                };
                log::error!("kernel tier lost: {why}; {next}");
            }
            if !lost || (problem.is_some() && !one_step) {
                continue;
            }
            let Some(tier) = open(&all) else { continue };
            serve_detectors(&all, &tier.table_path, tier.events, &server, &bound);
            if let Some(replay) = server.replace_kernel(tier.table).await {
                lost = false;
                log::info!(
                    "kernel tier back under {}: {} time-outs replayed, {} stale entries removed, {} failed",
                    table_path.display(),
                    replay.replayed,
                    replay.removed_stale,
                    replay.failed
                );
            }
        }
    });
}

/// What is wrong with the kernel tier now, if anything.
fn kernel_problem(table_path: &std::path::Path, one_step: bool) -> Option<String> {
    if one_step && !table_path.join(xdp::PIN_LINK).exists() {
        return Some(format!(
            "the program's link is no longer pinned under {} (detached?)",
            table_path.display()
        ));
    }
    xdp::counters(table_path)
        .err()
        .map(|error| error.to_string())
}

/// Reports every detection in the ring buffer to the registry, for as long
/// as the server runs (a task on the current actix/tokio runtime).
fn watch(events: EventReader, server: ServerHandle, detection: Detection) -> std::io::Result<()> {
    // SAFETY: the fd is the ring buffer map's, owned by `events`, which the
    // AsyncFd owns from here on: it stays open and the same for its life.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    actix_rt::spawn(async move {
        loop {
            let mut ready = match ring.readable_mut().await {
                Ok(ready) => ready,
                Err(error) => {
                    log::error!("kernel detectors: cannot wait for events any more: {error}");
                    return;
                }
            };
            for detected in ready.get_inner_mut().by_ref() {
                let (cause, evidence) = explain(&detected, &detection);
                let seen = model::KernelSeen {
                    figure: detected.figure,
                    port: detected.port,
                };
                server.report_detection(detected.source, cause, seen, evidence);
            }
            ready.clear_ready();
        }
    });
    Ok(())
}

/// The ban cause of a detection, and what the kernel saw, for the log.
fn explain(detected: &Detected, detection: &Detection) -> (BanCause, String) {
    let port = detected.port;
    match detected.detector {
        Detector::PortScan if detected.figure < detection.scan_ports => (
            BanCause::PortScan,
            format!("kernel: a probe to trap port {port}"),
        ),
        Detector::PortScan => (
            BanCause::PortScan,
            format!(
                "kernel: probes to {} distinct ports within {}, the last to {port}",
                detected.figure,
                humantime::format_duration(detection.scan_window)
            ),
        ),
        Detector::SynFlood => (
            BanCause::SynFlood,
            format!(
                "kernel: {} SYNs to port {port} within {}, over {}/s after a burst of {}; the rest dropped in XDP",
                detected.figure,
                humantime::format_duration(detection.scan_window),
                detection.syn_rate,
                detection.syn_burst
            ),
        ),
        Detector::BadTcpFlags => (
            BanCause::BadTcpFlags,
            format!("kernel: {} to port {port}", flag_names(detected.figure)),
        ),
        Detector::StraySegments => (
            BanCause::StraySegments,
            format!(
                "kernel: {} segments with ACK that belonged to no connection within {} (the stack reset each: ACK, FIN+ACK, SYN+ACK or data), the last to port {port}",
                detected.figure,
                humantime::format_duration(detection.stray_window)
            ),
        ),
        Detector::UnparsedFlood => (
            BanCause::UnparsedFlood,
            format!(
                "kernel: {} packets within {} whose TCP header it could not find (an IPv6 extension chain it cannot follow, or TCP fragments after the first)",
                detected.figure,
                humantime::format_duration(detection.scan_window)
            ),
        ),
    }
}

/// A bad-flags figure in words: "TCP flags FIN PSH URG", "TCP flags none",
/// "a TCP header of 4 words".
pub fn flag_names(figure: u32) -> String {
    let data_offset = figure >> 8;
    if data_offset != 0 {
        return format!("a TCP header of {data_offset} words (under 5)");
    }
    let names: Vec<&str> = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
    ]
    .into_iter()
    .filter(|(bit, _)| figure & bit != 0)
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "TCP flags none (NULL probe)".into()
    } else {
        format!("TCP flags {}", names.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_are_explained_in_words() {
        let detection = Detection::default();
        let detected = |detector, figure, port| Detected {
            source: "198.18.0.1".parse().unwrap(),
            detector,
            figure,
            port,
        };
        let (cause, text) = explain(&detected(Detector::PortScan, 8, 443), &detection);
        assert_eq!(cause, BanCause::PortScan);
        assert_eq!(
            text,
            "kernel: probes to 8 distinct ports within 1m, the last to 443"
        );
        let (_, text) = explain(&detected(Detector::PortScan, 1, 23), &detection);
        assert_eq!(text, "kernel: a probe to trap port 23");
        let (cause, text) = explain(&detected(Detector::BadTcpFlags, 0x29, 5000), &detection);
        assert_eq!(cause, BanCause::BadTcpFlags);
        assert_eq!(text, "kernel: TCP flags FIN PSH URG to port 5000");
        assert_eq!(flag_names(0), "TCP flags none (NULL probe)");
        assert_eq!(flag_names(0x402), "a TCP header of 4 words (under 5)");
        let (cause, _) = explain(&detected(Detector::SynFlood, 101, 5000), &detection);
        assert_eq!(cause, BanCause::SynFlood);
        let (cause, text) = explain(&detected(Detector::StraySegments, 16, 5000), &detection);
        assert_eq!(cause, BanCause::StraySegments);
        assert!(text.starts_with("kernel: 16 segments with ACK"), "{text}");
        assert!(text.ends_with("the last to port 5000"), "{text}");
        let (cause, text) = explain(&detected(Detector::UnparsedFlood, 33, 0), &detection);
        assert_eq!(cause, BanCause::UnparsedFlood);
        assert!(text.starts_with("kernel: 33 packets within 1m"), "{text}");
    }
}
