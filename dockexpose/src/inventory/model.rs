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
    /// A swarm task's service and task names (labels `com.docker.swarm.service.name`,
    /// `com.docker.swarm.task.name`).
    pub swarm_service: Option<String>,
    pub swarm_task: Option<String>,
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
            swarm_service: self.swarm_service.clone(),
            swarm_task: self.swarm_task.clone(),
        });
        self
    }
}

/// Everything Docker told us, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
    /// Swarm services publishing through the routing mesh (ingress mode), as
    /// containers without addresses: the mesh accepts their ports on every node,
    /// whether a task runs here or not. Named by the service, or by its task when
    /// exactly one runs on this node.
    pub mesh_services: Vec<Container>,
    /// Addresses of Docker's `ingress-sbox` on docker_gwbridge: the routing mesh's
    /// hop (DOCKER-INGRESS DNATs there, IPVS inside it picks a task). Never a
    /// container: a reach of it is named by the service of its published port.
    pub ingress_sbox: Vec<IpAddr>,
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
    /// The port is published, but this connection was routed straight to the
    /// container's address (conntrack saw no DNAT): exposure without publishing.
    Direct,
    /// No container at the destination address (or no Docker inventory).
    Unknown,
}

impl Exposure {
    pub fn as_str(self) -> &'static str {
        match self {
            Exposure::Published => "published",
            Exposure::LoopbackOnly => "loopback_only",
            Exposure::Unpublished => "unpublished",
            Exposure::Direct => "direct",
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

    /// The container behind a published host port (for an `attempted` record); a
    /// port of the routing mesh gives its service.
    pub fn published_at(&self, host_ip: IpAddr, host_port: u16, proto: Proto) -> Option<(&Container, &PublishedPort)> {
        self.containers.iter().chain(&self.mesh_services).find_map(|c| {
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

    /// A reach of the routing mesh's hop (ingress-sbox) on `port`: the service that
    /// publishes it, and its mappings of that port. DOCKER-INGRESS keeps the port
    /// (it DNATs to the ingress-sbox's address, same port).
    pub fn mesh_service_reached(
        &self,
        dst: IpAddr,
        port: u16,
        proto: Proto,
    ) -> Option<(&Container, Vec<&PublishedPort>)> {
        if !self.ingress_sbox.contains(&dst) {
            return None;
        }
        self.mesh_services.iter().find_map(|s| {
            let ports: Vec<&PublishedPort> =
                s.ports.iter().filter(|p| p.host_port == port && p.proto == proto).collect();
            (!ports.is_empty()).then_some((s, ports))
        })
    }

    /// Host ports published by any container or through the routing mesh, for the
    /// uplink program.
    pub fn published_host_ports(&self) -> BTreeSet<PortKey> {
        self.containers
            .iter()
            .chain(&self.mesh_services)
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

/// Docker's short form of an id: its first 12 characters, cut on a character boundary
/// (ids come from the engine's API: a short or non-ASCII one must not panic).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}

/// The Linux bridge of a Docker network, as Docker names it.
pub fn bridge_name(network_id: &str, network_name: &str, bridge_option: Option<&str>) -> String {
    match bridge_option {
        Some(name) if !name.is_empty() => name.to_string(),
        _ if network_name == "bridge" => "docker0".to_string(),
        _ => format!("br-{}", short_id(network_id)),
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
                    swarm_service: None,
                    swarm_task: None,
                    addresses: vec![("abc".into(), "172.17.0.2".parse().unwrap())],
                    ports: vec![
                        PublishedPort { host_ip: any4, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                        PublishedPort { host_ip: any4, host_port: 8443, container_port: 80, proto: Proto::Tcp },
                        PublishedPort {
                            host_ip: "127.0.0.1".parse().unwrap(),
                            host_port: 9000,
                            container_port: 9000,
                            proto: Proto::Tcp,
                        },
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
            ..Default::default()
        }
    }

    /// A swarm node: one task container of a host-mode service, and a service
    /// published through the routing mesh (its one local task on the ingress
    /// network, 10.0.0.4, which the host never sees), ingress-sbox at 172.18.0.2.
    pub fn swarm_sample() -> Inventory {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let mesh_port = PublishedPort { host_ip: any4, host_port: 8080, container_port: 80, proto: Proto::Tcp };
        Inventory {
            networks: vec![Network {
                id: "gw".into(),
                name: "docker_gwbridge".into(),
                bridge: "docker_gwbridge".into(),
                subnets: vec!["172.18.0.0/16".parse().unwrap()],
            }],
            containers: vec![Container {
                id: "t1".into(),
                name: "api.1.abc".into(),
                image: "api:1".into(),
                swarm_service: Some("api".into()),
                swarm_task: Some("api.1.abc".into()),
                addresses: vec![("gw".into(), "172.18.0.3".parse().unwrap())],
                ports: vec![PublishedPort { host_ip: any4, host_port: 9090, container_port: 90, proto: Proto::Tcp }],
                ..Default::default()
            }
            .with_identity()],
            mesh_services: vec![Container {
                id: "svc1".into(),
                name: "web".into(),
                image: "web:1".into(),
                swarm_service: Some("web".into()),
                ports: vec![mesh_port],
                ..Default::default()
            }
            .with_identity()],
            ingress_sbox: vec!["172.18.0.2".parse().unwrap()],
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
    fn routing_mesh_ports_are_published_and_their_hop_is_no_container() {
        let inv = swarm_sample();
        let (svc, p) =
            inv.published_at("198.18.0.1".parse().unwrap(), 8080, Proto::Tcp).expect("a mesh port is published");
        assert_eq!((svc.name.as_str(), svc.swarm_service.as_deref(), p.container_port), ("web", Some("web"), 80));
        assert!(
            inv.published_host_ports().contains(&PortKey { port: 8080, proto: 6, _pad: 0 }),
            "the uplink watches mesh ports"
        );
        let sbox: IpAddr = "172.18.0.2".parse().unwrap();
        assert!(inv.container_at(sbox).is_none(), "ingress-sbox is not a container");
        let (svc, ports) = inv.mesh_service_reached(sbox, 8080, Proto::Tcp).unwrap();
        assert_eq!((svc.name.as_str(), ports.len()), ("web", 1));
        assert!(inv.mesh_service_reached(sbox, 9090, Proto::Tcp).is_none(), "not a mesh port");
        assert!(
            inv.mesh_service_reached("172.18.0.3".parse().unwrap(), 8080, Proto::Tcp).is_none(),
            "not the mesh's hop"
        );
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
        for (name, is_bridge, addr) in
            [("podman0", true, "10.88.0.1/16"), ("eth0", false, "10.89.0.2/16"), ("podman1", true, "10.89.0.1/24")]
        {
            let (ip, len) = addr.split_once('/').unwrap();
            let p = Prefix::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap();
            host.interfaces.insert(
                name.into(),
                Interface { name: name.into(), is_bridge, addresses: vec![p], ..Default::default() },
            );
        }
        assert_eq!(bridge_holding(&["10.88.0.0/16".parse().unwrap()], &host).as_deref(), Some("podman0"));
        assert_eq!(bridge_holding(&["10.89.0.0/24".parse().unwrap()], &host).as_deref(), Some("podman1"));
        assert_eq!(bridge_holding(&["10.90.0.0/24".parse().unwrap()], &host), None, "no container yet: no bridge");
    }

    #[test]
    fn bridge_names_of_short_or_non_ascii_network_ids_never_panic() {
        assert_eq!(bridge_name("", "n", None), "br-");
        assert_eq!(bridge_name("abc", "n", None), "br-abc");
        assert_eq!(bridge_name("0123456789aéb", "n", None), "br-0123456789aé");
        assert_eq!(bridge_name("éééééééééééééé", "n", None), "br-éééééééééééé");
    }

    #[test]
    fn bridge_names_follow_docker() {
        assert_eq!(bridge_name("0123456789abcdef", "bridge", None), "docker0");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", None), "br-0123456789ab");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", Some("custom0")), "custom0");
        assert_eq!(bridge_name("0123456789abcdef", "mynet", Some("")), "br-0123456789ab");
    }
}
