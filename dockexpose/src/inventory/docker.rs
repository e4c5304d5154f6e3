//! The Docker Engine API (or Podman's Docker-compatible one) through bollard: a
//! snapshot of bridge networks and running containers, kept current by the event
//! stream, with reconnection and backoff when the daemon goes away.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use bollard::{
    models::{ContainerSummary, EventMessage, PortSummaryTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions, ListNetworksOptions},
    Docker,
};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::model::{bridge_holding, bridge_name, Container, Inventory, Network, PublishedPort};
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
    let raw = flag.map(str::to_string).or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_else(|| DEFAULT_SOCKET.into());
    if raw.starts_with('/') { format!("unix://{raw}") } else { raw }
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
    let containers = docker
        .list_containers(Some(ListContainersOptions { all: false, ..Default::default() }))
        .await?
        .iter()
        .filter_map(container_from)
        .collect();
    Ok(Inventory { networks, containers })
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
        .unwrap_or_else(|| id[..id.len().min(12)].to_string());
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
    Some(Container {
        id,
        name,
        image: c.image.clone().unwrap_or_default(),
        compose_project: labels.get("com.docker.compose.project").cloned(),
        compose_service: labels.get("com.docker.compose.service").cloned(),
        addresses,
        ports,
        identity: Default::default(),
    }
    .with_identity())
}

/// True for the events that change what we track.
pub fn is_relevant(ev: &EventMessage) -> bool {
    matches!(
        ev.action.as_deref().map(|a| a.split(':').next().unwrap_or(a)),
        Some("start" | "die" | "destroy" | "restart" | "create" | "connect" | "disconnect" | "remove")
    )
}

fn event_filters() -> EventsOptions {
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), vec!["container".to_string(), "network".to_string()]);
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
