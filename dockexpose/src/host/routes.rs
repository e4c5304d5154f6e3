//! The host's routing and neighbour tables over rtnetlink: what `ip route get` and
//! `ip neigh add/del` do, without the `ip` program (the container image has none).

use std::{io, net::IpAddr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::netlink::Netlink;

/// Where the kernel sends a packet to some address: the answer of `ip route get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The interface it leaves by.
    pub ifindex: u32,
    /// That interface's name (empty if it went away meanwhile).
    pub dev: String,
    /// The next hop, if the destination is not on that link (`via` in `ip route get`).
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// The destination is directly on the link: no gateway.
    pub fn on_link(&self) -> bool {
        self.gateway.is_none()
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Asks the kernel for the route to `addr` (RTM_GETROUTE, as `ip route get ADDR`).
/// A destination without a route is the kernel's error (ENETUNREACH, EHOSTUNREACH).
pub fn route_get(addr: IpAddr) -> io::Result<Route> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(addr);
    msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    msg.attributes.push(RouteAttribute::Destination(addr.into()));
    let answer = Netlink::open(NETLINK_ROUTE)?.request(RouteNetlinkMessage::GetRoute(msg), 0)?;
    let route = answer
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no route in the kernel's answer for {addr}"))
        })?;
    let mut ifindex = None;
    let mut gateway = None;
    for attr in route.attributes {
        match attr {
            RouteAttribute::Oif(i) => ifindex = Some(i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(a)),
            // An IPv4 route via an IPv6 next hop (RTA_VIA): also not on the link.
            RouteAttribute::Via(v) => gateway = gateway.or(via_addr(&v)),
            _ => {}
        }
    }
    let ifindex = ifindex
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("the route to {addr} names no interface")))?;
    let dev = nix::net::if_::if_indextoname(ifindex).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Route { ifindex, dev, gateway })
}

fn via_addr(via: &netlink_packet_route::route::RouteVia) -> Option<IpAddr> {
    match via {
        netlink_packet_route::route::RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        netlink_packet_route::route::RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        // Some other kind of next hop: still a gateway, but with no IP to show.
        _ => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    }
}

fn neighbour(addr: IpAddr, ifindex: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(addr);
    msg.header.ifindex = ifindex;
    let dst = match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    };
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    msg
}

/// Adds a REACHABLE neighbour entry `addr` → `mac` on interface `ifindex`, unless the
/// table already holds one for `addr` there (in any state): that one is the host's,
/// and is left as it is. Returns whether an entry was added.
pub fn neighbour_add(addr: IpAddr, ifindex: u32, mac: [u8; 6]) -> io::Result<bool> {
    let mut msg = neighbour(addr, ifindex);
    msg.header.state = NeighbourState::Reachable;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    // NLM_F_EXCL: "add if absent" in one step, as `ip neigh add` (never replace).
    match Netlink::open(NETLINK_ROUTE)?.request(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_EXCL) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the neighbour entry of `addr` on `ifindex` (`ip neigh del`).
pub fn neighbour_del(addr: IpAddr, ifindex: u32) -> io::Result<()> {
    Netlink::open(NETLINK_ROUTE)?.request(RouteNetlinkMessage::DelNeighbour(neighbour(addr, ifindex)), 0).map(drop)
}

/// The neighbour entry of `addr` on `ifindex`: its state and link-layer address, or
/// None when there is none.
pub fn neighbour_get(addr: IpAddr, ifindex: u32) -> io::Result<Option<(NeighbourState, Vec<u8>)>> {
    match Netlink::open(NETLINK_ROUTE)?.request(RouteNetlinkMessage::GetNeighbour(neighbour(addr, ifindex)), 0) {
        Ok(answer) => Ok(answer.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => {
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
                    _ => None,
                });
                Some((n.header.state, mac.unwrap_or_default()))
            }
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
