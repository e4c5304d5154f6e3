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
        return Err(format!("{} failed ({status}): {}", argv.join(" "), err.trim()));
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
            let mut r = SavedRule { text: line.to_string(), ..Default::default() };
            let mut i = 2;
            while i < w.len() {
                let next = w.get(i + 1).cloned();
                match w[i].as_str() {
                    "!" => r.negated = true,
                    "-p" | "--protocol" => r.proto = next,
                    "--dport" | "--dports" | "--destination-port" | "--destination-ports" => r.dports = next,
                    "-i" | "--in-interface" => r.iface = next,
                    "-s" | "--source" => r.src = next,
                    "-j" | "-g" | "--jump" | "--goto" => r.target = next,
                    "--ctstate" | "--state" => r.states = next,
                    "--match-set" => {
                        if w.get(i + 2).is_some_and(|d| d.split(',').next() == Some("src")) {
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

pub(super) fn l4(p: Option<&str>) -> Result<Option<Proto>, ()> {
    match p {
        None | Some("all") | Some("0") => Ok(None),
        Some("tcp") | Some("6") => Ok(Some(Proto::Tcp)),
        Some("udp") | Some("17") => Ok(Some(Proto::Udp)),
        Some("sctp") | Some("132") => Ok(Some(Proto::Sctp)),
        _ => Err(()),
    }
}

/// Only for replies (ESTABLISHED, RELATED) and never a new connection from outside.
pub(super) fn replies_only(states: Option<&str>) -> bool {
    states.is_some_and(|s| !s.split(',').any(|x| x == "NEW" || x == "UNTRACKED" || x == "INVALID"))
}

/// INPUT's port rules in order, then its policy; user chains INPUT jumps to are
/// followed one level (their rules take the jump's matches where they have none).
pub fn input_rules(f: &Filter, v6: bool) -> Vec<PortRule> {
    let mut out = Vec::new();
    for r in f.rules("INPUT") {
        match r.target.as_deref() {
            Some(t) if f.chains.contains_key(t) => {
                for inner in f.rules(t) {
                    if !inner.target.as_deref().is_some_and(|t| f.chains.contains_key(t)) {
                        push_rule(&mut out, inner, Some(r), v6);
                    }
                }
            }
            _ => push_rule(&mut out, r, None, v6),
        }
    }
    if let Some(p) = f.policy("INPUT") {
        let action = if p == "ACCEPT" { Action::Allow } else { Action::Deny };
        let intent = Intent { source: Source::Iptables, action, rule: format!("policy {p}"), default_policy: false };
        out.push(PortRule { intent, ports: None, proto: None, v6: Some(v6), from_any: true, iface: None });
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
    if r.negated || outer.is_some_and(|o| o.negated) || replies_only(pick(|x| x.states.as_ref()).as_deref()) {
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
    let intent = Intent { source: Source::Iptables, action, rule, default_policy: false };
    out.push(PortRule { intent, ports, proto, v6: Some(v6), from_any, iface: pick(|x| x.iface.as_ref()) });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::intent::IntentBook;

    // iptables-save v1.8.9 (nf_tables) in a scratch namespace.
    pub(crate) const SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Mon Dec  7 06:52:26 2026
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
        assert_eq!(rule(22, Proto::Tcp), Some((Action::Allow, "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT".into())));
        assert_eq!(rule(8050, Proto::Tcp).unwrap().0, Action::Allow);
        assert_eq!(rule(8101, Proto::Tcp), Some((Action::Deny, "policy DROP".into())));
        assert_eq!(rule(53, Proto::Udp).unwrap().1, "policy DROP", "from one network only");
        assert_eq!(
            rule(9090, Proto::Tcp).unwrap().1,
            "-A INPUT -j dxi-user → -A dxi-user -p tcp -m tcp --dport 9090 -j ACCEPT"
        );
        assert_eq!(rule(5432, Proto::Tcp).unwrap().0, Action::Deny);
        assert_eq!(
            rule(6000, Proto::Tcp).unwrap().1,
            "-A INPUT -p tcp -m tcp --dport 6000 -j REJECT --reject-with tcp-reset"
        );
        assert!(rule(6001, Proto::Udp).unwrap().1.contains("--dport 6001 -j DROP"));
        assert_eq!(b.for_port(7000, Proto::Tcp, false, Some("eth1")).unwrap().action, Action::Allow);
        // The family is the dump's.
        assert_eq!(b.for_port(22, Proto::Tcp, true, None), None);
        assert_eq!(f.reachable_from_input(), vec!["INPUT", "f2b-sshd", "dxi-user"]);
        assert_eq!(f.rules("INPUT")[3].src_set.as_deref(), Some("dxi-block"));
        assert_eq!(words(r#"-m comment --comment "a \"b\" c" -j X"#)[3], r#"a "b" c"#);
    }

    // `nft -j list ruleset` (nftables 1.0.6) of an inet table of the operator's own.
    #[test]
    fn netfilter_run_tool_reports_missing_tools() {
        let e = run_tool(&["dockexpose-no-such-tool"]).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        assert_eq!(run_tool(&["sh", "-c", "echo hi"]).unwrap(), "hi\n");
        assert!(run_tool(&["sh", "-c", "exit 3"]).unwrap_err().contains("failed"));
    }
}
