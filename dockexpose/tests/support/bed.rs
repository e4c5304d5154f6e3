//! The simulated host: run numbers and free ports, the outside host (a namespace
//! behind an uplink, with UFW's INPUT effect) and the seed story's bridge `Bed`.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use super::{sh, Undo};

/// A number for this run's names and addresses (two runs never share one).
pub fn run_id() -> u32 {
    20 + std::process::id() % 200
}

/// The first of `count` consecutive host ports, from `hint` on, that nothing holds
/// now (TCP and UDP, IPv4 and IPv6), so a `-p` publish does not fail on a port some
/// other socket took. Keep hints below 32768: the kernel hands out ports above that
/// to outgoing connections at any moment (ip_local_port_range).
pub fn free_ports(hint: u16, count: u16) -> u16 {
    let free = |p: u16| {
        TcpListener::bind(("0.0.0.0", p)).is_ok()
            && UdpSocket::bind(("0.0.0.0", p)).is_ok()
            && (TcpListener::bind(("::", p)).is_ok() || !std::path::Path::new("/proc/net/tcp6").exists())
    };
    let mut first = hint;
    while first.checked_add(count).is_some() {
        match (first..first + count).find(|&p| !free(p)) {
            None => return first,
            Some(taken) => first = taken + 1,
        }
    }
    panic!("no {count} free consecutive host ports from {hint} on: free some or pick another hint")
}

/// Fails clearly when a test prefix would collide with a route the host already has.
pub fn assert_unrouted(prefix: &str) {
    let v6 = prefix.contains(':');
    let fam = if v6 { "-6" } else { "-4" };
    let mut out = sh(&["ip", fam, "route", "show", "match", prefix]);
    out.push_str(&sh(&["ip", fam, "route", "show", "root", prefix]));
    let clash: Vec<&str> = out.lines().filter(|l| !l.starts_with("default")).collect();
    assert!(clash.is_empty(), "test prefix {prefix} overlaps existing routes {clash:?}: pick another range");
}

/// An "outside host": a namespace joined to the host by a veth whose host side (the
/// uplink) holds 198.18.N.1 and fd42:198:N::1; the namespace holds .2 and .3 (::2, ::3).
/// INPUT drops all but SSH and established traffic from it: UFW's effect, scoped to
/// the test's uplink so that a crashed test cannot lock the machine out.
pub struct OutsideHost {
    pub n: u32,
    pub ns: String,
    pub uplink: String,
    /// The veth end in the namespace before it is renamed eth0 there.
    peer: String,
    undo: Undo,
}

impl OutsideHost {
    pub fn new(tag: &str) -> Self {
        Self::with_n(tag, run_id())
    }

    /// As `new`, with the run number (hence 198.18.N.0/24, fd42:198:N::/64) chosen
    /// by the caller: a test confined to a range of its own.
    pub fn with_n(tag: &str, n: u32) -> Self {
        let (ns, uplink, peer) = (format!("dx{tag}o{n}"), format!("dx{tag}u{n}"), format!("dx{tag}x{n}"));
        for prefix in [format!("198.18.{n}.0/24"), format!("fd42:198:{n}::/64")] {
            assert_unrouted(&prefix);
        }
        let mut undo = Undo::default();
        // IPv6 forwarding is off on this host by default; restore what it was.
        let fwd6 = sh(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim().to_string();
        undo.push(&["sysctl", "-qw", &format!("net.ipv6.conf.all.forwarding={fwd6}")]);
        sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        sh(&["ip", "netns", "add", &ns]);
        undo.push(&["ip", "netns", "del", &ns]);
        undo.push(&["ip", "link", "del", &uplink]);
        let host = OutsideHost { n, ns: ns.clone(), uplink: uplink.clone(), peer, undo: Undo::default() };
        host.plug();

        for tool in ["iptables", "ip6tables"] {
            let inp = format!("DXI{tag}{n}");
            sh(&[tool, "-N", &inp]);
            undo.push(&[tool, "-X", &inp]);
            undo.push(&[tool, "-F", &inp]);
            sh(&[tool, "-A", &inp, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]);
            sh(&[tool, "-A", &inp, "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
            if tool == "ip6tables" {
                // As UFW's before6.rules: without ICMPv6, neighbour discovery dies.
                sh(&[tool, "-A", &inp, "-p", "ipv6-icmp", "-j", "ACCEPT"]);
            }
            sh(&[tool, "-A", &inp, "-j", "DROP"]);
            sh(&[tool, "-I", "INPUT", "1", "-i", &uplink, "-j", &inp]);
            undo.push(&[tool, "-D", "INPUT", "-i", &uplink, "-j", &inp]);
        }
        OutsideHost { undo, ..host }
    }

    /// The veth pair between the host (the uplink) and the namespace, addressed and
    /// routed. Called again after `unplug` to recreate it under the same names.
    pub fn plug(&self) {
        let (ns, uplink) = (self.ns.as_str(), self.uplink.as_str());
        let peer = self.peer.as_str();
        sh(&["ip", "link", "add", uplink, "type", "veth", "peer", "name", peer]);
        sh(&["ip", "link", "set", peer, "netns", ns]);
        sh(&["ip", "addr", "add", &format!("{}/24", self.v4(1)), "dev", uplink]);
        sh(&["ip", "addr", "add", &format!("{}/64", self.v6(1)), "dev", uplink, "nodad"]);
        sh(&["ip", "link", "set", uplink, "up"]);
        let o = |args: &[&str]| {
            let mut full = vec!["ip", "-n", ns];
            full.extend_from_slice(args);
            sh(&full);
        };
        o(&["link", "set", "lo", "up"]);
        o(&["link", "set", peer, "name", "eth0"]);
        for h in [2, 3] {
            o(&["addr", "add", &format!("{}/24", self.v4(h)), "dev", "eth0"]);
            o(&["addr", "add", &format!("{}/64", self.v6(h)), "dev", "eth0", "nodad"]);
        }
        o(&["link", "set", "eth0", "up"]);
        o(&["route", "add", "default", "via", &self.v4(1)]);
        o(&["-6", "route", "add", "default", "via", &self.v6(1)]);
    }

    /// Deletes the veth pair (both ends), as a restarted VPN or a replugged NIC would.
    pub fn unplug(&self) {
        sh(&["ip", "link", "del", &self.uplink]);
    }

    pub fn v4(&self, host: u32) -> String {
        format!("198.18.{}.{host}", self.n)
    }

    /// The records whose source is this outside host: what this test caused, even
    /// when another run on the machine sends traffic through docker0 meanwhile.
    pub fn own(&self, records: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
        let (v4, v6) = (format!("198.18.{}.", self.n), format!("fd42:198:{}::", self.n));
        records
            .into_iter()
            .filter(|r| r["src_ip"].as_str().is_some_and(|s| s.starts_with(&v4) || s.starts_with(&v6)))
            .collect()
    }
    pub fn v6(&self, host: u32) -> String {
        format!("fd42:198:{}::{host}", self.n)
    }
    /// The outside host's main addresses (it also holds .3 / ::3 for "trusted" tests).
    pub fn src4(&self) -> IpAddr {
        self.v4(2).parse().unwrap()
    }
    pub fn src6(&self) -> IpAddr {
        self.v6(2).parse().unwrap()
    }
    /// The host's address on the uplink, and a port on it.
    pub fn host4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v4(1).parse().unwrap(), port)
    }
    pub fn host6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v6(1).parse().unwrap(), port)
    }
}

/// The seed story on one machine without Docker: a bridge with two "containers",
/// an outside host, DNAT for published ports, FORWARD allowed for the bridge.
pub struct Bed {
    pub n: u32,
    pub bridge: String,
    pub outside: OutsideHost,
    pub c1_ns: String,
    pub c2_ns: String,
    undo: Undo,
}

pub const C_TCP: u16 = 80;
pub const C_UDP: u16 = 5300;
pub const HOST_TCP: u16 = 18080;
pub const HOST_UDP: u16 = 15300;
/// A port the host itself listens on (INPUT path), which the firewall must block.
pub const HOST_INPUT_TCP: u16 = 18081;

impl Bed {
    pub fn bridge_v4(&self, host: u32) -> String {
        format!("10.251.{}.{host}", self.n)
    }
    pub fn bridge_v6(&self, host: u32) -> String {
        format!("fd42:251:{}::{host}", self.n)
    }

    pub fn new(tag: &str) -> Self {
        let outside = OutsideHost::new(tag);
        let n = outside.n;
        let mut undo = Undo::default();
        let bridge = format!("dx{tag}b{n}");
        for prefix in [format!("10.251.{n}.0/24"), format!("fd42:251:{n}::/64")] {
            assert_unrouted(&prefix);
        }
        let mut bed = Bed {
            n,
            bridge: bridge.clone(),
            outside,
            c1_ns: format!("dx{tag}c1-{n}"),
            c2_ns: format!("dx{tag}c2-{n}"),
            undo: Undo::default(),
        };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        undo.push(&["ip", "link", "del", &bridge]);
        sh(&["ip", "addr", "add", &format!("{}/24", bed.bridge_v4(1)), "dev", &bridge]);
        sh(&["ip", "addr", "add", &format!("{}/64", bed.bridge_v6(1)), "dev", &bridge, "nodad"]);
        sh(&["ip", "link", "set", &bridge, "up"]);

        for (i, ns) in [bed.c1_ns.clone(), bed.c2_ns.clone()].iter().enumerate() {
            let host = 2 + i as u32;
            let (veth, peer) = (format!("dx{tag}v{n}{i}"), format!("dx{tag}p{n}{i}"));
            sh(&["ip", "netns", "add", ns]);
            undo.push(&["ip", "netns", "del", ns]);
            sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer]);
            undo.push(&["ip", "link", "del", &veth]);
            sh(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
            sh(&["ip", "link", "set", &peer, "netns", ns]);
            let ip = |args: &[&str]| {
                let mut full = vec!["ip", "-n", ns.as_str()];
                full.extend_from_slice(args);
                sh(&full);
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["link", "set", &peer, "name", "eth0"]);
            ip(&["addr", "add", &format!("{}/24", bed.bridge_v4(host)), "dev", "eth0"]);
            ip(&["addr", "add", &format!("{}/64", bed.bridge_v6(host)), "dev", "eth0", "nodad"]);
            ip(&["link", "set", "eth0", "up"]);
            ip(&["route", "add", "default", "via", &bed.bridge_v4(1)]);
            ip(&["-6", "route", "add", "default", "via", &bed.bridge_v6(1)]);
        }

        // DNAT and FORWARD, in chains of our own so that cleanup is exact.
        let uplink = bed.outside.uplink.clone();
        for (tool, c_tcp, c_udp, host_ip) in [
            (
                "iptables",
                format!("{}:{C_TCP}", bed.bridge_v4(2)),
                format!("{}:{C_UDP}", bed.bridge_v4(2)),
                bed.outside.v4(1),
            ),
            (
                "ip6tables",
                format!("[{}]:{C_TCP}", bed.bridge_v6(2)),
                format!("[{}]:{C_UDP}", bed.bridge_v6(2)),
                bed.outside.v6(1),
            ),
        ] {
            let (nat, fwd) = (format!("DXN{tag}{n}"), format!("DXF{tag}{n}"));
            sh(&[tool, "-t", "nat", "-N", &nat]);
            undo.push(&[tool, "-t", "nat", "-X", &nat]);
            undo.push(&[tool, "-t", "nat", "-F", &nat]);
            sh(&[
                tool,
                "-t",
                "nat",
                "-A",
                &nat,
                "-d",
                &host_ip,
                "-p",
                "tcp",
                "--dport",
                &HOST_TCP.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &c_tcp,
            ]);
            sh(&[
                tool,
                "-t",
                "nat",
                "-A",
                &nat,
                "-d",
                &host_ip,
                "-p",
                "udp",
                "--dport",
                &HOST_UDP.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &c_udp,
            ]);
            sh(&[tool, "-t", "nat", "-I", "PREROUTING", "1", "-i", &uplink, "-j", &nat]);
            undo.push(&[tool, "-t", "nat", "-D", "PREROUTING", "-i", &uplink, "-j", &nat]);

            sh(&[tool, "-N", &fwd]);
            undo.push(&[tool, "-X", &fwd]);
            undo.push(&[tool, "-F", &fwd]);
            sh(&[tool, "-A", &fwd, "-i", &uplink, "-o", &bridge, "-j", "ACCEPT"]);
            sh(&[tool, "-A", &fwd, "-i", &bridge, "-o", &uplink, "-j", "ACCEPT"]);
            sh(&[tool, "-A", &fwd, "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
            sh(&[tool, "-I", "FORWARD", "1", "-j", &fwd]);
            undo.push(&[tool, "-D", "FORWARD", "-j", &fwd]);
        }
        bed.undo = undo;
        bed
    }

    pub fn host_tcp_v4(&self) -> SocketAddr {
        self.outside.host4(HOST_TCP)
    }
    pub fn host_tcp_v6(&self) -> SocketAddr {
        self.outside.host6(HOST_TCP)
    }
    pub fn host_udp_v4(&self) -> SocketAddr {
        self.outside.host4(HOST_UDP)
    }
    pub fn host_udp_v6(&self) -> SocketAddr {
        self.outside.host6(HOST_UDP)
    }
}
