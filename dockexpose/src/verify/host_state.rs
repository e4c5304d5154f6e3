//! What verify changes and reads in the host's tables, over netlink (the container
//! image has no `ip` nor `conntrack`): the route to each probe source, temporary
//! neighbour entries, and the probes' conntrack entries.

use std::net::IpAddr;

use super::{frame, plan::Probe};
use crate::{
    host::{conntrack, routes},
    kernel::event::Proto,
};

/// The interface replies to `addr` leave by, and whether `addr` is on that link (no
/// gateway): `ip route get ADDR`. None when the kernel has no route.
pub fn route_to(addr: IpAddr) -> Option<(String, bool)> {
    let route = routes::route_get(addr).ok()?;
    if route.dev.is_empty() {
        return None;
    }
    let on_link = route.on_link();
    Some((route.dev, on_link))
}

/// Temporary neighbour entries, so that the host's answer to a probe source on a
/// directly connected link is transmitted (and seen and dropped by the guard) instead
/// of waiting on an ARP/ND reply that will never come. Removed on drop; an entry the
/// host already had is left alone. Holds (address, interface) of the entries added.
#[derive(Default)]
pub struct Neighbours(pub Vec<(IpAddr, String)>);

impl Neighbours {
    /// Adds `addr` (with the probes' source MAC) on `dev`, unless it has an entry there.
    pub fn add(&mut self, addr: IpAddr, dev: &str) {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(dev) else {
            return;
        };
        if let Ok(true) = routes::neighbour_add(addr, ifindex, frame::PROBE_SRC_MAC) {
            self.0.push((addr, dev.to_string()));
        }
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        for (addr, dev) in &self.0 {
            remove_neighbour(*addr, dev);
        }
    }
}

/// Removes the neighbour entry of `addr` on `dev` (`ip neigh del`), if both still exist.
pub fn remove_neighbour(addr: IpAddr, dev: &str) {
    if let Ok(ifindex) = nix::net::if_::if_nametoindex(dev) {
        let _ = routes::neighbour_del(addr, ifindex);
    }
}

/// The conntrack tuple a probe created: from its source and port to the address and
/// port it was sent to.
pub fn probe_tuple(probe: &Probe, sport: u16) -> conntrack::FlowTuple {
    let proto = match probe.proto {
        Proto::Tcp => libc::IPPROTO_TCP,
        Proto::Udp => libc::IPPROTO_UDP,
        Proto::Sctp => libc::IPPROTO_SCTP,
    } as u8;
    conntrack::FlowTuple { proto, src: probe.source, dst: probe.dst, sport, dport: probe.dst_port }
}

/// Deletes each probe's conntrack entry by its exact original tuple, then counts what
/// is left from the probe sources. Returns (deleted, remaining).
pub fn delete_conntrack<'a>(
    probes: impl IntoIterator<Item = (&'a Probe, u16)>,
    sources: &[IpAddr],
    warnings: &mut Vec<String>,
) -> (usize, usize) {
    let mut deleted = 0;
    for (probe, sport) in probes {
        match conntrack::delete(&probe_tuple(probe, sport)) {
            Ok(n) => deleted += n,
            Err(e) => {
                warnings.push(format!(
                    "warning: the probes' conntrack entries could not be deleted over netlink ({e}); they stay until they time out.\n  Fix: run as root (CAP_NET_ADMIN), with conntrack netlink support in the kernel (nf_conntrack_netlink)"
                ));
                break;
            }
        }
    }
    let remaining = conntrack::count_from(sources).unwrap_or_else(|e| {
        warnings.push(format!("warning: the conntrack table could not be read over netlink ({e}): the count of probe entries left is unknown"));
        0
    });
    (deleted, remaining)
}

/// Conntrack entries whose original source is a probe source (0 if the table cannot
/// be read).
pub fn remaining_conntrack(sources: &[IpAddr]) -> usize {
    conntrack::count_from(sources).unwrap_or(0)
}
