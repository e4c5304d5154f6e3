//! The kernel side pinned on bpffs, so that it outlives the daemon.
//!
//! Layout, under the pin root (default `/sys/fs/bpf/dockexpose`):
//! ```text
//! v<layout>/maps/<MAP>            every map of `watch` (ring buffer, counters, tables)
//! v<layout>/progs/<program>       the programs of the daemon that last started
//! v<layout>/links/<program>@<ifindex>   TCX and XDP links: they keep the programs attached
//! ```
//! `<layout>` is a hash of the shared `#[repr(C)]` types' sizes and field offsets and
//! of every map's type, key, value and capacity: a daemon built with another layout
//! finds no directory of its own, removes the stale one (its links go with it) and
//! starts fresh, saying so in a `kernel_state_reset` record. A daemon of the same
//! layout adopts the maps (after checking each one's type, key, value and capacity),
//! replaces the programs behind the links with its own (BPF_LINK_UPDATE: the hook is
//! never empty), and resumes the ring where the last daemon committed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapType},
    programs::links::{FdLink, PinnedLink},
};
use dockexpose_common::{
    map_names, AttemptValue, ConnEvent, Counter, FlowKey, Opening, PendingKey, PortKey, ATTEMPTS_MAX, DAEMON_STATE_LEN,
    EVENTS_RING_BYTES, FLOWS_MAX, LOCAL_IFACES_MAX, OPENINGS_LEN, PENDING_MAX, PREFIXES_MAX, PUBLISHED_PORTS_LEN,
};

use super::pin_root;
use crate::error::{Error, Result};

/// Where the kernel side is pinned unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dockexpose";
/// bpffs' magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Hidden: mixed into the layout version, so that a test can stand for a daemon
/// built with another layout.
pub const LAYOUT_SALT_ENV: &str = "DOCKEXPOSE_LAYOUT_SALT";

/// What a pinned map must be for the programs of this build to use it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapType,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
}

/// Every map `watch` pins, as this build's eBPF object declares it.
pub fn expected_maps() -> [MapSpec; 12] {
    let spec = |name, kind, key: usize, value: usize, max_entries| MapSpec {
        name,
        kind,
        key: key as u32,
        value: value as u32,
        max_entries,
    };
    [
        spec(map_names::EVENTS, MapType::RingBuf, 0, 0, EVENTS_RING_BYTES),
        spec(map_names::COUNTERS, MapType::PerCpuArray, 4, 8, Counter::COUNT),
        // LPM keys: a u32 prefix length, then the address.
        spec(map_names::LOCAL_V4, MapType::LpmTrie, 8, 1, PREFIXES_MAX),
        spec(map_names::LOCAL_V6, MapType::LpmTrie, 20, 1, PREFIXES_MAX),
        spec(map_names::LOCAL_IFACES, MapType::Hash, 4, 1, LOCAL_IFACES_MAX),
        spec(map_names::FLOWS, MapType::LruHash, size_of::<FlowKey>(), 8, FLOWS_MAX),
        spec(map_names::OPENINGS, MapType::Array, 4, size_of::<Opening>(), OPENINGS_LEN),
        spec(map_names::ATTEMPTS, MapType::LruHash, size_of::<FlowKey>(), size_of::<AttemptValue>(), ATTEMPTS_MAX),
        spec(map_names::PUBLISHED_PORTS, MapType::Array, 4, 1, PUBLISHED_PORTS_LEN),
        spec(map_names::RECORD_SEQ, MapType::PerCpuArray, 4, 8, 1),
        spec(map_names::DAEMON_STATE, MapType::Array, 4, 8, DAEMON_STATE_LEN),
        spec(map_names::PENDING, MapType::Hash, size_of::<PendingKey>(), size_of::<ConnEvent>(), PENDING_MAX),
    ]
}

/// Bumped when what a pinned map or a record field *means* changes while its shape
/// stays the same (the hash below cannot see that): a daemon then starts fresh.
pub const LAYOUT_REVISION: u32 = 1;

/// The text the layout version is a hash of: what both sides of every pinned map
/// and every record must agree on.
pub fn layout_description() -> String {
    let mut d = format!("revision:{LAYOUT_REVISION};");
    let _ = write!(
        d,
        "ConnEvent:{}:{},{},{},{},{},{},{},{},{},{},{},{},{},{};",
        size_of::<ConnEvent>(),
        std::mem::offset_of!(ConnEvent, ktime_ns),
        std::mem::offset_of!(ConnEvent, src_addr),
        std::mem::offset_of!(ConnEvent, dst_addr),
        std::mem::offset_of!(ConnEvent, orig_dst_addr),
        std::mem::offset_of!(ConnEvent, ifindex),
        std::mem::offset_of!(ConnEvent, src_port),
        std::mem::offset_of!(ConnEvent, dst_port),
        std::mem::offset_of!(ConnEvent, orig_dst_port),
        std::mem::offset_of!(ConnEvent, family),
        std::mem::offset_of!(ConnEvent, proto),
        std::mem::offset_of!(ConnEvent, stage),
        std::mem::offset_of!(ConnEvent, flags),
        std::mem::offset_of!(ConnEvent, seq),
        std::mem::offset_of!(ConnEvent, rec_seq),
    );
    let _ = write!(
        d,
        "FlowKey:{}:{},{},{};Opening:{}:{},{},{},{};AttemptValue:{}:{},{},{};PortKey:{};Counters:{};",
        size_of::<FlowKey>(),
        std::mem::offset_of!(FlowKey, src_port),
        std::mem::offset_of!(FlowKey, family),
        std::mem::offset_of!(FlowKey, proto),
        size_of::<Opening>(),
        std::mem::offset_of!(Opening, seq),
        std::mem::offset_of!(Opening, answered),
        std::mem::offset_of!(Opening, ktime_ns),
        std::mem::offset_of!(Opening, ct),
        size_of::<AttemptValue>(),
        std::mem::offset_of!(AttemptValue, seq),
        std::mem::offset_of!(AttemptValue, answered),
        std::mem::offset_of!(AttemptValue, reached),
        size_of::<PortKey>(),
        Counter::COUNT,
    );
    for m in expected_maps() {
        let _ = write!(d, "{}:{:?}:{}:{}:{};", m.name, m.kind, m.key, m.value, m.max_entries);
    }
    d
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike std's hashers).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The directory name of this build's layout: `v` and 12 hex digits.
pub fn layout_version(salt: Option<&str>) -> String {
    let mut d = layout_description();
    if let Some(s) = salt.filter(|s| !s.is_empty()) {
        d.push_str("salt:");
        d.push_str(s);
    }
    format!("v{:012x}", fnv1a(d.as_bytes()) & 0xffff_ffff_ffff)
}

/// Whether the daemon adopted what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Nothing was pinned: a first start (or after `cleanup`).
    Fresh,
    /// The maps of a previous daemon of this layout were adopted.
    Resumed,
    /// Something was pinned but could not be adopted; it was removed (the reason).
    Reset(String),
}

/// This build's pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
    pub version: String,
    pub dir: PathBuf,
}

impl PinDir {
    pub fn new(root: &Path, version: String) -> Self {
        Self { root: root.to_path_buf(), dir: root.join(&version), version }
    }

    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn progs(&self) -> PathBuf {
        self.dir.join("progs")
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The pin of `program`'s link on interface `ifindex`.
    pub fn link(&self, program: &str, ifindex: u32) -> PathBuf {
        self.links().join(format!("{program}@{ifindex}"))
    }
}

/// Fails unless `path` (or its nearest existing ancestor) is on bpffs.
pub fn check_bpffs(path: &Path) -> Result<()> {
    let mut at = path;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes()).map_err(|_| pin_error(path, "path holds a NUL byte"))?;
    // SAFETY: statfs into a zeroed struct, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(pin_error(path, &std::io::Error::last_os_error().to_string()));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(Error::NotBpffs { path: path.to_path_buf(), at: at.to_path_buf() });
    }
    Ok(())
}

fn pin_error(path: &Path, what: &str) -> Error {
    Error::Pins { path: path.to_path_buf(), reason: what.to_string() }
}

/// Why a pinned map cannot be used by this build (None: it can).
pub fn map_mismatch(path: &Path, spec: &MapSpec) -> Option<String> {
    let map = match MapData::from_pin(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("map {} cannot be opened ({e})", spec.name)),
    };
    let info = match map.info() {
        Ok(i) => i,
        Err(e) => return Some(format!("map {}: no info ({e})", spec.name)),
    };
    let kind = info.map_type().ok();
    let found = (kind, info.key_size(), info.value_size(), info.max_entries());
    let want = (Some(spec.kind), spec.key, spec.value, spec.max_entries);
    (found != want).then(|| {
        format!(
            "map {} is {:?} key {} value {} entries {}, this build expects {:?} key {} value {} entries {}",
            spec.name,
            found.0,
            found.1,
            found.2,
            found.3,
            want.0.unwrap_or(spec.kind),
            want.1,
            want.2,
            want.3
        )
    })
}

/// Makes the pin root (on bpffs, and no mount root: see `pin_root`), ready to be locked.
pub fn ensure_root(root: &Path) -> Result<()> {
    check_bpffs(root)?;
    pin_root::check_pin_root(root)?;
    std::fs::create_dir_all(root).map_err(|e| pin_error(root, &e.to_string()))
}

/// Looks at what is pinned under `root`: removes other layouts' directories that
/// dockexpose made (their links and maps, so their programs stop; another tool's
/// directories stay), checks this layout's maps, and removes them too when one does
/// not fit. Creates what is missing, the owner's mark first.
pub fn prepare(dir: &PinDir) -> Result<Adoption> {
    ensure_root(&dir.root)?;
    let mut reasons = Vec::new();
    let entries = std::fs::read_dir(&dir.root).map_err(|e| pin_error(&dir.root, &e.to_string()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != dir.version && pin_root::is_ours(&entry.path()) {
            // Its cls_bpf filters hold no pin: removed by what it marked.
            super::cls_bpf::release_marked(&entry.path());
            remove_tree(&entry.path())?;
            reasons.push(format!("the pinned kernel state has layout {name}, this build has {}", dir.version));
        }
    }
    if dir.dir.exists()
        && !pin_root::is_ours(&dir.dir)
        && std::fs::read_dir(&dir.dir).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(pin_error(
            &dir.dir,
            "it was not made by dockexpose (no made-by-dockexpose mark in it), so it is left alone",
        ));
    }
    let mut adoption = Adoption::Fresh;
    if dir.maps().is_dir() {
        let problems: Vec<String> =
            expected_maps().iter().filter_map(|spec| map_mismatch(&dir.map(spec.name), spec)).collect();
        if problems.is_empty() {
            adoption = Adoption::Resumed;
        } else {
            remove_tree(&dir.dir)?;
            reasons.extend(problems);
        }
    }
    if !reasons.is_empty() {
        adoption = Adoption::Reset(reasons.join("; "));
    }
    for d in [dir.dir.join(pin_root::OWNER_MARK), dir.maps(), dir.progs(), dir.links()] {
        std::fs::create_dir_all(&d).map_err(|e| pin_error(&d, &e.to_string()))?;
    }
    Ok(adoption)
}

/// Removes a pinned tree: unpinned links whose last holder goes detach, unpinned maps
/// and programs are freed once nothing uses them.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_error(path, &format!("cannot remove it: {e}"))),
    }
}

/// `dockexpose cleanup`: removes the layout directories dockexpose made under `root`
/// (another tool's stay), then `root` itself when nothing else is left; returns what
/// it removed. The caller holds the root's lock.
pub fn cleanup(root: &Path) -> Result<Vec<String>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    check_bpffs(root)?;
    pin_root::check_pin_root(root)?;
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(root).map_err(|e| pin_error(root, &e.to_string()))?;
    for dir in entries.flatten().map(|e| e.path()).filter(|p| pin_root::is_ours(p)) {
        collect(root, &dir, &mut removed);
        remove_tree(&dir)?;
    }
    // Only when empty: another tool's directories keep it.
    let _ = std::fs::remove_dir(root);
    Ok(removed)
}

fn collect(root: &Path, at: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(at) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
}

/// A link the daemon holds: detached when dropped unless pinned.
pub struct HeldLink {
    link: Option<FdLink>,
    pin: Option<PathBuf>,
    /// A link that is no fd link (XDP through netlink, kernels before 5.9): it cannot
    /// be pinned, and detaches when dropped.
    other: Option<Box<dyn std::any::Any + Send>>,
    /// Our cls_bpf filter (kernels before 6.6, see cls_bpf.rs), and whether it stays
    /// attached when the daemon exits (pinned maps: the next daemon takes it over).
    filter: Option<(aya::programs::tc::SchedClassifierLink, bool)>,
}

impl Drop for HeldLink {
    fn drop(&mut self) {
        // Dropping aya's link object would delete the filter: forget it instead.
        if let Some((link, true)) = self.filter.take() {
            std::mem::forget(link);
        }
    }
}

impl HeldLink {
    /// A link kept attached after the daemon exits (pinned at `pin`).
    pub fn pinned(link: FdLink, pin: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(pin);
        let pinned: PinnedLink = link.pin(pin).map_err(|e| pin_error(pin, &e.to_string()))?;
        Ok(Self { link: Some(FdLink::from(pinned)), pin: Some(pin.to_path_buf()), other: None, filter: None })
    }

    /// A link adopted from its pin (already pinned at `pin`).
    pub fn adopted(link: FdLink, pin: PathBuf) -> Self {
        Self { link: Some(link), pin: Some(pin), other: None, filter: None }
    }

    /// A link that lives only as long as this process holds it.
    pub fn unpinned(link: FdLink) -> Self {
        Self { link: Some(link), pin: None, other: None, filter: None }
    }

    /// A link of another kind, held until detached.
    pub fn owned(other: Box<dyn std::any::Any + Send>) -> Self {
        Self { link: None, pin: None, other: Some(other), filter: None }
    }

    /// A cls_bpf filter of ours; `keep_attached`: it outlives the daemon.
    pub fn filter(link: aya::programs::tc::SchedClassifierLink, keep_attached: bool) -> Self {
        Self { link: None, pin: None, other: None, filter: Some((link, keep_attached)) }
    }

    /// Whether this is a cls_bpf filter (otherwise a BPF link: TCX or XDP).
    pub fn is_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Detaches now: removes the pin, closes the link, deletes the filter.
    pub fn detach(mut self) {
        if let Some(p) = self.pin.take() {
            let _ = std::fs::remove_file(p);
        }
        self.link.take();
        self.other.take();
        if let Some((link, _)) = self.filter.take() {
            use aya::programs::links::Link as _;
            let _ = link.detach();
        }
    }
}

/// Links pinned by a previous daemon, waiting to be claimed by an attachment of this
/// one (keyed by program name and ifindex).
#[derive(Default)]
pub struct LinkPool {
    links: BTreeMap<(String, u32), (FdLink, PathBuf)>,
}

impl LinkPool {
    /// Opens every link pinned in `dir.links()`. Links of interfaces that no longer
    /// exist are unpinned (the kernel already detached them).
    pub fn open(dir: &PinDir) -> Self {
        let mut pool = Self::default();
        let Ok(entries) = std::fs::read_dir(dir.links()) else { return pool };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((program, ifindex)) =
                name.rsplit_once('@').and_then(|(p, i)| Some((p.to_string(), i.parse::<u32>().ok()?)))
            else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if nix::net::if_::if_indextoname(ifindex).is_err() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    pool.links.insert((program, ifindex), (FdLink::from(link), path));
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        pool
    }

    /// The pinned link of `program` on `ifindex`, if a previous daemon left one.
    pub fn take(&mut self, program: &str, ifindex: u32) -> Option<(FdLink, PathBuf)> {
        self.links.remove(&(program.to_string(), ifindex))
    }

    /// Links no attachment of this daemon claimed, by program and ifindex.
    pub fn unclaimed(&self) -> Vec<(String, u32)> {
        self.links.keys().cloned().collect()
    }

    /// Detaches the links on `ifindex` (another hook took over, say).
    pub fn drop_ifindex(&mut self, ifindex: u32) {
        let keys: Vec<_> = self.links.keys().filter(|(_, i)| *i == ifindex).cloned().collect();
        for k in keys {
            if let Some((_, path)) = self.links.remove(&k) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Detaches every unclaimed link.
    pub fn release_all(&mut self) {
        for (_, (_, path)) in std::mem::take(&mut self.links) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests;
