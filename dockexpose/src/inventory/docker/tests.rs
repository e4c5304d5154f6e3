//! Unit tests of docker.rs.

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
