//! Loads the embedded eBPF object, attaches its programs, and keeps its maps in step
//! with what userspace knows (local prefixes, published ports).
//!
//! Attachments are fd-based links (TCX, XDP links): they are detached when this
//! struct is dropped, and by the kernel if the process dies, so nothing outlives us.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, MapData, PerCpuArray, RingBuf,
    },
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use dockexpose_common::{
    global_names, map_names, program_names, published_port_index, Counter, PortKey, PREFIX_LOCAL,
    PREFIX_TRUSTED,
};

use crate::{
    error::{Error, Result},
    net::prefix::{PrefixTable, SourceKind},
};

/// The kernel object, built by build.rs from dockexpose-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dockexpose-ebpf.o"));

/// Settings the programs read as constants, patched in at load time.
#[derive(Clone, Copy, Debug)]
pub struct KernelSettings {
    pub udp_idle_ns: u64,
    pub attempt_window_ns: u64,
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
    egress: tc::SchedClassifierLinkId,
    ingress: tc::SchedClassifierLinkId,
}

struct UplinkLinks {
    xdp: aya::programs::xdp::XdpLinkId,
    egress: tc::SchedClassifierLinkId,
}

/// How an XDP program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    Native,
    Generic,
}

pub struct Kernel {
    ebpf: Ebpf,
    local_v4: LpmTrie<MapData, [u8; 4], u8>,
    local_v6: LpmTrie<MapData, [u8; 16], u8>,
    published: Array<MapData, u8>,
    counters: PerCpuArray<MapData, u64>,
    bridges: BTreeMap<String, BridgeLinks>,
    uplinks: BTreeMap<String, UplinkLinks>,
    prefixes: PrefixTable,
    ports: BTreeSet<PortKey>,
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
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global(global_names::UDP_IDLE_NS, &settings.udp_idle_ns, true)
            .override_global(global_names::ATTEMPT_DEDUP_NS, &settings.attempt_window_ns, true)
            .load(EBPF_OBJECT)?;
        for name in [program_names::BRIDGE_EGRESS, program_names::BRIDGE_INGRESS, program_names::UPLINK_EGRESS] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, program_names::UPLINK_XDP)?;
        xdp.load().map_err(|source| Error::LoadProgram { program: program_names::UPLINK_XDP, source: Box::new(source) })?;

        let events = RingBuf::try_from(take_map(&mut ebpf, map_names::EVENTS)?).map_err(map_err(map_names::EVENTS))?;
        let local_v4 = LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V4)?).map_err(map_err(map_names::LOCAL_V4))?;
        let local_v6 = LpmTrie::try_from(take_map(&mut ebpf, map_names::LOCAL_V6)?).map_err(map_err(map_names::LOCAL_V6))?;
        let published = Array::try_from(take_map(&mut ebpf, map_names::PUBLISHED_PORTS)?)
            .map_err(map_err(map_names::PUBLISHED_PORTS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?).map_err(map_err(map_names::COUNTERS))?;
        let kernel = Self {
            ebpf,
            local_v4,
            local_v6,
            published,
            counters,
            bridges: BTreeMap::new(),
            uplinks: BTreeMap::new(),
            prefixes: PrefixTable::default(),
            ports: BTreeSet::new(),
        };
        Ok((kernel, events))
    }

    /// Attaches the bridge programs (TCX egress and ingress) to `iface`.
    pub fn attach_bridge(&mut self, iface: &str) -> Result<()> {
        if self.bridges.contains_key(iface) {
            return Ok(());
        }
        // Only the netlink fallback (kernels < 6.6) needs clsact; "exists" is fine.
        let _ = tc::qdisc_add_clsact(iface);
        let egress = attach_tc(&mut self.ebpf, program_names::BRIDGE_EGRESS, iface, TcAttachType::Egress)?;
        let ingress = match attach_tc(&mut self.ebpf, program_names::BRIDGE_INGRESS, iface, TcAttachType::Ingress) {
            Ok(id) => id,
            Err(e) => {
                let prog: &mut SchedClassifier = program(&mut self.ebpf, program_names::BRIDGE_EGRESS)?;
                let _ = prog.detach(egress);
                return Err(e);
            }
        };
        self.bridges.insert(iface.to_string(), BridgeLinks { egress, ingress });
        Ok(())
    }

    /// Detaches the bridge programs from `iface`. An interface that is already gone
    /// took its links with it: errors are then expected and ignored.
    pub fn detach_bridge(&mut self, iface: &str) {
        let Some(links) = self.bridges.remove(iface) else { return };
        if let Ok(prog) = program::<SchedClassifier>(&mut self.ebpf, program_names::BRIDGE_EGRESS) {
            let _ = prog.detach(links.egress);
        }
        if let Ok(prog) = program::<SchedClassifier>(&mut self.ebpf, program_names::BRIDGE_INGRESS) {
            let _ = prog.detach(links.ingress);
        }
    }

    /// Attaches the uplink programs: XDP (native mode where the driver has it, generic
    /// otherwise) for attempts, TCX egress for the host's answers.
    pub fn attach_uplink(&mut self, iface: &str) -> Result<XdpAttachMode> {
        if self.uplinks.contains_key(iface) {
            return Ok(XdpAttachMode::Native);
        }
        let _ = tc::qdisc_add_clsact(iface);
        let egress = attach_tc(&mut self.ebpf, program_names::UPLINK_EGRESS, iface, TcAttachType::Egress)?;
        let prog: &mut Xdp = program(&mut self.ebpf, program_names::UPLINK_XDP)?;
        let attached = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((id, XdpAttachMode::Native)),
            Err(_) => prog.attach(iface, XdpMode::Skb).map(|id| (id, XdpAttachMode::Generic)),
        };
        match attached {
            Ok((xdp, mode)) => {
                self.uplinks.insert(iface.to_string(), UplinkLinks { xdp, egress });
                Ok(mode)
            }
            Err(source) => {
                if let Ok(prog) = program::<SchedClassifier>(&mut self.ebpf, program_names::UPLINK_EGRESS) {
                    let _ = prog.detach(egress);
                }
                Err(Error::Attach { program: program_names::UPLINK_XDP, iface: iface.to_string(), hook: "XDP", source: Box::new(source) })
            }
        }
    }

    pub fn detach_uplink(&mut self, iface: &str) {
        let Some(links) = self.uplinks.remove(iface) else { return };
        if let Ok(prog) = program::<Xdp>(&mut self.ebpf, program_names::UPLINK_XDP) {
            let _ = prog.detach(links.xdp);
        }
        if let Ok(prog) = program::<SchedClassifier>(&mut self.ebpf, program_names::UPLINK_EGRESS) {
            let _ = prog.detach(links.egress);
        }
    }

    pub fn bridges(&self) -> impl Iterator<Item = &str> {
        self.bridges.keys().map(String::as_str)
    }

    pub fn uplinks(&self) -> impl Iterator<Item = &str> {
        self.uplinks.keys().map(String::as_str)
    }

    /// Makes the kernel's local/trusted tries equal to `next`.
    pub fn sync_prefixes(&mut self, next: &PrefixTable) -> Result<()> {
        let (removed, added) = self.prefixes.diff(next);
        for p in removed {
            match p.addr() {
                std::net::IpAddr::V4(a) => {
                    let _ = self.local_v4.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
                std::net::IpAddr::V6(a) => {
                    let _ = self.local_v6.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
            }
        }
        for (p, kind) in added {
            let value = match kind {
                SourceKind::Local => PREFIX_LOCAL,
                SourceKind::Trusted => PREFIX_TRUSTED,
            };
            match p.addr() {
                std::net::IpAddr::V4(a) => self
                    .local_v4
                    .insert(&Key::new(u32::from(p.len()), a.octets()), value, 0)
                    .map_err(map_err(map_names::LOCAL_V4))?,
                std::net::IpAddr::V6(a) => self
                    .local_v6
                    .insert(&Key::new(u32::from(p.len()), a.octets()), value, 0)
                    .map_err(map_err(map_names::LOCAL_V6))?,
            }
        }
        self.prefixes = next.clone();
        Ok(())
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
        let bridges: Vec<String> = self.bridges.keys().cloned().collect();
        for b in bridges {
            self.detach_bridge(&b);
        }
        let uplinks: Vec<String> = self.uplinks.keys().cloned().collect();
        for u in uplinks {
            self.detach_uplink(&u);
        }
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

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer to a local.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
