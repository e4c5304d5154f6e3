//! verify's host-state operations over netlink (src/host/{routes,conntrack}.rs and
//! src/verify/host_state.rs), against the real kernel and the real `ip` and
//! `conntrack` programs as the reference: route lookups, temporary neighbour
//! entries, and conntrack entries of real connections (through DNAT, and from the
//! host) deleted by their exact original tuple and counted. Root; everything the
//! tests make (namespaces, veths, routes, rules, neighbour entries) goes on drop.

#[path = "../support/mod.rs"]
mod support;

mod conntrack_flows;
mod interfaces;
mod neighbours;
mod route_lookups;

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::Mutex,
    time::Duration,
};

use dockexpose::{
    host::{conntrack, conntrack::FlowTuple, routes},
    kernel::event::Proto,
    verify::{frame::PROBE_SRC_MAC, host_state, plan::Probe},
};
use support::*;

/// The tests share one address range: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// An outside host (namespace `o`, 198.18.N.2 and fd42:198:N::2, the host's side
/// 198.18.N.1 and fd42:198:N::1 on veth `uplink`) and a container (namespace `c`,
/// 10.251.N.2, behind veth `bridge` at 10.251.N.1). Removed on drop.
struct Bed {
    n: u32,
    outside: String,
    container: String,
    uplink: String,
    bridge: String,
    undo: Undo,
}

impl Bed {
    fn new() -> Self {
        let n = run_id();
        for prefix in [format!("198.18.{n}.0/24"), format!("fd42:198:{n}::/64"), format!("10.251.{n}.0/24")] {
            assert_unrouted(&prefix);
        }
        let (outside, container) = (format!("dxnlo{n}"), format!("dxnlc{n}"));
        let (uplink, bridge) = (format!("dxnlu{n}"), format!("dxnlb{n}"));
        let mut undo = Undo::default();
        // Last undone: the conntrack entries of the test's flows, also when it failed
        // before deleting them (by the `conntrack` program, not the code under test).
        undo.push(&["conntrack", "-D", "-s", &format!("198.18.{n}.2")]);
        undo.push(&["conntrack", "-D", "-f", "ipv6", "-s", &format!("fd42:198:{n}::1")]);
        for (ns, host_end, addr4, addr6) in [
            (&outside, &uplink, format!("198.18.{n}"), Some(format!("fd42:198:{n}:"))),
            (&container, &bridge, format!("10.251.{n}"), None),
        ] {
            sh(&["ip", "netns", "add", ns]);
            undo.push(&["ip", "netns", "del", ns]);
            let peer = format!("{host_end}p");
            sh(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", &peer]);
            undo.push(&["ip", "link", "del", host_end]);
            sh(&["ip", "link", "set", &peer, "netns", ns]);
            sh(&["ip", "addr", "add", &format!("{addr4}.1/24"), "dev", host_end]);
            sh(&["ip", "link", "set", host_end, "up"]);
            let o = |args: &[&str]| sh(&[&["ip", "-n", ns.as_str()], args].concat());
            o(&["link", "set", "lo", "up"]);
            o(&["link", "set", &peer, "name", "eth0"]);
            o(&["addr", "add", &format!("{addr4}.2/24"), "dev", "eth0"]);
            if let Some(v6) = &addr6 {
                sh(&["ip", "addr", "add", &format!("{v6}:1/64"), "dev", host_end, "nodad"]);
                o(&["addr", "add", &format!("{v6}:2/64"), "dev", "eth0", "nodad"]);
            }
            o(&["link", "set", "eth0", "up"]);
            o(&["route", "add", "default", "via", &format!("{addr4}.1")]);
        }
        Bed { n, outside, container, uplink, bridge, undo }
    }

    fn v4(&self, host: u32) -> IpAddr {
        format!("198.18.{}.{host}", self.n).parse().unwrap()
    }
    fn v6(&self, host: u32) -> IpAddr {
        format!("fd42:198:{}::{host:x}", self.n).parse().unwrap()
    }

    /// Runs `args`, undone on drop by `undo_args`.
    fn with(&mut self, args: &[&str], undo_args: &[&str]) {
        sh(args);
        self.undo.push(undo_args);
    }
}
