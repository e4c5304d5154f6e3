//! `dockexpose verify`'s side of the kernel object: the injector, the egress guard
//! (pinned while a run lasts, so that its sentinel can clean up after a kill), the
//! redirect path where live frames are refused, and their maps. `watch` never calls
//! any of it.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, tc, SchedClassifier, TcAttachType},
    Ebpf,
};
use dockexpose_common::{map_names, program_names};

use super::{
    addr16, attach_classifier, cls_bpf, ifindex_of, load_program, map_err, program, take_map, Filter, Kernel,
    LinkLayer, ProgramKind, TcMechanism,
};
use crate::error::{Error, Result};

/// The maps and links of `dockexpose verify` (see `Kernel::prepare_probes`).
pub(super) struct ProbeMaps {
    sources: HashMap<MapData, [u8; 16], u8>,
    guard_l3: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    guards: BTreeMap<String, GuardLink>,
    /// Where the guard's links are pinned, so that they outlive a killed run until its
    /// sentinel has cleaned up (None: not pinned).
    guard_pins: Option<std::path::PathBuf>,
    /// clsact qdiscs the guard made (cls_bpf kernels only), removed with it.
    qdiscs_made: Vec<String>,
    /// Where live frames are refused: the uplink `probe_redirect` hands probes to.
    redirect: Option<Array<MapData, u32>>,
}

/// A guard's attachment: owned by this process, or pinned (TCX) to outlive it.
enum GuardLink {
    Owned(tc::SchedClassifierLinkId),
    Held(tc::SchedClassifierLink),
    Pinned(aya::programs::links::PinnedLink),
}

/// Takes the guard's link from the program and pins it at `path`. A link that cannot
/// be pinned (netlink cls_bpf, before TCX) stays held: a run killed outright then
/// loses its guard at once.
fn pin_guard(ebpf: &mut Ebpf, id: tc::SchedClassifierLinkId, path: &std::path::Path) -> Result<GuardLink> {
    let prog: &mut SchedClassifier = program(ebpf, program_names::UPLINK_PROBE_GUARD)?;
    let failed = |source: aya::programs::ProgramError| Error::LoadProgram {
        program: program_names::UPLINK_PROBE_GUARD,
        source: Box::new(source),
    };
    let link = prog.take_link(id).map_err(failed)?;
    if <&FdLink>::try_from(&link).is_err() {
        return Ok(GuardLink::Held(link));
    }
    let fd_link = FdLink::try_from(link)
        .map_err(|e| failed(aya::programs::ProgramError::IOError(std::io::Error::other(e.to_string()))))?;
    let pinned = fd_link
        .pin(path)
        .map_err(|e| failed(aya::programs::ProgramError::IOError(std::io::Error::other(e.to_string()))))?;
    Ok(GuardLink::Pinned(pinned))
}

impl Kernel {
    /// `verify`: loads the injector and the egress guard, and returns the ring buffer
    /// of answers the guard stopped. `watch` never calls it.
    pub fn prepare_probes(&mut self) -> Result<RingBuf<MapData>> {
        load_program(&mut self.ebpf, program_names::PROBE_INJECT, ProgramKind::Xdp)?;
        load_program(&mut self.ebpf, program_names::UPLINK_PROBE_GUARD, ProgramKind::Classifier)?;
        let events = RingBuf::try_from(take_map(&mut self.ebpf, map_names::PROBE_EVENTS)?)
            .map_err(map_err(map_names::PROBE_EVENTS))?;
        let sources = HashMap::try_from(take_map(&mut self.ebpf, map_names::PROBE_SOURCES)?)
            .map_err(map_err(map_names::PROBE_SOURCES))?;
        let guard_l3 = HashMap::try_from(take_map(&mut self.ebpf, map_names::PROBE_GUARD_L3)?)
            .map_err(map_err(map_names::PROBE_GUARD_L3))?;
        let counters = PerCpuArray::try_from(take_map(&mut self.ebpf, map_names::PROBE_COUNTERS)?)
            .map_err(map_err(map_names::PROBE_COUNTERS))?;
        self.probes = Some(ProbeMaps {
            sources,
            guard_l3,
            counters,
            guards: BTreeMap::new(),
            guard_pins: None,
            qdiscs_made: Vec::new(),
            redirect: None,
        });
        Ok(events)
    }

    fn probe_maps(&mut self) -> Result<&mut ProbeMaps> {
        self.probes.as_mut().ok_or(Error::MissingMap(map_names::PROBE_SOURCES))
    }

    /// Packets to `ip` will not leave any guarded interface.
    pub fn add_probe_source(&mut self, ip: std::net::IpAddr) -> Result<()> {
        self.probe_maps()?.sources.insert(addr16(ip), 1, 0).map_err(map_err(map_names::PROBE_SOURCES))
    }

    /// Attaches the guard (TCX egress) to `iface`; idempotent.
    pub fn attach_probe_guard(&mut self, iface: &str, layer: LinkLayer) -> Result<()> {
        if self.probe_maps()?.guards.contains_key(iface) {
            return Ok(());
        }
        let ifindex = ifindex_of(iface);
        if layer == LinkLayer::L3 {
            self.probe_maps()?.guard_l3.insert(ifindex, 1, 0).map_err(map_err(map_names::PROBE_GUARD_L3))?;
        }
        // TCX needs no qdisc; cls_bpf does, and a qdisc we made goes when the guard does.
        if self.features.tc_mechanism() == TcMechanism::ClsBpf && cls_bpf::add_clsact(iface) {
            self.probe_maps()?.qdiscs_made.push(iface.to_string());
        }
        let mechanism = self.features.tc_mechanism();
        let guard = program_names::UPLINK_PROBE_GUARD;
        let (id, _) = attach_classifier(&mut self.ebpf, mechanism, guard, iface, TcAttachType::Egress, Filter::Beside)?;
        let pin_dir = self.probe_maps()?.guard_pins.clone();
        let link = match pin_dir {
            Some(dir) => pin_guard(&mut self.ebpf, id, &dir.join(format!("guard-{ifindex}")))?,
            None => GuardLink::Owned(id),
        };
        self.probe_maps()?.guards.insert(iface.to_string(), link);
        Ok(())
    }

    /// Pins the guard's links under `dir` from now on: a run killed outright leaves
    /// them attached until its sentinel (or a later run) removes the pins.
    pub fn pin_probe_guards_in(&mut self, dir: &std::path::Path) -> Result<()> {
        self.probe_maps()?.guard_pins = Some(dir.to_path_buf());
        Ok(())
    }

    /// Detaches the guard from every interface it was attached to (and unpins it).
    pub fn detach_probe_guards(&mut self) {
        let Some(maps) = self.probes.as_mut() else { return };
        let guards = std::mem::take(&mut maps.guards);
        let qdiscs = std::mem::take(&mut maps.qdiscs_made);
        let Ok(prog) = program::<SchedClassifier>(&mut self.ebpf, program_names::UPLINK_PROBE_GUARD) else { return };
        for (_, link) in guards {
            match link {
                GuardLink::Owned(id) => {
                    let _ = prog.detach(id);
                }
                GuardLink::Held(link) => {
                    let _ = aya::programs::links::Link::detach(link);
                }
                // Unpinned and dropped: the last reference, so the link detaches.
                GuardLink::Pinned(pinned) => drop(pinned.unpin()),
            }
        }
        for iface in qdiscs {
            let _ = cls_bpf::delete_clsact(&iface);
        }
    }

    /// Interfaces the guard is attached to.
    pub fn probe_guards(&self) -> Vec<String> {
        self.probes.as_ref().map(|p| p.guards.keys().cloned().collect()).unwrap_or_default()
    }

    /// The guard's counter `index` (PROBE_COUNTER_*), summed over CPUs.
    pub fn probe_counter(&self, index: u32) -> Result<u64> {
        let Some(maps) = self.probes.as_ref() else { return Ok(0) };
        Ok(maps.counters.get(&index, 0).map_err(map_err(map_names::PROBE_COUNTERS))?.iter().sum())
    }

    /// Injects `frame` into the receive path of interface `ifindex`, as if it had
    /// arrived there (BPF_PROG_TEST_RUN of `probe_inject` with live frames).
    pub fn inject(&mut self, frame: &[u8], ifindex: u32) -> std::result::Result<(), aya::programs::ProgramError> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each, native endian). data_end must be the frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let prog = self
            .ebpf
            .program_mut(program_names::PROBE_INJECT)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?;
        let aya::programs::Program::Xdp(xdp) = prog else {
            return Err(aya::programs::ProgramError::UnexpectedProgramType);
        };
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..Default::default()
        };
        xdp.test_run(opts).map(|_| ())
    }

    /// Whether this kernel injects live frames: a frame no protocol claims (EtherType
    /// 0x88b5, local experimental) goes into the loopback's receive path, where it is
    /// dropped. Err: what the kernel said (EPERM on hardened kernels, EINVAL before 5.18).
    pub fn live_frames_work(&mut self) -> std::result::Result<(), String> {
        let mut frame = [0u8; 60];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let lo = ifindex_of("lo");
        self.inject(&frame, lo).map_err(|e| match &e {
            aya::programs::ProgramError::SyscallError(s) => format!("{} ({})", s.io_error, s.call),
            other => other.to_string(),
        })
    }

    /// `verify` without live frames: attaches `probe_redirect` to TC ingress of `veth`
    /// (the far end of a private veth pair), which hands marked frames to the uplink
    /// named by `set_redirect_target`.
    pub fn prepare_redirect(&mut self, veth: &str) -> Result<()> {
        load_program(&mut self.ebpf, program_names::PROBE_REDIRECT, ProgramKind::Classifier)?;
        let map = Array::try_from(take_map(&mut self.ebpf, map_names::PROBE_REDIRECT)?)
            .map_err(map_err(map_names::PROBE_REDIRECT))?;
        // The veth is ours and deleted at the end, qdisc and all.
        if self.features.tc_mechanism() == TcMechanism::ClsBpf {
            let _ = cls_bpf::add_clsact(veth);
        }
        let mechanism = self.features.tc_mechanism();
        let redirect = program_names::PROBE_REDIRECT;
        attach_classifier(&mut self.ebpf, mechanism, redirect, veth, TcAttachType::Ingress, Filter::Beside)?;
        self.probe_maps()?.redirect = Some(map);
        Ok(())
    }

    /// The uplink (ifindex) the redirected probes enter next.
    pub fn set_redirect_target(&mut self, ifindex: u32) -> Result<()> {
        let map = self.probe_maps()?.redirect.as_mut().ok_or(Error::MissingMap(map_names::PROBE_REDIRECT))?;
        map.set(0, ifindex, 0).map_err(map_err(map_names::PROBE_REDIRECT))
    }
}
