//! Unit tests of firewalld.rs.

use super::*;
use crate::intent::IntentBook;

// Debian 12's firewalld 1.3: public.xml after `firewall-offline-cmd` added
// http, 8080/tcp, 9000-9010/udp and three rich rules, and set the target DROP.
const PUBLIC: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<zone target="DROP">
  <short>Public</short>
  <description>For use in public areas.</description>
  <service name="ssh"/>
  <service name="dhcpv6-client"/>
  <service name="http"/>
  <port port="8080" protocol="tcp"/>
  <port port="9000-9010" protocol="udp"/>
  <rule family="ipv4">
<port port="5432" protocol="tcp"/>
<reject/>
  </rule>
  <rule family="ipv4">
<source address="198.18.3.2"/>
<drop/>
  </rule>
  <rule>
<port port="6000" protocol="tcp"/>
<accept/>
  </rule>
  <forward/>
</zone>"#;
const TRUSTED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<zone target="ACCEPT">
  <short>Trusted</short>
  <interface name="eth1"/>
  <forward/>
</zone>"#;
// Debian's packaged services.
const HTTP: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<service>
  <short>WWW (HTTP)</short>
  <port protocol="tcp" port="80"/>
</service>"#;
const DHCPV6: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<service>
  <short>DHCPv6 Client</short>
  <port protocol="udp" port="546"/>
  <destination ipv6="fe80::/64"/>
</service>"#;
const SSH: &str = r#"<service><short>SSH</short><port protocol="tcp" port="22"/></service>"#;

fn svc(s: &str) -> Option<Vec<PortSpec>> {
    let xml = match s {
        "http" => HTTP,
        "ssh" => SSH,
        "dhcpv6-client" => DHCPV6,
        _ => return None,
    };
    Some(parse_service(xml).unwrap().0)
}

#[test]
fn firewalld_zone_rules_in_evaluation_order() {
    let mut w = Vec::new();
    let (mut rules, bans) = zone_rules("trusted", &parse_zone(TRUSTED).unwrap(), Some("eth1"), &svc, &mut w);
    let (r, b2) = zone_rules("public", &parse_zone(PUBLIC).unwrap(), None, &svc, &mut w);
    rules.extend(r);
    assert!(w.is_empty(), "{w:?}");
    assert!(bans.is_empty());
    let book = IntentBook::from_rules(Some(Source::Firewalld), String::new(), rules, b2);
    let at = |p, pr, v6, i| book.for_port(p, pr, v6, i).map(|x| (x.action, x.rule));
    assert_eq!(at(8080, Proto::Tcp, false, None), Some((Action::Allow, "zone public: port 8080/tcp".into())));
    assert_eq!(at(80, Proto::Tcp, true, None), Some((Action::Allow, "zone public: service http".into())));
    assert_eq!(at(9005, Proto::Udp, false, None).unwrap().0, Action::Allow);
    assert_eq!(
        at(5432, Proto::Tcp, false, None),
        Some((Action::Deny, r#"zone public: rule family="ipv4" port port="5432" protocol="tcp" reject"#.into()))
    );
    // The rich reject is IPv4 only: on IPv6 the target speaks.
    assert_eq!(at(5432, Proto::Tcp, true, None).unwrap().1, "zone public: target DROP");
    assert_eq!(at(6000, Proto::Tcp, true, None).unwrap().0, Action::Allow);
    assert_eq!(at(546, Proto::Udp, false, None).unwrap().1, "zone public: target DROP", "dhcpv6-client is IPv6 only");
    assert_eq!(at(546, Proto::Udp, true, None).unwrap().1, "zone public: service dhcpv6-client");
    assert_eq!(
        at(5432, Proto::Tcp, false, Some("eth1")).unwrap(),
        (Action::Allow, "zone trusted: target ACCEPT".into())
    );
    assert_eq!(book.bans.len(), 1);
    assert_eq!(book.bans[0].name, r#"firewalld zone public: rule family="ipv4" source address="198.18.3.2" drop"#);
    assert!(book.ban_of("198.18.3.2".parse().unwrap()).is_some());
}

#[test]
fn firewalld_default_target_and_missing_service() {
    let z = parse_zone(r#"<zone><service name="nosuch"/><rule><service name="http"/><drop/></rule></zone>"#).unwrap();
    let mut w = Vec::new();
    let (rules, _) = zone_rules("z", &z, None, &svc, &mut w);
    assert_eq!(w, vec!["firewalld: service nosuch (zone z) not found".to_string()]);
    let book = IntentBook::from_rules(Some(Source::Firewalld), String::new(), rules, vec![]);
    assert_eq!(book.for_port(80, Proto::Tcp, false, None).unwrap().rule, r#"zone z: rule service name="http" drop"#);
    assert_eq!(book.for_port(81, Proto::Tcp, false, None).unwrap().rule, "zone z: target default (reject)");
    assert!(parse_zone("<zone").is_err());
}

#[test]
fn firewalld_reads_a_root_tree() {
    let root = std::env::temp_dir().join(format!("dxi-fwd-{}", std::process::id()));
    let w = |p: &str, s: &str| {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    };
    w("etc/firewalld/firewalld.conf", "DefaultZone=public\n");
    w("usr/lib/firewalld/zones/public.xml", r#"<zone><service name="ssh"/></zone>"#);
    w("etc/firewalld/zones/public.xml", PUBLIC);
    w("usr/lib/firewalld/zones/trusted.xml", TRUSTED);
    w("usr/lib/firewalld/services/http.xml", HTTP);
    w("usr/lib/firewalld/services/ssh.xml", SSH);
    w("usr/lib/firewalld/services/dhcpv6-client.xml", DHCPV6);
    w("etc/firewalld/services/http.xml", r#"<service><port protocol="tcp" port="8081"/></service>"#);
    let f = read(&root);
    let book = IntentBook::from_rules(Some(Source::Firewalld), f.summary.clone(), f.rules, f.bans);
    assert_eq!(f.summary, "firewalld: active, default zone public, interfaces eth1→trusted");
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    // The operator's http.xml shadows the packaged one.
    assert_eq!(book.for_port(8081, Proto::Tcp, false, None).unwrap().rule, "zone public: service http");
    assert_eq!(book.for_port(80, Proto::Tcp, false, None).unwrap().rule, "zone public: target DROP");
    std::fs::remove_dir_all(&root).unwrap();
}
