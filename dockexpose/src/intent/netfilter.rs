//! The plain INPUT chain, for a host with neither UFW nor firewalld: `iptables-save -t
//! filter` (and ip6tables-save) and, when the host has nftables tables of its own,
//! `nft -j list ruleset`. Shelling out: no crate reads iptables, and the tools' save
//! formats are stable. Parsing is pure (text in, rules out); `run_tool` is the I/O.

use std::{
    collections::BTreeMap,
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{Action, Intent, PortRule, Source};
use crate::kernel::event::Proto;

/// Runs a tool and returns its stdout; Err says why not (missing, failed, too slow).
pub fn run_tool(argv: &[&str]) -> Result<String, String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{} not found", argv[0])
            } else {
                format!("{}: {e}", argv[0])
            }
        })?;
    // Read on a thread so a large ruleset cannot fill the pipe while we wait.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer within 10 s", argv.join(" ")));
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!(
            "{} failed ({status}): {}",
            argv.join(" "),
            err.trim()
        ));
    }
    Ok(out)
}

/// One `-A CHAIN ...` line of iptables-save.
#[derive(Clone, Debug, Default)]
pub struct SavedRule {
    /// The line as `iptables -S` shows it.
    pub text: String,
    pub proto: Option<String>,
    pub dports: Option<String>,
    pub iface: Option<String>,
    pub src: Option<String>,
    pub target: Option<String>,
    /// --ctstate / --state values.
    pub states: Option<String>,
    /// `--match-set NAME src`.
    pub src_set: Option<String>,
    /// Some match is negated (`! -s ...`): not read as a port rule.
    pub negated: bool,
}

/// The filter table of an iptables-save dump: chain name to (policy, rules).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub chains: BTreeMap<String, (Option<String>, Vec<SavedRule>)>,
}

/// Splits a save line into words, honouring the double quotes iptables-save writes
/// around a comment.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => cur.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses the `*filter` table of an iptables-save (or ip6tables-save) dump.
pub fn parse_save(text: &str) -> Filter {
    let mut f = Filter::default();
    let mut in_filter = false;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            in_filter = t == "filter";
        } else if !in_filter {
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            if let (Some(name), Some(pol)) = (w.next(), w.next()) {
                let e = f.chains.entry(name.to_string()).or_default();
                e.0 = (pol != "-").then(|| pol.to_string());
            }
        } else if line.starts_with("-A ") {
            let w = words(line);
            let mut r = SavedRule {
                text: line.to_string(),
                ..Default::default()
            };
            let mut i = 2;
            while i < w.len() {
                let next = w.get(i + 1).cloned();
                match w[i].as_str() {
                    "!" => r.negated = true,
                    "-p" | "--protocol" => r.proto = next,
                    "--dport" | "--dports" | "--destination-port" | "--destination-ports" => {
                        r.dports = next
                    }
                    "-i" | "--in-interface" => r.iface = next,
                    "-s" | "--source" => r.src = next,
                    "-j" | "-g" | "--jump" | "--goto" => r.target = next,
                    "--ctstate" | "--state" => r.states = next,
                    "--match-set" => {
                        if w.get(i + 2)
                            .is_some_and(|d| d.split(',').next() == Some("src"))
                        {
                            r.src_set = next;
                        }
                        i += 1;
                    }
                    _ => {
                        i += 1;
                        continue;
                    }
                }
                i += if w[i] == "!" { 1 } else { 2 };
            }
            let chain = w.get(1).cloned().unwrap_or_default();
            f.chains.entry(chain).or_default().1.push(r);
        }
    }
    f
}

impl Filter {
    pub fn policy(&self, chain: &str) -> Option<&str> {
        self.chains.get(chain).and_then(|c| c.0.as_deref())
    }

    pub fn rules(&self, chain: &str) -> &[SavedRule] {
        self.chains.get(chain).map_or(&[], |c| &c.1)
    }

    /// INPUT and the user chains it jumps to (transitively, each once): where bans are.
    pub fn reachable_from_input(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = vec!["INPUT"];
        let mut i = 0;
        while i < seen.len() {
            for r in self.rules(seen[i]) {
                if let Some(t) = r.target.as_deref() {
                    if let Some((name, _)) = self.chains.get_key_value(t) {
                        if !seen.contains(&name.as_str()) {
                            seen.push(name);
                        }
                    }
                }
            }
            i += 1;
        }
        seen
    }
}

/// "8080", "8000:8100", "80,443,8000:8100".
fn ports(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => p.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

fn l4(p: Option<&str>) -> Result<Option<Proto>, ()> {
    match p {
        None | Some("all") | Some("0") => Ok(None),
        Some("tcp") | Some("6") => Ok(Some(Proto::Tcp)),
        Some("udp") | Some("17") => Ok(Some(Proto::Udp)),
        Some("sctp") | Some("132") => Ok(Some(Proto::Sctp)),
        _ => Err(()),
    }
}

/// Only for replies (ESTABLISHED, RELATED) and never a new connection from outside.
fn replies_only(states: Option<&str>) -> bool {
    states.is_some_and(|s| {
        !s.split(',')
            .any(|x| x == "NEW" || x == "UNTRACKED" || x == "INVALID")
    })
}

/// INPUT's port rules in order, then its policy; user chains INPUT jumps to are
/// followed one level (their rules take the jump's matches where they have none).
pub fn input_rules(f: &Filter, v6: bool) -> Vec<PortRule> {
    let mut out = Vec::new();
    for r in f.rules("INPUT") {
        match r.target.as_deref() {
            Some(t) if f.chains.contains_key(t) => {
                for inner in f.rules(t) {
                    if !inner
                        .target
                        .as_deref()
                        .is_some_and(|t| f.chains.contains_key(t))
                    {
                        push_rule(&mut out, inner, Some(r), v6);
                    }
                }
            }
            _ => push_rule(&mut out, r, None, v6),
        }
    }
    if let Some(p) = f.policy("INPUT") {
        let action = if p == "ACCEPT" {
            Action::Allow
        } else {
            Action::Deny
        };
        let intent = Intent {
            source: Source::Iptables,
            action,
            rule: format!("policy {p}"),
        };
        out.push(PortRule {
            intent,
            ports: None,
            proto: None,
            v6: Some(v6),
            from_any: true,
            iface: None,
        });
    }
    out
}

fn push_rule(out: &mut Vec<PortRule>, r: &SavedRule, outer: Option<&SavedRule>, v6: bool) {
    let action = match r.target.as_deref() {
        Some("ACCEPT") => Action::Allow,
        Some("DROP") | Some("REJECT") => Action::Deny,
        // LOG, RETURN, MARK, ...: no verdict here.
        _ => return,
    };
    let pick = |f: fn(&SavedRule) -> Option<&String>| f(r).or_else(|| outer.and_then(f)).cloned();
    if r.negated
        || outer.is_some_and(|o| o.negated)
        || replies_only(pick(|x| x.states.as_ref()).as_deref())
    {
        return;
    }
    let Ok(proto) = l4(pick(|x| x.proto.as_ref()).as_deref()) else {
        return;
    };
    let ports = match pick(|x| x.dports.as_ref()) {
        None => None,
        Some(p) => match ports(&p) {
            Some(p) => Some(p),
            None => return,
        },
    };
    let from_any = pick(|x| x.src.as_ref()).is_none() && pick(|x| x.src_set.as_ref()).is_none();
    let rule = match outer {
        Some(o) => format!("{} → {}", o.text, r.text),
        None => r.text.clone(),
    };
    let intent = Intent {
        source: Source::Iptables,
        action,
        rule,
    };
    out.push(PortRule {
        intent,
        ports,
        proto,
        v6: Some(v6),
        from_any,
        iface: pick(|x| x.iface.as_ref()),
    });
}

/// Tables iptables-nft made (its compatibility tables) are read through iptables-save.
pub fn is_iptables_table(family: &str, name: &str) -> bool {
    matches!(family, "ip" | "ip6")
        && matches!(name, "filter" | "mangle" | "raw" | "security" | "nat")
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
        .filter(|c| {
            !is_iptables_table(
                c["family"].as_str().unwrap_or(""),
                c["table"].as_str().unwrap_or(""),
            )
        })
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
            let jump = expr
                .iter()
                .find_map(|e| e.get("jump").or_else(|| e.get("goto")))
                .and_then(|j| j["target"].as_str());
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
            let action = if p == "accept" {
                Action::Allow
            } else {
                Action::Deny
            };
            let intent = Intent {
                source: Source::Nftables,
                action,
                rule: format!("{fam} {table} {chain}: policy {p}"),
            };
            let v6 = match fam.as_str() {
                "ip" => Some(false),
                "ip6" => Some(true),
                _ => None,
            };
            out.push(PortRule {
                intent,
                ports: None,
                proto: None,
                v6,
                from_any: true,
                iface: None,
            });
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
                format!(
                    "{{ {} }}",
                    s.iter().map(nft_value).collect::<Vec<_>>().join(", ")
                )
            } else if let Some(r) = o.get("range").and_then(|r| r.as_array()) {
                format!(
                    "{}-{}",
                    nft_value(&r[0]),
                    r.get(1).map(nft_value).unwrap_or_default()
                )
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
    let (mut proto, mut ports, mut from_any, mut iface, mut v6, mut states) =
        (None, None, true, None, None, None);
    let mut src_set = None;
    for e in expr {
        if let Some(m) = e.get("match") {
            let (left, right, op) = (&m["left"], &m["right"], m["op"].as_str().unwrap_or("=="));
            let rv = nft_value(right);
            let lt = if let Some(p) = left.get("payload") {
                let (pr, field) = (
                    p["protocol"].as_str().unwrap_or(""),
                    p["field"].as_str().unwrap_or(""),
                );
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
            let op = if op == "==" || op == "in" {
                String::new()
            } else {
                format!("{op} ")
            };
            let shown = if right.is_string() && (lt == "iifname" || lt == "iif") {
                format!("\"{rv}\"")
            } else {
                rv
            };
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
            text.push(
                e.as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default(),
            );
        }
    }
    let action = action?;
    if let (Some(s), Action::Deny) = (&src_set, action) {
        if ports.is_none() {
            sets.push((fam.to_string(), table.to_string(), s.clone()));
        }
    }
    if states
        .as_deref()
        .is_some_and(|s| replies_only(Some(&s.to_uppercase())))
    {
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
    };
    Some(PortRule {
        intent,
        ports,
        proto,
        v6,
        from_any,
        iface,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::intent::IntentBook;

    // iptables-save v1.8.9 (nf_tables) in a scratch namespace.
    pub(crate) const SAVE: &str =
        "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Dec  7 06:52:26 2026
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:dxi-user - [0:0]
:f2b-sshd - [0:0]
-A INPUT -p tcp -m multiport --dports 22 -j f2b-sshd
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -m set --match-set dxi-block src -j DROP
-A INPUT -m set --match-set f2b-web src -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 80,443,8000:8100 -j ACCEPT
-A INPUT -s 198.18.4.0/24 -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -i eth1 -p tcp -m tcp --dport 7000 -j ACCEPT
-A INPUT -j dxi-user
-A INPUT -p tcp -m state --state NEW -m tcp --dport 5432 -j DROP
-A INPUT -p tcp -m tcp --dport 6000 -j REJECT --reject-with tcp-reset
-A INPUT -m comment --comment \"no more \\\"here\\\"\" -p udp -m udp --dport 6001 -j DROP
-A dxi-user -p tcp -m tcp --dport 9090 -j ACCEPT
-A f2b-sshd -s 198.18.7.10/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-sshd -j RETURN
COMMIT
";

    fn book(rules: Vec<PortRule>) -> IntentBook {
        IntentBook::from_rules(Some(Source::Iptables), String::new(), rules, vec![])
    }

    #[test]
    fn netfilter_input_rules_in_order_then_policy() {
        let f = parse_save(SAVE);
        assert_eq!(f.policy("INPUT"), Some("DROP"));
        let b = book(input_rules(&f, false));
        let rule = |p, pr| b.for_port(p, pr, false, None).map(|i| (i.action, i.rule));
        assert_eq!(
            rule(22, Proto::Tcp),
            Some((
                Action::Allow,
                "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT".into()
            ))
        );
        assert_eq!(rule(8050, Proto::Tcp).unwrap().0, Action::Allow);
        assert_eq!(
            rule(8101, Proto::Tcp),
            Some((Action::Deny, "policy DROP".into()))
        );
        assert_eq!(
            rule(53, Proto::Udp).unwrap().1,
            "policy DROP",
            "from one network only"
        );
        assert_eq!(
            rule(9090, Proto::Tcp).unwrap().1,
            "-A INPUT -j dxi-user → -A dxi-user -p tcp -m tcp --dport 9090 -j ACCEPT"
        );
        assert_eq!(rule(5432, Proto::Tcp).unwrap().0, Action::Deny);
        assert_eq!(
            rule(6000, Proto::Tcp).unwrap().1,
            "-A INPUT -p tcp -m tcp --dport 6000 -j REJECT --reject-with tcp-reset"
        );
        assert!(rule(6001, Proto::Udp)
            .unwrap()
            .1
            .contains("--dport 6001 -j DROP"));
        assert_eq!(
            b.for_port(7000, Proto::Tcp, false, Some("eth1"))
                .unwrap()
                .action,
            Action::Allow
        );
        // The family is the dump's.
        assert_eq!(b.for_port(22, Proto::Tcp, true, None), None);
        assert_eq!(
            f.reachable_from_input(),
            vec!["INPUT", "f2b-sshd", "dxi-user"]
        );
        assert_eq!(f.rules("INPUT")[3].src_set.as_deref(), Some("dxi-block"));
        assert_eq!(
            words(r#"-m comment --comment "a \"b\" c" -j X"#)[3],
            r#"a "b" c"#
        );
    }

    // `nft -j list ruleset` (nftables 1.0.6) of an inet table of the operator's own.
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
        assert_eq!(
            sets,
            vec![(
                "inet".to_string(),
                "dxfilter".to_string(),
                "blocklist".to_string()
            )]
        );
        let b = IntentBook::from_rules(Some(Source::Nftables), String::new(), rules, vec![]);
        let rule = |p, pr, v6| b.for_port(p, pr, v6, None).map(|i| (i.action, i.rule));
        assert_eq!(
            rule(8080, Proto::Tcp, false),
            Some((
                Action::Deny,
                "inet dxfilter input: tcp dport 8080 drop".into()
            ))
        );
        assert_eq!(
            rule(443, Proto::Tcp, true),
            Some((
                Action::Allow,
                "inet dxfilter input: tcp dport { 80, 443 } accept".into()
            ))
        );
        assert_eq!(
            rule(9001, Proto::Udp, false).unwrap().1,
            "inet dxfilter input: udp dport 9000-9010 accept"
        );
        assert_eq!(
            rule(6000, Proto::Tcp, false).unwrap().1,
            "inet dxfilter input: policy drop"
        );
        assert_eq!(
            rule(9090, Proto::Tcp, false).unwrap().1,
            "inet dxfilter input: tcp dport 9090 accept"
        );
        assert_eq!(rule(8443, Proto::Tcp, true).unwrap().0, Action::Deny);
        assert_eq!(
            rule(8443, Proto::Tcp, false).unwrap().1,
            "inet dxfilter input: policy drop",
            "reject with icmpv6: IPv6 only"
        );
        // iptables-nft's own `ip filter` is read through iptables-save, not here.
        assert!(b
            .for_port(8090, Proto::Tcp, false, None)
            .unwrap()
            .rule
            .ends_with("policy drop"));
        assert_eq!(
            b.for_port(7000, Proto::Tcp, false, Some("eth1"))
                .unwrap()
                .rule,
            "inet dxfilter input: iifname \"eth1\" tcp dport 7000 accept"
        );
    }

    #[test]
    fn netfilter_run_tool_reports_missing_tools() {
        let e = run_tool(&["dockexpose-no-such-tool"]).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        assert_eq!(run_tool(&["sh", "-c", "echo hi"]).unwrap(), "hi\n");
        assert!(run_tool(&["sh", "-c", "exit 3"])
            .unwrap_err()
            .contains("failed"));
    }
}
