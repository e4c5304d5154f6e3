//! Loads the embedded eBPF object, attaches its programs, and keeps its maps in step
//! with what userspace knows (local prefixes, published ports).
//!
//! Attachments are fd-based links (TCX, XDP links). Loaded with a pin directory
//! (`watch`, see pins.rs), the maps, programs and links are pinned and outlive the
//! process: a later daemon adopts them. Without one (`verify`, `bench`, `--no-pin`)
//! they are detached when this struct is dropped, and by the kernel if the process
//! dies, so nothing outlives us.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::{links::FdLink, tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use dockexpose_common::{
    global_names, kfunc_names, map_names, program_names, published_port_index, Counter, PortKey, PREFIX_HOST,
    PREFIX_LOCAL, PREFIX_TRUSTED,
};

use super::{
    btf, cls_bpf,
    features::{Features, TcMechanism},
    kfunc,
    pins::{self, HeldLink, LinkPool, PinDir},
};
pub use crate::host::interfaces::LinkLayer;
use crate::{
    error::{Error, Result},
    net::prefix::{PrefixTable, SourceKind},
};

mod probes;

use self::probes::ProbeMaps;

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



/// Kernel counters summed over CPUs, indexed like `Counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot(pub [u64; Counter::COUNT as usize]);

impl CounterSnapshot {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

struct BridgeLinks {
    ifindex: u32,
    egress: HeldLink,
    ingress: HeldLink,
}

struct UplinkLinks {
    ifindex: u32,
    attempts: HeldLink,
    egress: HeldLink,
}

/// How a program is attached to an interface.
#[derive(Clone, Copy)]
enum Hook {
    Tc(TcAttachType),
    Xdp(XdpMode),
}

/// The hook that sees an uplink's attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkHook {
    /// XDP: the earliest hook, native where the driver has it.
    Xdp,
    /// TCX ingress: also ahead of every firewall table; reads the packet in place, where
    /// XDP on a veth or virtio NIC converts (and often copies) every packet.
    Tcx,
}

fn ingress_program(layer: LinkLayer) -> &'static str {
    match layer {
        LinkLayer::Ethernet => program_names::UPLINK_INGRESS,
        LinkLayer::L3 => program_names::UPLINK_INGRESS_L3,
    }
}

fn uplink_programs(layer: LinkLayer) -> (&'static str, &'static str) {
    match layer {
        LinkLayer::Ethernet => (program_names::UPLINK_XDP, program_names::UPLINK_EGRESS),
        LinkLayer::L3 => (program_names::UPLINK_XDP_L3, program_names::UPLINK_EGRESS_L3),
    }
}

fn ifindex_of(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface).unwrap_or(0)
}

/// How an uplink's attempt program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkAttachMode {
    /// XDP in the driver.
    Native,
    /// XDP in the generic (skb) path: the driver has no native XDP.
    Generic,
    /// The TCX ingress hook (`UplinkHook::Tcx`).
    Tcx,
    /// That hook as a cls_bpf filter of ours: the kernel has no TCX.
    ClsBpf,
    /// A link pinned by the previous daemon, kept: its program replaced by ours.
    Adopted,
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

/// The maps `watch` reads itself, handed out at load.
pub struct WatchMaps {
    /// The ring buffer of records.
    pub events: MapData,
    /// The daemon's bookkeeping (DAEMON_STATE_* slots).
    pub daemon_state: MapData,
    /// The per-CPU record sequence numbers.
    pub record_seq: MapData,
    /// A second handle on the counters (the ring's loss counter), when pinned.
    pub counters: Option<MapData>,
    /// Records held back for identity (`PendingKey` -> `ConnEvent`), pinned so that a
    /// crash loses none although their ring space is released.
    pub pending: MapData,
}

/// The programs `watch` attaches (pinned under progs/).
const WATCH_PROGRAMS: [&str; 8] = [
    program_names::BRIDGE_EGRESS,
    program_names::BRIDGE_INGRESS,
    program_names::UPLINK_EGRESS,
    program_names::UPLINK_EGRESS_L3,
    program_names::UPLINK_INGRESS,
    program_names::UPLINK_INGRESS_L3,
    program_names::UPLINK_XDP,
    program_names::UPLINK_XDP_L3,
];

/// An address as the kernel maps hold it: 16 bytes, IPv4 in the first four.
pub fn addr16(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(Error::MissingMap(name))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source: Box::new(source) }
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
        let daemon_state = data(take_map(&mut kernel.ebpf, map_names::DAEMON_STATE)?).ok_or(Error::MissingMap(map_names::DAEMON_STATE))?;
        let record_seq = data(take_map(&mut kernel.ebpf, map_names::RECORD_SEQ)?).ok_or(Error::MissingMap(map_names::RECORD_SEQ))?;
        let aya::maps::Map::HashMap(pending) = take_map(&mut kernel.ebpf, map_names::PENDING)? else {
            return Err(Error::MissingMap(map_names::PENDING));
        };
        // A second handle on the counters, for the ring's loss counter.
        let counters = match &pins {
            Some(dir) => Some(MapData::from_pin(dir.map(map_names::COUNTERS)).map_err(map_err(map_names::COUNTERS))?),
            None => None,
        };
        if let Some(dir) = &pins {
            for name in WATCH_PROGRAMS {
                let path = dir.progs().join(name);
                let _ = std::fs::remove_file(&path);
                let prog = kernel.ebpf.program_mut(name).ok_or(Error::MissingMap(name))?;
                prog.pin(&path).map_err(|e| Error::Pins { path: path.clone(), reason: e.to_string() })?;
            }
            kernel.pool = LinkPool::open(dir);
            kernel.made_clsact = cls_bpf::marked(&dir.dir, cls_bpf::Mark::Clsact).into_iter().collect();
            kernel.adopt_map_contents()?;
        }
        kernel.pins = pins;
        Ok((kernel, WatchMaps { events, daemon_state, record_seq, counters, pending }))
    }

    /// What the previous daemon left in the adopted maps becomes what this one knows,
    /// so that the first sync removes what is stale and keeps the rest (the programs
    /// keep judging with it meanwhile).
    fn adopt_map_contents(&mut self) -> Result<()> {
        let mut table = PrefixTable::default();
        let kind = |v: u8| match v {
            PREFIX_HOST => Some(SourceKind::HostAddress),
            PREFIX_TRUSTED => Some(SourceKind::Trusted),
            PREFIX_LOCAL => Some(SourceKind::Local),
            _ => None,
        };
        for (key, value) in self.local_v4.iter().filter_map(|r| r.ok()) {
            let prefix = crate::net::prefix::Prefix::new(std::net::IpAddr::from(key.data()), key.prefix_len() as u8);
            if let (Some(p), Some(k)) = (prefix, kind(value)) {
                table.insert(p, k);
            }
        }
        for (key, value) in self.local_v6.iter().filter_map(|r| r.ok()) {
            let prefix = crate::net::prefix::Prefix::new(std::net::IpAddr::from(key.data()), key.prefix_len() as u8);
            if let (Some(p), Some(k)) = (prefix, kind(value)) {
                table.insert(p, k);
            }
        }
        self.prefixes = table;
        for (proto, base) in [(dockexpose_common::PROTO_TCP, 0u32), (dockexpose_common::PROTO_UDP, 65_536), (dockexpose_common::PROTO_SCTP, 2 * 65_536)] {
            for port in 0..=u16::MAX {
                if self.published.get(&(base + u32::from(port)), 0).unwrap_or(0) != 0 {
                    self.ports.insert(PortKey { port, proto, _pad: 0 });
                }
            }
        }
        Ok(())
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
        for name in [
            program_names::BRIDGE_EGRESS,
            program_names::BRIDGE_INGRESS,
            program_names::UPLINK_EGRESS,
            program_names::UPLINK_EGRESS_L3,
            program_names::UPLINK_INGRESS,
            program_names::UPLINK_INGRESS_L3,
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })?;
        }
        for name in [program_names::UPLINK_XDP, program_names::UPLINK_XDP_L3] {
            let xdp: &mut Xdp = program(&mut ebpf, name)?;
            xdp.load().map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })?;
        }

        let events = take_map(&mut ebpf, map_names::EVENTS)?;
        let local_v4 = LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V4)?).map_err(map_err(map_names::LOCAL_V4))?;
        let local_v6 = LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V6)?).map_err(map_err(map_names::LOCAL_V6))?;
        let published = Array::try_from(take_map(&mut ebpf, map_names::PUBLISHED_PORTS)?)
            .map_err(map_err(map_names::PUBLISHED_PORTS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?).map_err(map_err(map_names::COUNTERS))?;
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

    /// Attaches `name` to `iface` (`ifindex`) at `hook`: the link a previous daemon
    /// pinned there, with its program atomically replaced by ours (the hook is never
    /// empty), or a new one; pinned when this kernel side is.
    fn attach_link(&mut self, name: &'static str, iface: &str, ifindex: u32, hook: Hook) -> Result<(HeldLink, bool)> {
        if let Some((link, path)) = self.pool.take(name, ifindex) {
            match replace_program(&mut self.ebpf, name, link, hook) {
                Ok(link) => return Ok((HeldLink::adopted(link, path), true)),
                Err(e) => {
                    // A link of another kind (the hook changed) or a defunct one: ours replaces it.
                    crate::say!("dockexpose: the pinned link of {name} on {iface} could not be taken over ({e}); attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let cls_bpf = self.features.tc_mechanism() == TcMechanism::ClsBpf;
        let hook_name = match hook {
            Hook::Tc(TcAttachType::Egress) if cls_bpf => "cls_bpf egress",
            Hook::Tc(_) if cls_bpf => "cls_bpf ingress",
            Hook::Tc(TcAttachType::Egress) => "TCX egress",
            Hook::Tc(_) => "TCX ingress",
            Hook::Xdp(_) => "XDP",
        };
        let attach_err = |source: aya::programs::ProgramError| Error::Attach {
            program: name,
            iface: iface.to_string(),
            hook: hook_name,
            source: Box::new(source),
        };
        let owned: std::result::Result<FdLink, Box<dyn std::any::Any + Send>> = match hook {
            Hook::Tc(direction) if cls_bpf => {
                // Our own filter, found again by priority, handle and name (cls_bpf.rs);
                // it stays attached past the daemon when the maps are pinned.
                let keep = self.pins.is_some();
                let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
                let (id, adopted) = cls_bpf::attach(prog, iface, direction).map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                if let Some(dir) = &self.pins {
                    cls_bpf::mark(&dir.dir, cls_bpf::Mark::Filters, iface);
                }
                return Ok((HeldLink::filter(link, keep), adopted));
            }
            Hook::Tc(direction) => {
                let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
                let options = tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default());
                let id = prog.attach_with_options(iface, direction, options).map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                FdLink::try_from(link).map_err(|_| unreachable_link())
            }
            Hook::Xdp(mode) => {
                let prog: &mut Xdp = program(&mut self.ebpf, name)?;
                let id = prog.attach(iface, mode).map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                // A netlink XDP attachment (kernels before 5.9) is no fd link.
                FdLink::try_from(link).map_err(|_| unreachable_link())
            }
        };
        let held = match (owned, &self.pins) {
            (Ok(link), Some(dir)) => HeldLink::pinned(link, &dir.link(name, ifindex))?,
            (Ok(link), None) => HeldLink::unpinned(link),
            (Err(other), _) => HeldLink::owned(other),
        };
        Ok((held, false))
    }

    /// Attaches the bridge programs (TCX egress and ingress) to `iface`.
    pub fn attach_bridge(&mut self, iface: &str) -> Result<()> {
        if self.bridges.contains_key(iface) {
            return Ok(());
        }
        let ifindex = ifindex_of(iface);
        self.ensure_clsact(iface);
        let (egress, _) = self.attach_link(program_names::BRIDGE_EGRESS, iface, ifindex, Hook::Tc(TcAttachType::Egress))?;
        let (ingress, _) = match self.attach_link(program_names::BRIDGE_INGRESS, iface, ifindex, Hook::Tc(TcAttachType::Ingress)) {
            Ok(l) => l,
            Err(e) => {
                egress.detach();
                return Err(e);
            }
        };
        self.bridges.insert(iface.to_string(), BridgeLinks { ifindex, egress, ingress });
        // Traffic routed from a watched bridge is the host's own (container to container).
        self.local_ifaces.insert(ifindex, 1, 0).map_err(map_err(map_names::LOCAL_IFACES))?;
        Ok(())
    }

    /// Detaches the bridge programs from `iface`. An interface that is already gone
    /// took its links with it: errors are then expected and ignored.
    pub fn detach_bridge(&mut self, iface: &str) {
        let Some(links) = self.bridges.remove(iface) else { return };
        let _ = self.local_ifaces.remove(&links.ifindex);
        links.egress.detach();
        links.ingress.detach();
        self.release_clsact(iface);
    }

    /// cls_bpf only (TCX needs no qdisc): adds clsact to `iface`, remembering (in
    /// memory and under the pin directory) when dockexpose made it.
    fn ensure_clsact(&mut self, iface: &str) {
        if self.features.tc_mechanism() == TcMechanism::ClsBpf && cls_bpf::add_clsact(iface) {
            self.made_clsact.insert(iface.to_string());
            if let Some(dir) = &self.pins {
                cls_bpf::mark(&dir.dir, cls_bpf::Mark::Clsact, iface);
            }
        }
    }

    /// After our filters on `iface` are gone: forgets them, and removes its clsact
    /// qdisc if dockexpose made it.
    fn release_clsact(&mut self, iface: &str) {
        if let Some(dir) = &self.pins {
            cls_bpf::unmark(&dir.dir, cls_bpf::Mark::Filters, iface);
        }
        if self.made_clsact.remove(iface) {
            let _ = cls_bpf::delete_clsact(iface);
            if let Some(dir) = &self.pins {
                cls_bpf::unmark(&dir.dir, cls_bpf::Mark::Clsact, iface);
            }
        }
    }

    /// What the kernel offers, as probed at load.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Attaches the uplink programs: TCX ingress, or XDP (native mode where the driver
    /// has it, generic otherwise), for attempts; TCX egress for the host's answers.
    pub fn attach_uplink(&mut self, iface: &str, layer: LinkLayer, hook: UplinkHook) -> Result<UplinkAttachMode> {
        if self.uplinks.contains_key(iface) {
            return Ok(UplinkAttachMode::Native);
        }
        let ifindex = ifindex_of(iface);
        let (xdp_name, egress_name) = uplink_programs(layer);
        self.ensure_clsact(iface);
        // The hook not chosen this time keeps no link from a previous daemon.
        let other = match hook {
            UplinkHook::Tcx => xdp_name,
            UplinkHook::Xdp => ingress_program(layer),
        };
        if let Some((_, path)) = self.pool.take(other, ifindex) {
            let _ = std::fs::remove_file(path);
        }
        let (egress, _) = self.attach_link(egress_name, iface, ifindex, Hook::Tc(TcAttachType::Egress))?;
        let attached = match hook {
            UplinkHook::Tcx => self
                .attach_link(ingress_program(layer), iface, ifindex, Hook::Tc(TcAttachType::Ingress))
                .map(|(l, adopted)| {
                    let fresh = if self.features.tcx { UplinkAttachMode::Tcx } else { UplinkAttachMode::ClsBpf };
                    (l, if adopted { UplinkAttachMode::Adopted } else { fresh })
                }),
            UplinkHook::Xdp => match self.attach_link(xdp_name, iface, ifindex, Hook::Xdp(XdpMode::Driver)) {
                Ok((l, adopted)) => Ok((l, if adopted { UplinkAttachMode::Adopted } else { UplinkAttachMode::Native })),
                Err(_) => self.attach_link(xdp_name, iface, ifindex, Hook::Xdp(XdpMode::Skb)).map(|(l, _)| (l, UplinkAttachMode::Generic)),
            },
        };
        match attached {
            Ok((attempts, mode)) => {
                self.uplinks.insert(iface.to_string(), UplinkLinks { ifindex, attempts, egress });
                Ok(mode)
            }
            Err(e) => {
                egress.detach();
                Err(e)
            }
        }
    }

    pub fn detach_uplink(&mut self, iface: &str) {
        let Some(links) = self.uplinks.remove(iface) else { return };
        links.attempts.detach();
        links.egress.detach();
        self.release_clsact(iface);
    }

    /// Whether the kernel side is pinned (and outlives this process).
    pub fn pinned(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// Links a previous daemon pinned that no attachment of this one claimed (the
    /// interfaces it no longer watches): detached.
    pub fn release_unclaimed_links(&mut self) -> Vec<(String, u32)> {
        let mut unclaimed = self.pool.unclaimed();
        self.pool.release_all();
        // cls_bpf: the filters the previous daemon marked on interfaces this one does
        // not watch (a TCX link would have been in the pool).
        let marked = self.pins.as_ref().map(|d| cls_bpf::marked(&d.dir, cls_bpf::Mark::Filters)).unwrap_or_default();
        for iface in marked {
            if !self.bridges.contains_key(&iface) && !self.uplinks.contains_key(&iface) {
                for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                    cls_bpf::remove_ours(&iface, direction);
                }
                unclaimed.push((format!("cls_bpf filters on {iface}"), ifindex_of(&iface)));
                self.release_clsact(&iface);
            }
        }
        // The adopted LOCAL_IFACES may still name bridges the previous daemon watched
        // and this one does not: their traffic is no longer the host's own.
        let watched: BTreeSet<u32> = self.bridges.values().map(|b| b.ifindex).chain([ifindex_of("lo")]).collect();
        let stale: Vec<u32> = self.local_ifaces.keys().filter_map(|k| k.ok()).filter(|i| !watched.contains(i)).collect();
        for i in stale {
            let _ = self.local_ifaces.remove(&i);
        }
        unclaimed
    }

    /// Detaches from every bridge and uplink.
    fn detach_interfaces(&mut self) {
        let bridges: Vec<String> = self.bridges.keys().cloned().collect();
        for b in bridges {
            self.detach_bridge(&b);
        }
        let uplinks: Vec<String> = self.uplinks.keys().cloned().collect();
        for u in uplinks {
            self.detach_uplink(&u);
        }
    }

    /// `--detach-on-exit`: detaches everything and removes the pins (maps included:
    /// what the ring still holds is gone with them).
    pub fn unpin_all(&mut self) -> Result<()> {
        self.detach_interfaces();
        self.pool.release_all();
        if let Some(dir) = self.pins.take() {
            pins::remove_tree(&dir.dir)?;
            // The root too, when nothing else is pinned there.
            let _ = std::fs::remove_dir(&dir.root);
        }
        Ok(())
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

    pub fn uplinks(&self) -> impl Iterator<Item = &str> {
        self.uplinks.keys().map(String::as_str)
    }

    /// Makes the kernel's local/trusted tries equal to `next` (fitted to their bound by
    /// the caller). An entry the kernel refuses is left out and counted, never an error
    /// that ends the daemon; it is tried again at the next sync. Returns that count.
    pub fn sync_prefixes(&mut self, next: &PrefixTable) -> usize {
        let (removed, added) = self.prefixes.diff(next);
        let mut refused = 0;
        for p in removed {
            match p.addr() {
                std::net::IpAddr::V4(a) => {
                    let _ = self.local_v4.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
                std::net::IpAddr::V6(a) => {
                    let _ = self.local_v6.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
            }
            self.prefixes.set(p, None);
        }
        for (p, kind) in added {
            let value = match kind {
                SourceKind::Local => PREFIX_LOCAL,
                SourceKind::HostAddress => PREFIX_HOST,
                SourceKind::Trusted => PREFIX_TRUSTED,
            };
            let inserted = match p.addr() {
                std::net::IpAddr::V4(a) => self.local_v4.insert(&Key::new(u32::from(p.len()), a.octets()), value, 0),
                std::net::IpAddr::V6(a) => self.local_v6.insert(&Key::new(u32::from(p.len()), a.octets()), value, 0),
            };
            match inserted {
                Ok(()) => self.prefixes.set(p, Some(kind)),
                Err(_) => {
                    // Whatever was there before for this prefix is gone or stale.
                    self.prefixes.set(p, None);
                    refused += 1;
                }
            }
        }
        refused
    }

    /// Makes the kernel's published-port set equal to `next`.
    pub fn sync_published_ports(&mut self, next: &BTreeSet<PortKey>) -> Result<()> {
        for (key, value) in self.ports.difference(next).map(|k| (k, 0)).chain(next.difference(&self.ports).map(|k| (k, 1))) {
            self.published
                .set(published_port_index(key.port, key.proto), value, 0)
                .map_err(map_err(map_names::PUBLISHED_PORTS))?;
        }
        self.ports = next.clone();
        Ok(())
    }

    /// How full the tables that outsiders fill are: (map, entries, capacity). Counted
    /// by walking the keys (a few ms for a full table): for a scrape, not per packet.
    pub fn map_fill(&self) -> Vec<(&'static str, u64, u64)> {
        [(map_names::FLOWS, dockexpose_common::FLOWS_MAX), (map_names::ATTEMPTS, dockexpose_common::ATTEMPTS_MAX)]
            .into_iter()
            .filter_map(|(name, cap)| {
                let map = self.ebpf.map(name)?;
                let data = match map {
                    aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => d,
                    _ => return None,
                };
                let key_size = data.info().ok()?.key_size() as usize;
                let entries = count_keys(data, key_size);
                Some((name, entries, u64::from(cap)))
            })
            .collect()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<CounterSnapshot> {
        let mut snap = CounterSnapshot::default();
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&(c as u32), 0).map_err(map_err(map_names::COUNTERS))?;
            snap.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(snap)
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

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| Error::LoadProgram {
        program: name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    direction: TcAttachType,
) -> Result<tc::SchedClassifierLinkId> {
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    prog.attach(iface, direction).map_err(|source| Error::Attach {
        program: name,
        iface: iface.to_string(),
        hook: if direction == TcAttachType::Egress { "TCX egress" } else { "TCX ingress" },
        source: Box::new(source),
    })
}

/// Replaces the program behind a pinned link with ours (BPF_LINK_UPDATE: atomic, the
/// hook never runs without a program), and hands the link back.
fn replace_program(ebpf: &mut Ebpf, name: &'static str, link: FdLink, hook: Hook) -> std::result::Result<FdLink, String> {
    match hook {
        Hook::Tc(_) => {
            let prog: &mut SchedClassifier = program(ebpf, name).map_err(|e| e.to_string())?;
            let link = tc::SchedClassifierLink::try_from(link).map_err(|e| e.to_string())?;
            let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
            let link = prog.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| e.to_string())
        }
        Hook::Xdp(_) => {
            let prog: &mut Xdp = program(ebpf, name).map_err(|e| e.to_string())?;
            let link = aya::programs::xdp::XdpLink::try_from(link).map_err(|e| e.to_string())?;
            let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
            let link = prog.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| e.to_string())
        }
    }
}

fn unreachable_link() -> Box<dyn std::any::Any + Send> {
    Box::new(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer to a local.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Keys in a hash map, by BPF_MAP_GET_NEXT_KEY (whatever the key type).
fn count_keys(map: &MapData, key_size: usize) -> u64 {
    let fd = {
        use std::os::fd::{AsFd, AsRawFd};
        map.fd().as_fd().as_raw_fd()
    };
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0u64;
    let mut first = true;
    loop {
        // SAFETY: union bpf_attr's map_elem part: map_fd, key, next_key (zeroed rest).
        let mut attr = [0u64; 16];
        let words = attr.as_mut_ptr().cast::<u8>();
        unsafe {
            std::ptr::write_unaligned(words.cast::<u32>(), fd as u32);
            std::ptr::write_unaligned(words.add(8).cast::<u64>(), if first { 0 } else { key.as_ptr() as u64 });
            std::ptr::write_unaligned(words.add(16).cast::<u64>(), next.as_mut_ptr() as u64);
        }
        const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
        // SAFETY: attr lives through the call and holds valid pointers of key_size bytes.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
        if rc != 0 || n > 10_000_000 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}
