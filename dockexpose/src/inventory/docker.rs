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
mod tests;
