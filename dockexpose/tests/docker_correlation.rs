//! Against the real Docker engine on this machine: the firewall-bypass story and
//! the inventory following containers and networks live. Needs root and Docker.
//! Every container, network, namespace and rule is removed by a guard.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

/// Polls `f` until it returns true or `limit` passes; returns how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn firewall_bypass_story_is_reported_with_container_and_ports() {
    if !docker::ready("firewall_bypass_story_is_reported_with_container_and_ports") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("d");
    let n = outside.n;
    let (web_port, local_port, udp_port) = (18000 + n as u16, 19000 + n as u16, 20000 + n as u16);
    let web = docker::Container::run(
        &format!("dx-web-{n}"),
        &[
            "-p",
            &format!("{web_port}:80"),
            "-p",
            &format!("127.0.0.1:{local_port}:80"),
            "-p",
            &format!("{udp_port}:5300/udp"),
            "--label",
            "com.docker.compose.project=dxstory",
            "--label",
            "com.docker.compose.service=web",
        ],
        &image,
        &["80", "5300"],
    );
    let web_ip = web.ip("bridge");
    let w = Watcher::start(&["--stats-interval", "0", "--uplink", &outside.uplink], json_path("story"));
    assert!(w.lines().iter().any(|l| l.contains("Docker inventory")), "{:?}", w.lines());

    // UFW's INPUT policy holds for the host itself...
    let input = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(22_222));
    assert!(input.is_err(), "INPUT must drop the outside host: {input:?}");
    // ...yet the published port is open to the world: the bypass.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(web_port))
        .expect("published port reachable from outside");
    // Bound to 127.0.0.1: not reachable from outside, and nothing to report.
    let lo = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(local_port));
    assert!(lo.is_err(), "a 127.0.0.1 binding must not be reachable from outside: {lo:?}");
    // The host itself on both ports: local, never reported.
    tcp_connect_root(SocketAddr::new("127.0.0.1".parse().unwrap(), local_port)).expect("host to its loopback binding");
    tcp_connect_root(SocketAddr::new(web_ip.parse().unwrap(), 80)).expect("host to the container");
    // A published UDP port.
    let (uport, echoed) = udp_exchange(&outside.ns, Some(outside.src4()), outside.host4(udp_port), 2);
    assert_eq!(echoed, 2, "published UDP port answers");

    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    let reached: Vec<&Value> = records.iter().filter(|r| r["stage"] == "reached").collect();
    assert_eq!(reached.len(), 2, "exactly the TCP and the UDP connection from outside:\n{records:#?}");
    // The uplink saw both attempts first; the 127.0.0.1 binding's port: nothing at all.
    let attempted: Vec<u64> =
        records.iter().filter(|r| r["stage"] == "attempted").filter_map(|r| r["host_port"].as_u64()).collect();
    assert_eq!(attempted.len(), 2, "{records:#?}");
    assert!(attempted.contains(&(web_port as u64)) && attempted.contains(&(udp_port as u64)));
    assert!(!records.iter().any(|r| r["host_port"] == local_port || r["stage"] == "blocked"), "{records:#?}");
    let tcp = *reached.iter().find(|r| r["proto"] == "tcp").unwrap();
    assert_eq!(tcp["stage"], "reached");
    assert_eq!(tcp["src_ip"], outside.v4(2).as_str());
    assert_eq!(tcp["src_port"], sport);
    assert_eq!(tcp["dst_ip"], web_ip.as_str());
    assert_eq!(tcp["dst_port"], 80);
    assert_eq!(tcp["host_port"], web_port, "the outside-reachable mapping, not the 127.0.0.1 one");
    assert_eq!(tcp["host_ip"], outside.v4(1).as_str(), "the kernel join gives the address the outsider used");
    assert_eq!(tcp["iface"], "docker0");
    assert_eq!(tcp["exposure"], "published");
    let c = &tcp["container"];
    assert_eq!(c["name"], web.name.as_str());
    assert_eq!(c["id"], web.id().as_str());
    assert_eq!(c["image"], image.as_str());
    assert_eq!((c["compose_project"].as_str(), c["compose_service"].as_str()), (Some("dxstory"), Some("web")));
    assert_eq!(tcp["path"], "bridge");
    let udp = *reached.iter().find(|r| r["proto"] == "udp").unwrap();
    assert_eq!(
        (udp["src_port"].as_u64(), udp["dst_port"].as_u64(), udp["host_port"].as_u64()),
        (Some(uport as u64), Some(5300), Some(udp_port as u64))
    );
    assert_eq!(udp["container"]["name"], web.name.as_str());

    let alert =
        format!("EXPOSED {} ({image}) {}:{web_port} -> 80/tcp reached from {}", web.name, outside.v4(1), outside.v4(2));
    assert!(lines.iter().any(|l| l == &alert), "alert line {alert:?} missing in {lines:#?}");
}

#[test]
fn networks_and_containers_created_later_are_followed_live() {
    if !docker::ready("networks_and_containers_created_later_are_followed_live") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("l");
    let n = outside.n;
    let subnet = format!("10.252.{n}.0/24");
    assert_unrouted(&subnet);
    let mut w = Watcher::start(&["--stats-interval", "0", "--uplink", &outside.uplink], json_path("live"));

    // A network created after start: its bridge is watched within a second.
    let net = docker::Network::create(&format!("dx-live-{n}"), &subnet);
    let bridge = net.bridge();
    let took = within(Duration::from_secs(3), || tcx_programs(&bridge, true) == ["bridge_egress"]);
    let took = took.unwrap_or_else(|| panic!("{bridge} not watched: {:?}", w.lines()));
    assert!(took < Duration::from_millis(1500), "bridge attached after {took:?}");

    // A container on it, reached from outside, is named.
    let port_a = 21000 + n as u16;
    let a = docker::Container::run(
        &format!("dx-a-{n}"),
        &["--network", &net.name, "-p", &format!("{port_a}:80")],
        &image,
        &["80", "5300"],
    );
    let a_ip_before = a.ip(&net.name);
    within(Duration::from_secs(2), || tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port_a)).is_ok())
        .expect("container A reachable");

    // A restarted with another address (B takes the old one): names stay right.
    sh(&["docker", "stop", "-t", "0", &a.name]);
    let port_b = 22000 + n as u16;
    let b = docker::Container::run(
        &format!("dx-b-{n}"),
        &["--network", &net.name, "-p", &format!("{port_b}:80")],
        &image,
        &["80", "5300"],
    );
    sh(&["docker", "start", &a.name]);
    let a_ip_after = a.ip(&net.name);
    assert_eq!(b.ip(&net.name), a_ip_before, "B took A's old address");
    assert_ne!(a_ip_after, a_ip_before);
    std::thread::sleep(Duration::from_millis(300));
    within(Duration::from_secs(2), || tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port_a)).is_ok())
        .expect("A reachable after restart");
    within(Duration::from_secs(2), || tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port_b)).is_ok())
        .expect("B reachable");

    // Removal: containers and network go, and so do the attachments.
    drop(a);
    drop(b);
    drop(net);
    w.wait_for_line(&format!("bridge {bridge} "), Duration::from_secs(3));
    assert!(within(Duration::from_secs(3), || w
        .lines()
        .iter()
        .any(|l| l.contains(&bridge) && l.contains("no longer")))
    .is_some());

    let (records, status, _) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    let by_port =
        |p: u16| -> Vec<&Value> { records.iter().filter(|r| r["host_port"] == p && r["stage"] == "reached").collect() };
    let a_recs = by_port(port_a);
    assert!(a_recs.len() >= 2, "two reaches of A: {records:#?}");
    for r in &a_recs {
        assert_eq!(r["container"]["name"], format!("dx-a-{n}").as_str());
        assert_eq!(r["iface"], bridge.as_str());
    }
    assert!(a_recs.iter().any(|r| r["dst_ip"] == a_ip_before.as_str()));
    assert!(a_recs.iter().any(|r| r["dst_ip"] == a_ip_after.as_str()), "A at its new address: {a_recs:#?}");
    let b_recs = by_port(port_b);
    assert!(!b_recs.is_empty());
    assert!(b_recs
        .iter()
        .all(|r| r["container"]["name"] == format!("dx-b-{n}").as_str() && r["dst_ip"] == a_ip_before.as_str()));
}

#[test]
fn without_a_docker_socket_detection_goes_on_and_says_why() {
    if !privileged("without_a_docker_socket_detection_goes_on_and_says_why") {
        return;
    }
    let bed = Bed::new("n");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let w = Watcher::start(
        &["--docker-host", "unix:///nonexistent/docker.sock", "--bridge", &bed.bridge, "--uplink", &bed.outside.uplink],
        json_path("nodocker"),
    );
    let warned = w
        .lines()
        .iter()
        .any(|l| l.contains("running without container identity") && l.contains("/nonexistent/docker.sock"));
    assert!(warned, "{:?}", w.lines());
    tcp_connect(&bed.outside.ns, Some(bed.outside.src4()), bed.host_tcp_v4()).expect("reachable");
    std::thread::sleep(Duration::from_millis(300));
    let (records, status, _) = w.stop();
    let records = bed.outside.own(records);
    assert!(status.success());
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(records[0]["container"].is_null());
}

#[test]
fn a_docker_daemon_that_goes_away_and_returns_is_followed() {
    if !docker::ready("a_docker_daemon_that_goes_away_and_returns_is_followed") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("r");
    let n = outside.n;
    let port = 31000 + n as u16;
    let web = docker::Container::run(&format!("dx-relay-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    let sock = std::env::temp_dir().join(format!("dx-relay-{n}.sock"));
    let mut relay = docker::SocketRelay::start(&sock);
    let endpoint = format!("unix://{}", sock.display());
    let mut w = Watcher::start(
        &["--docker-host", &endpoint, "--uplink", &outside.uplink, "--stats-interval", "0"],
        json_path("relay"),
    );
    assert!(w.lines().iter().any(|l| l.contains("Docker inventory: ")), "{:?}", w.lines());

    // The daemon goes away: said once, and the kernel side keeps reporting, with the
    // last known inventory.
    relay.stop();
    w.wait_for_line("keeping the kernel side and the last known inventory", Duration::from_secs(5));
    let during =
        tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("reachable while Docker is away");

    // It comes back: listed again.
    let _relay = docker::SocketRelay::start(&sock);
    let start = Instant::now();
    assert!(
        within(Duration::from_secs(20), || w.lines().iter().filter(|l| l.contains("Docker inventory: ")).count() >= 2)
            .is_some(),
        "no reconnection: {:?}",
        w.lines()
    );
    eprintln!("reconnected {:?} after the socket came back", start.elapsed());
    let (records, status, _) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    let r = records
        .iter()
        .find(|r| r["stage"] == "reached" && r["src_port"] == during)
        .expect("reach while Docker was away");
    assert_eq!(r["container"]["name"], web.name.as_str());
}

#[test]
fn direct_routing_to_an_unpublished_port_is_flagged() {
    if !docker::ready("direct_routing_to_an_unpublished_port_is_flagged") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("u");
    let n = outside.n;
    // Nothing published; a DOCKER-USER accept lets the outside host route to the
    // container address itself (as a flat network or a careless rule would).
    let db = docker::Container::run(&format!("dx-direct-{n}"), &[], &image, &["5432", "5300"]);
    let ip = db.ip("bridge");
    let _accept = docker::docker_user_rule(&["-i", outside.uplink.as_str(), "-o", "docker0", "-j", "ACCEPT"]);
    let w = Watcher::start(&["--uplink", &outside.uplink, "--stats-interval", "0"], json_path("direct"));
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), SocketAddr::new(ip.parse().unwrap(), 5432))
        .expect("routed to the container");
    std::thread::sleep(Duration::from_millis(300));
    let (records, status, lines) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    let r = records.iter().find(|r| r["src_port"] == sport).expect("record");
    assert_eq!((r["stage"].as_str(), r["exposure"].as_str()), (Some("reached"), Some("unpublished")));
    assert!(r["host_port"].is_null() && r["published"].as_array().unwrap().is_empty());
    assert_eq!(r["container"]["name"], db.name.as_str());
    assert!(lines.iter().any(|l| l.starts_with(&format!("EXPOSED UNPUBLISHED PORT {}", db.name))), "{lines:#?}");
}
