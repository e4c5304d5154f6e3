//! Unit tests of plan.rs.

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
    let uplinks =
        [uplink("eth0", &["198.18.5.1", "fe80::1", "fd42:198:5::1"]), uplink("eth1", &["198.18.7.1", "169.254.1.1"])];
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
    let why: Vec<(u16, bool, &Skipped)> =
        plan.skipped.iter().map(|(t, w)| (targets[*t].port.host_port, targets[*t].port.host_ip.is_ipv6(), w)).collect();
    assert!(why.contains(&(8080, true, &Skipped::NoUplinkAddress)), "{why:?}");
    assert!(why.contains(&(5353, false, &Skipped::NoUplinkAddress)), "{why:?}");
    let plan2 = super::plan(&targets, &[uplink("eth0", &["198.18.5.1", "fd42::1"])], &["198.18.9.77".parse().unwrap()]);
    assert!(plan2.skipped.iter().any(|(t, w)| targets[*t].port.host_ip.is_ipv6() && *w == Skipped::NoSource));
}

#[test]
fn ports_given_by_hand() {
    let t = targets(&inv(), &[(8080, Proto::Tcp), (7000, Proto::Udp)]);
    assert_eq!(t.iter().filter(|t| t.container.is_some()).count(), 2);
    let hand: Vec<_> =
        t.iter().filter(|t| t.container.is_none()).map(|t| (t.port.host_ip.to_string(), t.port.host_port)).collect();
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
