//! firewalld's intent, from its permanent configuration files (never over D-Bus: the
//! daemon may be absent when run in a container, and the files are what the operator
//! wrote): `firewalld.conf` (DefaultZone), zones and services from /etc/firewalld over
//! /usr/lib/firewalld. Runtime-only changes (`firewall-cmd` without `--permanent`) are
//! not seen: a known gap.
//!
//! Order within a zone, as firewalld's nftables/iptables chains evaluate it: deny rich
//! rules (its `_deny` chain), then allows (`_allow`: ports, services, accept rich rules),
//! then the zone's target. Rich-rule priorities other than 0 are not modelled.

use std::path::Path;

use super::{Action, Ban, Intent, PortRule, Source};
use crate::{kernel::event::Proto, net::prefix::Prefix};

/// A port entry of a zone or service: ranges, protocol, family (None: both).
type PortSpec = (Vec<(u16, u16)>, Option<Proto>, Option<bool>);

fn proto(s: &str) -> Option<Option<Proto>> {
    match s {
        "tcp" => Some(Some(Proto::Tcp)),
        "udp" => Some(Some(Proto::Udp)),
        "sctp" => Some(Some(Proto::Sctp)),
        _ => None,
    }
}

/// "8080" or "9000-9010".
fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => s.trim().parse().ok().map(|n| (n, n)),
    }
}

fn port_of(n: roxmltree::Node) -> Option<PortSpec> {
    Some((vec![port_range(n.attribute("port")?)?], proto(n.attribute("protocol")?)?, None))
}

/// A service file's ports and included services' names. A `<destination>` of one
/// family only (dhcpv6-client's fe80::/64) limits the ports to it.
pub fn parse_service(xml: &str) -> Result<(Vec<PortSpec>, Vec<String>), String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let dest = root.children().find(|n| n.has_tag_name("destination"));
    let family = dest.and_then(|d| match (d.attribute("ipv4").is_some(), d.attribute("ipv6").is_some()) {
        (true, false) => Some(false),
        (false, true) => Some(true),
        _ => None,
    });
    let mut ports = Vec::new();
    let mut includes = Vec::new();
    for n in root.children().filter(|n| n.is_element()) {
        if n.has_tag_name("port") {
            ports.extend(port_of(n).map(|(p, pr, _)| (p, pr, family)));
        } else if n.has_tag_name("include") {
            includes.extend(n.attribute("service").map(String::from));
        }
    }
    Ok((ports, includes))
}

/// A zone as its XML says.
#[derive(Debug, Default)]
pub struct Zone {
    pub target: String,
    pub interfaces: Vec<String>,
    pub ports: Vec<(String, PortSpec)>,
    pub services: Vec<String>,
    pub rich: Vec<RichRule>,
}

/// A `<rule>` of a zone with a verdict.
#[derive(Debug)]
pub struct RichRule {
    /// As `firewall-cmd --list-rich-rules` shows it.
    pub text: String,
    pub action: Action,
    pub port: Option<PortSpec>,
    /// A service named instead of a port: expanded in `zone_rules`.
    pub service: Option<String>,
    /// None: both families.
    pub family: Option<bool>,
    /// `<source address=..>` or `<source ipset=..>`: not from anywhere.
    pub source: Option<String>,
}

fn rich_text(rule: roxmltree::Node) -> String {
    let attrs =
        |n: roxmltree::Node| n.attributes().map(|a| format!(" {}=\"{}\"", a.name(), a.value())).collect::<String>();
    let mut s = format!("rule{}", attrs(rule));
    for c in rule.children().filter(|n| n.is_element()) {
        let name = c.tag_name().name();
        let a = attrs(c);
        s += &match name {
            "port" => format!(" port{a}"),
            "service" => format!(" service{a}"),
            "accept" | "reject" | "drop" => format!(" {name}{a}"),
            _ => format!(" {name}{a}"),
        };
    }
    s
}

pub fn parse_zone(xml: &str) -> Result<Zone, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let mut z = Zone { target: root.attribute("target").unwrap_or("default").to_string(), ..Default::default() };
    for n in root.children().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "interface" => z.interfaces.extend(n.attribute("name").map(String::from)),
            "service" => z.services.extend(n.attribute("name").map(String::from)),
            "port" => {
                if let Some(p) = port_of(n) {
                    let shown =
                        format!("port {}/{}", n.attribute("port").unwrap_or(""), n.attribute("protocol").unwrap_or(""));
                    z.ports.push((shown, p));
                }
            }
            "rule" => {
                let el = |t: &str| n.children().find(|c| c.has_tag_name(t));
                let action = if el("accept").is_some() {
                    Action::Allow
                } else if el("reject").is_some() || el("drop").is_some() {
                    Action::Deny
                } else {
                    continue; // log, audit, mark only: no verdict
                };
                let family = match n.attribute("family") {
                    Some("ipv4") => Some(false),
                    Some("ipv6") => Some(true),
                    _ => None,
                };
                let src =
                    el("source").map(|s| s.attribute("address").or(s.attribute("ipset")).unwrap_or("?").to_string());
                let port = el("port").and_then(port_of);
                if el("port").is_some() && port.is_none() {
                    continue; // a port not read (dccp, a bad range): not "every port"
                }
                // A rich rule naming a service: kept as its name, expanded in `rules`.
                let svc = el("service").and_then(|s| s.attribute("name")).map(String::from);
                let text = rich_text(n);
                z.rich.push(RichRule { text, action, port, service: svc, family, source: src });
            }
            _ => {}
        }
    }
    Ok(z)
}

/// The port rules of a zone, on `iface` (None: the default zone, any interface), and
/// its bans (deny rich rules from one source address, any port). `service` looks a
/// service up by name.
pub fn zone_rules(
    name: &str,
    z: &Zone,
    iface: Option<&str>,
    service: &dyn Fn(&str) -> Option<Vec<PortSpec>>,
    warnings: &mut Vec<String>,
) -> (Vec<PortRule>, Vec<Ban>) {
    let mut rules = Vec::new();
    let mut bans = Vec::new();
    let mut push = |rule: String, action, spec: Option<PortSpec>, v6: Option<bool>, from_any| {
        let (ports, proto, fam) = match spec {
            Some((p, pr, f)) => (Some(p), pr, f),
            None => (None, None, None),
        };
        rules.push(PortRule {
            intent: Intent {
                source: Source::Firewalld,
                action,
                rule: format!("zone {name}: {rule}"),
                default_policy: false,
            },
            ports,
            proto,
            v6: v6.or(fam),
            from_any,
            iface: iface.map(String::from),
        });
    };
    let svc = |s: &str, warnings: &mut Vec<String>| {
        service(s).unwrap_or_else(|| {
            warnings.push(format!("firewalld: service {s} (zone {name}) not found"));
            Vec::new()
        })
    };
    for pass in [Action::Deny, Action::Allow] {
        for r in &z.rich {
            let (text, action, port, family, src, svc_name) =
                (&r.text, &r.action, &r.port, &r.family, &r.source, r.service.as_deref());
            if *action != pass {
                continue;
            }
            if let (Some(a), Action::Deny, None, None) = (src, action, port, svc_name) {
                match a.parse::<Prefix>() {
                    Ok(p) => bans.push(Ban { name: format!("firewalld zone {name}: {text}"), members: vec![p] }),
                    Err(_) => warnings.push(format!("firewalld: zone {name}: source {a} not read as a ban")),
                }
            }
            let specs = match svc_name {
                Some(s) => svc(s, warnings).into_iter().map(Some).collect(),
                None => vec![port.clone()],
            };
            for spec in specs {
                push(text.to_string(), *action, spec, *family, src.is_none());
            }
        }
        if pass == Action::Allow {
            for (shown, spec) in &z.ports {
                push(shown.clone(), Action::Allow, Some(spec.clone()), None, true);
            }
            for s in &z.services {
                for spec in svc(s, warnings) {
                    push(format!("service {s}"), Action::Allow, Some(spec), None, true);
                }
            }
        }
    }
    // "default" (and the old "%%REJECT%%") rejects what no rule allowed.
    let (action, shown) = match z.target.as_str() {
        "ACCEPT" => (Action::Allow, "target ACCEPT".to_string()),
        "DROP" | "REJECT" => (Action::Deny, format!("target {}", z.target)),
        _ => (Action::Deny, "target default (reject)".to_string()),
    };
    push(shown, action, None, None, true);
    (rules, bans)
}

/// What firewalld says, when it is active.
pub struct FirewalldIntent {
    pub rules: Vec<PortRule>,
    pub bans: Vec<Ban>,
    pub summary: String,
    pub warnings: Vec<String>,
}

/// firewalld counts when its configuration exists and a firewalld process runs in
/// this network namespace: the one whose rules it writes. Not its runtime directory:
/// `run/firewalld` outlives a stopped firewalld, and a stale one would invent an
/// intent. (In a container, that takes the host's pid namespace: `--pid=host`.)
pub fn active(root: &Path, runs: bool) -> bool {
    runs && root.join("etc/firewalld/firewalld.conf").exists()
}

/// Whether a firewalld process runs in this thread's network namespace.
pub fn runs_here() -> bool {
    process_here("firewalld")
}

/// A process named `name` whose network namespace is this thread's.
fn process_here(name: &str) -> bool {
    let ours = std::fs::read_link("/proc/thread-self/ns/net").ok();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .any(|e| std::fs::read_link(e.path().join("ns/net")).ok() == ours)
}

/// A file of firewalld's, the operator's copy under etc/ over the packaged one.
fn config_file(root: &Path, kind: &str, name: &str) -> Option<String> {
    ["etc/firewalld", "usr/lib/firewalld"]
        .iter()
        .find_map(|d| std::fs::read_to_string(root.join(d).join(kind).join(format!("{name}.xml"))).ok())
}

pub fn read(root: &Path) -> FirewalldIntent {
    let mut warnings = Vec::new();
    let conf = std::fs::read_to_string(root.join("etc/firewalld/firewalld.conf")).unwrap_or_default();
    let value = |k: &str| super::ufw::conf_value(&conf, k);
    let default_zone = value("DefaultZone").unwrap_or_else(|| "public".into());
    let service = |s: &str| -> Option<Vec<PortSpec>> {
        let mut out = Vec::new();
        let mut todo = vec![s.to_string()];
        let mut seen = Vec::new();
        while let Some(n) = todo.pop() {
            if seen.contains(&n) {
                continue;
            }
            let (ports, inc) = parse_service(&config_file(root, "services", &n)?).ok()?;
            out.extend(ports);
            todo.extend(inc);
            seen.push(n);
        }
        Some(out)
    };
    // Zone names: both directories, the operator's files shadowing the packaged ones.
    let mut names: Vec<String> = ["etc/firewalld/zones", "usr/lib/firewalld/zones"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten().flatten())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".xml").map(String::from))
        .collect();
    names.sort();
    names.dedup();
    let (mut rules, mut bans, mut default_rules) = (Vec::new(), Vec::new(), Vec::new());
    let mut bound = Vec::new();
    for name in &names {
        let Some(xml) = config_file(root, "zones", name) else {
            continue;
        };
        let zone = match parse_zone(&xml) {
            Ok(z) => z,
            Err(e) => {
                warnings.push(format!("firewalld: zone {name}: {e}"));
                continue;
            }
        };
        // Interface zones come first: on their interface they decide.
        for iface in &zone.interfaces {
            let (r, b) = zone_rules(name, &zone, Some(iface), &service, &mut warnings);
            rules.extend(r);
            bans.extend(b);
            bound.push(format!("{iface}→{name}"));
        }
        if *name == default_zone {
            let (r, b) = zone_rules(name, &zone, None, &service, &mut warnings);
            default_rules = r;
            bans.extend(b);
        }
    }
    if default_rules.is_empty() {
        warnings.push(format!("firewalld: default zone {default_zone} not found"));
    }
    rules.extend(default_rules);
    let mut summary = format!("firewalld: active, default zone {default_zone}");
    if !bound.is_empty() {
        summary += &format!(", interfaces {}", bound.join(" "));
    }
    // firewalld 2.3+: when yes, forwarded (published) ports pass only what firewalld allows.
    if let Some(s) = value("StrictForwardPorts") {
        summary += &format!(", StrictForwardPorts={s}");
    }
    FirewalldIntent { rules, bans: super::bans::merge(bans), summary, warnings }
}

#[cfg(test)]
mod tests;
