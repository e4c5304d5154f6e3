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

pub mod bans;
pub mod firewalld;
pub mod netfilter;
pub mod nft;
pub mod ufw;

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

/// The outputs of the tools `read` runs (iptables-save, ip6tables-save, ipset, nft),
/// each the text or why it could not be had.
#[derive(Clone, Debug)]
pub struct Dumps {
    pub iptables: Result<String, String>,
    pub ip6tables: Result<String, String>,
    pub ipset: Result<String, String>,
    pub nft: Result<String, String>,
    /// A firewalld process runs in this network namespace (see `firewalld::active`).
    pub firewalld_runs: bool,
}

impl Dumps {
    /// Runs the tools in this thread's network namespace.
    pub fn collect() -> Dumps {
        Dumps {
            iptables: netfilter::run_tool(&["iptables-save", "-t", "filter"]),
            ip6tables: netfilter::run_tool(&["ip6tables-save", "-t", "filter"]),
            ipset: netfilter::run_tool(&["ipset", "save"]),
            nft: netfilter::run_tool(&["nft", "-j", "list", "ruleset"]),
            firewalld_runs: firewalld::runs_here(),
        }
    }
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
        IntentBook::read_with(root, &Dumps::collect())
    }

    /// `read` on dumps already taken (the tools run in the caller's network namespace).
    ///
    /// Precedence: UFW when enabled, else firewalld when active, else the INPUT chain.
    /// UFW and firewalld write their rules into INPUT themselves (ufw-user-input, the
    /// zone chains): reading INPUT then would show their machinery, not the operator's
    /// words, so the tool the operator used speaks. Bans are read from every source:
    /// fail2ban and ipset rules sit in INPUT whichever tool manages the rest.
    pub fn read_with(root: &Path, dumps: &Dumps) -> IntentBook {
        let mut book = IntentBook::default();
        let v4 = dumps.iptables.as_ref().ok().map(|t| netfilter::parse_save(t));
        let v6 = dumps.ip6tables.as_ref().ok().map(|t| netfilter::parse_save(t));
        let nft = dumps.nft.as_ref().ok().and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
        if let Some(u) = ufw::read(root) {
            book.source = Some(Source::Ufw);
            book.summary = u.summary;
            book.rules = u.rules;
            book.bans = u.bans;
            book.warnings = u.warnings;
            // ufw.conf says enabled; its chains say whether it is loaded here.
            if v4.as_ref().is_some_and(|f| !f.chains.contains_key("ufw-user-input")) {
                book.warnings.push(
                    "ufw: enabled in ufw.conf but its chains (ufw-user-input) are not loaded: its rules are intent only".into(),
                );
            }
        } else if firewalld::active(root, dumps.firewalld_runs) {
            let f = firewalld::read(root);
            book.source = Some(Source::Firewalld);
            book.summary = f.summary;
            book.rules = f.rules;
            book.bans = f.bans;
            book.warnings = f.warnings;
        } else {
            book.read_input(&v4, &v6, nft.as_ref());
        }
        // Bans that INPUT applies, from both families' dumps.
        let ipsets = match &dumps.ipset {
            Ok(t) => bans::parse_ipset_save(t),
            Err(_) => Default::default(),
        };
        let mut set_warnings = Vec::new();
        for f in [&v4, &v6].into_iter().flatten() {
            let (b, w) = bans::iptables_bans(f, &ipsets);
            book.bans.extend(b);
            set_warnings.extend(w);
        }
        if let (Err(e), false) = (&dumps.ipset, set_warnings.is_empty()) {
            book.warnings.push(format!("ipset sets not listed: {e}"));
        }
        book.warnings.extend(set_warnings);
        if let Some(j) = &nft {
            for (fam, table, set) in nft::nft_rules(j).1 {
                book.bans.extend(bans::nft_set(j, &fam, &table, &set));
            }
        }
        book.bans = bans::merge(std::mem::take(&mut book.bans));
        for (what, r) in [("iptables-save", &dumps.iptables), ("ip6tables-save", &dumps.ip6tables)] {
            if let Err(e) = r {
                book.warnings.push(format!("{what}: {e}: INPUT and its bans not read"));
            }
        }
        book.warnings.dedup();
        book
    }

    /// The INPUT chain as intent, for a host with neither UFW nor firewalld: iptables'
    /// when its INPUT says something, else nftables' own input chains.
    fn read_input(
        &mut self,
        v4: &Option<netfilter::Filter>,
        v6: &Option<netfilter::Filter>,
        nft: Option<&serde_json::Value>,
    ) {
        let mut ipt = Vec::new();
        for (f, fam) in [(v4, false), (v6, true)] {
            if let Some(f) = f {
                ipt.extend(netfilter::input_rules(f, fam));
            }
        }
        let nft_rules = nft.map(|j| nft::nft_rules(j).0).unwrap_or_default();
        // An INPUT that accepts everything (policy ACCEPT, nothing dropped) says nothing.
        let says = |rules: &[PortRule]| rules.iter().any(|r| r.intent.action == Action::Deny);
        let count = |rules: &[PortRule]| rules.iter().filter(|r| r.ports.is_some() || r.proto.is_some()).count();
        if says(&ipt) {
            let policy = v4.as_ref().and_then(|f| f.policy("INPUT")).unwrap_or("?");
            self.source = Some(Source::Iptables);
            self.summary = format!("iptables: INPUT policy {policy}, {} port rules", count(&ipt));
            if says(&nft_rules) {
                self.warnings
                    .push("nftables input chains of their own also filter; only iptables' INPUT is read".into());
            }
            self.rules = ipt;
        } else if says(&nft_rules) {
            self.source = Some(Source::Nftables);
            let first = nft_rules.last().map(|r| r.intent.rule.clone()).unwrap_or_default();
            self.summary = format!("nftables: {} port rules, last: {first}", count(&nft_rules));
            self.rules = nft_rules;
        } else if v4.is_none() && v6.is_none() && nft.is_none() {
            self.summary =
                "no host firewall read (no UFW, no firewalld, INPUT unreadable): no intent to compare".into();
        } else if count(&ipt) + count(&nft_rules) == 0 {
            self.summary =
                "no host firewall found: INPUT accepts everything (policy ACCEPT, no rules); no intent to compare"
                    .into();
        } else {
            self.summary =
                "no host firewall found: INPUT accepts everything (policy ACCEPT, only accept rules); no intent to compare"
                    .into();
        }
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

    /// The intent that speaks for a published binding: a loopback binding says "this
    /// host only" itself (more specific than any firewall rule); otherwise the
    /// firewall's word on its port.
    pub fn for_binding(&self, host_ip: IpAddr, host_port: u16, proto: Proto, iface: Option<&str>) -> Option<Intent> {
        if host_ip.is_loopback() {
            return Some(Intent {
                source: Source::Binding,
                action: Action::Deny,
                rule: format!("published on {} only (this host only)", std::net::SocketAddr::new(host_ip, host_port)),
                default_policy: false,
            });
        }
        self.for_port(host_port, proto, host_ip.is_ipv6(), iface)
    }

    /// The first ban that covers `src`.
    pub fn ban_of(&self, src: IpAddr) -> Option<&Ban> {
        self.bans.iter().find(|b| b.covers(src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(v4: &str, nft: Result<&str, &str>) -> Dumps {
        Dumps {
            iptables: Ok(v4.into()),
            ip6tables: Err("ip6tables-save not found".into()),
            ipset: Err("ipset not found".into()),
            nft: nft.map(String::from).map_err(String::from),
            firewalld_runs: false,
        }
    }

    #[test]
    fn intent_read_with_picks_the_input_source_and_says_what_is_missing() {
        let empty = std::env::temp_dir().join(format!("dxi-intent-none-{}", std::process::id()));
        let b = IntentBook::read_with(&empty, &dumps(netfilter::tests::SAVE, Err("nft not found")));
        assert_eq!(b.source, Some(Source::Iptables));
        assert!(b.summary.starts_with("iptables: INPUT policy DROP, "), "{}", b.summary);
        assert!(b.warnings.iter().any(|w| w.starts_with("ip6tables-save: ")), "{:?}", b.warnings);
        assert!(b.warnings.iter().any(|w| w.starts_with("ipset sets not listed")), "{:?}", b.warnings);
        // fail2ban's chain needs no ipset listing.
        assert_eq!(b.ban_of("198.18.7.10".parse().unwrap()).unwrap().name, "fail2ban jail sshd");

        let accept = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        let b = IntentBook::read_with(&empty, &dumps(accept, Ok(nft::tests::NFT)));
        assert_eq!(b.source, Some(Source::Nftables), "{}", b.summary);
        assert_eq!(b.ban_of("198.18.8.7".parse().unwrap()).unwrap().name, "nft set inet dxfilter blocklist");

        let b = IntentBook::read_with(&empty, &dumps(accept, Ok(r#"{"nftables": []}"#)));
        assert_eq!(b.source, None);
        assert_eq!(
            b.summary,
            "no host firewall found: INPUT accepts everything (policy ACCEPT, no rules); no intent to compare"
        );
        assert_eq!(b.for_port(80, Proto::Tcp, false, None), None);
    }

    #[test]
    fn intent_ufw_enabled_but_not_loaded_is_said() {
        let root = std::env::temp_dir().join(format!("dxi-intent-ufw-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc/ufw")).unwrap();
        std::fs::create_dir_all(root.join("etc/default")).unwrap();
        std::fs::write(root.join("etc/ufw/ufw.conf"), "ENABLED=yes\nLOGLEVEL=low\n").unwrap();
        std::fs::write(root.join("etc/default/ufw"), "IPV6=no\nDEFAULT_INPUT_POLICY=\"REJECT\"\n").unwrap();
        std::fs::write(root.join("etc/ufw/user.rules"), "### tuple ### deny tcp 8080 0.0.0.0/0 any 0.0.0.0/0 in\n")
            .unwrap();
        let b = IntentBook::read_with(&root, &dumps(netfilter::tests::SAVE, Err("nft not found")));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(b.source, Some(Source::Ufw));
        assert_eq!(b.summary, "ufw: active, default incoming reject, 1 rules");
        assert_eq!(b.for_port(8080, Proto::Tcp, false, None).unwrap().rule, "[ 1] 8080/tcp DENY IN Anywhere");
        assert_eq!(b.for_port(8081, Proto::Tcp, true, None).unwrap().rule, "default reject (incoming)");
        assert!(b.warnings.iter().any(|w| w.contains("not loaded")), "{:?}", b.warnings);
    }
}
