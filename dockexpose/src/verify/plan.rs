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
mod tests {
    use super::*;
    use crate::{host::interfaces::Interface, inventory::model::Container};

    fn port(ip: &str, host: u16, proto: Proto) -> PublishedPort {
        PublishedPort { host_ip: ip.parse().unwrap(), host_port: host, container_port: 80, proto }
    }

    fn uplink(name: &str, addrs: &[&str]) -> Uplink {
        Uplink {
            name: name.into(),
            ifindex: 3,
            layer: LinkLayer::Ethernet,
            mac: Some([2, 0, 0, 0, 0, 1]),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn inv() -> Inventory {
        Inventory {
            networks: vec![],
            containers: vec![Container {
                name: "web\u{1b}[2J".into(),
                image: "nginx".into(),
                ports: vec![
                    port("0.0.0.0", 8080, Proto::Tcp),
                    port("::", 8080, Proto::Tcp),
                    port("127.0.0.1", 9000, Proto::Tcp),
                    port("198.18.7.1", 5353, Proto::Udp),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn families_addresses_and_loopback() {
        let targets = targets(&inv(), &[]);
        assert_eq!(targets.len(), 4);
        let uplinks = [
            uplink("eth0", &["198.18.5.1", "fe80::1", "fd42:198:5::1"]),
            uplink("eth1", &["198.18.7.1", "169.254.1.1"]),
        ];
        let sources: Vec<IpAddr> = vec![DEFAULT_SOURCE_V4.parse().unwrap(), DEFAULT_SOURCE_V6.parse().unwrap()];
        let plan = plan(&targets, &uplinks, &sources);
        let got: Vec<(u16, String, &str)> =
            plan.probes.iter().map(|p| (p.dst_port, p.dst.to_string(), uplinks[p.uplink].name.as_str())).collect();
        assert_eq!(
            got,
            [
                (8080, "198.18.5.1".into(), "eth0"),
                (8080, "198.18.7.1".into(), "eth1"),
                (8080, "fd42:198:5::1".into(), "eth0"),
                (5353, "198.18.7.1".into(), "eth1"),
            ],
            "link-local addresses are not probed; a specific binding only where held"
        );
        assert_eq!(plan.skipped.len(), 1);
        assert_eq!(targets[plan.skipped[0].0].port.host_port, 9000);
        assert_eq!(plan.skipped[0].1, Skipped::Loopback);
        assert!(plan.probes.iter().all(|p| p.source.is_ipv4() == p.dst.is_ipv4()));
    }

    #[test]
    fn a_family_without_source_or_uplink_address_is_said() {
        let targets = targets(&inv(), &[]);
        let plan = plan(&targets, &[uplink("eth0", &["198.18.5.1"])], &["198.18.9.77".parse().unwrap()]);
        let why: Vec<(u16, bool, &Skipped)> = plan
            .skipped
            .iter()
            .map(|(t, w)| (targets[*t].port.host_port, targets[*t].port.host_ip.is_ipv6(), w))
            .collect();
        assert!(why.contains(&(8080, true, &Skipped::NoUplinkAddress)), "{why:?}");
        assert!(why.contains(&(5353, false, &Skipped::NoUplinkAddress)), "{why:?}");
        let plan2 =
            super::plan(&targets, &[uplink("eth0", &["198.18.5.1", "fd42::1"])], &["198.18.9.77".parse().unwrap()]);
        assert!(plan2.skipped.iter().any(|(t, w)| targets[*t].port.host_ip.is_ipv6() && *w == Skipped::NoSource));
    }

    #[test]
    fn ports_given_by_hand() {
        let t = targets(&inv(), &[(8080, Proto::Tcp), (7000, Proto::Udp)]);
        assert_eq!(t.iter().filter(|t| t.container.is_some()).count(), 2);
        let hand: Vec<_> = t
            .iter()
            .filter(|t| t.container.is_none())
            .map(|t| (t.port.host_ip.to_string(), t.port.host_port))
            .collect();
        assert_eq!(hand, [("0.0.0.0".to_string(), 7000), ("::".to_string(), 7000)]);
        assert_eq!(parse_port("8080/udp"), Ok((8080, Proto::Udp)));
        assert_eq!(parse_port("443"), Ok((443, Proto::Tcp)));
        assert!(parse_port("0/tcp").is_err());
        assert_eq!(parse_port("3868/sctp"), Ok((3868, Proto::Sctp)));
        assert!(parse_port("80/icmp").is_err());
        assert!(parse_port("http").is_err());
    }

    #[test]
    fn probe_sources() {
        assert_eq!(source_of(&"10.8.0.0/24".parse().unwrap()).to_string(), "10.8.0.1");
        assert_eq!(source_of(&"198.18.5.77/32".parse().unwrap()).to_string(), "198.18.5.77");
        assert_eq!(source_of(&"2001:db8::/64".parse().unwrap()).to_string(), "2001:db8::1");
        assert_eq!(source_of(&"fd42::77/128".parse().unwrap()).to_string(), "fd42::77");
    }

    #[test]
    fn verdicts() {
        let none = Answers::default();
        let synack = Answers { syn_ack: true, ..none };
        let rst = Answers { rst: true, ..none };
        let udp = Answers { udp: true, ..none };
        assert_eq!(decide(Proto::Tcp, true, synack).0, Verdict::Exposed);
        assert_eq!(decide(Proto::Tcp, true, rst).0, Verdict::Exposed, "published, nothing listening: still open");
        assert_eq!(decide(Proto::Tcp, true, none).0, Verdict::Exposed);
        assert_eq!(decide(Proto::Udp, true, none).0, Verdict::Exposed);
        assert_eq!(decide(Proto::Tcp, false, synack).0, Verdict::Proxy);
        assert_eq!(decide(Proto::Udp, false, udp).0, Verdict::Proxy);
        assert_eq!(
            decide(Proto::Tcp, false, rst),
            (Verdict::Held, "refused by the host (RST): not forwarded to the container")
        );
        assert_eq!(decide(Proto::Tcp, false, none), (Verdict::Held, "dropped before reaching the container"));
        assert_eq!(decide(Proto::Udp, false, none).0, Verdict::Held);
    }

    #[test]
    fn unexpected_ports_are_listed() {
        let expected: BTreeSet<(u16, Proto)> = [(443, Proto::Tcp)].into();
        assert_eq!(unexpected_text(&[(443, Proto::Tcp)], &expected), "nothing unexpected is reachable");
        assert_eq!(
            unexpected_text(&[(8080, Proto::Tcp), (53, Proto::Udp), (8080, Proto::Tcp)], &expected),
            "reachable and not --expect-exposed: 53/udp, 8080/tcp"
        );
        let many: Vec<(u16, Proto)> = (1000..1025).map(|p| (p, Proto::Tcp)).collect();
        assert!(unexpected_text(&many, &expected).ends_with(" and 5 more"));
    }

    #[test]
    fn exit_codes() {
        let expected: BTreeSet<(u16, Proto)> = [(443, Proto::Tcp)].into();
        assert_eq!(exit_code(&[], &expected), 0);
        assert_eq!(exit_code(&[(443, Proto::Tcp)], &expected), 0);
        assert_eq!(exit_code(&[(443, Proto::Udp)], &expected), 1);
        assert_eq!(exit_code(&[(443, Proto::Tcp), (8080, Proto::Tcp)], &expected), 1);
    }

    #[test]
    fn lines_escape_untrusted_names() {
        let t = &targets(&inv(), &[])[0];
        let p = Probe {
            target: 0,
            uplink: 0,
            source: DEFAULT_SOURCE_V4.parse().unwrap(),
            dst: "198.18.5.1".parse().unwrap(),
            dst_port: 8080,
            proto: Proto::Tcp,
        };
        let line = probe_line(Verdict::Exposed, "reached the container", t, &p, "eth0", false);
        assert!(
            line.starts_with(
                "EXPOSED tcp 198.18.5.1:8080 from 198.51.100.77 via eth0: container web\\u{1b}[2J (image nginx)"
            ),
            "{line}"
        );
        assert!(!line.contains('\u{1b}'));
        let l = skipped_line(&targets(&inv(), &[])[2], &Skipped::Loopback);
        assert!(l.contains("127.0.0.1:9000->80/tcp") && l.contains("loopback only"), "{l}");
    }

    #[test]
    fn the_guard_covers_every_way_out_but_loopback_and_bridge_ports() {
        let iface = |name: &str, up: bool| Interface { name: name.into(), is_up: up, ..Default::default() };
        let mut host = HostSnapshot::default();
        for i in [
            iface("eth0", true),
            iface("wg0", true),
            iface("eth1", false),
            Interface { is_loopback: true, ..iface("lo", true) },
            Interface { is_bridge: true, ..iface("docker0", true) },
            Interface { is_bridge_port: true, ..iface("veth12ab", true) },
            iface("dxinj77a", true),
        ] {
            host.interfaces.insert(i.name.clone(), i);
        }
        let down_uplink =
            Uplink { name: "eth1".into(), ifindex: 3, layer: LinkLayer::Ethernet, mac: None, addresses: vec![] };
        let got: Vec<String> = guarded_interfaces(&host, &[down_uplink]).into_keys().collect();
        assert_eq!(got, ["docker0", "eth0", "eth1", "wg0"]);
    }
}
