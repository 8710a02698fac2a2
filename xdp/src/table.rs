//! The pinned ban maps, as the registry sees them: insert a prefix until a
//! wall-clock expiry, remove it, list what is there.
//!
//! Single addresses go into a hash map per family (IPv4 /32 keyed by its 4
//! bytes, IPv6 /128 by its 16), everything else (IPv6 /64 aggregates,
//! admin CIDRs) into the LPM trie, keyed by IPv6 or IPv4-mapped IPv6; an
//! IPv4 prefix of length n is stored there with length 96 + n.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError};
use ebpf_common::{
    Addr4Key, AddrKey, BanValue, DetectConfig, PIN_ADDRS, PIN_ADDRS_V4, PIN_ALLOWED, PIN_CONFIG,
    PIN_PREFIXES, PIN_SOURCES, SourceState,
};
use model::Cidr;

use crate::{Detection, XdpError, monotonic_ns};

pub struct PinnedMaps {
    addrs: HashMap<MapData, AddrKey, BanValue>,
    addrs_v4: HashMap<MapData, Addr4Key, BanValue>,
    prefixes: LpmTrie<MapData, AddrKey, BanValue>,
    allowed: LpmTrie<MapData, AddrKey, u8>,
    /// The detector thresholds and the "trie is empty" hints.
    config: Array<MapData, DetectConfig>,
    /// The detectors' per-source state (an LRU hash).
    sources: HashMap<MapData, AddrKey, SourceState>,
    location: PathBuf,
}

impl PinnedMaps {
    /// Opens the table pinned at `path`: the pin directory, or the pinned
    /// address map inside it (the prefix map is its sibling).
    pub fn open(path: &Path) -> Result<Self, XdpError> {
        let dir = if path.is_dir() {
            path.to_owned()
        } else {
            path.parent().map(Path::to_owned).unwrap_or_default()
        };
        let addrs_path = if path.is_dir() {
            dir.join(PIN_ADDRS)
        } else {
            path.to_owned()
        };
        let prefixes_path = dir.join(PIN_PREFIXES);
        let addrs = open_map(&addrs_path, MapKind::Hash)?;
        let addrs_v4_path = dir.join(PIN_ADDRS_V4);
        if !addrs_v4_path.exists() {
            return Err(XdpError::WrongMap {
                path: dir.clone(),
                detail: "attached by an older penaltybox (no IPv4 address map): detach and attach it again".into(),
            });
        }
        let addrs_v4 = open_map(&addrs_v4_path, MapKind::Hash)?;
        let prefixes = open_map(&prefixes_path, MapKind::LpmTrie)?;
        let allowed_path = dir.join(PIN_ALLOWED);
        if !allowed_path.exists() {
            return Err(XdpError::WrongMap {
                path: dir.clone(),
                detail: "attached by an older penaltybox (no allow-list map): detach and attach it again".into(),
            });
        }
        let allowed = open_map(&allowed_path, MapKind::LpmTrie)?;
        let config_path = dir.join(PIN_CONFIG);
        if !config_path.exists() {
            return Err(XdpError::WrongMap {
                path: dir.clone(),
                detail:
                    "attached by an older penaltybox (no detectors): detach and attach it again"
                        .into(),
            });
        }
        let config = open_map(&config_path, MapKind::Array)?;
        let sources = open_map(&dir.join(PIN_SOURCES), MapKind::LruHash)?;
        Ok(PinnedMaps {
            addrs,
            addrs_v4,
            prefixes,
            allowed,
            config,
            sources,
            location: dir,
        })
    }

    /// The detector configuration the program runs with; `None` while no
    /// server has written one (detectors off).
    pub fn detection(&self) -> Result<Option<Detection>, XdpError> {
        let config = self.read_config()?;
        Ok((config.scan_ports != 0).then(|| Detection::from_config(&config)))
    }

    /// Writes the detector thresholds and drop scope (at start, on change).
    pub fn set_detection(&mut self, detection: &Detection) -> Result<(), XdpError> {
        detection.check().map_err(|error| XdpError::Kernel {
            what: "kernel detectors".into(),
            detail: error.to_string(),
        })?;
        let mut config = detection.to_config();
        config.prefixes_empty = u32::from(self.prefixes.keys().next().is_none());
        config.allowed_empty = u32::from(self.allowed.keys().next().is_none());
        self.write_config(&config)
    }

    fn read_config(&self) -> Result<DetectConfig, XdpError> {
        self.config
            .get(&0, 0)
            .map_err(|e| XdpError::from_os("kernel detectors: read the configuration", &e))
    }

    fn write_config(&mut self, config: &DetectConfig) -> Result<(), XdpError> {
        self.config
            .set(0, config, 0)
            .map_err(|e| XdpError::from_os("kernel detectors: write the configuration", &e))
    }

    /// Sets one of the "trie is empty" hints the program skips lookups by.
    /// A hint is cleared before the first entry goes in and set only after
    /// the last is gone, so the program never skips a trie that matters.
    fn set_hint(
        &mut self,
        hint: fn(&mut DetectConfig) -> &mut u32,
        value: bool,
    ) -> Result<(), XdpError> {
        let mut config = self.read_config()?;
        if *hint(&mut config) != u32::from(value) {
            *hint(&mut config) = u32::from(value);
            self.write_config(&config)?;
        }
        Ok(())
    }

    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Bans `prefix` until `expires_at_ms` (Unix ms), converted to
    /// CLOCK_MONOTONIC now. Replaces an existing entry.
    pub fn insert(
        &mut self,
        prefix: &Cidr,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), XdpError> {
        let remaining_ns = expires_at_ms
            .saturating_sub(now_ms)
            .saturating_mul(1_000_000);
        let value = BanValue {
            // Never 0 (which means "until removed") for a timed ban.
            expires_ns: monotonic_ns().saturating_add(remaining_ns).max(1),
            drops: 0,
        };
        let what = || format!("kernel table: insert {prefix}");
        match key_of(prefix) {
            MapKey::Addr(key) => self.addrs.insert(key, value, 0),
            MapKey::Addr4(key) => self.addrs_v4.insert(key, value, 0),
            MapKey::Prefix(key) => {
                self.set_hint(|c| &mut c.prefixes_empty, false)?;
                self.prefixes.insert(&key, value, 0)
            }
        }
        .map_err(|e| XdpError::from_os(what(), &e))
    }

    /// Inserts many entries on `threads` threads, each with its own handle
    /// on the pinned maps (a boot replay; one syscall per entry otherwise
    /// leaves a core idle). Returns the entries that failed.
    pub fn insert_all(
        &self,
        entries: &[(Cidr, u64)],
        now_ms: u64,
        threads: usize,
    ) -> Vec<(Cidr, XdpError)> {
        self.on_threads(entries, threads, "replay", |table, part| {
            table.insert_chunk(part, now_ms)
        })
    }

    /// Removes many prefixes on `threads` threads (a blocklist feed's
    /// entries that left its list: the prefix trie has no batch delete).
    /// Returns the prefixes that failed; absent ones did not.
    pub fn remove_all(&self, prefixes: &[Cidr], threads: usize) -> Vec<(Cidr, XdpError)> {
        self.on_threads(prefixes, threads, "remove", |table, part| {
            part.iter()
                .filter_map(|prefix| table.remove(prefix).err().map(|e| (*prefix, e)))
                .collect()
        })
    }

    /// Splits `items` over `threads` threads, each running `work` on its
    /// part with its own handle on the pinned maps; the failures of all.
    fn on_threads<T: Sync + PrefixOf>(
        &self,
        items: &[T],
        threads: usize,
        what: &str,
        work: impl Fn(&mut PinnedMaps, &[T]) -> Vec<(Cidr, XdpError)> + Sync,
    ) -> Vec<(Cidr, XdpError)> {
        let chunk = items.len().div_ceil(threads.max(1)).max(1);
        let work = &work;
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    let worker = scope.spawn(move || -> Result<_, XdpError> {
                        let mut table = PinnedMaps::open(&self.location)?;
                        Ok(work(&mut table, part))
                    });
                    (part, worker)
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|(part, worker)| {
                    // A worker that could not open the table, or panicked,
                    // did nothing we can vouch for: its whole part failed.
                    let failed_whole = |detail: String| {
                        part.iter()
                            .map(|item| {
                                let prefix = item.prefix();
                                let what = format!("kernel table: {what} {prefix}");
                                let detail = detail.clone();
                                (prefix, XdpError::Kernel { what, detail })
                            })
                            .collect::<Vec<_>>()
                    };
                    match worker.join() {
                        Ok(Ok(failures)) => failures,
                        Ok(Err(error)) => failed_whole(error.to_string()),
                        Err(_) => failed_whole(format!("the {what} thread panicked")),
                    }
                })
                .collect()
        })
    }

    /// Inserts `entries`: single addresses in batches (one syscall per
    /// [`BATCH`] entries), prefixes one at a time (LPM tries have no batch
    /// operations). A batch the kernel refuses is retried entry by entry,
    /// so every failure is reported with its prefix.
    fn insert_chunk(&mut self, entries: &[(Cidr, u64)], now_ms: u64) -> Vec<(Cidr, XdpError)> {
        let mut failures = Vec::new();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut prefixes = Vec::new();
        for &(prefix, expires) in entries {
            match key_of(&prefix) {
                MapKey::Addr4(key) => v4.push((prefix, key, expires)),
                MapKey::Addr(key) => v6.push((prefix, key, expires)),
                MapKey::Prefix(_) => prefixes.push((prefix, expires)),
            }
        }
        use aya::maps::IterableMap;
        let monotonic_now = monotonic_ns();
        let fd_v4 = map_fd(self.addrs_v4.map());
        let fd_v6 = map_fd(self.addrs.map());
        self.insert_batches(&v4, fd_v4, monotonic_now, now_ms, &mut failures);
        self.insert_batches(&v6, fd_v6, monotonic_now, now_ms, &mut failures);
        for (prefix, expires) in prefixes {
            if let Err(error) = self.insert(&prefix, expires, now_ms) {
                failures.push((prefix, error));
            }
        }
        failures
    }

    /// Single addresses of one map, in batches of [`BATCH`]; what a batch
    /// did not take is retried entry by entry.
    fn insert_batches<K: Copy>(
        &mut self,
        entries: &[(Cidr, K, u64)],
        map_fd: u32,
        monotonic_now: u64,
        now_ms: u64,
        failures: &mut Vec<(Cidr, XdpError)>,
    ) {
        for batch in entries.chunks(BATCH) {
            let keys: Vec<K> = batch.iter().map(|(_, key, _)| *key).collect();
            let values: Vec<BanValue> = batch
                .iter()
                .map(|(_, _, expires)| ban_value(monotonic_now, *expires, now_ms))
                .collect();
            let done = update_batch(map_fd, &keys, &values).unwrap_or(0);
            for &(prefix, _, expires) in &batch[done..] {
                if let Err(error) = self.insert(&prefix, expires, now_ms) {
                    failures.push((prefix, error));
                }
            }
        }
    }

    /// Removes `prefix`; absent is fine (a release of what never reached
    /// the map, a test's tidy-up).
    pub fn remove(&mut self, prefix: &Cidr) -> Result<(), XdpError> {
        let result = match key_of(prefix) {
            // Forget what the detectors knew of the address: if it probes
            // again, that is news (not hidden by "reported this window").
            // Aggregates keep their sources' state: finding them means a
            // walk of the whole LRU map.
            MapKey::Addr(key) => {
                let _ = self.sources.remove(&key);
                self.addrs.remove(&key)
            }
            MapKey::Addr4(key) => {
                let _ = self.sources.remove(&ebpf_common::v4_mapped(key));
                self.addrs_v4.remove(&key)
            }
            MapKey::Prefix(key) => self.prefixes.remove(&key),
        };
        match result {
            Ok(()) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => {
                return Err(XdpError::from_os(
                    format!("kernel table: remove {prefix}"),
                    &e,
                ));
            }
        }
        if matches!(key_of(prefix), MapKey::Prefix(_)) && self.prefixes.keys().next().is_none() {
            self.set_hint(|c| &mut c.prefixes_empty, true)?;
        }
        Ok(())
    }

    /// The entry for exactly `prefix`, if the map holds it.
    pub fn get(&self, prefix: &Cidr) -> Result<Option<BanValue>, XdpError> {
        let found = match key_of(prefix) {
            MapKey::Addr(key) => self.addrs.get(&key, 0),
            MapKey::Addr4(key) => self.addrs_v4.get(&key, 0),
            MapKey::Prefix(key) => self.prefixes.get(&key, 0),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(XdpError::from_os(
                format!("kernel table: look up {prefix}"),
                &e,
            )),
        }
    }

    /// Makes the program's allow-list exactly `allow`: entries not in it are
    /// removed, the rest written (in place, so an allowed source is never
    /// unprotected in between).
    pub fn set_allowed(&mut self, allow: &[Cidr]) -> Result<(), XdpError> {
        let wanted: Vec<Key<AddrKey>> = allow.iter().map(trie_key).collect();
        if !allow.is_empty() {
            self.set_hint(|c| &mut c.allowed_empty, false)?;
        }
        let present = self.allowed()?;
        for prefix in present.iter().filter(|p| !allow.contains(p)) {
            match self.allowed.remove(&trie_key(prefix)) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => {
                    return Err(XdpError::from_os(
                        format!("kernel allow-list: remove {prefix}"),
                        &e,
                    ));
                }
            }
        }
        for (key, prefix) in wanted.iter().zip(allow) {
            self.allowed
                .insert(key, 1, 0)
                .map_err(|e| XdpError::from_os(format!("kernel allow-list: add {prefix}"), &e))?;
        }
        if allow.is_empty() {
            self.set_hint(|c| &mut c.allowed_empty, true)?;
        }
        Ok(())
    }

    /// The allow-list the program holds.
    pub fn allowed(&self) -> Result<Vec<Cidr>, XdpError> {
        let mut allowed = Vec::new();
        for item in self.allowed.iter() {
            let (key, _) = item.map_err(|e| XdpError::from_os("kernel allow-list: read", &e))?;
            allowed.extend(cidr_of(&key.data(), key.prefix_len()));
        }
        Ok(allowed)
    }

    /// Every entry: prefix, expiry (monotonic ns) and drops. An entry that
    /// no penaltybox wrote (a prefix length no [`Cidr`] has) is skipped with
    /// a warning: a foreign key in a pinned map must not stop a boot.
    pub fn entries(&self) -> Result<Vec<(Cidr, BanValue)>, XdpError> {
        let mut entries = Vec::new();
        let mut foreign = 0usize;
        for item in self.addrs_v4.iter() {
            let (key, value) = item.map_err(|e| XdpError::from_os("kernel table: read", &e))?;
            entries.push((Cidr::host(IpAddr::from(key)), value));
        }
        for item in self.addrs.iter() {
            let (key, value) = item.map_err(|e| XdpError::from_os("kernel table: read", &e))?;
            match cidr_of(&key, 128) {
                Some(prefix) => entries.push((prefix, value)),
                None => foreign += 1,
            }
        }
        for item in self.prefixes.iter() {
            let (key, value) = item.map_err(|e| XdpError::from_os("kernel table: read", &e))?;
            match cidr_of(&key.data(), key.prefix_len()) {
                Some(prefix) => entries.push((prefix, value)),
                None => foreign += 1,
            }
        }
        if foreign > 0 {
            log::warn!(
                "kernel table {}: skipped {foreign} entries penaltybox did not write",
                self.location.display()
            );
        }
        Ok(entries)
    }
}

/// A delete of a key the map does not hold: aya reports it as the
/// syscall's ENOENT (not `KeyNotFound`, which only lookups give).
fn is_absent(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The fd of a map, as the bpf syscall takes it.
fn map_fd(map: &MapData) -> u32 {
    use std::os::fd::{AsFd, AsRawFd};
    map.fd().as_fd().as_raw_fd() as u32
}

/// BPF_MAP_UPDATE_BATCH on a hash map (Linux ≥ 5.6); aya 0.14 has no
/// wrapper for it. Returns how many entries the kernel took.
fn update_batch<K>(map_fd: u32, keys: &[K], values: &[BanValue]) -> std::io::Result<usize> {
    use aya_obj::generated::{bpf_attr, bpf_attr__bindgen_ty_3, bpf_cmd};

    debug_assert_eq!(keys.len(), values.len());
    // SAFETY: bpf_attr is plain old data; all zeroes is its documented
    // "unused fields" state, which the kernel checks.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch = bpf_attr__bindgen_ty_3 {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the kernel reads `count` keys (of the map's key size, which
    // `K` is) and values from the two slices, which outlive the call, and
    // writes back only `count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    // SAFETY: reading back the field we wrote; the kernel updates it.
    let count = unsafe { attr.batch.count } as usize;
    if rc < 0 {
        // On error `count` says how many were done before it.
        return if count > 0 {
            Ok(count)
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    Ok(count)
}

/// The kinds of map the program pins, as `open_map` expects them.
#[derive(Clone, Copy)]
enum MapKind {
    Hash,
    LruHash,
    LpmTrie,
    Array,
}

impl MapKind {
    fn is(self, map: &Map) -> bool {
        matches!(
            (self, map),
            (MapKind::Hash, Map::HashMap(_))
                | (MapKind::LruHash, Map::LruHashMap(_))
                | (MapKind::LpmTrie, Map::LpmTrie(_))
                | (MapKind::Array, Map::Array(_))
        )
    }

    fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "a hash map",
            MapKind::LruHash => "an LRU hash",
            MapKind::LpmTrie => "an LPM trie",
            MapKind::Array => "an array",
        }
    }
}

/// Opens the map pinned at `path`, which must be of kind `want` (and of
/// the key and value types `T` says).
fn open_map<T>(path: &Path, want: MapKind) -> Result<T, XdpError>
where
    T: TryFrom<Map, Error = MapError>,
{
    if !path.exists() {
        return Err(XdpError::MissingPin {
            path: path.to_owned(),
        });
    }
    let wrong = |detail: String| XdpError::WrongMap {
        path: path.to_owned(),
        detail,
    };
    let data = MapData::from_pin(path).map_err(|e| {
        match XdpError::from_os(path.display().to_string(), &e) {
            XdpError::Kernel { detail, .. } => wrong(detail),
            other => other,
        }
    })?;
    let map = Map::from_map_data(data).map_err(|e| wrong(e.to_string()))?;
    if !want.is(&map) {
        return Err(wrong(format!(
            "a {} map, not {}",
            map_kind(&map),
            want.name()
        )));
    }
    T::try_from(map).map_err(|e| wrong(e.to_string()))
}

fn map_kind(map: &Map) -> &'static str {
    match map {
        Map::Array(_) => "array",
        Map::PerCpuArray(_) => "per-CPU array",
        Map::HashMap(_) => "hash",
        Map::LruHashMap(_) => "LRU hash",
        Map::PerCpuHashMap(_) => "per-CPU hash",
        Map::LpmTrie(_) => "LPM trie",
        _ => "different",
    }
}

/// Entries per BPF_MAP_UPDATE_BATCH call.
const BATCH: usize = 8192;

/// The map value for a ban ending at `expires_at_ms` (Unix ms), with the
/// wall-clock remainder moved onto CLOCK_MONOTONIC.
fn ban_value(monotonic_now: u64, expires_at_ms: u64, now_ms: u64) -> BanValue {
    let remaining_ns = expires_at_ms
        .saturating_sub(now_ms)
        .saturating_mul(1_000_000);
    BanValue {
        // Never 0 (which means "until removed") for a timed ban.
        expires_ns: monotonic_now.saturating_add(remaining_ns).max(1),
        drops: 0,
    }
}

enum MapKey {
    /// An IPv4 address (/32).
    Addr4(Addr4Key),
    /// An IPv6 address (/128).
    Addr(AddrKey),
    Prefix(Key<AddrKey>),
}

fn key_of(prefix: &Cidr) -> MapKey {
    match prefix.addr() {
        IpAddr::V4(v4) if prefix.is_host() => MapKey::Addr4(v4.octets()),
        _ => {
            let key = trie_key(prefix);
            if key.prefix_len() == 128 {
                MapKey::Addr(key.data())
            } else {
                MapKey::Prefix(key)
            }
        }
    }
}

/// `prefix` as an LPM-trie key: IPv4 as IPv4-mapped IPv6, length + 96.
fn trie_key(prefix: &Cidr) -> Key<AddrKey> {
    match prefix.addr() {
        IpAddr::V4(v4) => Key::new(
            96 + u32::from(prefix.len()),
            ebpf_common::v4_mapped(v4.octets()),
        ),
        IpAddr::V6(v6) => Key::new(u32::from(prefix.len()), v6.octets()),
    }
}

/// The prefix a map key stands for (IPv4-mapped keys are IPv4); `None` for
/// a length no prefix has.
fn cidr_of(bytes: &AddrKey, len: u32) -> Option<Cidr> {
    let len = u8::try_from(len).ok()?;
    let v6 = std::net::Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => Cidr::new(IpAddr::V4(v4), len - 96),
        _ => Cidr::new(IpAddr::V6(v6), len),
    }
    .ok()
}

/// What [`PinnedMaps::on_threads`] names a failed item by.
trait PrefixOf {
    fn prefix(&self) -> Cidr;
}

impl PrefixOf for Cidr {
    fn prefix(&self) -> Cidr {
        *self
    }
}

impl PrefixOf for (Cidr, u64) {
    fn prefix(&self) -> Cidr {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_map_layout() {
        for text in [
            "192.0.2.7/32",
            "2001:db8::1/128",
            "2001:db8:1:2::/64",
            "198.51.100.0/24",
        ] {
            let prefix: Cidr = text.parse().unwrap();
            let back = match key_of(&prefix) {
                MapKey::Addr4(key) => Some(Cidr::host(IpAddr::from(key))),
                MapKey::Addr(key) => cidr_of(&key, 128),
                MapKey::Prefix(key) => cidr_of(&key.data(), key.prefix_len()),
            };
            assert_eq!(back, Some(prefix), "{text}");
        }
        assert!(
            matches!(key_of(&"192.0.2.7/32".parse().unwrap()), MapKey::Addr4(k) if k == [192, 0, 2, 7])
        );
        assert!(
            matches!(key_of(&"198.51.100.0/24".parse().unwrap()), MapKey::Prefix(k) if k.prefix_len() == 120)
        );
        assert_eq!(cidr_of(&[0; 16], 129), None, "a foreign length");
        assert_eq!(cidr_of(&[0; 16], 300), None, "a foreign length");
    }
}
