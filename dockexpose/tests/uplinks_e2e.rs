//! Uplinks of every kind a Docker host has, end to end: an L3 device (a TUN, as
//! wg0 is: no Ethernet header) on the real engine; automatic selection of Ethernet,
//! L3 and bridged uplinks (the host address on a bridge with a port); an uplink
//! deleted and recreated under the same name while traffic flows; and `--no-docker`
//! saying why it watches no uplink. Needs root and Docker.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, tun::*, *};

fn own_stage<'a>(records: &'a [Value], src: &str, sport: u16, stage: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["src_ip"] == src && r["src_port"] == sport && r["stage"] == stage).collect()
}

#[test]
fn an_l3_uplink_sees_attempts_and_reaches_carry_the_exact_host_port() {
    if !docker::ready("an_l3_uplink_sees_attempts_and_reaches_carry_the_exact_host_port") {
        return;
    }
    let image = docker::echo_image();
    let n = run_id();
    let port = 28000 + n as u16;
    let web = docker::Container::run(&format!("dx-l3-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    // 198.18.230-249: apart from the outside hosts' 198.18.20-219.
    let m = 230 + n % 20;
    let name = format!("dxl3{n}");
    let tun = Tun::create(&name, &format!("198.18.{m}.1/24"), &format!("fd42:198:{m}::1/64"));
    let (host, peer): (Ipv4Addr, Ipv4Addr) =
        (format!("198.18.{m}.1").parse().unwrap(), format!("198.18.{m}.2").parse().unwrap());
    // Both hooks: TCX ingress (the default) and XDP, each with its L3 program.
    for (hook, sport) in [("tc", 45001u16), ("xdp", 45002)] {
        let mut w = Watcher::start(
            &["--uplink", &name, "--uplink-hook", hook, "--blocked-after", "2", "--stats-interval", "0"],
            json_path("l3"),
        );
        let line = w.wait_for_line(&format!("uplink {name} watched"), Duration::from_secs(5));
        assert!(line.contains("L3, no Ethernet header"), "the L3 program is chosen for a TUN: {line}");
        assert!(line.contains(if hook == "tc" { "TCX ingress" } else { "XDP" }), "{line}");

        // A SYN arriving on the TUN: DNAT'd by Docker, answered by the container.
        tun.write(&ipv4_tcp_syn(peer, host, sport, port, 0x4000_0000 + u32::from(sport)));
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut answered = false;
        while Instant::now() < deadline && !answered {
            if let Some(p) = tun.read_timeout(Duration::from_millis(200)) {
                answered = tcp_reply(&p).is_some_and(|(s, sp, d, dp, flags)| {
                    (s, sp, d, dp) == (IpAddr::V4(host), port, IpAddr::V4(peer), sport) && flags & 0x12 == 0x12
                });
            }
        }
        assert!(answered, "the container answered through the TUN");
        std::thread::sleep(Duration::from_millis(2500)); // past --blocked-after
        let (records, status, lines) = w.stop();
        assert!(status.success());
        let peer_s = peer.to_string();
        let attempted = own_stage(&records, &peer_s, sport, "attempted");
        let reached = own_stage(&records, &peer_s, sport, "reached");
        assert_eq!((attempted.len(), reached.len()), (1, 1), "{records:#?}");
        assert!(own_stage(&records, &peer_s, sport, "blocked").is_empty());
        assert_eq!(attempted[0]["iface"], name.as_str());
        assert_eq!(
            (attempted[0]["dst_ip"].as_str(), attempted[0]["dst_port"].as_u64()),
            (Some(host.to_string().as_str()), Some(port as u64))
        );
        assert_eq!(attempted[0]["container"]["name"], web.name.as_str());
        assert_eq!(
            (reached[0]["host_ip"].as_str(), reached[0]["host_port"].as_u64()),
            (Some(host.to_string().as_str()), Some(port as u64))
        );
        let last = lines.iter().find(|l| l.contains("final counters")).unwrap();
        // The SYN-ACK leaving the TUN, seen by the L3 egress program: an answer to a
        // reached attempt, counted without a record.
        assert!(counter(last, "answers_of_reached") >= 1, "the L3 egress program saw the SYN-ACK: {last}");
    }
}

#[test]
fn automatic_selection_picks_ethernet_l3_and_bridged_uplinks_and_says_which() {
    if !docker::ready("automatic_selection_picks_ethernet_l3_and_bridged_uplinks_and_says_which") {
        return;
    }
    // A host of its own: a namespace with an Ethernet uplink, a TUN (L3), a bridge
    // holding the host address with a port (Proxmox's vmbr0), and a portless
    // addressed bridge, which is no uplink.
    let n = run_id();
    let ns = format!("dxsel{n}");
    let mut undo = Undo::default();
    sh(&["ip", "netns", "add", &ns]);
    undo.push(&["ip", "netns", "del", &ns]);
    let ip = |args: &[&str]| {
        let mut full = vec!["ip", "-n", ns.as_str()];
        full.extend_from_slice(args);
        sh(&full);
    };
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    ip(&["addr", "add", "198.18.240.1/24", "dev", "eth0"]);
    ip(&["link", "add", "vmbr0", "type", "bridge"]);
    ip(&["link", "add", "eno1", "type", "veth", "peer", "name", "eno1p"]);
    ip(&["link", "set", "eno1", "master", "vmbr0"]);
    ip(&["addr", "add", "198.18.241.1/24", "dev", "vmbr0"]);
    ip(&["link", "add", "brlonely", "type", "bridge"]);
    ip(&["addr", "add", "10.249.7.1/24", "dev", "brlonely"]);
    ip(&["tuntap", "add", "mode", "tun", "name", "wg0"]);
    ip(&["addr", "add", "198.18.242.1/24", "dev", "wg0"]);
    for dev in ["eth0", "eth0p", "vmbr0", "eno1", "eno1p", "brlonely", "wg0"] {
        ip(&["link", "set", dev, "up"]);
    }
    let mut w = Watcher::start_in_netns(&ns, &["--stats-interval", "0"], json_path("sel"));
    let eth = w.wait_for_line("uplink eth0 watched", Duration::from_secs(5));
    let wg = w.wait_for_line("uplink wg0 watched", Duration::from_secs(5));
    let br = w.wait_for_line("uplink eno1 watched", Duration::from_secs(5));
    assert!(eth.contains("(Ethernet;"), "{eth}");
    assert!(wg.contains("(L3, no Ethernet header;"), "{wg}");
    assert!(br.contains("a port of the bridged uplink vmbr0, Ethernet;"), "{br}");
    let start = w.wait_for_line("dockexpose: watching", Duration::from_secs(1));
    let (_, status, lines) = w.stop();
    assert!(status.success());
    for not_uplink in ["brlonely", "vmbr0 ", "lo "] {
        assert!(
            !lines.iter().any(|l| l.contains(&format!("uplink {not_uplink}"))),
            "{not_uplink} is no uplink: {lines:#?}"
        );
    }
    assert!(start.contains("uplinks: eno1, eth0, wg0"), "{start}");
}

#[test]
fn an_uplink_recreated_under_the_same_name_is_attached_again_while_traffic_flows() {
    if !docker::ready("an_uplink_recreated_under_the_same_name_is_attached_again_while_traffic_flows") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("rc");
    let port = 29000 + outside.n as u16;
    let _web = docker::Container::run(
        &format!("dx-rc-{}", outside.n),
        &["-p", &format!("{port}:80")],
        &image,
        &["80", "5300"],
    );
    let mut w = Watcher::start(&["--uplink", &outside.uplink, "--stats-interval", "0"], json_path("rc"));
    let before = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("before");
    // Traffic keeps flowing from another thread (from .3, so that its source ports
    // never collide with the checked ones) while the uplink goes away and back.
    let (ns, src, dst) = (outside.ns.clone(), outside.v4(3).parse().unwrap(), outside.host4(port));
    let flow = std::thread::spawn(move || connect_loop(&ns, src, dst, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(300));
    outside.unplug();
    outside.plug();
    w.wait_for_line("attaching again", Duration::from_secs(5));
    flow.join().unwrap();
    assert!(
        tcx_programs(&outside.uplink, false).iter().any(|p| p == "uplink_ingress"),
        "the new device has the ingress program"
    );
    let after = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("after");
    std::thread::sleep(Duration::from_millis(300));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let src = outside.v4(2);
    for (what, sport) in [("before", before), ("after", after)] {
        assert_eq!(
            own_stage(&records, &src, sport, "attempted").len(),
            1,
            "{what}: attempt seen on {}: {records:#?}",
            outside.uplink
        );
        assert_eq!(own_stage(&records, &src, sport, "reached").len(), 1, "{what}");
    }
}

#[test]
fn without_docker_no_uplink_is_attached_and_the_start_line_says_why() {
    if !privileged("without_docker_no_uplink_is_attached_and_the_start_line_says_why") {
        return;
    }
    let outside = OutsideHost::new("nd");
    let mut w = Watcher::start(&["--no-docker", "--uplink", &outside.uplink], json_path("nd2"));
    let line = w.wait_for_line("dockexpose: watching", Duration::from_secs(1));
    assert!(line.contains("uplinks: off (--no-docker"), "{line}");
    assert!(w.lines().iter().any(|l| l.contains("--uplink is ignored with --no-docker")), "{:#?}", w.lines());
    assert!(!xdp_attached(&outside.uplink), "nothing attached where nothing could be reported");
    let (_, status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn a_bridged_uplink_sees_attempts_on_its_port() {
    if !docker::ready("a_bridged_uplink_sees_attempts_on_its_port") {
        return;
    }
    // Proxmox's and libvirt's layout: the host address on a bridge, the NIC a port of
    // it (here a veth whose other end is the outside host).
    let image = docker::echo_image();
    let n = run_id();
    let (ns, br, port_if, peer) = (format!("dxbro{n}"), format!("dxvmbr{n}"), format!("dxbp{n}"), format!("dxbx{n}"));
    let m = 230 + n % 20;
    assert_unrouted(&format!("198.19.{m}.0/24"));
    let mut undo = Undo::default();
    sh(&["ip", "netns", "add", &ns]);
    undo.push(&["ip", "netns", "del", &ns]);
    sh(&["ip", "link", "add", &br, "type", "bridge"]);
    undo.push(&["ip", "link", "del", &br]);
    sh(&["ip", "link", "add", &port_if, "type", "veth", "peer", "name", &peer]);
    undo.push(&["ip", "link", "del", &port_if]);
    sh(&["ip", "link", "set", &port_if, "master", &br]);
    sh(&["ip", "link", "set", &peer, "netns", &ns]);
    sh(&["ip", "addr", "add", &format!("198.19.{m}.1/24"), "dev", &br]);
    sh(&["ip", "link", "set", &br, "up"]);
    sh(&["ip", "link", "set", &port_if, "up"]);
    let o = |args: &[&str]| {
        let mut full = vec!["ip", "-n", ns.as_str()];
        full.extend_from_slice(args);
        sh(&full);
    };
    o(&["link", "set", "lo", "up"]);
    o(&["link", "set", &peer, "name", "eth0"]);
    o(&["addr", "add", &format!("198.19.{m}.2/24"), "dev", "eth0"]);
    o(&["link", "set", "eth0", "up"]);
    o(&["route", "add", "default", "via", &format!("198.19.{m}.1")]);
    let port = 32000 + n as u16;
    let web = docker::Container::run(&format!("dx-brup-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    let mut w = Watcher::start(&["--uplink", &br, "--blocked-after", "2", "--stats-interval", "0"], json_path("brup"));
    let line = w.wait_for_line(&format!("uplink {port_if} watched"), Duration::from_secs(5));
    assert!(line.contains(&format!("a port of the bridged uplink {br}")), "{line}");
    let host: std::net::SocketAddr = format!("198.19.{m}.1:{port}").parse().unwrap();
    let src: IpAddr = format!("198.19.{m}.2").parse().unwrap();
    let sport = tcp_connect(&ns, Some(src), host).expect("reachable through the bridged uplink");
    std::thread::sleep(Duration::from_millis(2500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let src_s = src.to_string();
    let attempted = own_stage(&records, &src_s, sport, "attempted");
    let reached = own_stage(&records, &src_s, sport, "reached");
    assert_eq!((attempted.len(), reached.len()), (1, 1), "{records:#?}");
    assert_eq!(attempted[0]["iface"], port_if.as_str());
    assert_eq!(attempted[0]["container"]["name"], web.name.as_str());
    assert_eq!(reached[0]["host_port"], port);
    assert!(own_stage(&records, &src_s, sport, "blocked").is_empty());
}

#[test]
fn the_tcx_ingress_hook_sees_attempts_as_xdp_does() {
    if !docker::ready("the_tcx_ingress_hook_sees_attempts_as_xdp_does") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("tc");
    let port = free_ports(16300 + outside.n as u16, 1);
    let web = docker::Container::run(
        &format!("dx-tc-{}", outside.n),
        &["-p", &format!("{port}:80")],
        &image,
        &["80", "5300"],
    );
    let mut w = Watcher::start(
        &["--uplink", &outside.uplink, "--uplink-hook", "tc", "--blocked-after", "2", "--stats-interval", "0"],
        json_path("tc"),
    );
    let line = w.wait_for_line(&format!("uplink {} watched", outside.uplink), Duration::from_secs(5));
    assert!(line.contains("TCX ingress"), "{line}");
    assert!(!xdp_attached(&outside.uplink), "no XDP program with --uplink-hook tc");
    assert!(
        tcx_programs(&outside.uplink, false).iter().any(|p| p == "uplink_ingress"),
        "the TCX ingress program is attached"
    );
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("reachable");
    // An unpublished port: INPUT drops it, and no attempt is recorded.
    assert!(tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port + 1)).is_err());
    std::thread::sleep(Duration::from_millis(2500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let src = outside.v4(2);
    let attempted = own_stage(&records, &src, sport, "attempted");
    let reached = own_stage(&records, &src, sport, "reached");
    assert_eq!((attempted.len(), reached.len()), (1, 1), "{records:#?}");
    assert_eq!(attempted[0]["iface"], outside.uplink.as_str());
    assert_eq!(attempted[0]["container"]["name"], web.name.as_str());
    assert_eq!(reached[0]["host_port"], port);
    assert!(!outside.own(records.clone()).iter().any(|r| r["dst_port"] == port + 1), "{records:#?}");
}
