//! The record is never blinded and never guesses (issue 17), tried as an attacker
//! would on the real engine: a trickle of connections to an address no container
//! holds during a SYN flood, direct routing next to the published path, one tuple
//! and ISN reused for new connections, a spoofed trusted source. Needs root, Docker
//! and scapy; every namespace, link, route and rule is removed by a guard.

#[path = "../support/mod.rs"]
mod support;

mod paths;
mod reuse;
mod ring;

use std::{
    net::{SocketAddr, SocketAddrV4},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;
use support::{craft::craft, docker, *};

fn reached(records: &[Value], sport: u16) -> Vec<&Value> {
    records.iter().filter(|r| r["stage"] == "reached" && r["src_port"] == sport).collect()
}

/// A host on docker0 that no container is: a VM or LXC guest bridged into Docker's
/// network (a netns whose veth is a port of docker0), listening on TCP `port`.
struct Guest {
    ns: String,
    addr: String,
    _services: Services,
    _undo: Undo,
}

impl Guest {
    /// A guest listening on TCP 7000, allowed in DOCKER-USER, that `outside` routes to
    /// through the host.
    fn reachable_from(outside: &OutsideHost) -> (Self, Undo) {
        let guest = Guest::new(outside.n, 7000);
        let accept = docker::docker_user_rule(&["-d", guest.addr.as_str(), "-j", "ACCEPT"]);
        sh(&["ip", "-n", &outside.ns, "route", "add", &format!("{}/32", guest.addr), "via", &outside.v4(1)]);
        (guest, accept)
    }

    fn new(n: u32, port: u16) -> Self {
        let subnet = sh(&["docker", "network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Subnet}}"]);
        assert_eq!(subnet.trim(), "172.17.0.0/16", "docker0's subnet: this test places a guest in 172.17.254.0/24");
        let (ns, host_end) = (format!("dxg{n}"), format!("dxgv{n}"));
        let addr = format!("172.17.254.{n}");
        let in_use =
            sh(&["docker", "network", "inspect", "bridge", "-f", "{{range .Containers}}{{.IPv4Address}} {{end}}"]);
        assert!(!in_use.contains(&format!("{addr}/")), "{addr} is a container's address");
        let mut undo = Undo::default();
        sh(&["ip", "netns", "add", &ns]);
        undo.push(&["ip", "netns", "del", &ns]);
        sh(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        undo.push(&["ip", "link", "del", &host_end]);
        sh(&["ip", "link", "set", &host_end, "master", "docker0", "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/16"), "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", "172.17.0.1"]);
        let services = Services::start(&ns, port, port + 1);
        Guest { ns, addr, _services: services, _undo: undo }
    }
}

/// An outside host, and an echo container publishing TCP port `base` + the run number.
fn published_echo(tag: &str, base: u16) -> (OutsideHost, docker::Container, u16) {
    let image = docker::echo_image();
    let outside = OutsideHost::new(tag);
    let port = base + outside.n as u16;
    let name = format!("dx-{tag}-{}", outside.n);
    let c = docker::Container::run(&name, &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    (outside, c, port)
}
