//! What Docker has on this host, as plain data: bridge networks and containers with
//! their addresses and published ports. Built by `docker.rs`, read by the correlation
//! and the kernel-map sync. Pure: no I/O here, so everything is unit-tested.

use std::{collections::BTreeSet, net::IpAddr};

use dockexpose_common::PortKey;

use crate::{host::interfaces::HostSnapshot, kernel::event::Proto, net::prefix::Prefix, output::record::ContainerRef};

/// A Docker bridge network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// The Linux bridge: docker0, the `com.docker.network.bridge.name` option, or br-<id[..12]>.
    pub bridge: String,
    pub subnets: Vec<Prefix>,
}

/// A port published on the host: `-p host_ip:host_port:container_port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    /// 0.0.0.0 or :: when bound to every address.
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PublishedPort {
    /// Bound to 127.0.0.1 or ::1: meant to be unreachable from outside.
    pub fn loopback_only(&self) -> bool {
        self.host_ip.is_loopback()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// Addresses, with the network each one is on.
    pub addresses: Vec<(String, IpAddr)>,
    pub ports: Vec<PublishedPort>,
    /// The identity records carry, built once (`with_identity`): a record then shares
    /// it instead of copying five strings.
    pub identity: std::sync::Arc<ContainerRef>,
}

impl Container {
    /// Fills `identity` from the fields above.
    pub fn with_identity(mut self) -> Self {
        self.identity = std::sync::Arc::new(ContainerRef {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            compose_project: self.compose_project.clone(),
            compose_service: self.compose_service.clone(),
        });
        self
    }
}

/// Everything Docker told us, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
}

/// How a reached connection relates to what Docker publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Through a published port (bound to all addresses or a specific one).
    Published,
    /// The container port is published only on 127.0.0.1 / ::1, yet it was reached from
    /// outside: the loopback binding did not protect it.
    LoopbackOnly,
    /// The container port is not published at all, yet it was reached: direct routing
    /// to the container address got through.
    Unpublished,
    /// No container at the destination address (or no Docker inventory).
    Unknown,
}

impl Exposure {
    pub fn as_str(self) -> &'static str {
        match self {
            Exposure::Published => "published",
            Exposure::LoopbackOnly => "loopback_only",
            Exposure::Unpublished => "unpublished",
            Exposure::Unknown => "unknown",
        }
    }
}

impl Inventory {
    /// The container that holds `ip` on one of its networks.
    pub fn container_at(&self, ip: IpAddr) -> Option<&Container> {
        self.containers.iter().find(|c| c.addresses.iter().any(|(_, a)| *a == ip))
    }

    /// The container's published mappings for (container port, protocol).
    pub fn mappings<'a>(&self, c: &'a Container, container_port: u16, proto: Proto) -> Vec<&'a PublishedPort> {
        c.ports.iter().filter(|p| p.container_port == container_port && p.proto == proto).collect()
    }

    /// The container behind a published host port (for an `attempted` record).
    pub fn published_at(&self, host_ip: IpAddr, host_port: u16, proto: Proto) -> Option<(&Container, &PublishedPort)> {
        self.containers.iter().find_map(|c| {
            c.ports
                .iter()
                .find(|p| p.host_port == host_port && p.proto == proto && binds(p.host_ip, host_ip))
                .map(|p| (c, p))
        })
    }

    /// Bridges of Docker's bridge networks.
    pub fn bridges(&self) -> BTreeSet<String> {
        self.networks.iter().map(|n| n.bridge.clone()).collect()
    }

    /// Host ports published by any container, for the uplink program.
    pub fn published_host_ports(&self) -> BTreeSet<PortKey> {
        self.containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .map(|p| PortKey { port: p.host_port, proto: p.proto.to_kernel(), _pad: 0 })
            .collect()
    }
}

/// True when a port bound to `bound` accepts connections addressed to `dst`.
fn binds(bound: IpAddr, dst: IpAddr) -> bool {
    bound.is_unspecified() || bound == dst
}

/// Exposure of a reach to `container` on (port, proto), from its mappings.
pub fn exposure_of(mappings: &[&PublishedPort]) -> Exposure {
    if mappings.is_empty() {
        Exposure::Unpublished
    } else if mappings.iter().all(|m| m.loopback_only()) {
        Exposure::LoopbackOnly
    } else {
        Exposure::Published
    }
}

/// The bridge that holds an address in one of `subnets` (its gateway): how Podman's
/// bridges are found, since its compatible API does not name them.
pub fn bridge_holding(subnets: &[Prefix], host: &HostSnapshot) -> Option<String> {
    host.interfaces
        .values()
        .filter(|i| i.is_bridge)
        .find(|i| i.addresses.iter().any(|a| subnets.iter().any(|s| s.len() == a.len() && s.contains(a.addr()))))
        .map(|i| i.name.clone())
}

/// The Linux bridge of a Docker network, as Docker names it.
pub fn bridge_name(network_id: &str, network_name: &str, bridge_option: Option<&str>) -> String {
    match bridge_option {
        Some(name) if !name.is_empty() => name.to_string(),
        _ if network_name == "bridge" => "docker0".to_string(),
        _ => format!("br-{}", &network_id[..network_id.len().min(12)]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Inventory {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        Inventory {
            networks: vec![Network {
                id: "abc".into(),
                name: "bridge".into(),
                bridge: "docker0".into(),
                subnets: vec!["172.17.0.0/16".parse().unwrap()],
            }],
            containers: vec![
                Container {
                    id: "c1".into(),
                    name: "web".into(),
                    image: "nginx:1.27".into(),
                    compose_project: Some("shop".into()),
                    compose_service: Some("front".into()),
                    addresses: vec![("abc".into(), "172.17.0.2".parse().unwrap())],
                    ports: vec![
                        PublishedPort { host_ip: any4, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                        PublishedPort { host_ip: any4, host_port: 8443, container_port: 80, proto: Proto::Tcp },
                        PublishedPort { host_ip: "127.0.0.1".parse().unwrap(), host_port: 9000, container_port: 9000, proto: Proto::Tcp },
                        PublishedPort { host_ip: any4, host_port: 5353, container_port: 53, proto: Proto::Udp },
                    ],
                    identity: Default::default(),
                }
                .with_identity(),
                Container {
                    id: "c2".into(),
                    name: "db".into(),
                    image: "postgres".into(),
                    addresses: vec![("abc".into(), "172.17.0.3".parse().unwrap())],
                    ..Default::default()
                }
                .with_identity(),
            ],
        }
    }

    #[test]
    fn finds_containers_by_address_and_mappings_by_port() {
        let inv = sample();
        let web = inv.container_at("172.17.0.2".parse().unwrap()).unwrap();
        assert_eq!(web.name, "web");
        assert!(inv.container_at("172.17.0.9".parse().unwrap()).is_none());
        let m = inv.mappings(web, 80, Proto::Tcp);
        assert_eq!(m.iter().map(|p| p.host_port).collect::<Vec<_>>(), [8080, 8443]);
        assert!(inv.mappings(web, 80, Proto::Udp).is_empty());
    }

    #[test]
    fn exposure_tells_published_loopback_and_unpublished_apart() {
        let inv = sample();
        let web = &inv.containers[0];
        assert_eq!(exposure_of(&inv.mappings(web, 80, Proto::Tcp)), Exposure::Published);
        assert_eq!(exposure_of(&inv.mappings(web, 9000, Proto::Tcp)), Exposure::LoopbackOnly);
        assert_eq!(exposure_of(&inv.mappings(web, 22, Proto::Tcp)), Exposure::Unpublished);
    }

    #[test]
    fn published_host_port_lookup_respects_the_binding() {
        let inv = sample();
        let (c, p) = inv.published_at("198.18.0.1".parse().unwrap(), 8443, Proto::Tcp).unwrap();
        assert_eq!((c.name.as_str(), p.container_port), ("web", 80));
        assert!(inv.published_at("198.18.0.1".parse().unwrap(), 9000, Proto::Tcp).is_none(), "loopback-bound");
        assert!(inv.published_at("127.0.0.1".parse().unwrap(), 9000, Proto::Tcp).is_some());
        assert!(inv.published_at("198.18.0.1".parse().unwrap(), 8080, Proto::Udp).is_none());
    }

    #[test]
    fn kernel_port_set_has_every_host_port_once() {
        let ports = sample().published_host_ports();
        assert_eq!(ports.len(), 4);
        assert!(ports.contains(&PortKey { port: 5353, proto: 17, _pad: 0 }));
    }

    #[test]
    fn podman_bridges_are_found_by_their_gateway() {
        use crate::host::interfaces::Interface;
        let mut host = HostSnapshot::default();
        for (name, is_bridge, addr) in [("podman0", true, "10.88.0.1/16"), ("eth0", false, "10.89.0.2/16"), ("podman1", true, "10.89.0.1/24")] {
            let (ip, len) = addr.split_once('/').unwrap();
            let p = Prefix::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap();
            host.interfaces.insert(name.into(), Interface { name: name.into(), is_bridge, addresses: vec![p], ..Default::default() });
        }
        assert_eq!(bridge_holding(&["10.88.0.0/16".parse().unwrap()], &host).as_deref(), Some("podman0"));
        assert_eq!(bridge_holding(&["10.89.0.0/24".parse().unwrap()], &host).as_deref(), Some("podman1"));
        assert_eq!(bridge_holding(&["10.90.0.0/24".parse().unwrap()], &host), None, "no container yet: no bridge");
    }

    #[test]
    fn bridge_names_follow_docker() {
        assert_eq!(bridge_name("0123456789abcdef", "bridge", None), "docker0");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", None), "br-0123456789ab");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", Some("custom0")), "custom0");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", Some("")), "br-0123456789ab");
    }
}
