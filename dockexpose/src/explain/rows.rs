//! `dockexpose explain`, the pure part: verify's verdicts (reality) joined to the
//! firewall's word (intent), one row per published port, family and uplink, with
//! why the packet went where it did and the rule that would make the two agree.

use std::net::IpAddr;

use serde::Serialize;

use super::suggest::{self, Host};
use crate::{
    intent::{Action, Intent, IntentBook, Source},
    verify::{plan::Skipped, plan::Verdict, Outcome, ProbeResult},
};

/// What verify found for a row: its verdict, or LOCAL for a binding that only this
/// host can reach (never probed from outside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reality {
    Held,
    Local,
    Proxy,
    Exposed,
}

impl Reality {
    pub fn as_str(self) -> &'static str {
        match self {
            Reality::Exposed => "EXPOSED",
            Reality::Proxy => "PROXY",
            Reality::Held => "HELD",
            Reality::Local => "LOCAL",
        }
    }

    fn of(v: Verdict) -> Self {
        match v {
            Verdict::Exposed => Reality::Exposed,
            Verdict::Proxy => Reality::Proxy,
            Verdict::Held => Reality::Held,
        }
    }

    fn reachable(self) -> bool {
        matches!(self, Reality::Exposed | Reality::Proxy)
    }
}

/// One line of explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub host_port: u16,
    pub proto: &'static str,
    pub family: &'static str,
    /// The uplink probed; null for a LOCAL binding (never probed from outside).
    pub uplink: Option<String>,
    /// The published binding's host address (0.0.0.0, ::, or one address).
    pub host_ip: IpAddr,
    pub container: Option<String>,
    pub intent: Option<Intent>,
    pub reality: &'static str,
    pub contradiction: bool,
    pub why: String,
    /// One command that makes reality match the intent for this port and family.
    pub suggested_rule: Option<String>,
}

/// Whether reality contradicts the intent: a denied port reachable from outside, or
/// a port explicitly allowed that nothing from outside reaches. A default policy
/// that accepts is no promise that a port is open, so HELD does not contradict it.
pub fn contradicts(intent: Option<&Intent>, reality: Reality) -> bool {
    match intent {
        Some(i) if i.action == Action::Deny => reality.reachable(),
        Some(i) if i.action == Action::Allow && !i.default_policy => reality == Reality::Held,
        _ => false,
    }
}

/// Where the packet went, in words: Docker's DNAT, the forwarding rule that took it,
/// and that INPUT (where host firewalls live) never saw it.
pub fn why_of(r: &ProbeResult, container_addr: Option<(IpAddr, u16)>, firewall: Option<Source>) -> String {
    let lives = match firewall {
        Some(Source::Binding) | None => "host firewalls live".to_string(),
        Some(s) => format!("{} lives", s.display()),
    };
    match r.verdict {
        Verdict::Exposed => {
            let dnat = r.dnat_rule.clone().unwrap_or_else(|| match container_addr {
                Some((ip, port)) => format!("Docker's nat rule: DNAT to {}", std::net::SocketAddr::new(ip, port)),
                None => "Docker's nat rule (DNAT)".into(),
            });
            let accept = r.accept_rule.clone().unwrap_or_else(|| "Docker's FORWARD rules".into());
            let bridge = r.reached_on.as_deref().map(|b| format!(" into {b}")).unwrap_or_default();
            format!("{dnat}; then forwarded{bridge}, accepted by {accept}; so INPUT, where {lives}, never saw it")
        }
        Verdict::Proxy => {
            format!("no DNAT took it: the host itself answered on {} (docker-proxy), through INPUT", r.probe.dst_port)
        }
        Verdict::Held => r.why.clone(),
    }
}

/// The rows of a verify run: probes merged per (port, protocol, family, uplink) (the
/// most open verdict wins: one source that gets in is enough), LOCAL rows for
/// loopback bindings, then intents, contradictions and suggested rules.
pub fn rows(
    outcome: &Outcome,
    book: &IntentBook,
    host: Host,
    container_addr: impl Fn(&ProbeResult) -> Option<(IpAddr, u16)>,
) -> Vec<Row> {
    let merged = outcome.most_open();
    let mut out: Vec<Row> = merged
        .into_values()
        .map(|r| {
            let port = r.target.port;
            let reality = Reality::of(r.verdict);
            let intent = book.for_binding(port.host_ip, port.host_port, port.proto, Some(&r.uplink));
            let contradiction = contradicts(intent.as_ref(), reality);
            let firewall = intent.as_ref().map(|i| i.source).or(book.source);
            let suggested_rule = contradiction
                .then(|| {
                    let at = suggest::At {
                        proto: port.proto,
                        v6: r.probe.dst.is_ipv6(),
                        host_port: port.host_port,
                        uplink: &r.uplink,
                    };
                    suggest::rule(host, intent.as_ref().map(|i| i.action), reality, at, &r.why)
                })
                .flatten();
            Row {
                host_port: port.host_port,
                proto: port.proto.as_str(),
                family: family(r.probe.dst),
                uplink: Some(r.uplink.clone()),
                host_ip: port.host_ip,
                container: r.target.container.as_ref().map(|(name, _)| name.clone()),
                intent,
                reality: reality.as_str(),
                contradiction,
                why: why_of(r, container_addr(r), firewall),
                suggested_rule,
            }
        })
        .collect();
    for (t, skipped) in &outcome.skipped {
        if *skipped != Skipped::Loopback {
            continue;
        }
        let port = t.port;
        let intent = book.for_binding(port.host_ip, port.host_port, port.proto, None);
        out.push(Row {
            host_port: port.host_port,
            proto: port.proto.as_str(),
            family: family(port.host_ip),
            uplink: None,
            host_ip: port.host_ip,
            container: t.container.as_ref().map(|(name, _)| name.clone()),
            contradiction: contradicts(intent.as_ref(), Reality::Local),
            intent,
            reality: Reality::Local.as_str(),
            why: format!(
                "published on {} only: Docker's DNAT matches that address alone, so a packet from outside finds no rule to the container",
                port.host_ip
            ),
            suggested_rule: None,
        });
    }
    out.sort_by(|a, b| (a.proto, a.host_port, a.family, &a.uplink).cmp(&(b.proto, b.host_port, b.family, &b.uplink)));
    out
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// One row as people read it, on one line.
pub fn human_line(r: &Row) -> String {
    let esc = crate::output::human::escape_untrusted_whole;
    let via = r.uplink.as_deref().map(|u| format!(" via {}", esc(u))).unwrap_or_default();
    let who = r
        .container
        .as_deref()
        .map(|c| format!(" (container {})", crate::output::human::escape_untrusted(c)))
        .unwrap_or_default();
    let intent = match &r.intent {
        Some(i) => format!("{} says {} ({})", i.source.display(), action_word(i.action), esc(&i.rule)),
        None => "no intent expressed".into(),
    };
    let head = if r.contradiction { "CONTRADICTION" } else { "agrees" };
    let fix = r.suggested_rule.as_deref().map(|f| format!("; fix: {f}")).unwrap_or_default();
    format!(
        "{}/{} {}{via}{who}: {head}: {intent}; reality {}; why: {}{fix}",
        r.host_port,
        r.proto,
        r.family,
        r.reality,
        esc(&r.why)
    )
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

/// 1 when any row contradicts its intent, else 0.
pub fn exit_code(rows: &[Row]) -> i32 {
    i32::from(rows.iter().any(|r| r.contradiction))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        intent::PortRule,
        inventory::model::PublishedPort,
        kernel::event::Proto,
        verify::plan::{Probe, Target},
    };

    fn probe(port: u16, dst: &str, verdict: Verdict, uplink: &str, source: &str) -> ProbeResult {
        let host_ip: IpAddr = if dst.contains(':') { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() };
        ProbeResult {
            verdict,
            why: if verdict == Verdict::Held {
                "dropped by ip filter DOCKER-USER: drop".into()
            } else {
                "reached".into()
            },
            target: Target {
                container: Some(("web".into(), "nginx".into())),
                port: PublishedPort { host_ip, host_port: port, container_port: 80, proto: Proto::Tcp },
                direct: false,
            },
            probe: Probe {
                target: 0,
                uplink: 0,
                source: source.parse().unwrap(),
                dst: dst.parse().unwrap(),
                dst_port: port,
                proto: Proto::Tcp,
            },
            uplink: uplink.into(),
            sport: 40000,
            at: SystemTime::UNIX_EPOCH,
            reached_on: (verdict == Verdict::Exposed).then(|| "docker0".into()),
            dnat_rule: (verdict == Verdict::Exposed)
                .then(|| "ip nat DOCKER: tcp dport 8080 dnat to 172.17.0.2:80".into()),
            accept_rule: (verdict == Verdict::Exposed).then(|| "ip filter DOCKER: ip daddr 172.17.0.2 accept".into()),
        }
    }

    fn outcome(probes: Vec<ProbeResult>, skipped: Vec<(Target, Skipped)>) -> Outcome {
        Outcome {
            sources: vec![],
            uplinks: vec![],
            probes,
            skipped,
            elapsed: Duration::ZERO,
            guards: vec![],
            guard_dropped: 0,
            answers_lost: 0,
            conntrack_deleted: 0,
            conntrack_remaining: 0,
            warnings: vec![],
            not_sent: 0,
            injection: String::new(),
        }
    }

    fn ufw(rules: &[(Option<u16>, Action, &str)]) -> IntentBook {
        let rules = rules
            .iter()
            .map(|&(port, action, text)| PortRule {
                intent: Intent { source: Source::Ufw, action, rule: text.into(), default_policy: port.is_none() },
                ports: port.map(|p| vec![(p, p)]),
                proto: Some(Proto::Tcp),
                v6: None,
                from_any: true,
                iface: None,
            })
            .collect();
        IntentBook::from_rules(Some(Source::Ufw), "ufw: active".into(), rules, vec![])
    }

    #[test]
    fn the_seed_story_a_ufw_deny_that_docker_bypasses_is_a_contradiction_with_its_fix() {
        let book = ufw(&[
            (Some(8080), Action::Deny, "[ 1] 8080/tcp DENY IN Anywhere"),
            (Some(9090), Action::Allow, "[ 2] 9090/tcp ALLOW IN Anywhere"),
        ]);
        let o = outcome(
            vec![
                probe(8080, "198.18.3.1", Verdict::Held, "eth0", "198.51.100.77"),
                probe(8080, "198.18.3.1", Verdict::Exposed, "eth0", "198.51.100.78"),
                probe(9090, "198.18.3.1", Verdict::Exposed, "eth0", "198.51.100.77"),
            ],
            vec![],
        );
        let rows =
            rows(&o, &book, Host { tool: suggest::Tool::Iptables, docker_user_v4: true, docker_user_v6: true }, |_| {
                None
            });
        assert_eq!(rows.len(), 2, "two sources of one port, family and uplink are one row");
        let r = &rows[0];
        assert_eq!((r.host_port, r.reality, r.contradiction), (8080, "EXPOSED", true), "the most open verdict wins");
        assert_eq!(r.intent.as_ref().unwrap().rule, "[ 1] 8080/tcp DENY IN Anywhere");
        assert!(
            r.why.contains("dnat to 172.17.0.2:80") && r.why.contains("INPUT, where UFW lives, never saw it"),
            "{}",
            r.why
        );
        assert_eq!(
            r.suggested_rule.as_deref(),
            Some("iptables -I DOCKER-USER -i eth0 -p tcp -m conntrack --ctstate NEW --ctorigdstport 8080 -j DROP")
        );
        assert!(!rows[1].contradiction && rows[1].suggested_rule.is_none(), "an allowed port that is open agrees");
        assert_eq!(exit_code(&rows), 1);
        assert!(
            human_line(r).starts_with("8080/tcp ipv4 via eth0 (container web): CONTRADICTION: UFW says deny"),
            "{}",
            human_line(r)
        );
    }

    #[test]
    fn an_allowed_port_that_is_held_is_the_reverse_contradiction_but_a_default_accept_is_no_promise() {
        let book = ufw(&[
            (Some(9090), Action::Allow, "[ 1] 9090/tcp ALLOW IN Anywhere"),
            (None, Action::Allow, "default allow (incoming)"),
        ]);
        let o = outcome(
            vec![
                probe(9090, "198.18.3.1", Verdict::Held, "eth0", "198.51.100.77"),
                probe(7070, "198.18.3.1", Verdict::Held, "eth0", "198.51.100.77"),
            ],
            vec![],
        );
        let rows =
            rows(&o, &book, Host { tool: suggest::Tool::Iptables, docker_user_v4: true, docker_user_v6: true }, |_| {
                None
            });
        let held_allowed = rows.iter().find(|r| r.host_port == 9090).unwrap();
        assert!(held_allowed.contradiction);
        assert_eq!(
            held_allowed.suggested_rule.as_deref(),
            Some("iptables -I DOCKER-USER -i eth0 -p tcp -m conntrack --ctstate NEW --ctorigdstport 9090 -j RETURN"),
            "held in DOCKER-USER: let it out of that chain"
        );
        assert!(!rows.iter().find(|r| r.host_port == 7070).unwrap().contradiction);
    }

    #[test]
    fn loopback_bindings_are_local_and_agree_with_themselves_and_no_firewall_invents_nothing() {
        let local = Target {
            container: Some(("db".into(), "postgres".into())),
            port: PublishedPort {
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 5432,
                container_port: 5432,
                proto: Proto::Tcp,
            },
            direct: false,
        };
        let none = IntentBook::from_rules(None, "no host firewall found".into(), vec![], vec![]);
        let o = outcome(
            vec![probe(8080, "fd42:198:3::1", Verdict::Exposed, "eth0", "2001:db8:dc::77")],
            vec![(local, Skipped::Loopback)],
        );
        let rows =
            rows(&o, &none, Host { tool: suggest::Tool::Nft, docker_user_v4: true, docker_user_v6: true }, |_| None);
        assert_eq!(rows.len(), 2);
        let v6 = rows.iter().find(|r| r.host_port == 8080).unwrap();
        assert_eq!(
            (v6.family, v6.intent.as_ref(), v6.contradiction),
            ("ipv6", None, false),
            "no intent: no contradiction invented"
        );
        let db = rows.iter().find(|r| r.host_port == 5432).unwrap();
        assert_eq!((db.reality, db.uplink.as_deref(), db.contradiction), ("LOCAL", None, false));
        assert_eq!(db.intent.as_ref().unwrap().source, Source::Binding);
        assert_eq!(exit_code(&rows), 0);
    }
}
