//! Attaching the loaded programs to interfaces: bridges (TCX or cls_bpf, egress and
//! ingress) and uplinks (XDP or TCX ingress for attempts, TC egress for answers). A link
//! a previous daemon pinned is taken over (its program replaced by ours, the hook never
//! empty) rather than attached anew.

use aya::{
    programs::{links::FdLink, tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf,
};
use dockexpose_common::{map_names, program_names};

use super::{cls_bpf, map_err, pins::HeldLink, Kernel, LinkLayer, TcMechanism};
use crate::error::{Error, Result};

pub(super) struct BridgeLinks {
    pub(super) ifindex: u32,
    egress: HeldLink,
    ingress: HeldLink,
}

impl BridgeLinks {
    /// How the bridge's programs are attached (both alike: attached together).
    pub(super) fn mechanism(&self) -> TcMechanism {
        if self.egress.is_filter() {
            TcMechanism::ClsBpf
        } else {
            TcMechanism::Tcx
        }
    }
}

pub(super) struct UplinkLinks {
    pub(super) ifindex: u32,
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

pub(super) fn ifindex_of(iface: &str) -> u32 {
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

impl Kernel {
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
        let mechanism = self.features.tc_mechanism();
        let attach_err = attach_error(name, iface, hook_name(hook, mechanism));
        let owned: std::result::Result<FdLink, Box<dyn std::any::Any + Send>> = match hook {
            Hook::Tc(direction) => {
                let (id, adopted) = attach_classifier(&mut self.ebpf, mechanism, name, iface, direction, Filter::Ours)?;
                let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
                let link = prog.take_link(id).map_err(&attach_err)?;
                if mechanism == TcMechanism::ClsBpf {
                    // Our own filter, found again by priority, handle and name (cls_bpf.rs);
                    // it stays attached past the daemon when the maps are pinned.
                    if let Some(dir) = &self.pins {
                        cls_bpf::mark(&dir.dir, cls_bpf::Mark::Filters, iface);
                    }
                    return Ok((HeldLink::filter(link, self.pins.is_some()), adopted));
                }
                FdLink::try_from(link).map_err(|_| unreachable_link())
            }
            Hook::Xdp(mode) => {
                let prog: &mut Xdp = program(&mut self.ebpf, name)?;
                let id = prog.attach(iface, mode).map_err(&attach_err)?;
                let link = prog.take_link(id).map_err(&attach_err)?;
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
        let (egress, _) =
            self.attach_link(program_names::BRIDGE_EGRESS, iface, ifindex, Hook::Tc(TcAttachType::Egress))?;
        let (ingress, _) =
            match self.attach_link(program_names::BRIDGE_INGRESS, iface, ifindex, Hook::Tc(TcAttachType::Ingress)) {
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
    pub(super) fn release_clsact(&mut self, iface: &str) {
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
                Err(_) => self
                    .attach_link(xdp_name, iface, ifindex, Hook::Xdp(XdpMode::Skb))
                    .map(|(l, _)| (l, UplinkAttachMode::Generic)),
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

    /// Detaches from every bridge and uplink.
    pub(super) fn detach_interfaces(&mut self) {
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

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| Error::LoadProgram {
        program: name,
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    })?;
    prog.try_into().map_err(|source| Error::LoadProgram { program: name, source: Box::new(source) })
}

/// Where a classifier goes on a kernel without TCX.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Filter {
    /// Our own filter (cls_bpf.rs): at our priority and handle, taken over by the next
    /// daemon.
    Ours,
    /// Where the kernel puts it, for this process only: `verify`'s guard and redirect
    /// sit beside the daemon's filters, never in their place.
    Beside,
}

/// The one way a classifier is attached: a TCX link, or on a kernel without TCX a
/// cls_bpf filter placed as `filter` says. True when a filter of ours was taken over.
pub(super) fn attach_classifier(
    ebpf: &mut Ebpf,
    mechanism: TcMechanism,
    name: &'static str,
    iface: &str,
    direction: TcAttachType,
    filter: Filter,
) -> Result<(tc::SchedClassifierLinkId, bool)> {
    let prog: &mut SchedClassifier = program(ebpf, name)?;
    let failed = attach_error(name, iface, hook_name(Hook::Tc(direction), mechanism));
    let options = match (mechanism, filter) {
        (TcMechanism::ClsBpf, Filter::Ours) => return cls_bpf::attach(prog, iface, direction).map_err(failed),
        (TcMechanism::ClsBpf, Filter::Beside) => tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
        (TcMechanism::Tcx, _) => tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
    };
    prog.attach_with_options(iface, direction, options).map(|id| (id, false)).map_err(failed)
}

/// How `hook` is named in errors, on a kernel whose classifiers attach by `mechanism`.
fn hook_name(hook: Hook, mechanism: TcMechanism) -> &'static str {
    match (hook, mechanism) {
        (Hook::Tc(TcAttachType::Egress), TcMechanism::ClsBpf) => "cls_bpf egress",
        (Hook::Tc(_), TcMechanism::ClsBpf) => "cls_bpf ingress",
        (Hook::Tc(TcAttachType::Egress), TcMechanism::Tcx) => "TCX egress",
        (Hook::Tc(_), TcMechanism::Tcx) => "TCX ingress",
        (Hook::Xdp(_), _) => "XDP",
    }
}

fn attach_error<'a>(
    name: &'static str,
    iface: &'a str,
    hook: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> Error + 'a {
    move |source| Error::Attach { program: name, iface: iface.to_string(), hook, source: Box::new(source) }
}

/// Replaces the program behind a pinned link with ours (BPF_LINK_UPDATE: atomic, the
/// hook never runs without a program), and hands the link back.
fn replace_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    link: FdLink,
    hook: Hook,
) -> std::result::Result<FdLink, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_hook_the_kernel_really_has() {
        let egress = Hook::Tc(TcAttachType::Egress);
        assert_eq!(hook_name(egress, TcMechanism::ClsBpf), "cls_bpf egress");
        assert_eq!(hook_name(Hook::Tc(TcAttachType::Ingress), TcMechanism::Tcx), "TCX ingress");
        assert_eq!(hook_name(Hook::Xdp(XdpMode::Skb), TcMechanism::ClsBpf), "XDP");
    }
}
