//! # penaltybox-xdp
//!
//! The userspace side of the kernel tier (Linux only):
//!
//! - [`OBJECT`]: the compiled XDP program (`ebpf-prog/`), embedded, so the
//!   server needs no nightly toolchain to run it;
//! - [`attach`]: load, attach to an interface (the XDP program, and the
//!   egress program beside it) and pin the maps and the links under a
//!   bpffs directory, so the programs stay after the loader exits;
//!   `detach` and `status`;
//! - [`table::PinnedMaps`]: the pinned ban maps and allow-list that the
//!   ban core writes through the server's adapter (`serve -B PATH`), with
//!   wall-clock expiries converted to the CLOCK_MONOTONIC nanoseconds the
//!   program compares with; and the detector thresholds;
//! - [`detect`]: the detector settings ([`Detection`]) and the detections
//!   the program reports ([`EventReader`], [`Detected`]).
//!
//! Errors say what to do (load the program first, run with CAP_BPF and
//! CAP_NET_ADMIN, mount bpffs) in one line.

pub mod attach;
pub mod detect;
pub mod table;
pub mod test_run;

use std::path::PathBuf;

pub use attach::{
    AttachMode, Counters, DetectorCounters, MapSizes, Status, attach, attach_object, attach_sized,
    check_pins_outlive_us, counters, detach, expire_stray_hint, status,
};
pub use detect::{Detected, Detection, DetectionError, Detector, EventReader};
pub use ebpf_common::{EGRESS_PROGRAM, PIN_EGRESS_LINK, PIN_LINK, PROGRAM};
pub use table::PinnedMaps;
pub use test_run::TestProgram;

/// The XDP object built by `ebpf-prog/build.sh`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf-prog/penaltybox-xdp.bpf.o");

/// Where `xdp attach` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/penaltybox";

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "{what}: permission denied: the kernel tier needs CAP_BPF and CAP_NET_ADMIN (run as root, or docker run --cap-add BPF --cap-add NET_ADMIN)"
    )]
    Permission { what: String },
    #[error(
        "no pinned ban table at {path}: attach the program first (`penaltybox xdp attach --iface IFACE`), or start with --xdp-iface"
    )]
    MissingPin { path: PathBuf },
    #[error("{path} is not a penaltybox ban table: {detail}")]
    WrongMap { path: PathBuf, detail: String },
    #[error("no network interface {0:?}")]
    NoInterface(String),
    #[error("{what}: {detail}")]
    Kernel { what: String, detail: String },
}

impl XdpError {
    /// Classifies an error from aya or the kernel by its OS error, so the
    /// message says what to do about it.
    pub(crate) fn from_os(
        what: impl Into<String>,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        let what = what.into();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
            {
                return XdpError::Permission { what };
            }
            source = e.source();
        }
        XdpError::Kernel {
            what,
            detail: chain(error),
        }
    }
}

/// The outcome of loading a program into the kernel (`what` names it). A
/// verifier refusal keeps the verifier's last words (what it refused), with
/// a hint when it is the missing CAP_PERFMON that made the verifier strict;
/// with `PENALTYBOX_VERIFIER_LOG=FILE` the whole log is written to FILE.
pub(crate) fn verified(
    loaded: Result<(), aya::programs::ProgramError>,
    what: &str,
) -> Result<(), XdpError> {
    use aya::programs::ProgramError;
    match loaded {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) if !verifier_log.to_string().trim().is_empty() => {
            let log = verifier_log.to_string();
            // The whole log, for whoever changes the program.
            if let Some(path) = std::env::var_os("PENALTYBOX_VERIFIER_LOG") {
                let _ = std::fs::write(path, &log);
            }
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| {
                    !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed ")
                })
                .take(2)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let hint = if matches!(
                io_error.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EPERM)
            ) {
                " (without CAP_PERFMON the verifier refuses more: docker run --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON, or run as root)"
            } else {
                ""
            };
            Err(XdpError::Kernel {
                what: what.into(),
                detail: format!("the verifier refused it: {}{hint}", tail.join(" / ").trim()),
            })
        }
        Err(other) => Err(XdpError::from_os(format!("{what} (verifier)"), &other)),
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    debug_assert_eq!(rc, 0);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
