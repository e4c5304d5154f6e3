//! Interface and address changes as rtnetlink announces them (groups RTNLGRP_LINK,
//! RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR): a link added, removed, going up or down,
//! an address added or removed, each with the interface's name.
//!
//! The kernel sends RTM_NEWLINK for many things that change nothing here (statistics,
//! MTU, a peer's carrier) and RTM_NEWADDR again whenever an IPv6 address's lifetimes
//! are refreshed (every router advertisement). So the links and addresses seen are
//! kept (`HostLinks`, seeded by a dump after subscribing), and only a real difference
//! is an event.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::IpAddr,
    time::Duration,
};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_DUMP};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::{
    netlink::Netlink,
    netlink::{read_was_idle, set_read_timeout},
    ruleset_events::NETLINK_HEADER_LEN,
};

/// include/uapi/linux/rtnetlink.h: the multicast groups (numbers, not bit masks).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;

/// One change of the host's links or addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    LinkAdded {
        name: String,
    },
    LinkRemoved {
        name: String,
    },
    LinkRenamed {
        from: String,
        name: String,
    },
    /// Operationally up (IFF_UP and IFF_RUNNING) or no longer.
    LinkUp {
        name: String,
    },
    LinkDown {
        name: String,
    },
    AddressAdded {
        name: String,
        addr: IpAddr,
        prefix_len: u8,
    },
    AddressRemoved {
        name: String,
        addr: IpAddr,
        prefix_len: u8,
    },
}

impl LinkEvent {
    /// "link" for the links' events, "address" for the addresses'.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AddressAdded { .. } | Self::AddressRemoved { .. } => "address",
            _ => "link",
        }
    }
}

impl fmt::Display for LinkEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkAdded { name } => write!(f, "{name} added"),
            Self::LinkRemoved { name } => write!(f, "{name} removed"),
            Self::LinkRenamed { from, name } => write!(f, "{from} renamed to {name}"),
            Self::LinkUp { name } => write!(f, "{name} up"),
            Self::LinkDown { name } => write!(f, "{name} down"),
            Self::AddressAdded { name, addr, prefix_len } => write!(f, "{addr}/{prefix_len} added on {name}"),
            Self::AddressRemoved { name, addr, prefix_len } => write!(f, "{addr}/{prefix_len} removed from {name}"),
        }
    }
}

/// The links (index -> name, up) and addresses (index, address, prefix) seen so far.
#[derive(Debug, Default)]
pub struct HostLinks {
    links: BTreeMap<u32, (String, bool)>,
    addrs: BTreeSet<(u32, IpAddr, u8)>,
}

impl HostLinks {
    /// Takes in one rtnetlink message; the events it makes (none for a repeat).
    pub fn apply(&mut self, msg: &RouteNetlinkMessage) -> Vec<LinkEvent> {
        match msg {
            // AF_BRIDGE link messages speak of a port's bridge state: a DELLINK of
            // that family is a port leaving its bridge, not the link going away.
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)
                if l.header.interface_family == AddressFamily::Bridge =>
            {
                vec![]
            }
            RouteNetlinkMessage::NewLink(l) => self.new_link(l),
            RouteNetlinkMessage::DelLink(l) => {
                let index = l.header.index;
                self.addrs.retain(|a| a.0 != index);
                match self.links.remove(&index) {
                    Some((name, _)) => vec![LinkEvent::LinkRemoved { name }],
                    None => vec![LinkEvent::LinkRemoved { name: link_name(l).unwrap_or_else(|| format!("if{index}")) }],
                }
            }
            RouteNetlinkMessage::NewAddress(a) => {
                let Some(key) = addr_key(a) else {
                    return vec![];
                };
                if !self.addrs.insert(key) {
                    return vec![]; // lifetimes refreshed, flags changed: the same address
                }
                vec![LinkEvent::AddressAdded { name: self.name(a), addr: key.1, prefix_len: key.2 }]
            }
            RouteNetlinkMessage::DelAddress(a) => {
                let Some(key) = addr_key(a) else {
                    return vec![];
                };
                if !self.addrs.remove(&key) {
                    return vec![];
                }
                vec![LinkEvent::AddressRemoved { name: self.name(a), addr: key.1, prefix_len: key.2 }]
            }
            _ => vec![],
        }
    }

    fn new_link(&mut self, l: &LinkMessage) -> Vec<LinkEvent> {
        let index = l.header.index;
        let up = l.header.flags.contains(LinkFlags::Up | LinkFlags::Running);
        let name = link_name(l);
        match self.links.get_mut(&index) {
            None => {
                let name = name.unwrap_or_else(|| format!("if{index}"));
                self.links.insert(index, (name.clone(), up));
                vec![LinkEvent::LinkAdded { name }]
            }
            Some((known, was_up)) => {
                let mut out = Vec::new();
                if let Some(name) = name.filter(|n| n != known) {
                    out.push(LinkEvent::LinkRenamed { from: std::mem::replace(known, name.clone()), name });
                }
                if up != *was_up {
                    *was_up = up;
                    let name = known.clone();
                    out.push(if up { LinkEvent::LinkUp { name } } else { LinkEvent::LinkDown { name } });
                }
                out
            }
        }
    }

    /// The interface of an address: as known, else its IPv4 label, else its index.
    fn name(&self, a: &AddressMessage) -> String {
        let index = a.header.index;
        self.links.get(&index).map(|l| l.0.clone()).unwrap_or_else(|| {
            a.attributes
                .iter()
                .find_map(|attr| match attr {
                    AddressAttribute::Label(l) => Some(l.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| format!("if{index}"))
        })
    }
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// An address's identity (interface index, address, prefix length): IFA_LOCAL, the
/// host's own address, else IFA_ADDRESS (as getifaddrs(3) takes them; on a
/// point-to-point link IFA_ADDRESS is the peer's).
pub(super) fn addr_key(a: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    let mut addr = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    addr.map(|ip| (a.header.index, ip, a.header.prefix_len))
}

/// The rtnetlink messages of one datagram; one that does not parse is skipped.
pub fn parse_datagram(data: &[u8]) -> Vec<RouteNetlinkMessage> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NETLINK_HEADER_LEN <= data.len() {
        let Ok(buf) = NetlinkBuffer::new_checked(&data[at..]) else {
            break;
        };
        let len = buf.length() as usize;
        let Some(bytes) = data.get(at..at + len) else {
            break;
        };
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                out.push(m);
            }
        }
        if len == 0 {
            break;
        }
        at += (len + 3) & !3;
    }
    out
}

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Events(Vec<LinkEvent>),
    /// The socket's buffer overflowed: changes went unseen (the state is read anew).
    Lost,
    Idle,
}

/// An rtnetlink socket joined to the link and address groups.
pub struct LinkEvents {
    socket: Socket,
    state: HostLinks,
}

impl LinkEvents {
    /// Subscribes in this thread's network namespace, then reads the current links
    /// and addresses (after subscribing: a change in between is seen, not lost).
    pub fn subscribe(timeout: Duration) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR] {
            socket.add_membership(group)?;
        }
        let _ = socket.set_rx_buf_sz(1 << 20);
        set_read_timeout(&socket, timeout)?;
        Ok(Self { socket, state: seed()? })
    }

    /// Waits for the next datagram.
    pub fn recv(&mut self) -> io::Result<Received> {
        match self.socket.recv_from_full() {
            Ok((data, _)) => {
                Ok(Received::Events(parse_datagram(&data).iter().flat_map(|m| self.state.apply(m)).collect()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if let Ok(state) = seed() {
                    self.state = state;
                }
                Ok(Received::Lost)
            }
            Err(e) if read_was_idle(&e) => Ok(Received::Idle),
            Err(e) => Err(e),
        }
    }
}

/// The links and addresses now (RTM_GETLINK and RTM_GETADDR dumps).
fn seed() -> io::Result<HostLinks> {
    let mut state = HostLinks::default();
    let mut nl = Netlink::open(NETLINK_ROUTE)?;
    let links = nl.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
    let addrs = nl.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
    for m in links.iter().chain(&addrs) {
        state.apply(m);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;

    use super::*;

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = flags;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        l
    }

    fn addr(index: u32, ip: &str, prefix_len: u8) -> AddressMessage {
        let mut a = AddressMessage::default();
        let ip: IpAddr = ip.parse().unwrap();
        a.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        a.header.index = index;
        a.header.prefix_len = prefix_len;
        a.attributes.push(AddressAttribute::Address(ip));
        a
    }

    /// Serialized as the kernel sends it, several messages in one datagram.
    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(m));
            msg.finalize();
            let mut buf = vec![0; msg.buffer_len()];
            msg.serialize(&mut buf);
            out.extend(buf);
        }
        out
    }

    #[test]
    fn links_added_up_down_renamed_removed_once_each() {
        let mut s = HostLinks::default();
        let up = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
        let new = |l| RouteNetlinkMessage::NewLink(l);
        assert_eq!(
            s.apply(&new(link(7, "dxd0", LinkFlags::empty()))),
            vec![LinkEvent::LinkAdded { name: "dxd0".into() }]
        );
        assert_eq!(s.apply(&new(link(7, "dxd0", LinkFlags::empty()))), vec![], "a repeat is no change");
        // Admin up without carrier is not up yet.
        assert_eq!(s.apply(&new(link(7, "dxd0", LinkFlags::Up))), vec![]);
        assert_eq!(s.apply(&new(link(7, "dxd0", up))), vec![LinkEvent::LinkUp { name: "dxd0".into() }]);
        assert_eq!(
            s.apply(&new(link(7, "dxd9", LinkFlags::empty()))),
            vec![
                LinkEvent::LinkRenamed { from: "dxd0".into(), name: "dxd9".into() },
                LinkEvent::LinkDown { name: "dxd9".into() }
            ]
        );
        assert_eq!(
            s.apply(&RouteNetlinkMessage::DelLink(link(7, "dxd9", LinkFlags::empty()))),
            vec![LinkEvent::LinkRemoved { name: "dxd9".into() }]
        );
    }

    #[test]
    fn a_port_leaving_its_bridge_is_no_link_removed() {
        let mut s = HostLinks::default();
        s.apply(&RouteNetlinkMessage::NewLink(link(5, "veth1", LinkFlags::empty())));
        let mut port = link(5, "veth1", LinkFlags::empty());
        port.header.interface_family = AddressFamily::Bridge;
        assert_eq!(s.apply(&RouteNetlinkMessage::DelLink(port.clone())), vec![]);
        assert_eq!(s.apply(&RouteNetlinkMessage::NewLink(port)), vec![]);
        assert_eq!(
            s.apply(&RouteNetlinkMessage::DelLink(link(5, "veth1", LinkFlags::empty()))),
            vec![LinkEvent::LinkRemoved { name: "veth1".into() }]
        );
    }

    #[test]
    fn addresses_reported_once_with_their_interface_name() {
        let mut s = HostLinks::default();
        s.apply(&RouteNetlinkMessage::NewLink(link(3, "eth0", LinkFlags::empty())));
        let a = addr(3, "fd42:198:1::1", 64);
        let added =
            LinkEvent::AddressAdded { name: "eth0".into(), addr: "fd42:198:1::1".parse().unwrap(), prefix_len: 64 };
        assert_eq!(s.apply(&RouteNetlinkMessage::NewAddress(a.clone())), vec![added.clone()]);
        assert_eq!(added.to_string(), "fd42:198:1::1/64 added on eth0");
        // A router advertisement refreshing its lifetimes: the same address.
        assert_eq!(s.apply(&RouteNetlinkMessage::NewAddress(a.clone())), vec![]);
        assert_eq!(
            s.apply(&RouteNetlinkMessage::DelAddress(a.clone())),
            vec![LinkEvent::AddressRemoved {
                name: "eth0".into(),
                addr: "fd42:198:1::1".parse().unwrap(),
                prefix_len: 64
            }]
        );
        assert_eq!(s.apply(&RouteNetlinkMessage::DelAddress(a)), vec![]);
        // An address on a link not (yet) seen is named by its index.
        let e = s.apply(&RouteNetlinkMessage::NewAddress(addr(9, "198.18.1.1", 24)));
        assert_eq!(e[0].to_string(), "198.18.1.1/24 added on if9");
        assert_eq!(e[0].kind(), "address");
    }

    #[test]
    fn datagrams_of_several_messages_parse_and_garbage_is_skipped() {
        let data = datagram(vec![
            RouteNetlinkMessage::NewLink(link(4, "dxd1", LinkFlags::empty())),
            RouteNetlinkMessage::NewAddress(addr(4, "198.18.2.1", 24)),
        ]);
        let msgs = parse_datagram(&data);
        assert_eq!(msgs.len(), 2);
        let mut s = HostLinks::default();
        let events: Vec<_> = msgs.iter().flat_map(|m| s.apply(m)).collect();
        assert_eq!(
            events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["dxd1 added", "198.18.2.1/24 added on dxd1"]
        );
        for cut in 0..data.len() {
            assert!(parse_datagram(&data[..cut]).len() <= 1, "cut at {cut}");
        }
    }
}
