//! `verify --direct`: exposure without publishing. Docker before 28, the `routed` and
//! `nat-unprotected` gateway modes, `iptables: false` and IPv6 without ip6tables let a
//! neighbour that routes to the bridge reach container ports nobody published. For
//! every running container, its listening sockets are read from its own network
//! namespace (/proc/PID/net/*), and each is probed straight at the container's
//! address, entering by the uplinks as such a neighbour's packet would.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::Instant,
};

use anyhow::{anyhow, Result};

use super::{
    plan::{self, Plan, Probe, Skipped, Target},
    Prepared,
};
use crate::{
    cli::InjectionArg,
    host::interfaces::HostSnapshot,
    inventory::model::{Inventory, PublishedPort},
    kernel::event::Proto,
};

/// A socket that takes connections (TCP LISTEN) or datagrams (unconnected UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listening {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
}

/// The listening sockets in one /proc/PID/net/{tcp,tcp6,udp,udp6} table.
pub fn parse_proc_net(text: &str, proto: Proto) -> Vec<Listening> {
    // TCP_LISTEN; an unconnected UDP socket shows TCP_CLOSE.
    let wanted = if proto == Proto::Tcp { "0A" } else { "07" };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(state)) = (w.get(1), w.get(2), w.get(3)) else {
            continue;
        };
        if *state != wanted || (proto == Proto::Udp && !remote.ends_with(":0000")) {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(addr), Ok(port)) = (parse_addr(addr), u16::from_str_radix(port, 16)) else {
            continue;
        };
        out.push(Listening { proto, addr, port });
    }
    out
}

/// An address as the kernel prints it there: 32-bit words in hex, each in host order.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The listening sockets of the process `pid`'s network namespace.
pub fn listening_of(pid: u32) -> Vec<Listening> {
    let mut out = BTreeSet::new();
    for (file, proto) in [("tcp", Proto::Tcp), ("tcp6", Proto::Tcp), ("udp", Proto::Udp), ("udp6", Proto::Udp)] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            out.extend(parse_proc_net(&text, proto));
        }
    }
    out.into_iter().collect()
}

/// One target per (container address, listening socket) a neighbour could reach:
/// sockets on loopback are left out, a socket on a wildcard serves every address
/// of its family (an IPv6 wildcard takes IPv4 too unless the socket says otherwise,
/// which /proc does not show: IPv4 is then probed as well).
pub fn targets(inventory: &Inventory, listening: &HashMap<String, Vec<Listening>>) -> Vec<Target> {
    let mut out = Vec::new();
    for c in &inventory.containers {
        let Some(socks) = listening.get(&c.id) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for s in socks.iter().filter(|s| !s.addr.is_loopback()) {
            for (_, addr) in &c.addresses {
                let serves = s.addr == *addr
                    || (s.addr.is_unspecified() && (s.addr.is_ipv4() == addr.is_ipv4() || s.addr.is_ipv6()));
                if serves && seen.insert((*addr, s.port, s.proto)) {
                    let port =
                        PublishedPort { host_ip: *addr, host_port: s.port, container_port: s.port, proto: s.proto };
                    out.push(Target { container: Some((c.name.clone(), c.image.clone())), port, direct: true });
                }
            }
        }
    }
    out
}

/// Each target probed at the container's address, through every uplink, from every
/// source of its family.
pub fn plan(targets: &[Target], uplinks: usize, sources: &[IpAddr]) -> Plan {
    let mut plan = Plan::default();
    for (ti, t) in targets.iter().enumerate() {
        let dst = t.port.host_ip;
        let family: Vec<IpAddr> = sources.iter().copied().filter(|s| s.is_ipv4() == dst.is_ipv4()).collect();
        if family.is_empty() {
            plan.skipped.push((ti, Skipped::NoSource));
        }
        for uplink in 0..uplinks {
            for &source in &family {
                plan.probes.push(Probe {
                    target: ti,
                    uplink,
                    source,
                    dst,
                    dst_port: t.port.host_port,
                    proto: t.port.proto,
                });
            }
        }
    }
    plan
}

/// Reads the host, the containers' sockets, and plans the direct probes.
pub fn prepare(
    uplinks: &[String],
    inventory: &Inventory,
    pids: &HashMap<String, u32>,
    sources: &[IpAddr],
) -> Result<Prepared> {
    let started = Instant::now();
    let host = HostSnapshot::read().map_err(|e| anyhow!("{e}"))?;
    let listening: HashMap<String, Vec<Listening>> =
        pids.iter().map(|(id, pid)| (id.clone(), listening_of(*pid))).collect();
    let bridges = inventory.bridges();
    let uplinks = super::choose_uplinks(&host, &bridges, uplinks)?;
    let targets = targets(inventory, &listening);
    let plan = plan(&targets, uplinks.len(), sources);
    let guarded = plan::guarded_interfaces(&host, &uplinks);
    Ok(Prepared {
        started,
        bridges,
        uplinks,
        targets,
        plan,
        sources: sources.to_vec(),
        injection: InjectionArg::Auto,
        guarded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::model::Container;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 020011AC:1F90 050011AC:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A
";
    const UDP: &str = "   sl  local_address rem_address   st
  1: 00000000:14EB 00000000:0000 07
  2: 020011AC:A000 08080808:0035 01
";

    #[test]
    fn listening_sockets_are_read_from_proc_net() {
        let tcp = parse_proc_net(TCP, Proto::Tcp);
        assert_eq!(
            tcp,
            [
                Listening { proto: Proto::Tcp, addr: "0.0.0.0".parse().unwrap(), port: 8080 },
                Listening { proto: Proto::Tcp, addr: "127.0.0.1".parse().unwrap(), port: 53 },
            ]
        );
        let tcp6 = parse_proc_net(TCP6, Proto::Tcp);
        assert_eq!(
            tcp6.iter().map(|l| (l.addr.to_string(), l.port)).collect::<Vec<_>>(),
            [("::1".into(), 22), ("::".into(), 80)]
        );
        // A connected UDP socket takes datagrams from its peer alone.
        assert_eq!(
            parse_proc_net(UDP, Proto::Udp),
            [Listening { proto: Proto::Udp, addr: "0.0.0.0".parse().unwrap(), port: 5355 }]
        );
    }

    #[test]
    fn each_reachable_socket_is_a_target_at_each_container_address() {
        let c = Container {
            id: "abc".into(),
            name: "web".into(),
            image: "nginx".into(),
            addresses: vec![
                ("bridge".into(), "172.17.0.2".parse().unwrap()),
                ("bridge".into(), "fd00::2".parse().unwrap()),
            ],
            ..Default::default()
        };
        let inventory = Inventory { containers: vec![c], ..Default::default() };
        let mut socks = parse_proc_net(TCP, Proto::Tcp);
        socks.extend(parse_proc_net(TCP6, Proto::Tcp));
        let listening = HashMap::from([("abc".to_string(), socks)]);
        let t = targets(&inventory, &listening);
        let got: Vec<String> = t.iter().map(|t| format!("{}:{}", t.port.host_ip, t.port.host_port)).collect();
        // 8080 on 0.0.0.0 (IPv4 only), 80 on :: (both families); loopback never.
        assert_eq!(got, ["172.17.0.2:8080", "172.17.0.2:80", "fd00::2:80"]);
        assert!(t.iter().all(|t| t.direct));
        let p = plan(&t, 2, &["198.51.100.77".parse().unwrap()]);
        assert_eq!(p.probes.len(), 4, "two IPv4 targets through two uplinks");
        assert_eq!(p.skipped, [(2, Skipped::NoSource)]);
    }
}
