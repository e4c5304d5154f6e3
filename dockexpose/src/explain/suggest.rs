//! The one command that makes reality match the intent for a port and family.
//!
//! Keyed on the *host* port through conntrack's original destination
//! (`--ctorigdstport`, `ct original proto-dst`), never on the container port: a rule
//! on the container port is the classic mistake, where allowing 80 opens every host
//! port mapped to it. Only new connections (`ctstate NEW`) are matched, so
//! established traffic keeps flowing. In DOCKER-USER, which Docker's FORWARD
//! consults first and never rewrites.

use crate::{intent::Action, kernel::event::Proto};

use super::rows::Reality;

/// What the host's rules are written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// iptables / ip6tables (iptables-nft or legacy): Docker's DOCKER-USER chain exists.
    Iptables,
    /// nft, in the `ip filter` / `ip6 filter` tables Docker's iptables-nft made.
    Nft,
}

/// The host's tool, and whether Docker made DOCKER-USER for each family (Docker
/// before 27 made none for IPv6: the rule then goes first in FORWARD, which Docker
/// also consults after any rule put before its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    pub tool: Tool,
    pub docker_user_v4: bool,
    pub docker_user_v6: bool,
}

impl Host {
    fn chain(&self, v6: bool) -> &'static str {
        if (v6 && self.docker_user_v6) || (!v6 && self.docker_user_v4) {
            "DOCKER-USER"
        } else {
            "FORWARD"
        }
    }
}

/// Which port, family and uplink a rule is about.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub proto: Proto,
    pub v6: bool,
    pub host_port: u16,
    pub uplink: &'a str,
}

/// The command, or None where no single rule can say it (the port is held by
/// something other than DOCKER-USER, and only the operator can tell what).
pub fn rule(host: Host, action: Option<Action>, reality: Reality, at: At<'_>, held_why: &str) -> Option<String> {
    let At { proto, v6, host_port, uplink } = at;
    let verdict = match (action?, reality) {
        (Action::Deny, Reality::Exposed) => Verdict::Drop,
        // The host itself answered (a proxy on INPUT): INPUT must say no.
        (Action::Deny, Reality::Proxy) => return Some(input_drop(host.tool, proto, v6, host_port, uplink)),
        // Held by DOCKER-USER: let this port leave that chain early, to Docker's own
        // accept. Held elsewhere: not one rule's job.
        (Action::Allow, Reality::Held) if held_why.contains("DOCKER-USER") => Verdict::Return,
        _ => return None,
    };
    let (p, chain) = (proto.as_str(), host.chain(v6));
    Some(match host.tool {
        Tool::Iptables => format!(
            "{} -I {chain} -i {uplink} -p {p} -m conntrack --ctstate NEW --ctorigdstport {host_port} -j {}",
            if v6 { "ip6tables" } else { "iptables" },
            verdict.iptables()
        ),
        Tool::Nft => format!(
            "nft insert rule {} filter {chain} iifname \"{uplink}\" meta l4proto {p} ct state new ct original proto-dst {host_port} {}",
            if v6 { "ip6" } else { "ip" },
            verdict.nft()
        ),
    })
}

#[derive(Clone, Copy)]
enum Verdict {
    Drop,
    Return,
}

impl Verdict {
    fn iptables(self) -> &'static str {
        match self {
            Verdict::Drop => "DROP",
            Verdict::Return => "RETURN",
        }
    }
    fn nft(self) -> &'static str {
        match self {
            Verdict::Drop => "drop",
            Verdict::Return => "return",
        }
    }
}

fn input_drop(tool: Tool, proto: Proto, v6: bool, host_port: u16, uplink: &str) -> String {
    let p = proto.as_str();
    match tool {
        Tool::Iptables => format!(
            "{} -I INPUT -i {uplink} -p {p} --dport {host_port} -m conntrack --ctstate NEW -j DROP",
            if v6 { "ip6tables" } else { "iptables" }
        ),
        Tool::Nft => format!(
            "nft insert rule {} filter INPUT iifname \"{uplink}\" {p} dport {host_port} ct state new drop",
            if v6 { "ip6" } else { "ip" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPT: Host = Host { tool: Tool::Iptables, docker_user_v4: true, docker_user_v6: true };

    fn at(proto: Proto, v6: bool, host_port: u16, uplink: &str) -> At<'_> {
        At { proto, v6, host_port, uplink }
    }

    #[test]
    fn rules_key_on_the_host_port_through_conntrack_and_only_new_connections() {
        let r = rule(IPT, Some(Action::Deny), Reality::Exposed, at(Proto::Udp, true, 5353, "eth1"), "").unwrap();
        assert_eq!(
            r,
            "ip6tables -I DOCKER-USER -i eth1 -p udp -m conntrack --ctstate NEW --ctorigdstport 5353 -j DROP"
        );
        let r = rule(
            Host { tool: Tool::Nft, ..IPT },
            Some(Action::Deny),
            Reality::Exposed,
            at(Proto::Tcp, false, 8080, "eth0"),
            "",
        )
        .unwrap();
        assert_eq!(r, "nft insert rule ip filter DOCKER-USER iifname \"eth0\" meta l4proto tcp ct state new ct original proto-dst 8080 drop");
        assert!(!r.contains("dport 80 "), "never the container port");
    }

    #[test]
    fn what_no_single_rule_can_fix_gets_none() {
        assert_eq!(
            rule(
                IPT,
                Some(Action::Allow),
                Reality::Held,
                at(Proto::Tcp, false, 80, "eth0"),
                "dropped by ip filter FORWARD: policy drop"
            ),
            None
        );
        assert_eq!(rule(IPT, None, Reality::Exposed, at(Proto::Tcp, false, 80, "eth0"), ""), None, "no intent, no fix");
        assert_eq!(
            rule(IPT, Some(Action::Deny), Reality::Held, at(Proto::Tcp, false, 80, "eth0"), ""),
            None,
            "agrees already"
        );
        assert!(rule(IPT, Some(Action::Deny), Reality::Proxy, at(Proto::Tcp, false, 80, "eth0"), "")
            .unwrap()
            .contains("-I INPUT"));
    }

    #[test]
    fn without_docker_user_for_a_family_the_rule_goes_first_in_forward() {
        let old_docker = Host { docker_user_v6: false, ..IPT };
        let r = rule(old_docker, Some(Action::Deny), Reality::Exposed, at(Proto::Tcp, true, 8080, "eth0"), "").unwrap();
        assert_eq!(r, "ip6tables -I FORWARD -i eth0 -p tcp -m conntrack --ctstate NEW --ctorigdstport 8080 -j DROP");
        let r =
            rule(old_docker, Some(Action::Deny), Reality::Exposed, at(Proto::Tcp, false, 8080, "eth0"), "").unwrap();
        assert!(r.starts_with("iptables -I DOCKER-USER "), "{r}");
    }
}
