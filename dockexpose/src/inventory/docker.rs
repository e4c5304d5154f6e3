//! The Docker Engine API (or Podman's Docker-compatible one) through bollard: a
//! snapshot of bridge networks and running containers, kept current by the event
//! stream, with reconnection and backoff when the daemon goes away.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use bollard::{
    models::{
        ContainerSummary, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EventMessage,
        LocalNodeState, NetworkInspect, PortSummaryTypeEnum, Service,
    },
    query_parameters::{
        EventsOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions, ListServicesOptions,
    },
    Docker,
};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::model::{bridge_holding, bridge_name, short_id, Container, Inventory, Network, PublishedPort};
use crate::{host::interfaces::HostSnapshot, kernel::event::Proto, net::prefix::Prefix};

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// A full re-list now and then, in case an event was missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the daemon loop knows about Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerState {
    /// Not connected yet.
    Starting,
    Connected(Inventory),
    /// Unreachable; the reason is for the operator.
    Unavailable(String),
}

/// Where the API is: `--docker-host`, else DOCKER_HOST, else the default socket.
pub fn endpoint(flag: Option<&str>) -> String {
    let raw =
        flag.map(str::to_string).or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_else(|| DEFAULT_SOCKET.into());
    if raw.starts_with('/') {
        format!("unix://{raw}")
    } else {
        raw
    }
}

/// A connected engine: Docker, or Podman through its Docker-compatible API.
pub struct Engine {
    docker: Docker,
    /// Podman names its bridges itself (podman0, podman1...) and does not say which in
    /// the compatible API: they are found by the gateway address instead.
    podman: bool,
}

impl Engine {
    pub fn is_podman(&self) -> bool {
        self.podman
    }
}

pub async fn connect(endpoint: &str) -> Result<Engine, String> {
    let docker = Docker::connect_with_host(endpoint).map_err(|e| {
        format!("Docker API at {endpoint}: {e} (is the engine running? point --docker-host or DOCKER_HOST at its socket, or use --no-docker)")
    })?;
    // Older engines (20.10 speaks API 1.41) refuse newer client versions: agree on one.
    let docker = docker.negotiate_version().await.map_err(|e| explain(endpoint, &e))?;
    docker.ping().await.map_err(|e| explain(endpoint, &e))?;
    let version = docker.version().await.map_err(|e| explain(endpoint, &e))?;
    let podman = version.components.iter().flatten().any(|c| c.name.contains("Podman"));
    Ok(Engine { docker, podman })
}

fn explain(endpoint: &str, e: &bollard::errors::Error) -> String {
    let text = e.to_string();
    let hint = if text.contains("No such file") || text.contains("os error 2") {
        "no Docker socket there; is the engine running? (--docker-host or DOCKER_HOST point elsewhere)"
    } else if text.contains("ermission denied") {
        "permission denied on the socket; run as root or in the docker group"
    } else if text.contains("onnection refused") {
        "the engine refused the connection; is it running?"
    } else {
        "check that the Docker (or Podman) API answers there"
    };
    format!("Docker API at {endpoint}: {text} ({hint})")
}

/// Lists bridge networks and running containers.
pub async fn snapshot(engine: &Engine) -> Result<Inventory, bollard::errors::Error> {
    let docker = &engine.docker;
    let mut networks: Vec<Network> =
        docker.list_networks(None::<ListNetworksOptions>).await?.iter().filter_map(network_from).collect();
    if engine.podman {
        // The bridge is the interface holding the network's gateway; Podman creates it
        // with the network's first running container, so one may not exist yet.
        let host = HostSnapshot::read().unwrap_or_default();
        networks.retain_mut(|n| match bridge_holding(&n.subnets, &host) {
            Some(bridge) => {
                n.bridge = bridge;
                true
            }
            None => false,
        });
    }
    let containers: Vec<Container> = docker
        .list_containers(Some(ListContainersOptions { all: false, ..Default::default() }))
        .await?
        .iter()
        .filter_map(container_from)
        .collect();
    let (mesh_services, ingress_sbox) =
        if engine.podman { Default::default() } else { routing_mesh(docker, &containers).await };
    Ok(Inventory { networks, containers, mesh_services, ingress_sbox })
}

/// The process id of each running container of `ids` (its network namespace is
/// /proc/PID/ns/net); a container that cannot be inspected is left out.
pub async fn pids(engine: &Engine, ids: &[String]) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for id in ids {
        let Ok(c) =
            engine.docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await
        else {
            continue;
        };
        if let Some(pid) = c.state.and_then(|s| s.pid).filter(|p| *p > 0) {
            out.insert(id.clone(), pid as u32);
        }
    }
    out
}

/// On a swarm manager: the services published through the routing mesh, and the
/// mesh's hop on this node (ingress-sbox on docker_gwbridge). Nothing elsewhere: a
/// worker cannot list services, and a node outside a swarm has none. Failures leave
/// them out (the containers' own identity does not depend on them).
async fn routing_mesh(docker: &Docker, containers: &[Container]) -> (Vec<Container>, Vec<IpAddr>) {
    let Ok(info) = docker.info().await else { return Default::default() };
    let swarm = info.swarm.unwrap_or_default();
    if swarm.local_node_state != Some(LocalNodeState::ACTIVE) || swarm.control_available != Some(true) {
        return Default::default();
    }
    let services = docker.list_services(None::<ListServicesOptions>).await.unwrap_or_default();
    let mesh = mesh_services_from(&services, containers);
    if mesh.is_empty() {
        return (mesh, Vec::new());
    }
    let sbox = docker
        .inspect_network("docker_gwbridge", None::<InspectNetworkOptions>)
        .await
        .map(|n| ingress_sbox_from(&n))
        .unwrap_or_default();
    (mesh, sbox)
}

/// Swarm services with ports in ingress mode, as containers without addresses. When
/// exactly one task of a service runs on this node (among `containers`), the service
/// carries that task's identity (the task is then who the mesh reaches here).
pub fn mesh_services_from(services: &[Service], containers: &[Container]) -> Vec<Container> {
    services
        .iter()
        .filter_map(|s| {
            let id = s.id.clone()?;
            let spec = s.spec.as_ref();
            let name = spec.and_then(|sp| sp.name.clone()).unwrap_or_else(|| short_id(&id).to_string());
            let mut ports: Vec<PublishedPort> = s
                .endpoint
                .as_ref()
                .and_then(|e| e.ports.as_ref())
                .into_iter()
                .flatten()
                .filter(|p| p.publish_mode != Some(EndpointPortConfigPublishModeEnum::HOST))
                .filter_map(|p| {
                    let proto = match p.protocol {
                        Some(EndpointPortConfigProtocolEnum::UDP) => Proto::Udp,
                        Some(EndpointPortConfigProtocolEnum::SCTP) => Proto::Sctp,
                        _ => Proto::Tcp,
                    };
                    let host_port = u16::try_from(p.published_port?).ok()?;
                    let container_port = u16::try_from(p.target_port?).ok()?;
                    Some(PublishedPort { host_ip: "0.0.0.0".parse().ok()?, host_port, container_port, proto })
                })
                .collect();
            if ports.is_empty() {
                return None;
            }
            ports.sort();
            ports.dedup();
            let image = spec
                .and_then(|sp| sp.task_template.as_ref())
                .and_then(|t| t.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .map(|i| i.split('@').next().unwrap_or(&i).to_string())
                .unwrap_or_default();
            let service = Container { id, image, swarm_service: Some(name.clone()), name, ports, ..Default::default() }
                .with_identity();
            let mut tasks = containers.iter().filter(|c| c.swarm_service == service.swarm_service);
            Some(match (tasks.next(), tasks.next()) {
                (Some(task), None) => Container { identity: task.identity.clone(), ..service },
                _ => service,
            })
        })
        .collect()
}

/// The ingress-sbox's addresses in docker_gwbridge's inspection.
pub fn ingress_sbox_from(n: &NetworkInspect) -> Vec<IpAddr> {
    n.containers
        .iter()
        .flatten()
        .filter(|(key, ep)| {
            key.as_str() == "ingress-sbox" || ep.name.as_deref().is_some_and(|n| n.ends_with("ingress-sbox"))
        })
        .flat_map(|(_, ep)| [&ep.ipv4_address, &ep.ipv6_address])
        .filter_map(|a| a.as_deref()?.split('/').next()?.parse().ok())
        .collect()
}

/// A Docker bridge network, or None for other drivers (host, macvlan, overlay...).
pub fn network_from(n: &bollard::models::Network) -> Option<Network> {
    if n.driver.as_deref() != Some("bridge") {
        return None;
    }
    let id = n.id.clone()?;
    let name = n.name.clone().unwrap_or_default();
    let option = n.options.as_ref().and_then(|o| o.get(BRIDGE_NAME_OPTION)).map(String::as_str);
    let subnets = n
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .map(|cfgs| cfgs.iter().filter_map(|c| c.subnet.as_deref()?.parse::<Prefix>().ok()).collect())
        .unwrap_or_default();
    Some(Network { bridge: bridge_name(&id, &name, option), id, name, subnets })
}

/// A running container with its addresses and published ports.
pub fn container_from(c: &ContainerSummary) -> Option<Container> {
    let id = c.id.clone()?;
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| short_id(&id).to_string());
    let labels = c.labels.clone().unwrap_or_default();
    let mut addresses = Vec::new();
    if let Some(nets) = c.network_settings.as_ref().and_then(|s| s.networks.as_ref()) {
        for ep in nets.values() {
            let net = ep.network_id.clone().unwrap_or_default();
            for ip in [&ep.ip_address, &ep.global_ipv6_address] {
                if let Some(ip) = ip.as_deref().filter(|s| !s.is_empty()).and_then(|s| s.parse::<IpAddr>().ok()) {
                    addresses.push((net.clone(), ip));
                }
            }
        }
    }
    let mut ports: Vec<PublishedPort> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let proto = match p.typ {
                Some(PortSummaryTypeEnum::TCP) => Proto::Tcp,
                Some(PortSummaryTypeEnum::UDP) => Proto::Udp,
                Some(PortSummaryTypeEnum::SCTP) => Proto::Sctp,
                _ => return None,
            };
            let host_ip = p.ip.as_deref().filter(|s| !s.is_empty()).unwrap_or("0.0.0.0").parse().ok()?;
            Some(PublishedPort { host_ip, host_port: p.public_port?, container_port: p.private_port, proto })
        })
        .collect();
    ports.sort();
    ports.dedup();
    Some(
        Container {
            id,
            name,
            image: c.image.clone().unwrap_or_default(),
            compose_project: labels.get("com.docker.compose.project").cloned(),
            compose_service: labels.get("com.docker.compose.service").cloned(),
            swarm_service: labels.get("com.docker.swarm.service.name").cloned(),
            swarm_task: labels.get("com.docker.swarm.task.name").cloned(),
            addresses,
            ports,
            identity: Default::default(),
        }
        .with_identity(),
    )
}

/// True for the events that change what we track.
pub fn is_relevant(ev: &EventMessage) -> bool {
    matches!(
        ev.action.as_deref().map(|a| a.split(':').next().unwrap_or(a)),
        Some("start" | "die" | "destroy" | "restart" | "create" | "connect" | "disconnect" | "remove" | "update")
    )
}

fn event_filters() -> EventsOptions {
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), vec!["container".to_string(), "network".to_string(), "service".to_string()]);
    EventsOptions { filters: Some(filters), ..Default::default() }
}

/// Keeps `tx` current until the receiver is gone. Never gives up: Docker may come back.
pub async fn run(endpoint: String, tx: watch::Sender<DockerState>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let docker = match connect(&endpoint).await {
            Ok(d) => d,
            Err(reason) => {
                if tx.send(DockerState::Unavailable(reason)).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        let reason = follow(&docker, &tx).await;
        if tx.send(DockerState::Unavailable(reason)).is_err() {
            return;
        }
    }
}

/// Lists, then re-lists on every relevant event; returns why it stopped.
async fn follow(engine: &Engine, tx: &watch::Sender<DockerState>) -> String {
    // Subscribe first, so that nothing between the listing and the stream is missed.
    let mut events = engine.docker.events(Some(event_filters()));
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        match snapshot(engine).await {
            Ok(inv) => {
                let changed = !matches!(&*tx.borrow(), DockerState::Connected(old) if *old == inv);
                if changed && tx.send(DockerState::Connected(inv)).is_err() {
                    return "shutting down".into();
                }
            }
            Err(e) => return format!("listing containers failed: {e}"),
        }
        // Wait for something that matters; a burst of events gives one re-list.
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) if is_relevant(&ev) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return format!("the Docker event stream failed: {e}"),
                    None => return "the Docker event stream ended (daemon restarting?)".into(),
                },
                _ = resync.tick() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings, Ipam, IpamConfig, PortSummary};

    use super::*;

    #[test]
    fn bridge_networks_become_networks_with_their_bridge_and_subnets() {
        let n = bollard::models::Network {
            id: Some("4f1e2d3c4b5a69788796a5b4".into()),
            name: Some("shop_default".into()),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![
                    IpamConfig { subnet: Some("172.18.0.0/16".into()), ..Default::default() },
                    IpamConfig { subnet: Some("fd42:aa::/64".into()), ..Default::default() },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let net = network_from(&n).unwrap();
        assert_eq!(net.bridge, "br-4f1e2d3c4b5a");
        assert_eq!(net.subnets.len(), 2);
        let host = bollard::models::Network { driver: Some("host".into()), id: Some("x".into()), ..Default::default() };
        assert!(network_from(&host).is_none());
    }

    #[test]
    fn containers_keep_addresses_ports_and_compose_labels() {
        let mut nets = HashMap::new();
        nets.insert(
            "bridge".to_string(),
            EndpointSettings {
                network_id: Some("n1".into()),
                ip_address: Some("172.17.0.2".into()),
                global_ipv6_address: Some("".into()),
                ..Default::default()
            },
        );
        let mut labels = HashMap::new();
        labels.insert("com.docker.compose.project".to_string(), "shop".to_string());
        labels.insert("com.docker.compose.service".to_string(), "web".to_string());
        let port = |ip: &str, public: Option<u16>, private: u16, typ| PortSummary {
            ip: Some(ip.into()),
            private_port: private,
            public_port: public,
            typ: Some(typ),
        };
        let c = ContainerSummary {
            id: Some("0123456789abcdef".into()),
            names: Some(vec!["/shop-web-1".into()]),
            image: Some("nginx:1.27".into()),
            labels: Some(labels),
            ports: Some(vec![
                port("0.0.0.0", Some(8080), 80, PortSummaryTypeEnum::TCP),
                port("::", Some(8080), 80, PortSummaryTypeEnum::TCP),
                port("0.0.0.0", Some(8080), 80, PortSummaryTypeEnum::TCP),
                port("127.0.0.1", Some(9000), 9000, PortSummaryTypeEnum::TCP),
                port("", None, 443, PortSummaryTypeEnum::TCP),
                port("0.0.0.0", Some(5353), 53, PortSummaryTypeEnum::UDP),
            ]),
            network_settings: Some(ContainerSummaryNetworkSettings { networks: Some(nets) }),
            ..Default::default()
        };
        let c = container_from(&c).unwrap();
        assert_eq!(c.name, "shop-web-1");
        assert_eq!((c.compose_project.as_deref(), c.compose_service.as_deref()), (Some("shop"), Some("web")));
        assert_eq!(c.addresses, vec![("n1".to_string(), "172.17.0.2".parse().unwrap())]);
        assert_eq!(c.ports.len(), 4, "duplicates and unpublished exposes dropped: {:?}", c.ports);
        assert!(c.ports.iter().any(|p| p.host_ip.is_loopback() && p.host_port == 9000));
        assert!(c.ports.iter().any(|p| p.proto == Proto::Udp && p.host_port == 5353 && p.container_port == 53));
        assert_eq!((c.swarm_service.as_deref(), c.swarm_task.as_deref()), (None, None), "not a swarm task");
    }

    #[test]
    fn swarm_tasks_keep_their_service_and_task_names() {
        let mut labels = HashMap::new();
        labels.insert("com.docker.swarm.service.name".to_string(), "web".to_string());
        labels.insert("com.docker.swarm.task.name".to_string(), "web.1.kq3v8rjz2m1x".to_string());
        let c = ContainerSummary {
            id: Some("0123456789abcdef".into()),
            names: Some(vec!["/web.1.kq3v8rjz2m1x".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        let c = container_from(&c).unwrap();
        assert_eq!((c.swarm_service.as_deref(), c.swarm_task.as_deref()), (Some("web"), Some("web.1.kq3v8rjz2m1x")));
        assert_eq!(c.identity.swarm_task.as_deref(), Some("web.1.kq3v8rjz2m1x"), "records carry them");
        let v: serde_json::Value = serde_json::to_value(&*c.identity).unwrap();
        assert_eq!((v["swarm_service"].as_str(), v["compose_service"].as_str()), (Some("web"), None));
    }

    #[test]
    fn mesh_services_keep_ingress_ports_and_name_their_one_local_task() {
        use bollard::models::{
            EndpointPortConfig, EndpointResource, ServiceEndpoint, ServiceSpec, TaskSpec, TaskSpecContainerSpec,
        };
        let port = |published: i64, target: i64, mode| EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            published_port: Some(published),
            target_port: Some(target),
            publish_mode: Some(mode),
            ..Default::default()
        };
        let service = |id: &str, name: &str, ports| Service {
            id: Some(id.into()),
            spec: Some(ServiceSpec {
                name: Some(name.into()),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some("web:1@sha256:abcd".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint: Some(ServiceEndpoint { ports: Some(ports), ..Default::default() }),
            ..Default::default()
        };
        let services = [
            service(
                "s1",
                "web",
                vec![
                    port(8080, 80, EndpointPortConfigPublishModeEnum::INGRESS),
                    port(9090, 90, EndpointPortConfigPublishModeEnum::HOST),
                ],
            ),
            service("s2", "api", vec![port(8081, 81, EndpointPortConfigPublishModeEnum::INGRESS)]),
            service("s3", "worker", vec![port(9091, 91, EndpointPortConfigPublishModeEnum::HOST)]),
        ];
        let task = Container {
            id: "t1".into(),
            name: "api.1.xyz".into(),
            swarm_service: Some("api".into()),
            swarm_task: Some("api.1.xyz".into()),
            ..Default::default()
        }
        .with_identity();
        let mesh = mesh_services_from(&services, &[task]);
        assert_eq!(mesh.len(), 2, "host-mode ports are the task containers' own: {mesh:#?}");
        let web = &mesh[0];
        assert_eq!(
            (
                web.name.as_str(),
                web.image.as_str(),
                web.identity.swarm_service.as_deref(),
                web.identity.swarm_task.as_deref()
            ),
            ("web", "web:1", Some("web"), None)
        );
        assert_eq!(web.ports.iter().map(|p| (p.host_port, p.container_port)).collect::<Vec<_>>(), [(8080, 80)]);
        assert!(web.addresses.is_empty());
        assert_eq!(
            (mesh[1].identity.name.as_str(), mesh[1].identity.swarm_task.as_deref()),
            ("api.1.xyz", Some("api.1.xyz")),
            "its one local task"
        );

        let mut eps = HashMap::new();
        eps.insert(
            "ingress-sbox".to_string(),
            EndpointResource {
                name: Some("gateway_ingress-sbox".into()),
                ipv4_address: Some("172.18.0.2/16".into()),
                ..Default::default()
            },
        );
        eps.insert(
            "abc".to_string(),
            EndpointResource {
                name: Some("gateway_abc".into()),
                ipv4_address: Some("172.18.0.3/16".into()),
                ..Default::default()
            },
        );
        let gw = NetworkInspect { containers: Some(eps), ..Default::default() };
        assert_eq!(ingress_sbox_from(&gw), vec!["172.18.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn short_and_non_ascii_ids_never_panic() {
        for id in ["", "ab", "é", "0123456789aé", "ééééééééééééé", "0123456789abcdef"] {
            let c = ContainerSummary { id: Some(id.into()), ..Default::default() };
            let c = container_from(&c).unwrap();
            assert!(id.starts_with(&c.name) && c.name.chars().count() <= 12, "{id:?} gave {:?}", c.name);
            let s = Service { id: Some(id.into()), ..Default::default() };
            let _ = mesh_services_from(&[s], &[]);
        }
    }

    #[test]
    fn endpoint_prefers_flag_then_environment() {
        assert_eq!(endpoint(Some("/run/podman/podman.sock")), "unix:///run/podman/podman.sock");
        assert_eq!(endpoint(Some("tcp://127.0.0.1:2375")), "tcp://127.0.0.1:2375");
    }

    #[test]
    fn only_lifecycle_events_trigger_a_relist() {
        let ev = |a: &str| EventMessage { action: Some(a.into()), ..Default::default() };
        for a in ["start", "die", "destroy", "create", "connect", "disconnect", "exec_start: sh"] {
            let relevant = is_relevant(&ev(a));
            assert_eq!(relevant, !a.starts_with("exec"), "{a}");
        }
        assert!(!is_relevant(&ev("health_status: healthy")));
    }
}
