//! The host's interfaces and addresses, read with two rtnetlink dumps (links, without
//! their statistics, and addresses): what getifaddrs(3) and /sys/class/net would
//! tell, without five file reads an interface. Polled by the watcher so that address
//! changes and vanished interfaces are noticed within a second.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::{
    address::AddressMessage,
    link::{InfoKind, InfoPortKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::{link_events::addr_key, netlink::Netlink};

use crate::{
    error::{Error, Result},
    net::prefix::Prefix,
};

/// What kind of device an interface is: where its frames start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (eth, bond, veth, a bridge, macvlan, VLAN sub-interfaces).
    #[default]
    Ethernet,
    /// None: the IP header comes first (wg, tun, ipip, gre, sit).
    L3,
}

impl LinkLayer {
    /// From the ARPHRD_* number in /sys/class/net/NAME/type.
    pub fn from_arphrd(kind: u32) -> Self {
        const ARPHRD_ETHER: u32 = 1;
        const ARPHRD_LOOPBACK: u32 = 772;
        match kind {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => LinkLayer::Ethernet,
            // ARPHRD_NONE (tun, wireguard), TUNNEL (ipip), TUNNEL6, SIT, IPGRE, ...
            _ => LinkLayer::L3,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            LinkLayer::Ethernet => "Ethernet",
            LinkLayer::L3 => "L3, no Ethernet header",
        }
    }
}

/// One network interface as the watcher needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// A Linux bridge (has /sys/class/net/NAME/bridge).
    pub is_bridge: bool,
    /// Enslaved to a bridge (a container's veth, say).
    pub is_bridge_port: bool,
    pub is_loopback: bool,
    pub is_up: bool,
    /// For a bridge: its ports (a NIC, a tap, container veths).
    pub ports: Vec<String>,
    pub ifindex: u32,
    pub link_layer: LinkLayer,
    /// Addresses with their prefix lengths (the interface's subnets).
    pub addresses: Vec<Prefix>,
    pub host_addresses: Vec<IpAddr>,
}

/// All interfaces by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    pub interfaces: BTreeMap<String, Interface>,
}

/// What a link dump says of one link: the facts /sys/class/net has as files.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkFacts {
    ifindex: u32,
    /// IFF_UP, IFF_LOOPBACK, ...
    flags: LinkFlags,
    /// ARPHRD_* (the type file).
    arphrd: u16,
    /// Its kind is "bridge" (the bridge directory).
    is_bridge: bool,
    /// Its port kind is "bridge" (the brport directory).
    is_bridge_port: bool,
    /// The ifindex of the device it is enslaved to (IFLA_MASTER).
    controller: Option<u32>,
}

impl LinkFacts {
    /// Every link, by name, from one RTM_GETLINK dump (statistics left out).
    fn dump(nl: &mut Netlink) -> std::io::Result<BTreeMap<String, LinkFacts>> {
        let mut ask = LinkMessage::default();
        ask.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let links = nl.request(RouteNetlinkMessage::GetLink(ask), NLM_F_DUMP)?;
        let mut out = BTreeMap::new();
        for message in links {
            let RouteNetlinkMessage::NewLink(link) = message else { continue };
            let mut name = None;
            let mut facts = LinkFacts {
                ifindex: link.header.index,
                flags: link.header.flags,
                arphrd: u16::from(link.header.link_layer_type),
                is_bridge: false,
                is_bridge_port: false,
                controller: None,
            };
            for attribute in link.attributes {
                match attribute {
                    LinkAttribute::IfName(n) => name = Some(n),
                    LinkAttribute::Controller(index) => facts.controller = Some(index),
                    LinkAttribute::LinkInfo(infos) => {
                        for info in infos {
                            match info {
                                LinkInfo::Kind(InfoKind::Bridge) => facts.is_bridge = true,
                                LinkInfo::PortKind(InfoPortKind::Bridge) => facts.is_bridge_port = true,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(name) = name {
                out.insert(name, facts);
            }
        }
        Ok(out)
    }

    /// For a bridge: the names of its ports, sorted (the brif directory).
    fn ports_of(&self, links: &BTreeMap<String, LinkFacts>) -> Vec<String> {
        if !self.is_bridge {
            return Vec::new();
        }
        // A BTreeMap: its names come sorted.
        links
            .iter()
            .filter(|(_, l)| l.is_bridge_port && l.controller == Some(self.ifindex))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl HostSnapshot {
    /// Every interface and its addresses: one rtnetlink link dump (statistics left out)
    /// and one address dump.
    pub fn read() -> Result<Self> {
        let fail = |e: std::io::Error| Error::Interfaces(e);
        let mut nl = Netlink::open(NETLINK_ROUTE).map_err(fail)?;
        let links = LinkFacts::dump(&mut nl).map_err(fail)?;
        let addrs = nl.request(RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP).map_err(fail)?;
        let mut interfaces: BTreeMap<String, Interface> = links
            .iter()
            .map(|(name, link)| {
                let interface = Interface {
                    name: name.clone(),
                    is_bridge: link.is_bridge,
                    is_bridge_port: link.is_bridge_port,
                    is_loopback: link.flags.contains(LinkFlags::Loopback),
                    is_up: link.flags.contains(LinkFlags::Up),
                    ports: link.ports_of(&links),
                    ifindex: link.ifindex,
                    link_layer: LinkLayer::from_arphrd(u32::from(link.arphrd)),
                    ..Default::default()
                };
                (name.clone(), interface)
            })
            .collect();
        let names: BTreeMap<u32, &String> = links.iter().map(|(name, link)| (link.ifindex, name)).collect();
        for message in addrs {
            let RouteNetlinkMessage::NewAddress(a) = message else { continue };
            let Some((index, ip, prefix_len)) = addr_key(&a) else { continue };
            // A link made since the link dump: seen on the next read.
            let Some(entry) = names.get(&index).and_then(|name| interfaces.get_mut(*name)) else { continue };
            entry.host_addresses.push(ip);
            if let Some(p) = Prefix::new(ip, prefix_len) {
                entry.addresses.push(p);
            }
        }
        Ok(Self { interfaces })
    }

    pub fn get(&self, name: &str) -> Option<&Interface> {
        self.interfaces.get(name)
    }

    /// Every address of the host, on any interface.
    pub fn all_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.interfaces.values().flat_map(|i| i.host_addresses.iter().copied())
    }

    /// Linux bridges that carry an address: candidates for container bridges.
    pub fn addressed_bridges(&self) -> Vec<String> {
        self.interfaces.values().filter(|i| i.is_bridge && !i.addresses.is_empty()).map(|i| i.name.clone()).collect()
    }

    /// Interfaces that can bring traffic from outside: up, with a global address, not
    /// loopback, not a bridge port (container veths), any link layer (Ethernet, L3
    /// tunnels such as wg, tun, ipip, gre, VLAN sub-interfaces). A bridge holding the
    /// host address (br0 with eth0 as a port: Proxmox, libvirt), when it is not a
    /// container bridge, stands for its ports: outside traffic arrives on them (an XDP
    /// program on the bridge device itself never sees frames passed up to the host).
    pub fn uplink_candidates(&self, container_bridges: &BTreeSet<String>) -> Vec<Uplink> {
        let mut out = Vec::new();
        for i in self.interfaces.values() {
            if !i.is_up || i.is_bridge_port || i.is_loopback || !i.host_addresses.iter().any(|a| is_global(*a)) {
                continue;
            }
            if !i.is_bridge {
                out.push(Uplink { name: i.name.clone(), layer: i.link_layer, bridge: None });
            } else if !container_bridges.contains(&i.name) {
                for port in &i.ports {
                    let layer = self.get(port).map_or(LinkLayer::Ethernet, |p| p.link_layer);
                    out.push(Uplink { name: port.clone(), layer, bridge: Some(i.name.clone()) });
                }
            }
        }
        out
    }

    /// Interfaces whose names are close to `name`, for an "unknown interface" hint.
    pub fn suggest(&self, name: &str) -> String {
        let close: Vec<&str> = self
            .interfaces
            .keys()
            .filter(|k| k.starts_with(name.get(..2).unwrap_or(name)) || name.starts_with(k.as_str()))
            .map(String::as_str)
            .collect();
        if close.is_empty() {
            String::new()
        } else {
            format!(" (similar names here: {})", close.join(", "))
        }
    }
}

/// Not loopback, not link-local, not unspecified: an address outsiders can reach.
pub fn is_global(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_loopback() || a.is_link_local() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_loopback() || a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80),
    }
}

/// True when an interface of that name exists, addressed or not (getifaddrs lists
/// interfaces without addresses only through AF_PACKET entries, so ask /sys).
pub fn exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
}

/// An interface watched for attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub layer: LinkLayer,
    /// The bridge it is a port of, for a bridged uplink.
    pub bridge: Option<String>,
}

/// The bridge an interface is a port of.
pub fn bridge_of(name: &str) -> Option<String> {
    let link = std::fs::read_link(Path::new("/sys/class/net").join(name).join("master")).ok()?;
    let master = link.file_name()?.to_str()?.to_string();
    is_bridge(&master).then_some(master)
}

/// The ports of a bridge (empty for anything else).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/net").join(bridge).join("brif");
    let mut ports: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    ports.sort();
    ports
}

/// The link layer of the named interface (Ethernet when it cannot be read).
pub fn link_layer(name: &str) -> LinkLayer {
    let kind = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("type")).ok();
    LinkLayer::from_arphrd(kind.and_then(|s| s.trim().parse().ok()).unwrap_or(1))
}

/// The current ifindex of the named interface, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    if !exists(name) {
        return None;
    }
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex")).ok()?.trim().parse().ok()
}

/// True when the named interface is a Linux bridge.
pub fn is_bridge(name: &str) -> bool {
    exists(name) && Path::new("/sys/class/net").join(name).join("bridge").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addrs: &[&str], f: impl FnOnce(&mut Interface)) -> (String, Interface) {
        let mut i = Interface {
            name: name.into(),
            is_up: true,
            host_addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        };
        f(&mut i);
        (name.into(), i)
    }

    #[test]
    fn uplinks_are_addressed_interfaces_that_are_not_bridges_ports_or_loopback() {
        let host = HostSnapshot {
            interfaces: [
                iface("eth0", &["192.0.2.2", "fe80::1"], |_| {}),
                iface("eth1", &["fe80::2"], |_| {}),
                iface("eth2", &["fd00::2"], |i| i.is_up = false),
                iface("wg0", &["10.8.0.1"], |i| i.link_layer = LinkLayer::L3),
                iface("docker0", &["172.17.0.1"], |i| {
                    i.is_bridge = true;
                    i.ports = vec!["veth1".into()];
                }),
                iface("br-empty", &["10.9.0.1"], |i| i.is_bridge = true),
                iface("vmbr0", &["198.18.7.2"], |i| {
                    i.is_bridge = true;
                    i.ports = vec!["eno1".into()];
                }),
                iface("eno1", &[], |i| i.is_bridge_port = true),
                iface("veth1", &[], |i| i.is_bridge_port = true),
                iface("lo", &["127.0.0.1", "::1"], |i| i.is_loopback = true),
            ]
            .into_iter()
            .collect(),
        };
        let containers: BTreeSet<String> = ["docker0".to_string()].into();
        let up = |name: &str, layer, bridge: Option<&str>| Uplink {
            name: name.into(),
            layer,
            bridge: bridge.map(Into::into),
        };
        assert_eq!(
            host.uplink_candidates(&containers),
            [
                up("eth0", LinkLayer::Ethernet, None),
                up("eno1", LinkLayer::Ethernet, Some("vmbr0")),
                up("wg0", LinkLayer::L3, None)
            ],
            "the bridged uplink vmbr0 stands for its port eno1; the container bridge and the portless bridge are none"
        );
    }

    #[test]
    fn link_layers_from_arphrd() {
        assert_eq!(LinkLayer::from_arphrd(1), LinkLayer::Ethernet);
        for l3 in [65534, 768, 769, 776, 778] {
            assert_eq!(LinkLayer::from_arphrd(l3), LinkLayer::L3, "{l3}");
        }
    }

    #[test]
    fn global_addresses() {
        for (a, global) in [
            ("198.18.0.1", true),
            ("169.254.1.1", false),
            ("127.0.0.1", false),
            ("fd00::2", true),
            ("fe80::1", false),
            ("::1", false),
        ] {
            assert_eq!(is_global(a.parse().unwrap()), global, "{a}");
        }
    }
}
