//! On a second Docker engine of the test's own: IPv6 with ip6tables DNAT, and swarm
//! services (ingress over IPVS) named by service and task.

use super::*;

/// A second engine (support::engine) confined to this file's ranges: namespaces
/// `dx11{tag}N`, uplink 198.18.N.1 / fd42:198:N::1, docker0 10.251.N.1/25.
fn second_engine(tag: &str, extra: &[&str]) -> support::engine::SecondEngine {
    let n = n11();
    let place = support::engine::Place {
        prefix: format!("dx11{tag}"),
        n,
        uplink_v4: format!("198.18.{n}"),
        uplink_v6: format!("fd42:198:{n}:"),
        bip: format!("10.251.{n}.1/25"),
    };
    support::engine::SecondEngine::start_at(place, support::engine::Proxy::Off, extra)
}

#[test]
fn docker_ipv6_with_ip6tables_dnat_is_reached_with_host_port_and_identity() {
    let test = "docker_ipv6_with_ip6tables_dnat_is_reached_with_host_port_and_identity";
    if !docker::ready(test) {
        return;
    }
    let n = n11();
    // The way a user turns it on (daemon.json "ipv6", "ip6tables", "fixed-cidr-v6";
    // dockerd 20.10 wants "experimental" for ip6tables), on an engine of its own.
    let v6net = format!("fd42:251:{n}::/64");
    assert_unrouted(&v6net);
    let engine = second_engine("v", &["--experimental", "--ipv6", &format!("--fixed-cidr-v6={v6net}"), "--ip6tables"]);
    let port = 18_600 + n as u16;
    // busybox httpd listens on [::] (the echo image's server is IPv4-only).
    let http = docker::http_image();
    engine.load_image(&http);
    let c = engine.run(&format!("dx11v-web-{n}"), &["-p", &format!("{port}:80")], &http, &[]);
    let cip6 = c.inspect("{{.NetworkSettings.Networks.bridge.GlobalIPv6Address}}");
    assert!(cip6.starts_with(&format!("fd42:251:{n}:")), "container IPv6 address from fixed-cidr-v6: {cip6:?}");
    let nat6 = engine.in_ns(&["ip6tables", "-t", "nat", "-S", "DOCKER"]);
    assert!(
        nat6.contains(&format!("--dport {port} -j DNAT --to-destination [{cip6}]:80")),
        "Docker's ip6tables DNAT: {nat6}"
    );

    let mut w = engine.watch(&["--stats-interval", "0"], json_path("11ipv6"));
    w.wait_for_line("Docker inventory: 1 running containers", Duration::from_secs(20));
    let src6: IpAddr = engine.outside_v6().parse().unwrap();
    // The container's IPv6 address may still be tentative (duplicate address
    // detection) for a moment after it starts: its first answers can be lost, so try
    // again for a few seconds (each try is its own connection and its own record).
    let sport = (0..10)
        .find_map(|_| {
            tcp_open(&engine.outside_ns, Some(src6), engine.host6(port))
                .map_err(|_| std::thread::sleep(Duration::from_millis(500)))
                .ok()
        })
        .expect("IPv6 published port reached through ip6tables DNAT");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> = records.into_iter().filter(|r| r["src_ip"] == engine.outside_v6().as_str()).collect();
    let r = one(&ours, "reached", "tcp", sport);
    assert_eq!(
        (r["family"].as_str(), r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
        (Some("ipv6"), Some("docker0"), Some(cip6.as_str()), Some(80)),
        "{r:#}"
    );
    assert_eq!(
        (r["host_ip"].as_str(), r["host_port"].as_u64(), r["path"].as_str()),
        (Some(engine.engine_v6().as_str()), Some(port as u64), Some("bridge")),
        "{r:#}"
    );
    assert_eq!(
        (r["container"]["name"].as_str(), r["container"]["id"].as_str(), r["exposure"].as_str()),
        (Some(c.name.as_str()), Some(c.id().as_str()), Some("published")),
        "{r:#}"
    );
    let a = one(&ours, "attempted", "tcp", sport);
    assert_eq!(
        (a["host_ip"].as_str(), a["host_port"].as_u64(), a["container"]["name"].as_str()),
        (Some(engine.engine_v6().as_str()), Some(port as u64), Some(c.name.as_str()))
    );
    assert!(!ours.iter().any(|r| r["stage"] == "blocked"), "{ours:#?}");
}

/// Waits for the one running task container of swarm service `service` on `engine`;
/// panics with the service's task states and dockerd's log if none runs.
fn swarm_task(engine: &support::engine::SecondEngine, service: &str) -> String {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let mut id = String::new();
    let found = within(Duration::from_secs(40), || {
        id = engine.try_docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).unwrap_or_default().trim().to_string();
        !id.is_empty()
    });
    if !found {
        let tasks = engine.try_docker(&["service", "ps", "--no-trunc", service]).unwrap_or_else(|e| e);
        panic!("no running task of swarm service {service}:\n{tasks}\ndockerd:\n{}", engine.log_tail(30));
    }
    id
}

/// True when the kernel has IPVS, which the routing mesh's ingress-sbox balances with.
fn kernel_has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

#[test]
fn swarm_services_are_named_by_service_and_task() {
    let test = "swarm_services_are_named_by_service_and_task";
    if !docker::ready(test) {
        return;
    }
    let n = n11();
    let engine = second_engine("s", &[]);
    // docker_gwbridge and the overlay pool in our ranges (Docker's documented way to
    // choose them: create docker_gwbridge before swarm init).
    engine.docker(&[
        "network",
        "create",
        "--subnet",
        &format!("10.251.{n}.128/26"),
        "--opt",
        "com.docker.network.bridge.name=docker_gwbridge",
        "--opt",
        "com.docker.network.bridge.enable_icc=false",
        "--opt",
        "com.docker.network.bridge.enable_ip_masquerade=true",
        "docker_gwbridge",
    ]);
    engine.docker(&[
        "swarm",
        "init",
        "--advertise-addr",
        &engine.engine_v4(),
        "--default-addr-pool",
        &format!("10.251.{n}.192/26"),
        "--default-addr-pool-mask-length",
        "27",
    ]);
    let (host_port, mesh_port) = (18_700 + n as u16, 18_800 + n as u16);
    let (host_svc, mesh_svc) = (format!("dx11s-host-{n}"), format!("dx11s-mesh-{n}"));
    // Published in host mode: Docker's own DNAT on this node to the task container.
    engine.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        &host_svc,
        "--no-resolve-image",
        "--publish",
        &format!("mode=host,published={host_port},target=80"),
        &engine.image,
        "80",
        "5300",
    ]);
    // Published through the routing mesh (ingress mode, the default).
    engine.docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        &mesh_svc,
        "--no-resolve-image",
        "--publish",
        &format!("published={mesh_port},target=80"),
        &engine.image,
        "80",
        "5300",
    ]);
    let task = swarm_task(&engine, &host_svc);
    let mesh_task = swarm_task(&engine, &mesh_svc);
    let task_name = |id: &str| {
        engine
            .docker(&["inspect", "-f", "{{index .Config.Labels \"com.docker.swarm.task.name\"}}", id])
            .trim()
            .to_string()
    };
    let (host_task_name, mesh_task_name) = (task_name(&task), task_name(&mesh_task));
    let sbox = engine.docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .Containers \"ingress-sbox\").IPv4Address}}",
        "docker_gwbridge",
    ]);
    let sbox = sbox.trim().split('/').next().unwrap().to_string();
    assert!(sbox.starts_with(&format!("10.251.{n}.")), "ingress-sbox on our docker_gwbridge: {sbox:?}");
    let ipvs = kernel_has_ipvs();
    if !ipvs {
        eprintln!(
            "{test}: this kernel has no IPVS (CONFIG_IP_VS is not set; dockerd: \"Could not get ipvs family information \
             from the kernel\"): Docker installs no DOCKER-INGRESS and the mesh carries nothing. The test writes \
             DOCKER-INGRESS as Docker does (libnetwork's service_linux.go), so that connections take the mesh's hop \
             into ingress-sbox, where nothing balances them on"
        );
        assert!(
            !engine.in_ns(&["iptables", "-t", "nat", "-S"]).contains("DOCKER-INGRESS"),
            "no IPVS, yet DOCKER-INGRESS exists"
        );
        let (p, to) = (mesh_port.to_string(), format!("{sbox}:{mesh_port}"));
        for rule in [
            &["-t", "nat", "-N", "DOCKER-INGRESS"][..],
            &["-t", "nat", "-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", &p, "-j", "DNAT", "--to-destination", &to],
            &["-t", "nat", "-A", "DOCKER-INGRESS", "-j", "RETURN"],
            &["-t", "nat", "-I", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS"],
            &["-N", "DOCKER-INGRESS"],
            &["-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", &p, "-j", "ACCEPT"],
            &[
                "-A",
                "DOCKER-INGRESS",
                "-p",
                "tcp",
                "-m",
                "state",
                "--state",
                "ESTABLISHED,RELATED",
                "--sport",
                &p,
                "-j",
                "ACCEPT",
            ],
            &["-A", "DOCKER-INGRESS", "-j", "RETURN"],
            &["-I", "FORWARD", "-j", "DOCKER-INGRESS"],
        ] {
            engine.in_ns(&[&["iptables"][..], rule].concat());
        }
    }

    let mut w = engine.watch(&["--stats-interval", "0"], json_path("11swarm"));
    w.wait_for_line("Docker inventory: ", Duration::from_secs(20));
    let src: IpAddr = engine.outside_v4().parse().unwrap();
    let sport = tcp_connect(&engine.outside_ns, Some(src), engine.host4(host_port))
        .expect("host-mode published port of a swarm task");
    // Through the mesh: the attempt at least is seen before any firewall table.
    let mesh_try = in_netns(&engine.outside_ns, {
        let dst = engine.host4(mesh_port);
        move || {
            let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2));
            let _ = s.as_ref().map(|s| s.set_read_timeout(Some(Duration::from_secs(2))));
            s.map(|s| s.local_addr().unwrap().port())
        }
    });
    eprintln!("through the routing mesh: {mesh_try:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> = records.into_iter().filter(|r| r["src_ip"] == engine.outside_v4().as_str()).collect();

    let r = one(&ours, "reached", "tcp", sport);
    assert_eq!(
        (r["host_ip"].as_str(), r["host_port"].as_u64()),
        (Some(engine.engine_v4().as_str()), Some(host_port as u64)),
        "{r:#}"
    );
    let c = &r["container"];
    assert_eq!(
        (c["id"].as_str(), c["swarm_service"].as_str(), c["swarm_task"].as_str()),
        (Some(task.as_str()), Some(host_svc.as_str()), Some(host_task_name.as_str())),
        "{r:#}"
    );
    // The mesh's attempt carries the exact published port, and names the service
    // (and its one task on this node).
    let attempts: Vec<&Value> =
        ours.iter().filter(|r| r["stage"] == "attempted" && r["host_port"] == mesh_port).collect();
    assert_eq!(attempts.len(), 1, "one attempt at the mesh port {mesh_port}:\n{ours:#?}");
    let a = attempts[0];
    assert_eq!(
        (a["host_ip"].as_str(), a["dst_port"].as_u64()),
        (Some(engine.engine_v4().as_str()), Some(mesh_port as u64)),
        "{a:#}"
    );
    assert_eq!(
        (a["container"]["swarm_service"].as_str(), a["container"]["swarm_task"].as_str()),
        (Some(mesh_svc.as_str()), Some(mesh_task_name.as_str())),
        "{a:#}"
    );
    // The hop into ingress-sbox, seen entering docker_gwbridge: named by the service
    // of the published port (and its one local task), never taken for a container.
    let mesh_reached: Vec<&Value> =
        ours.iter().filter(|r| r["stage"] == "reached" && r["src_port"] == a["src_port"]).collect();
    assert_eq!(mesh_reached.len(), 1, "one reach through the mesh:\n{ours:#?}");
    let m = mesh_reached[0];
    assert_eq!(
        (m["iface"].as_str(), m["dst_ip"].as_str(), m["dst_port"].as_u64()),
        (Some("docker_gwbridge"), Some(sbox.as_str()), Some(mesh_port as u64)),
        "{m:#}"
    );
    assert_eq!(
        (m["host_ip"].as_str(), m["host_port"].as_u64(), m["exposure"].as_str()),
        (Some(engine.engine_v4().as_str()), Some(mesh_port as u64), Some("published")),
        "{m:#}"
    );
    assert_eq!(
        (m["container"]["swarm_service"].as_str(), m["container"]["swarm_task"].as_str()),
        (Some(mesh_svc.as_str()), Some(mesh_task_name.as_str())),
        "{m:#}"
    );
    if ipvs {
        mesh_try.expect("the routing mesh answers");
    }
    engine.docker(&["swarm", "leave", "--force"]);
}
