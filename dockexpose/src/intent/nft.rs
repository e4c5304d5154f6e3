//! nftables' own input chains, from `nft -j list ruleset` (JSON, read with serde_json):
//! base chains hooked on input, in priority order, a jump into a regular chain followed
//! one level; tables iptables-nft made are left to iptables-save (netfilter.rs). Pure.

use super::{
    netfilter::{l4, replies_only},
    Action, Intent, PortRule, Source,
};

/// Tables iptables-nft made (its compatibility tables) are read through iptables-save.
pub fn is_iptables_table(family: &str, name: &str) -> bool {
    matches!(family, "ip" | "ip6") && matches!(name, "filter" | "mangle" | "raw" | "security" | "nat")
}

/// The port rules of nftables base chains hooked on input, from `nft -j list ruleset`,
/// in priority order; a set referenced as `saddr @set drop` is returned as a ban
/// candidate (family, table, set).
pub fn nft_rules(json: &serde_json::Value) -> (Vec<PortRule>, Vec<(String, String, String)>) {
    let items = json["nftables"].as_array().cloned().unwrap_or_default();
    let mut chains: Vec<(i64, String, String, String, Option<String>)> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "input" && c["type"] == "filter")
        .filter(|c| !is_iptables_table(c["family"].as_str().unwrap_or(""), c["table"].as_str().unwrap_or("")))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (
                c["prio"].as_i64().unwrap_or(0),
                s("family"),
                s("table"),
                s("name"),
                c["policy"].as_str().map(String::from),
            )
        })
        .collect();
    chains.sort_by_key(|c| c.0);
    let rules_of = |fam: &str, table: &str, chain: &str| -> Vec<Vec<serde_json::Value>> {
        items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == fam && r["table"] == table && r["chain"] == chain)
            .map(|r| r["expr"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let (mut out, mut sets) = (Vec::new(), Vec::new());
    for (_, fam, table, chain, policy) in &chains {
        for expr in rules_of(fam, table, chain) {
            // A jump into a regular chain: its rules, after the jump's own matches.
            let jump =
                expr.iter().find_map(|e| e.get("jump").or_else(|| e.get("goto"))).and_then(|j| j["target"].as_str());
            let bodies = match jump {
                Some(t) => rules_of(fam, table, t)
                    .into_iter()
                    .map(|inner| [&expr[..expr.len() - 1], &inner[..]].concat())
                    .collect(),
                None => vec![expr],
            };
            for body in bodies {
                if let Some(r) = nft_rule(fam, table, chain, &body, &mut sets) {
                    out.push(r);
                }
            }
        }
        if let Some(p) = policy {
            let action = if p == "accept" { Action::Allow } else { Action::Deny };
            let intent = Intent {
                source: Source::Nftables,
                action,
                rule: format!("{fam} {table} {chain}: policy {p}"),
                default_policy: false,
            };
            let v6 = match fam.as_str() {
                "ip" => Some(false),
                "ip6" => Some(true),
                _ => None,
            };
            out.push(PortRule { intent, ports: None, proto: None, v6, from_any: true, iface: None });
        }
    }
    (out, sets)
}

fn nft_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(nft_value).collect::<Vec<_>>().join(","),
        serde_json::Value::Object(o) => {
            if let Some(s) = o.get("set").and_then(|s| s.as_array()) {
                format!("{{ {} }}", s.iter().map(nft_value).collect::<Vec<_>>().join(", "))
            } else if let Some(r) = o.get("range").and_then(|r| r.as_array()) {
                format!("{}-{}", nft_value(&r[0]), r.get(1).map(nft_value).unwrap_or_default())
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", nft_value(&p["addr"]), p["len"])
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Port ranges of a dport match's right side: 22, {set: [80, {range: [a, b]}]}, {range}.
fn nft_ports(v: &serde_json::Value) -> Option<Vec<(u16, u16)>> {
    let one = |v: &serde_json::Value| -> Option<(u16, u16)> {
        if let Some(n) = v.as_u64() {
            return Some((n as u16, n as u16));
        }
        let r = v.get("range")?.as_array()?;
        Some((r.first()?.as_u64()? as u16, r.get(1)?.as_u64()? as u16))
    };
    match v.get("set").and_then(|s| s.as_array()) {
        Some(s) => s.iter().map(one).collect(),
        None => one(v).map(|r| vec![r]),
    }
}

fn nft_rule(
    fam: &str,
    table: &str,
    chain: &str,
    expr: &[serde_json::Value],
    sets: &mut Vec<(String, String, String)>,
) -> Option<PortRule> {
    let (mut text, mut action) = (Vec::new(), None);
    let (mut proto, mut ports, mut from_any, mut iface, mut v6, mut states) = (None, None, true, None, None, None);
    let mut src_set = None;
    for e in expr {
        if let Some(m) = e.get("match") {
            let (left, right, op) = (&m["left"], &m["right"], m["op"].as_str().unwrap_or("=="));
            let rv = nft_value(right);
            let lt = if let Some(p) = left.get("payload") {
                let (pr, field) = (p["protocol"].as_str().unwrap_or(""), p["field"].as_str().unwrap_or(""));
                match (pr, field) {
                    ("tcp" | "udp" | "sctp", "dport") => {
                        proto = l4(Some(pr)).ok()?;
                        ports = Some(nft_ports(right)?);
                    }
                    ("ip" | "ip6", "saddr") => {
                        from_any = false;
                        if let Some(s) = rv.strip_prefix('@') {
                            src_set = Some(s.to_string());
                        }
                    }
                    _ => {}
                }
                if pr == "ip6" {
                    v6 = Some(true)
                } else if pr == "ip" {
                    v6 = Some(false)
                }
                format!("{pr} {field}")
            } else if let Some(k) = left.get("meta").map(|m| m["key"].as_str().unwrap_or("")) {
                match k {
                    "iifname" | "iif" => iface = Some(rv.clone()),
                    "l4proto" => proto = l4(Some(&rv)).ok()?,
                    "nfproto" => v6 = Some(rv == "ipv6"),
                    _ => {}
                }
                if k == "iif" || k == "iifname" {
                    k.to_string()
                } else {
                    format!("meta {k}")
                }
            } else if let Some(k) = left.get("ct").map(|c| c["key"].as_str().unwrap_or("")) {
                if k == "state" {
                    states = Some(rv.clone());
                }
                format!("ct {k}")
            } else {
                nft_value(left)
            };
            let op = if op == "==" || op == "in" { String::new() } else { format!("{op} ") };
            let shown = if right.is_string() && (lt == "iifname" || lt == "iif") { format!("\"{rv}\"") } else { rv };
            text.push(format!("{lt} {op}{shown}"));
        } else if e.get("counter").is_some() {
        } else if e.get("accept").is_some() {
            action = Some(Action::Allow);
            text.push("accept".into());
        } else if e.get("drop").is_some() {
            action = Some(Action::Deny);
            text.push("drop".into());
        } else if let Some(r) = e.get("reject") {
            action = Some(Action::Deny);
            text.push("reject".into());
            if r["type"] == "icmpv6" {
                v6 = Some(true);
            }
        } else {
            // A statement not read here (log, limit, ...): keep it in the text.
            text.push(e.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default());
        }
    }
    let action = action?;
    if let (Some(s), Action::Deny) = (&src_set, action) {
        if ports.is_none() {
            sets.push((fam.to_string(), table.to_string(), s.clone()));
        }
    }
    if states.as_deref().is_some_and(|s| replies_only(Some(&s.to_uppercase()))) {
        return None;
    }
    if v6.is_none() {
        v6 = match fam {
            "ip" => Some(false),
            "ip6" => Some(true),
            _ => None,
        };
    }
    let intent = Intent {
        source: Source::Nftables,
        action,
        rule: format!("{fam} {table} {chain}: {}", text.join(" ")),
        default_policy: false,
    };
    Some(PortRule { intent, ports, proto, v6, from_any, iface })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{intent::IntentBook, kernel::event::Proto};

    pub(crate) const NFT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "dxfilter", "handle": 1}}, {"set": {"family": "inet", "name": "blocklist", "table": "dxfilter", "type": "ipv4_addr", "handle": 3, "flags": ["interval"], "elem": ["198.18.7.9", {"prefix": {"addr": "198.18.8.0", "len": 24}}]}}, {"chain": {"family": "inet", "table": "dxfilter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"chain": {"family": "inet", "table": "dxfilter", "name": "extra", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@blocklist"}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 443]}}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"range": [9000, 9010]}}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "198.18.4.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 6000}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 11, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 7000}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 12, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 13, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8443}}, {"reject": {"type": "icmpv6", "expr": "port-unreachable"}}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "input", "handle": 15, "expr": [{"jump": {"target": "extra"}}]}},
{"rule": {"family": "inet", "table": "dxfilter", "chain": "extra", "handle": 16, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 9090}}, {"accept": null}]}},
{"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 17, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8090}}, {"drop": null}]}}
]}"#;

    #[test]
    fn netfilter_nft_input_chains() {
        let v: serde_json::Value = serde_json::from_str(NFT).unwrap();
        let (rules, sets) = nft_rules(&v);
        assert_eq!(sets, vec![("inet".to_string(), "dxfilter".to_string(), "blocklist".to_string())]);
        let b = IntentBook::from_rules(Some(Source::Nftables), String::new(), rules, vec![]);
        let rule = |p, pr, v6| b.for_port(p, pr, v6, None).map(|i| (i.action, i.rule));
        assert_eq!(
            rule(8080, Proto::Tcp, false),
            Some((Action::Deny, "inet dxfilter input: tcp dport 8080 drop".into()))
        );
        assert_eq!(
            rule(443, Proto::Tcp, true),
            Some((Action::Allow, "inet dxfilter input: tcp dport { 80, 443 } accept".into()))
        );
        assert_eq!(rule(9001, Proto::Udp, false).unwrap().1, "inet dxfilter input: udp dport 9000-9010 accept");
        assert_eq!(rule(6000, Proto::Tcp, false).unwrap().1, "inet dxfilter input: policy drop");
        assert_eq!(rule(9090, Proto::Tcp, false).unwrap().1, "inet dxfilter input: tcp dport 9090 accept");
        assert_eq!(rule(8443, Proto::Tcp, true).unwrap().0, Action::Deny);
        assert_eq!(
            rule(8443, Proto::Tcp, false).unwrap().1,
            "inet dxfilter input: policy drop",
            "reject with icmpv6: IPv6 only"
        );
        // iptables-nft's own `ip filter` is read through iptables-save, not here.
        assert!(b.for_port(8090, Proto::Tcp, false, None).unwrap().rule.ends_with("policy drop"));
        assert_eq!(
            b.for_port(7000, Proto::Tcp, false, Some("eth1")).unwrap().rule,
            "inet dxfilter input: iifname \"eth1\" tcp dport 7000 accept"
        );
    }
}
