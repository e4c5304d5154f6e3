//! Loads the embedded eBPF object, attaches its programs, and keeps its maps in step
//! with what userspace knows (local prefixes, published ports).
//!
//! Attachments are fd-based links (TCX, XDP links). Loaded with a pin directory
//! (`watch`, see pins.rs), the maps, programs and links are pinned and outlive the
//! process: a later daemon adopts them. Without one (`verify`, `bench`, `--no-pin`)
//! they are detached when this struct is dropped, and by the kernel if the process
//! dies, so nothing outlives us.
//!
//! In the order data flows: this file loads the object (`Kernel` and its public
//! surface); `attach` puts the programs on interfaces; `adopt` takes over what a
//! previous daemon pinned; `maps` keeps the maps current and reads them back;
//! `probes` is `verify`'s injector and guard.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use dockexpose_common::{global_names, kfunc_names, map_names, program_names, PortKey};

use super::{
    btf, cls_bpf,
    features::{Features, TcMechanism},
    kfunc,
    pins::{self, LinkPool, PinDir},
};
pub use crate::host::interfaces::LinkLayer;
use crate::{
    error::{Error, Result},
    net::prefix::PrefixTable,
};

mod adopt;
mod attach;
mod maps;
mod probes;

use self::{
    attach::{attach_classifier, ifindex_of, program, BridgeLinks, Filter, UplinkLinks},
    maps::{map_err, take_map},
    probes::ProbeMaps,
};
pub use self::{
    attach::{UplinkAttachMode, UplinkHook},
    maps::{addr16, CounterSnapshot, WatchMaps},
};

/// The kernel object, built by build.rs from dockexpose-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dockexpose-ebpf.o"));

/// Settings the programs read as constants, patched in at load time.
#[derive(Clone, Copy, Debug)]
pub struct KernelSettings {
    /// A UDP flow silent this long is new again (bridges and uplinks alike).
    pub udp_idle_ns: u64,
    /// A SYN / INIT repeated with the same ISN within this window is a retransmit.
    pub retransmit_window_ns: u64,
    /// A record wakes the reader once this many bytes wait in the ring; the reader's
    /// timer collects smaller batches. 0: every record wakes it.
    pub wakeup_bytes: u64,
}

impl Default for KernelSettings {
    fn default() -> Self {
        Self { udp_idle_ns: 30_000_000_000, retransmit_window_ns: 180_000_000_000, wakeup_bytes: 0 }
    }
}

/// How the bridge program learns each connection's identity from conntrack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConntrackAccess {
    /// kfuncs resolved, `struct nf_conn` offsets read from the kernel's BTF.
    Kfuncs,
    /// Not available (the reason): first fragments cut before the TCP flags are
    /// counted as uninspected, host ports come from the published bindings only.
    Unavailable(String),
}

/// Whether the bridge program reads conntrack (set at load): without it, what reached a
/// container is recorded with `shape` "uninspected".
static CONNTRACK_INSPECTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn conntrack_inspects() -> bool {
    CONNTRACK_INSPECTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where the bridge program finds a packet's conntrack entry and reads it.
#[derive(Default)]
struct CtLayout {
    skb_nfct: u32,
    nf_conn_btf_id: u32,
    orig_dst_addr: u32,
    orig_dst_port: u32,
}

fn ct_layout(btf: &btf::Btf) -> std::result::Result<CtLayout, btf::BtfError> {
    let at = |path: &[&str]| btf.offset_of("nf_conn", path);
    Ok(CtLayout {
        skb_nfct: btf.offset_of("sk_buff", &["_nfct"])?,
        nf_conn_btf_id: btf
            .id_of("nf_conn", btf::KIND_STRUCT)
            .ok_or_else(|| btf::BtfError("struct nf_conn is not in the kernel's BTF".into()))?,
        orig_dst_addr: at(&["tuplehash", "tuple", "dst", "u3"])?,
        orig_dst_port: at(&["tuplehash", "tuple", "dst", "u", "all"])?,
    })
}

pub struct Kernel {
    ebpf: Ebpf,
    local_v4: LpmTrie<MapData, [u8; 4], u8>,
    local_v6: LpmTrie<MapData, [u8; 16], u8>,
    published: Array<MapData, u8>,
    counters: PerCpuArray<MapData, u64>,
    local_ifaces: HashMap<MapData, u32, u8>,
    conntrack: ConntrackAccess,
    bridges: BTreeMap<String, BridgeLinks>,
    uplinks: BTreeMap<String, UplinkLinks>,
    prefixes: PrefixTable,
    ports: BTreeSet<PortKey>,
    /// `verify` only: the probe maps and the guard's attachments (None for `watch`).
    probes: Option<ProbeMaps>,
    /// Where maps, programs and links are pinned (None: nothing outlives us).
    pins: Option<PinDir>,
    /// Links pinned by the previous daemon, not yet claimed by an attachment.
    pool: LinkPool,
    /// What the kernel offers (probed at load).
    features: Features,
    /// Interfaces whose clsact qdisc dockexpose made (cls_bpf only): removed with our
    /// filters.
    made_clsact: BTreeSet<String>,
}

/// What a program is loaded as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ProgramKind {
    /// A TC classifier: a TCX link, or a cls_bpf filter before TCX.
    Classifier,
    Xdp,
}

/// Every program `watch` loads, attaches and pins (under progs/). The classifiers'
/// names are also what its cls_bpf filters carry (cls_bpf.rs).
pub(super) const WATCH_PROGRAMS: [(&str, ProgramKind); 8] = [
    (program_names::BRIDGE_EGRESS, ProgramKind::Classifier),
    (program_names::BRIDGE_INGRESS, ProgramKind::Classifier),
    (program_names::UPLINK_EGRESS, ProgramKind::Classifier),
    (program_names::UPLINK_EGRESS_L3, ProgramKind::Classifier),
    (program_names::UPLINK_INGRESS, ProgramKind::Classifier),
    (program_names::UPLINK_INGRESS_L3, ProgramKind::Classifier),
    (program_names::UPLINK_XDP, ProgramKind::Xdp),
    (program_names::UPLINK_XDP_L3, ProgramKind::Xdp),
];

/// Loads `name` into the kernel as what it is.
fn load_program(ebpf: &mut Ebpf, name: &'static str, kind: ProgramKind) -> Result<()> {
    let loaded = match kind {
        ProgramKind::Classifier => program::<SchedClassifier>(ebpf, name)?.load(),
        ProgramKind::Xdp => program::<Xdp>(ebpf, name)?.load(),
    };
    loaded.map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })
}

impl Kernel {
    /// Loads the object and its programs (not attached yet). Returns the ring buffer
    /// separately: the reader task owns it.
    pub fn load(settings: KernelSettings) -> Result<(Self, RingBuf<MapData>)> {
        let (kernel, events) = Self::load_with(settings, None)?;
        let events = RingBuf::try_from(events).map_err(map_err(map_names::EVENTS))?;
        Ok((kernel, events))
    }

    /// `watch`: loads the object with its maps pinned in `pins` (adopted when already
    /// there: `pins::prepare` checked them), pins the programs, and opens the links a
    /// previous daemon pinned, whose programs `attach_*` replace with ours.
    pub fn load_for_watch(settings: KernelSettings, pins: Option<PinDir>) -> Result<(Self, WatchMaps)> {
        let (mut kernel, events) = Self::load_with(settings, pins.as_ref())?;
        let aya::maps::Map::RingBuf(events) = events else { return Err(Error::MissingMap(map_names::EVENTS)) };
        let data = |m: aya::maps::Map| match m {
            aya::maps::Map::Array(d) | aya::maps::Map::PerCpuArray(d) => Some(d),
            _ => None,
        };
        let daemon_state = data(take_map(&mut kernel.ebpf, map_names::DAEMON_STATE)?)
            .ok_or(Error::MissingMap(map_names::DAEMON_STATE))?;
        let record_seq =
            data(take_map(&mut kernel.ebpf, map_names::RECORD_SEQ)?).ok_or(Error::MissingMap(map_names::RECORD_SEQ))?;
        let aya::maps::Map::HashMap(pending) = take_map(&mut kernel.ebpf, map_names::PENDING)? else {
            return Err(Error::MissingMap(map_names::PENDING));
        };
        // A second handle on the counters, for the ring's loss counter.
        let counters = match &pins {
            Some(dir) => Some(MapData::from_pin(dir.map(map_names::COUNTERS)).map_err(map_err(map_names::COUNTERS))?),
            None => None,
        };
        if let Some(dir) = &pins {
            kernel.adopt_pinned(dir)?;
        }
        kernel.pins = pins;
        Ok((kernel, WatchMaps { events, daemon_state, record_seq, counters, pending }))
    }

    fn load_with(settings: KernelSettings, pins: Option<&PinDir>) -> Result<(Self, aya::maps::Map)> {
        raise_memlock_limit();
        let features = Features::probe();
        if let Some(why) = features.refusal() {
            return Err(Error::Object(why));
        }
        // Conntrack from the bridge program: kfunc ids and nf_conn offsets from the
        // running kernel's BTF, or a clearly announced fallback.
        let kernel_btf = btf::Btf::from_sys_fs();
        let offsets = match &kernel_btf {
            Ok(b) => ct_layout(b).map_err(|e| e.0),
            Err(e) => Err(e.0.clone()),
        };
        let (object, patched) = kfunc::resolve(EBPF_OBJECT, &kfunc_names::ALL, |name| {
            let b = kernel_btf.as_ref().ok()?;
            offsets.is_ok().then(|| b.id_of(name, btf::KIND_FUNC)).flatten()
        })
        .map_err(Error::Object)?;
        let conntrack = match (&offsets, patched.missing.is_empty()) {
            (Ok(_), true) => ConntrackAccess::Kfuncs,
            (Err(e), _) => ConntrackAccess::Unavailable(format!("no conntrack layout in the kernel's BTF ({e})")),
            (Ok(_), false) => ConntrackAccess::Unavailable(format!("the kernel lacks {}", patched.missing.join(", "))),
        };
        let ct = offsets.unwrap_or_default();
        let ct_enabled = u32::from(conntrack == ConntrackAccess::Kfuncs);
        CONNTRACK_INSPECTS.store(conntrack == ConntrackAccess::Kfuncs, std::sync::atomic::Ordering::Relaxed);
        // Aligned copy: the ELF parser wants 8-byte alignment.
        let mut aligned: Vec<u64> = vec![0; object.len().div_ceil(8)];
        // SAFETY: u64 -> u8 view of the same allocation, within its length.
        let bytes = unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), object.len()) };
        bytes.copy_from_slice(&object);
        let mut loader = EbpfLoader::new();
        let map_pins: Vec<(&'static str, std::path::PathBuf)> =
            pins.map(|d| pins::expected_maps().iter().map(|m| (m.name, d.map(m.name))).collect()).unwrap_or_default();
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(global_names::UDP_IDLE_NS, &settings.udp_idle_ns, true)
            .override_global(global_names::RETRANSMIT_WINDOW_NS, &settings.retransmit_window_ns, true)
            .override_global(global_names::WAKEUP_BYTES, &settings.wakeup_bytes, true)
            .override_global(global_names::CT_ENABLED, &ct_enabled, true)
            .override_global(global_names::SKB_NFCT_OFF, &ct.skb_nfct, true)
            .override_global(global_names::NF_CONN_BTF_ID, &ct.nf_conn_btf_id, true)
            .override_global(global_names::CT_ORIG_DST_ADDR_OFF, &ct.orig_dst_addr, true)
            .override_global(global_names::CT_ORIG_DST_PORT_OFF, &ct.orig_dst_port, true)
            .load(bytes)?;
        for (name, kind) in WATCH_PROGRAMS {
            load_program(&mut ebpf, name, kind)?;
        }

        let events = take_map(&mut ebpf, map_names::EVENTS)?;
        let local_v4 =
            LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V4)?).map_err(map_err(map_names::LOCAL_V4))?;
        let local_v6 =
            LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V6)?).map_err(map_err(map_names::LOCAL_V6))?;
        let published = Array::try_from(take_map(&mut ebpf, map_names::PUBLISHED_PORTS)?)
            .map_err(map_err(map_names::PUBLISHED_PORTS))?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?).map_err(map_err(map_names::COUNTERS))?;
        let mut local_ifaces = HashMap::try_from(take_map(&mut ebpf, map_names::LOCAL_IFACES)?)
            .map_err(map_err(map_names::LOCAL_IFACES))?;
        // Loopback: the host talking to itself.
        local_ifaces.insert(ifindex_of("lo"), 1, 0).map_err(map_err(map_names::LOCAL_IFACES))?;
        let kernel = Self {
            ebpf,
            local_v4,
            local_v6,
            published,
            counters,
            local_ifaces,
            conntrack,
            bridges: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            prefixes: PrefixTable::default(),
            ports: BTreeSet::new(),
            probes: None,
            pins: None,
            pool: LinkPool::default(),
            features,
            made_clsact: BTreeSet::new(),
        };
        Ok((kernel, events))
    }

    /// What the kernel offers, as probed at load.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether the kernel side is pinned (and outlives this process).
    pub fn pinned(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// The ifindex a watched interface had when attached: a different one now means
    /// it was deleted and recreated under the same name (its links went with it).
    pub fn attached_ifindex(&self, iface: &str) -> Option<u32> {
        self.bridges.get(iface).map(|b| b.ifindex).or_else(|| self.uplinks.get(iface).map(|u| u.ifindex))
    }

    /// How conntrack is consulted (said at start).
    pub fn conntrack(&self) -> &ConntrackAccess {
        &self.conntrack
    }

    pub fn bridges(&self) -> impl Iterator<Item = &str> {
        self.bridges.keys().map(String::as_str)
    }

    /// Each watched bridge with how its programs are attached: a TCX link or a
    /// cls_bpf filter, as the attachment was made (not as the kernel would offer).
    pub fn bridge_mechanisms(&self) -> impl Iterator<Item = (&str, TcMechanism)> {
        self.bridges.iter().map(|(name, links)| (name.as_str(), links.mechanism()))
    }

    pub fn uplinks(&self) -> impl Iterator<Item = &str> {
        self.uplinks.keys().map(String::as_str)
    }

    /// Gives a loaded program for the benchmark (BPF_PROG_TEST_RUN).
    pub fn program_mut(&mut self, name: &str) -> Option<&mut aya::programs::Program> {
        self.ebpf.program_mut(name)
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if self.pins.is_some() {
            // Pinned: the links stay attached (closing our fds does not detach them),
            // for the next daemon to adopt.
            self.detach_probe_guards();
            return;
        }
        self.detach_interfaces();
        self.detach_probe_guards();
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer to a local.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
