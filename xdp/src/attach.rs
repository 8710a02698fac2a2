//! `xdp attach | detach | status`: the program's life outside the server.
//!
//! Attaching pins the link and the maps under a bpffs directory, so the
//! program stays attached after the loader exits and `serve -B` can find
//! the table. bpffs holds only BPF objects and directories, so the interface
//! is recorded as an empty directory named `iface-<name>`.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use ebpf_common::{
    BanValue, COUNTER_DROPPED_ADDR, COUNTER_DROPPED_PREFIX, COUNTER_DROPPED_UNPARSED,
    COUNTER_EVENTS_LOST, COUNTER_EVENTS_SENT, COUNTER_FLOODS, COUNTER_MALFORMED,
    COUNTER_PASSED_ALLOWED, COUNTER_PASSED_EXPIRED, COUNTER_PROBES_DROPPED, COUNTER_SCANS,
    COUNTER_STRAY_REPORTS, COUNTER_STRAYS, COUNTER_STRAYS_DROPPED, COUNTER_SYN_DROPPED,
    COUNTER_SYN_SEEN, COUNTER_UNPARSED, COUNTER_UNPARSED_FLOODS, COUNTERS_MAP, EGRESS_PROGRAM,
    PIN_ADDRS, PIN_ADDRS_V4, PIN_ALLOWED, PIN_CONFIG, PIN_COUNTERS, PIN_EGRESS_LINK, PIN_EVENTS,
    PIN_LINK, PIN_PREFIXES, PIN_SOURCES, PIN_STRAY_HINT,
};
use model::Cidr;

use crate::table::PinnedMaps;
use crate::{OBJECT, XdpError, chain};

/// BPF_FS_MAGIC, what statfs reports for a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode where the driver has it, else generic.
    Auto,
    /// Native XDP in the driver (fastest; not every driver has it).
    Driver,
    /// Generic XDP in the network stack (works everywhere).
    Skb,
}

/// The sizes of the maps that can be set at load (the rest are fixed in
/// the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries the prefix trie may hold: time-outs that are not one
    /// address (aggregated IPv6 /64s, admins' CIDRs, widened prefixes,
    /// blocklist feeds). An LPM trie allocates per entry, so a large bound
    /// costs nothing until it is used.
    pub prefixes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            prefixes: ebpf_common::MAX_PREFIXES,
        }
    }
}

/// Every map of the programs and the file it is pinned as.
const PINNED_MAPS: [(&str, &str); 9] = [
    (ebpf_common::ADDRS_MAP, PIN_ADDRS),
    (ebpf_common::ADDRS_V4_MAP, PIN_ADDRS_V4),
    (ebpf_common::PREFIXES_MAP, PIN_PREFIXES),
    (ebpf_common::ALLOWED_MAP, PIN_ALLOWED),
    (COUNTERS_MAP, PIN_COUNTERS),
    (ebpf_common::CONFIG_MAP, PIN_CONFIG),
    (ebpf_common::SOURCES_MAP, PIN_SOURCES),
    (ebpf_common::EVENTS_MAP, PIN_EVENTS),
    (ebpf_common::STRAY_HINT_MAP, PIN_STRAY_HINT),
];

/// Loads the embedded object, attaches its program to `iface`, and pins
/// link and maps in `pin_dir`.
pub fn attach(iface: &str, mode: AttachMode, pin_dir: &Path) -> Result<(), XdpError> {
    attach_sized(iface, mode, pin_dir, MapSizes::default())
}

/// [`attach`] with maps of the sizes given.
pub fn attach_sized(
    iface: &str,
    mode: AttachMode,
    pin_dir: &Path,
    sizes: MapSizes,
) -> Result<(), XdpError> {
    attach_object(iface, mode, pin_dir, OBJECT, ebpf_common::PROGRAM, sizes)
}

/// [`attach`] for another object with the same maps (the XDP bench's
/// baseline object) and a program of it chosen by name.
pub fn attach_object(
    iface: &str,
    mode: AttachMode,
    pin_dir: &Path,
    object: &[u8],
    program: &str,
    sizes: MapSizes,
) -> Result<(), XdpError> {
    ensure_bpffs(pin_dir)?;
    if pin_dir.join(PIN_LINK).exists() {
        return Err(XdpError::Kernel {
            what: format!("attach to {iface}"),
            detail: format!(
                "a program is already pinned at {} (`penaltybox xdp detach --pin-dir {}` first)",
                pin_dir.display(),
                pin_dir.display()
            ),
        });
    }
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| XdpError::from_os(format!("create {}", pin_dir.display()), &e))?;

    let mut ebpf = load_program(object, program, sizes)?;
    let xdp = xdp_program(&mut ebpf, program)?;
    let attempt = |xdp: &mut Xdp, mode| {
        xdp.attach(iface, mode).map_err(|e| match e {
            ProgramError::UnknownInterface { .. } => XdpError::NoInterface(iface.to_owned()),
            other => XdpError::from_os(format!("attach to {iface}"), &other),
        })
    };
    let link_id = match mode {
        AttachMode::Driver => attempt(xdp, XdpMode::Driver)?,
        AttachMode::Skb => attempt(xdp, XdpMode::Skb)?,
        AttachMode::Auto => match attempt(xdp, XdpMode::Driver) {
            Ok(id) => id,
            Err(XdpError::Kernel { detail, .. }) => {
                log::info!("{iface}: no driver-mode XDP ({detail}); using generic (skb) mode");
                attempt(xdp, XdpMode::Skb)?
            }
            Err(other) => return Err(other),
        },
    };
    let link = xdp
        .take_link(link_id)
        .map_err(|e| XdpError::from_os(format!("attach to {iface}"), &e))?;
    let link: FdLink = link.try_into().map_err(|e| XdpError::Kernel {
        what: format!("pin the link on {iface}"),
        detail: format!("{e} (the kernel attached through netlink; BPF links need Linux ≥ 5.9)"),
    })?;
    let pinned = link
        .pin(pin_dir.join(PIN_LINK))
        .map_err(|e| XdpError::from_os("pin the link", &e))?;
    pin_maps(&ebpf, pin_dir)?;
    // The pinned link keeps the program attached once we exit.
    drop(pinned);
    let _ = std::fs::create_dir(pin_dir.join(format!("iface-{iface}")));
    if let Err(error) = attach_egress(&mut ebpf, iface, pin_dir) {
        log::warn!(
            "{iface}: the stray-segment detector is off (the XDP program runs without it): {error}"
        );
    }
    Ok(())
}

/// Loads the egress program (the stray-segment detector) of an object
/// already loaded, attaches it to `iface` as a TCX egress link (Linux ≥
/// 6.6) and pins the link beside the XDP program's.
fn attach_egress(ebpf: &mut aya::Ebpf, iface: &str, pin_dir: &Path) -> Result<(), XdpError> {
    let egress = egress_program(ebpf)?;
    crate::verified(egress.load(), "load the egress program")?;
    let what = || format!("attach the egress program to {iface}");
    let id = egress
        .attach(iface, TcAttachType::Egress)
        .map_err(|e| XdpError::from_os(what(), &e))?;
    let link: FdLink = egress
        .take_link(id)
        .map_err(|e| XdpError::from_os(what(), &e))?
        .try_into()
        .map_err(|e| XdpError::Kernel {
            what: what(),
            detail: format!("{e} (attached through netlink: pinning it needs TCX, Linux ≥ 6.6)"),
        })?;
    link.pin(pin_dir.join(PIN_EGRESS_LINK))
        .map_err(|e| XdpError::from_os("pin the egress link", &e))?;
    Ok(())
}

/// The egress program of a loaded object.
pub(crate) fn egress_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, XdpError> {
    ebpf.program_mut(EGRESS_PROGRAM)
        .ok_or_else(|| XdpError::Kernel {
            what: "load the egress program".into(),
            detail: format!("no program {EGRESS_PROGRAM:?} in the object"),
        })?
        .try_into()
        .map_err(|e: ProgramError| XdpError::from_os("load the egress program", &e))
}

/// Loads `object` (its maps of `sizes`) and its XDP program `program`
/// into the kernel (the verifier's pass), attached to nothing yet.
pub(crate) fn load_program(
    object: &[u8],
    program: &str,
    sizes: MapSizes,
) -> Result<aya::Ebpf, XdpError> {
    let mut ebpf = aya::EbpfLoader::new()
        .map_max_entries(ebpf_common::PREFIXES_MAP, sizes.prefixes)
        .load(object)
        .map_err(|e| XdpError::from_os("load the XDP object", &e))?;
    let xdp = xdp_program(&mut ebpf, program)?;
    crate::verified(xdp.load(), "load the XDP program")?;
    Ok(ebpf)
}

/// The XDP program `program` of a loaded object.
pub(crate) fn xdp_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    program: &str,
) -> Result<&'a mut Xdp, XdpError> {
    ebpf.program_mut(program)
        .ok_or_else(|| XdpError::Kernel {
            what: "load the XDP object".into(),
            detail: format!("no program {program:?} in it"),
        })?
        .try_into()
        .map_err(|e: ProgramError| XdpError::from_os("load the XDP program", &e))
}

/// Pins every map of a loaded object under `pin_dir`, as `attach` does
/// (and [`crate::TestProgram`], which loads without attaching).
pub(crate) fn pin_maps(ebpf: &aya::Ebpf, pin_dir: &Path) -> Result<(), XdpError> {
    for (name, file) in PINNED_MAPS {
        let map = ebpf.map(name).ok_or_else(|| XdpError::Kernel {
            what: "pin the maps".into(),
            detail: format!("no map {name} in the object"),
        })?;
        map.pin(pin_dir.join(file))
            .map_err(|e| XdpError::from_os(format!("pin {name}"), &e))?;
    }
    Ok(())
}

/// Removes the map pins (a missing one is fine).
pub(crate) fn unpin_maps(pin_dir: &Path) {
    for (_, file) in PINNED_MAPS {
        let _ = std::fs::remove_file(pin_dir.join(file));
    }
}

/// Unpins the links (which detaches the programs) and removes the map
/// pins. Returns false if nothing was attached there.
pub fn detach(pin_dir: &Path) -> Result<bool, XdpError> {
    let link_path = pin_dir.join(PIN_LINK);
    if !link_path.exists() {
        return Ok(false);
    }
    unpin_link(&link_path)?;
    let egress_path = pin_dir.join(PIN_EGRESS_LINK);
    if egress_path.exists() {
        unpin_link(&egress_path)?;
    }
    unpin_maps(pin_dir);
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("iface-") {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(true)
}

/// Unpins a link, which detaches its program once nothing else holds it.
fn unpin_link(path: &Path) -> Result<(), XdpError> {
    let link = PinnedLink::from_pin(path)
        .map_err(|e| XdpError::from_os(format!("open {}", path.display()), &e))?;
    let link = link
        .unpin()
        .map_err(|e| XdpError::from_os(format!("unpin {}", path.display()), &e))?;
    drop(link);
    Ok(())
}

/// What `xdp status` shows.
#[derive(Debug)]
pub struct Status {
    pub pin_dir: PathBuf,
    pub interface: Option<String>,
    pub entries: Vec<(Cidr, BanValue)>,
    pub dropped_by_address: u64,
    pub dropped_by_prefix: u64,
    /// Packets of a timed-out source whose port was unknown (unparsed),
    /// dropped whatever the drop scope.
    pub dropped_unparsed: u64,
    pub passed_expired: u64,
    /// Packets a ban covered that passed because their source is allow-listed.
    pub passed_allowed: u64,
    /// The egress program (the stray-segment detector) is attached.
    pub egress_attached: bool,
    /// The allow-list the program holds.
    pub allowed: Vec<Cidr>,
    /// Drops by address on each CPU (the per-CPU slots behind the total).
    pub dropped_by_address_per_cpu: Vec<u64>,
    pub detectors: DetectorCounters,
    /// The detector configuration the program runs with.
    pub detection: Option<crate::Detection>,
}

/// What the detectors saw, summed over CPUs (see `ebpf_common::COUNTER_*`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DetectorCounters {
    pub syns_seen: u64,
    pub syns_dropped: u64,
    pub scans: u64,
    pub floods: u64,
    pub malformed: u64,
    pub events_sent: u64,
    pub events_lost: u64,
    pub unparsed: u64,
    /// Probes of an already reported source dropped before its time-out.
    pub probes_dropped: u64,
    /// Stray segments counted (the stack's own resets for no connection).
    pub strays: u64,
    pub stray_reports: u64,
    pub unparsed_floods: u64,
    /// Segments of a source reported for strays dropped before its time-out.
    pub strays_dropped: u64,
}

/// The program's counters alone, summed over CPUs: cheap enough for every
/// metrics scrape (`status` also lists the whole table).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub dropped_by_address: u64,
    pub dropped_by_prefix: u64,
    pub dropped_unparsed: u64,
    pub passed_expired: u64,
    pub passed_allowed: u64,
    pub detectors: DetectorCounters,
}

/// The per-CPU counters map under `pin_dir`.
fn counters_map(pin_dir: &Path) -> Result<PerCpuArray<MapData, u64>, XdpError> {
    let counters_path = pin_dir.join(PIN_COUNTERS);
    if !counters_path.exists() {
        return Err(XdpError::MissingPin {
            path: counters_path,
        });
    }
    let data = MapData::from_pin(&counters_path)
        .map_err(|e| XdpError::from_os(counters_path.display().to_string(), &e))?;
    Map::from_map_data(data)
        .and_then(PerCpuArray::try_from)
        .map_err(|e| XdpError::WrongMap {
            path: counters_path.clone(),
            detail: chain(&e),
        })
}

fn per_cpu(counters: &PerCpuArray<MapData, u64>, index: u32) -> Vec<u64> {
    counters
        .get(&index, 0)
        .map(|values| values.iter().copied().collect())
        .unwrap_or_default()
}

fn read_counters(counters: &PerCpuArray<MapData, u64>) -> Counters {
    let total = |index: u32| -> u64 { per_cpu(counters, index).iter().sum() };
    Counters {
        dropped_by_address: total(COUNTER_DROPPED_ADDR),
        dropped_by_prefix: total(COUNTER_DROPPED_PREFIX),
        dropped_unparsed: total(COUNTER_DROPPED_UNPARSED),
        passed_expired: total(COUNTER_PASSED_EXPIRED),
        passed_allowed: total(COUNTER_PASSED_ALLOWED),
        detectors: DetectorCounters {
            syns_seen: total(COUNTER_SYN_SEEN),
            syns_dropped: total(COUNTER_SYN_DROPPED),
            scans: total(COUNTER_SCANS),
            floods: total(COUNTER_FLOODS),
            malformed: total(COUNTER_MALFORMED),
            events_sent: total(COUNTER_EVENTS_SENT),
            events_lost: total(COUNTER_EVENTS_LOST),
            unparsed: total(COUNTER_UNPARSED),
            probes_dropped: total(COUNTER_PROBES_DROPPED),
            strays: total(COUNTER_STRAYS),
            stray_reports: total(COUNTER_STRAY_REPORTS),
            unparsed_floods: total(COUNTER_UNPARSED_FLOODS),
            strays_dropped: total(COUNTER_STRAYS_DROPPED),
        },
    }
}

/// Clears the stray hint once the last stray report it stands for is over,
/// so that the XDP program's ACK path goes back to one array read. (A
/// report made meanwhile may be cleared too: its source's further strays
/// then reach the stack until its time-out is in the map, microseconds
/// later.)
pub fn expire_stray_hint(pin_dir: &Path) -> Result<(), XdpError> {
    let path = pin_dir.join(PIN_STRAY_HINT);
    if !path.exists() {
        return Ok(()); // attached by an older penaltybox: nothing to clear
    }
    let data =
        MapData::from_pin(&path).map_err(|e| XdpError::from_os(path.display().to_string(), &e))?;
    let mut hint: aya::maps::Array<MapData, u64> = Map::from_map_data(data)
        .and_then(aya::maps::Array::try_from)
        .map_err(|e| XdpError::WrongMap {
            path: path.clone(),
            detail: chain(&e),
        })?;
    let until = hint
        .get(&0, 0)
        .map_err(|e| XdpError::from_os("read the stray hint", &e))?;
    if until != 0 && until <= crate::monotonic_ns() {
        hint.set(0, 0, 0)
            .map_err(|e| XdpError::from_os("clear the stray hint", &e))?;
    }
    Ok(())
}

/// The program's counters now.
pub fn counters(pin_dir: &Path) -> Result<Counters, XdpError> {
    Ok(read_counters(&counters_map(pin_dir)?))
}

pub fn status(pin_dir: &Path) -> Result<Status, XdpError> {
    let table = PinnedMaps::open(pin_dir)?;
    let map = counters_map(pin_dir)?;
    let counters = read_counters(&map);
    let interface = std::fs::read_dir(pin_dir).ok().and_then(|entries| {
        entries.flatten().find_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("iface-")
                .map(str::to_owned)
        })
    });
    Ok(Status {
        pin_dir: pin_dir.to_owned(),
        interface,
        entries: table.entries()?,
        allowed: table.allowed()?,
        dropped_by_address: counters.dropped_by_address,
        dropped_by_prefix: counters.dropped_by_prefix,
        dropped_unparsed: counters.dropped_unparsed,
        passed_expired: counters.passed_expired,
        passed_allowed: counters.passed_allowed,
        egress_attached: pin_dir.join(PIN_EGRESS_LINK).exists(),
        dropped_by_address_per_cpu: per_cpu(&map, COUNTER_DROPPED_ADDR),
        detectors: counters.detectors,
        detection: table.detection()?,
    })
}

/// Mounts bpffs at /sys/fs/bpf if the pin directory lives there and it is
/// not mounted yet.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<(), XdpError> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    if is_bpffs(root) {
        return Ok(());
    }
    let source = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        return Err(XdpError::from_os("mount bpffs at /sys/fs/bpf", &error));
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// For a command whose pins must outlive it (`xdp attach`): refuses when
/// they would not, because this process is alone in its mount namespace.
/// (`serve --xdp-iface` may be: its pins need live only as long as it,
/// and it attaches afresh on every start.)
pub fn check_pins_outlive_us(pin_dir: &Path) -> Result<(), XdpError> {
    if pin_dir.starts_with("/sys/fs/bpf") && mount_namespace_dies_with_us() {
        // `ip netns exec` gives its command a mount namespace of its own
        // with a fresh /sys (and bpffs): every pin made there vanishes when
        // the command exits, and nothing would say so.
        return Err(XdpError::Kernel {
            what: format!("pin under {}", pin_dir.display()),
            detail: "this process has a mount namespace of its own (as under `ip netns exec`): a bpffs there, and the pins in it, vanish when it exits. Enter only the network namespace instead: `nsenter --net=/run/netns/NAME penaltybox xdp ...`".into(),
        });
    }
    Ok(())
}

/// Is this process alone in its mount namespace, so that a bpffs mounted
/// in it (and every pin in that) goes when it exits? That is what `ip netns
/// exec` does: its command gets a mount namespace of its own. False when
/// it cannot tell (no /proc): only a proven loss refuses.
fn mount_namespace_dies_with_us() -> bool {
    let Ok(own) = std::fs::read_link("/proc/self/ns/mnt") else {
        return false;
    };
    let me = std::process::id().to_string();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        match std::fs::read_link(entry.path().join("ns/mnt")) {
            Ok(ns) if ns == own => return false,
            Ok(_) => {}
            // Unprivileged, other users' processes are hidden from us: we
            // cannot tell, so we do not refuse. (Root reads all it shares
            // a user namespace with; what it cannot read is not in the
            // mount namespace `ip netns exec` just made for us.)
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !is_root => {
                return false;
            }
            Err(_) => {} // exited meanwhile, or not ours to read
        }
    }
    true
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct we own from a NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}
