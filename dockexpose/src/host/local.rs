//! Which sources are the host itself: never reported, whatever they connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::interfaces::HostSnapshot;
use crate::net::prefix::{is_link_local, Prefix, PrefixTable, SourceKind};

/// Local: every address of the host, the watched bridges' subnets (containers and
/// the gateway), loopback. Trusted: what the operator said.
pub fn source_table<'a>(
    host: &HostSnapshot,
    watched_bridges: impl IntoIterator<Item = &'a str>,
    trusted: &[Prefix],
) -> PrefixTable {
    let mut table = PrefixTable::default();
    for t in trusted {
        table.insert(*t, SourceKind::Trusted);
    }
    table.insert(Prefix::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8).expect("valid"), SourceKind::Local);
    table.insert(Prefix::host(IpAddr::V6(Ipv6Addr::LOCALHOST)), SourceKind::Local);
    for iface in host.interfaces.values() {
        for addr in &iface.host_addresses {
            // A bridge port's link-local address (every container's host-side veth has
            // one) is reached by nothing: frames on a port go to its bridge, and a
            // link-local destination is local only on its own interface. Leaving them
            // out keeps thousands of containers from filling the kernel's tries.
            if iface.is_bridge_port && is_link_local(*addr) {
                continue;
            }
            table.insert(Prefix::host(*addr), SourceKind::HostAddress);
        }
    }
    for bridge in watched_bridges {
        if let Some(iface) = host.get(bridge) {
            for subnet in &iface.addresses {
                table.insert(*subnet, SourceKind::Local);
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::interfaces::Interface;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn host() -> HostSnapshot {
        let mut h = HostSnapshot::default();
        for (name, is_bridge, addrs) in [
            ("eth0", false, vec!["192.0.2.2/24", "fd00::2/64"]),
            ("br0", true, vec!["10.251.0.1/24", "fd42:251::1/64"]),
            ("br1", true, vec!["10.252.0.1/24"]),
            ("veth1", false, vec!["fe80::8c1:2ff:fe03:405/64", "198.18.77.1/32"]),
        ] {
            let prefixes: Vec<(IpAddr, Prefix)> = addrs
                .iter()
                .map(|a| {
                    let (ip, len) = a.split_once('/').unwrap();
                    let ip: IpAddr = ip.parse().unwrap();
                    (ip, Prefix::new(ip, len.parse().unwrap()).unwrap())
                })
                .collect();
            h.interfaces.insert(
                name.into(),
                Interface {
                    name: name.into(),
                    is_bridge,
                    is_bridge_port: name.starts_with("veth"),
                    addresses: prefixes.iter().map(|(_, p)| *p).collect(),
                    host_addresses: prefixes.iter().map(|(ip, _)| *ip).collect(),
                    ..Default::default()
                },
            );
        }
        h
    }

    #[test]
    fn host_addresses_loopback_and_watched_subnets_are_local() {
        let t = source_table(&host(), ["br0"], &[p("198.18.9.0/24")]);
        let kind = |s: &str| t.classify(s.parse().unwrap());
        assert_eq!(kind("192.0.2.2"), Some(SourceKind::HostAddress), "the host's own address");
        assert_eq!(kind("127.0.0.53"), Some(SourceKind::Local));
        assert_eq!(kind("::1"), Some(SourceKind::Local), "loopback");
        assert_eq!(kind("10.251.0.7"), Some(SourceKind::Local), "watched bridge subnet");
        assert_eq!(kind("fd42:251::9"), Some(SourceKind::Local));
        assert_eq!(kind("198.18.9.4"), Some(SourceKind::Trusted));
        // The uplink's neighbours are outsiders: only the host's own address is local.
        assert_eq!(kind("192.0.2.77"), None);
        assert_eq!(kind("fd00::77"), None);
        // A bridge that is not watched contributes its gateway address only.
        assert_eq!(kind("10.252.0.1"), Some(SourceKind::HostAddress));
        assert_eq!(kind("10.252.0.9"), None);
    }

    #[test]
    fn link_local_addresses_of_bridge_ports_take_no_place() {
        // A container's host-side veth is a bridge port: its link-local address is
        // reached by nothing (frames on a port go to the bridge, and a link-local
        // destination is only local on its own interface), so it takes no entry, or
        // 4 000 containers would fill the kernel's tries.
        let t = source_table(&host(), ["br0"], &[]);
        assert_eq!(t.classify("fe80::8c1:2ff:fe03:405".parse().unwrap()), None);
        assert_eq!(
            t.classify("198.18.77.1".parse().unwrap()),
            Some(SourceKind::HostAddress),
            "other addresses of a port stay"
        );
    }
}
