//! What to probe and what the outcome means (pure): bindings x uplinks x families ->
//! probes; kernel observations -> a verdict; verdicts -> lines and an exit code.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    host::interfaces::{is_global, HostSnapshot, LinkLayer},
    inventory::model::{Inventory, PublishedPort},
    kernel::event::Proto,
    net::prefix::Prefix,
    output::human::escape_untrusted,
};

/// Default probe sources: documentation ranges (RFC 5737, RFC 3849), which no
/// allow-list should trust.
pub const DEFAULT_SOURCE_V4: &str = "198.51.100.77";
pub const DEFAULT_SOURCE_V6: &str = "2001:db8:dc::77";

/// A published binding and who publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `None` for a `--port` given by hand that no container publishes.
    pub container: Option<(String, String)>,
    pub port: PublishedPort,
    /// `verify --direct`: a socket probed at the container's own address (nobody
    /// published it); `port.host_ip`/`host_port` are that address and port.
    pub direct: bool,
}

/// An uplink as verify needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
    pub layer: LinkLayer,
    /// None on L3 devices.
    pub mac: Option<[u8; 6]>,
    pub addresses: Vec<IpAddr>,
}

/// Where the guard goes: every interface a reply could leave by. Policy routing
/// (`ip rule`, fwmark) and ECMP choose among all routes, not the one `ip route get`
/// names, so that is every interface that is up, but loopback and bridge ports (what
/// leaves by a port left by its bridge first) and verify's own veth.
pub fn guarded_interfaces(host: &HostSnapshot, uplinks: &[Uplink]) -> BTreeMap<String, LinkLayer> {
    let mut out: BTreeMap<String, LinkLayer> = uplinks.iter().map(|u| (u.name.clone(), u.layer)).collect();
    for i in host.interfaces.values() {
        if i.is_up && !i.is_loopback && !i.is_bridge_port && !i.name.starts_with(super::inject::VETH_PREFIX) {
            out.entry(i.name.clone()).or_insert(i.link_layer);
        }
    }
    out
}

/// One packet to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub target: usize,
    pub uplink: usize,
    pub source: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub proto: Proto,
}

/// A binding that is not probed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Bound to 127.0.0.1 / ::1: not reachable from outside.
    Loopback,
    /// Bound to an address no uplink holds (or a family no uplink has).
    NoUplinkAddress,
    /// No probe source of this family (`--from` gave only the other).
    NoSource,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub probes: Vec<Probe>,
    pub skipped: Vec<(usize, Skipped)>,
}

/// `--port 8080/tcp` (protocol defaults to tcp).
pub fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port.trim().parse().map_err(|_| format!("{s:?}: the port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{s:?}: the port must be a number from 1 to 65535"));
    }
    let Some(proto) = Proto::parse(&proto.trim().to_ascii_lowercase()) else {
        return Err(format!("{s:?}: the protocol must be tcp, udp or sctp"));
    };
    Ok((port, proto))
}

/// One probe source per `--from` prefix: its first host address (the address itself
/// for a /32 or /128, the network address + 1 otherwise).
pub fn source_of(prefix: &Prefix) -> IpAddr {
    match prefix.addr() {
        IpAddr::V4(a) if prefix.len() < 31 => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) if prefix.len() < 127 => IpAddr::V6((u128::from(a) + 1).into()),
        other => other,
    }
}

/// The bindings to verify: every published port of every container, or the ports
/// given by hand (named after the container publishing them, when one does).
pub fn targets(inventory: &Inventory, ports: &[(u16, Proto)]) -> Vec<Target> {
    let mut out = Vec::new();
    if ports.is_empty() {
        for c in &inventory.containers {
            for p in &c.ports {
                out.push(Target { container: Some((c.name.clone(), c.image.clone())), port: *p, direct: false });
            }
        }
    } else {
        for &(port, proto) in ports {
            let mut found = false;
            for c in &inventory.containers {
                for p in c.ports.iter().filter(|p| p.host_port == port && p.proto == proto) {
                    out.push(Target { container: Some((c.name.clone(), c.image.clone())), port: *p, direct: false });
                    found = true;
                }
            }
            if !found {
                for host_ip in [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])] {
                    let port = PublishedPort { host_ip, host_port: port, container_port: port, proto };
                    out.push(Target { container: None, port, direct: false });
                }
            }
        }
    }
    out.sort_by_key(|t| (t.port.proto, t.port.host_port, t.port.host_ip.is_ipv6(), t.port.host_ip));
    out.dedup();
    out
}

/// Probes: for each binding, each uplink, each address of the uplink the binding
/// covers (0.0.0.0: its IPv4 addresses; ::, its IPv6 ones; a specific address, only
/// where the uplink holds it), from each source of that family.
pub fn plan(targets: &[Target], uplinks: &[Uplink], sources: &[IpAddr]) -> Plan {
    let mut plan = Plan::default();
    for (ti, t) in targets.iter().enumerate() {
        let bind = t.port.host_ip;
        if bind.is_loopback() {
            plan.skipped.push((ti, Skipped::Loopback));
            continue;
        }
        let family_sources: Vec<IpAddr> = sources.iter().copied().filter(|s| s.is_ipv4() == bind.is_ipv4()).collect();
        let mut any = false;
        for (ui, u) in uplinks.iter().enumerate() {
            let dsts = u.addresses.iter().copied().filter(|a| is_global(*a) && a.is_ipv4() == bind.is_ipv4());
            for dst in dsts.filter(|a| bind.is_unspecified() || *a == bind) {
                any = true;
                for &source in &family_sources {
                    plan.probes.push(Probe {
                        target: ti,
                        uplink: ui,
                        source,
                        dst,
                        dst_port: t.port.host_port,
                        proto: t.port.proto,
                    });
                }
            }
        }
        if !any {
            plan.skipped.push((ti, Skipped::NoUplinkAddress));
        } else if family_sources.is_empty() {
            plan.skipped.push((ti, Skipped::NoSource));
        }
    }
    plan
}

/// What the guard saw leave towards the probe source, from the probed address and port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    pub syn_ack: bool,
    pub rst: bool,
    pub udp: bool,
    /// An SCTP INIT-ACK.
    pub init_ack: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// The probe reached a container (seen on a container bridge).
    Exposed,
    /// The host itself answered (docker-proxy): reachable, through the INPUT path.
    Proxy,
    /// Nothing reached a container and nothing answered.
    Held,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Exposed => "EXPOSED",
            Verdict::Proxy => "PROXY",
            Verdict::Held => "HELD",
        }
    }

    /// Reachable from outside, one way or another.
    pub fn reachable(self) -> bool {
        self != Verdict::Held
    }
}

/// The verdict of one probe, and a few words on why.
pub fn decide(proto: Proto, reached: bool, answers: Answers) -> (Verdict, &'static str) {
    if reached {
        let why = match (proto, answers) {
            (Proto::Tcp, a) if a.syn_ack => "reached the container, which accepted (SYN-ACK)",
            (Proto::Tcp, a) if a.rst => {
                "reached the container; nothing listens there (RST), yet the port is open to outsiders"
            }
            (Proto::Udp, a) if a.udp => "reached the container, which answered",
            (Proto::Sctp, a) if a.init_ack => "reached the container, which accepted (INIT-ACK)",
            _ => "reached the container",
        };
        return (Verdict::Exposed, why);
    }
    match proto {
        Proto::Tcp if answers.syn_ack => (Verdict::Proxy, "the host itself accepted it (docker-proxy, INPUT path)"),
        Proto::Udp if answers.udp => (Verdict::Proxy, "the host itself answered it (docker-proxy, INPUT path)"),
        Proto::Sctp if answers.init_ack => (Verdict::Proxy, "the host itself accepted it (INIT-ACK on the INPUT path)"),
        Proto::Tcp if answers.rst => (Verdict::Held, "refused by the host (RST): not forwarded to the container"),
        _ => (Verdict::Held, "dropped before reaching the container"),
    }
}

/// 0: nothing reachable beyond the ports the operator expects; 1: something else is.
pub fn exit_code(reachable: &[(u16, Proto)], expected: &BTreeSet<(u16, Proto)>) -> i32 {
    if reachable.iter().any(|p| !expected.contains(p)) {
        1
    } else {
        0
    }
}

/// "nothing unexpected is reachable", or the reachable ports not expected (20 at most).
pub fn unexpected_text(reachable: &[(u16, Proto)], expected: &BTreeSet<(u16, Proto)>) -> String {
    let unexpected: BTreeSet<String> = reachable
        .iter()
        .filter(|p| !expected.contains(p))
        .map(|(port, proto)| format!("{port}/{}", proto.as_str()))
        .collect();
    if unexpected.is_empty() {
        return "nothing unexpected is reachable".to_string();
    }
    let list: Vec<String> = unexpected.iter().take(20).cloned().collect();
    let more = if unexpected.len() > 20 { format!(" and {} more", unexpected.len() - 20) } else { String::new() };
    format!("reachable and not --expect-exposed: {}{more}", list.join(", "))
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// "container web (image nginx:1.27), binding 0.0.0.0:8080->80/tcp"
pub fn describe_target(t: &Target) -> String {
    let who = match &t.container {
        Some((name, image)) => format!("container {} (image {})", escape_untrusted(name), escape_untrusted(image)),
        None => "no container publishes it".to_string(),
    };
    if t.direct {
        return format!(
            "{who}, listening on {}/{}, never published",
            endpoint(t.port.host_ip, t.port.host_port),
            t.port.proto.as_str()
        );
    }
    format!(
        "{who}, binding {}->{}/{}",
        endpoint(t.port.host_ip, t.port.host_port),
        t.port.container_port,
        t.port.proto.as_str()
    )
}

/// One line per probe.
pub fn probe_line(verdict: Verdict, why: &str, t: &Target, p: &Probe, uplink: &str, expected: bool) -> String {
    let note = if verdict.reachable() && expected { " (expected: --expect-exposed)" } else { "" };
    let word = if t.direct && verdict == Verdict::Exposed { "EXPOSED (direct) " } else { verdict.as_str() };
    format!(
        "{:<8}{} {} from {} via {}: {}; {}{}",
        word,
        p.proto.as_str(),
        endpoint(p.dst, p.dst_port),
        p.source,
        escape_untrusted(uplink),
        describe_target(t),
        why,
        note
    )
}

/// One line per binding not probed.
pub fn skipped_line(t: &Target, why: &Skipped) -> String {
    let (head, text) = match why {
        Skipped::Loopback => ("LOCAL", "bound to loopback only: not reachable from outside (not probed)"),
        Skipped::NoUplinkAddress => {
            ("LOCAL", "no uplink holds this address or family: not reachable through them (not probed)")
        }
        Skipped::NoSource => ("SKIPPED", "no probe source of this family (add a --from of it)"),
    };
    format!("{head:<8}{} {}: {text}", t.port.proto.as_str(), describe_target(t))
}

#[cfg(test)]
mod tests;
