//! UFW's intent, read from its own files (never by running `ufw`, which needs root and
//! takes a lock): `ufw.conf` (enabled?), `/etc/default/ufw` (default incoming policy,
//! IPv6), and the `### tuple ###` lines ufw writes into `user.rules` / `user6.rules`,
//! which are its source of truth for `ufw status` (backend_iptables.py `_read_rules`).

use std::path::Path;

use super::{Action, Ban, Intent, PortRule, Source};
use crate::kernel::event::Proto;

/// One `### tuple ###` line, as ufw's `UFWRule` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// allow, deny, reject or limit (ufw maps anything else to deny).
    pub action: String,
    /// "log" or "log-all" (from `allow_log`), else empty.
    pub logtype: String,
    /// A `route:` rule: FORWARD, not INPUT.
    pub forward: bool,
    pub proto: String,
    pub dport: String,
    pub dst: String,
    pub sport: String,
    pub src: String,
    pub dapp: String,
    pub sapp: String,
    /// "in" or "out".
    pub direction: String,
    pub iface_in: String,
    pub iface_out: String,
    /// Decoded from ufw's hex.
    pub comment: String,
    pub v6: bool,
}

/// Parses the tuple lines of one rules file; malformed lines are returned as warnings,
/// as ufw itself skips them.
pub fn parse_tuples(text: &str, v6: bool) -> (Vec<Tuple>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("### tuple ###") else {
            continue;
        };
        // comment= is always last (ufw splits on it the same way).
        let (body, comment) = match rest.split_once(" comment=") {
            Some((b, hex)) => (b, hex_decode(hex.trim())),
            None => (rest, String::new()),
        };
        let f: Vec<&str> = body.split_whitespace().collect();
        if !(6..=9).contains(&f.len()) {
            warnings.push(format!("ufw: skipping malformed tuple (bad length): {}", body.trim()));
            continue;
        }
        // 6 or 8 fields: the old format without direction, which means "in".
        let (mut direction, mut iface_in, mut iface_out) = ("in".to_string(), String::new(), String::new());
        if f.len() == 7 || f.len() == 9 {
            let last = f[f.len() - 1];
            direction = last.split('_').next().unwrap_or("in").to_string();
            if let Some((a, b)) = last.split_once('!') {
                iface_in = a.split_once('_').map(|x| x.1).unwrap_or_default().to_string();
                iface_out = b.split_once('_').map(|x| x.1).unwrap_or_default().to_string();
            } else if let Some(i) = last.strip_prefix("in_") {
                iface_in = i.to_string();
            } else if let Some(i) = last.strip_prefix("out_") {
                iface_out = i.to_string();
            }
        }
        let (forward, action) = match f[0].split_once(':') {
            Some((_, a)) => (true, a),
            None => (false, f[0]),
        };
        let mut parts = action.to_lowercase().splitn(2, '_').map(str::to_string).collect::<Vec<_>>().into_iter();
        let act = parts.next().unwrap_or_default();
        let act = if ["allow", "reject", "limit"].contains(&act.as_str()) { act } else { "deny".into() };
        let app = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.replace("%20", " ")
            }
        };
        let (dapp, sapp) = if f.len() >= 8 { (app(f[6]), app(f[7])) } else { (String::new(), String::new()) };
        // ufw's set_v6 turns "any"/the other family's anywhere into this family's.
        let anyaddr = |s: &str| match s {
            "any" | "0.0.0.0/0" | "::/0" => if v6 { "::/0" } else { "0.0.0.0/0" }.to_string(),
            o => o.to_string(),
        };
        out.push(Tuple {
            action: act,
            logtype: parts.next().unwrap_or_default(),
            forward,
            proto: f[1].to_string(),
            dport: f[2].to_string(),
            dst: anyaddr(f[3]),
            sport: f[4].to_string(),
            src: anyaddr(f[5]),
            dapp,
            sapp,
            direction,
            iface_in,
            iface_out,
            comment,
            v6,
        });
    }
    (out, warnings)
}

fn hex_decode(h: &str) -> String {
    // ufw drops a trailing odd nibble and replaces undecodable bytes.
    let bytes: Vec<u8> =
        (0..h.len() / 2).filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn is_anywhere(addr: &str) -> bool {
    addr == "0.0.0.0/0" || addr == "::/0"
}

impl Tuple {
    /// The app tuple `ufw status` dedups app rules by (get_app_tuple); empty for port rules.
    fn app_tuple(&self) -> String {
        if self.dapp.is_empty() && self.sapp.is_empty() {
            return String::new();
        }
        let d = if self.dapp.is_empty() { &self.dport } else { &self.dapp };
        let s = if self.sapp.is_empty() { &self.sport } else { &self.sapp };
        let mut t = format!("{d} {} {s} {}", self.dst, self.src);
        if self.iface_in.is_empty() && self.iface_out.is_empty() {
            t += &format!(" {}", self.direction);
        } else {
            if !self.iface_in.is_empty() {
                t += &format!(" in_{}", self.iface_in);
            }
            if !self.iface_out.is_empty() {
                t += &format!(" out_{}", self.iface_out);
            }
        }
        t
    }

    /// The rule as `ufw status numbered` shows it (backend_iptables.py `get_status`,
    /// non-verbose, with count), its column padding collapsed to single spaces.
    pub fn render(&self, number: usize) -> String {
        let show_proto = self.dapp.is_empty() && self.sapp.is_empty();
        let mut loc = [String::new(), String::new()];
        for (i, dst) in [true, false].into_iter().enumerate() {
            let (addr, app, port) =
                if dst { (&self.dst, &self.dapp, &self.dport) } else { (&self.src, &self.sapp, &self.sport) };
            let port = if !app.is_empty() {
                let mut p = app.clone();
                if self.v6 && addr == "::/0" {
                    p += " (v6)";
                }
                p
            } else {
                port.clone()
            };
            let l = &mut loc[i];
            if !is_anywhere(addr) {
                *l = addr.clone();
            }
            if port != "any" {
                if l.is_empty() {
                    *l = port.clone();
                } else {
                    *l += &format!(" {port}");
                }
                if show_proto && self.proto != "any" {
                    *l += &format!("/{}", self.proto);
                }
            }
            if port == "any" {
                if is_anywhere(addr) {
                    *l = "Anywhere".into();
                    if show_proto && self.proto != "any" && self.dst == self.src && self.dport == self.sport {
                        *l += &format!("/{}", self.proto);
                    }
                    if addr == "::/0" {
                        *l += " (v6)";
                    }
                } else if show_proto && self.proto != "any" && self.dport == self.sport {
                    *l += &format!("/{}", self.proto);
                }
            } else if self.v6 && self.src == "::/0" && self.dst == "::/0" && !l.contains(" (v6)") {
                *l += " (v6)";
            }
            let (on_dst, on_src) =
                if self.forward { (&self.iface_out, &self.iface_in) } else { (&self.iface_in, &self.iface_out) };
            let on = if dst { on_dst } else { on_src };
            if !on.is_empty() {
                *l += &format!(" on {on}");
            }
        }
        let mut attribs = Vec::new();
        if !self.logtype.is_empty() {
            attribs.push(self.logtype.to_lowercase());
        }
        if self.direction == "out" {
            attribs.push("out".to_string());
        }
        let dir = if self.forward { "FWD".to_string() } else { self.direction.to_uppercase() };
        let mut s = format!("[{number:2}] {} {} {} {}", loc[0], self.action.to_uppercase(), dir, loc[1]);
        if !attribs.is_empty() {
            s += &format!(" ({})", attribs.join(", "));
        }
        if !self.comment.is_empty() {
            s += &format!(" # {}", self.comment);
        }
        // "[ 3]" keeps its padding: collapse only after the number.
        let (num, rest) = s.split_at(5);
        format!("{num}{}", rest.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// "8080", "9000:9010", "80,443,8000:8100" into ranges; None for "any" or a port ufw
/// would not have written (a name is resolved to its number when the rule is added).
pub fn parse_ports(s: &str) -> Option<Vec<(u16, u16)>> {
    s.split(',')
        .map(|p| match p.split_once(':') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => p.parse().ok().map(|n| (n, n)),
        })
        .collect()
}

/// Port rules (numbered as `ufw status numbered` numbers them) and `deny from` bans,
/// from the v4 tuples then the v6 ones.
pub fn rules_of(tuples: &[Tuple]) -> (Vec<PortRule>, Vec<Ban>, Vec<String>) {
    let (mut rules, mut bans, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen_apps = std::collections::HashSet::new();
    let mut number = 0;
    let mut shown = String::new();
    for t in tuples {
        // App rules of several port lists show once; later ones share the number.
        let app = t.app_tuple();
        if app.is_empty() || seen_apps.insert(app) {
            number += 1;
            shown = t.render(number);
        }
        // Outgoing and routed (FORWARD) rules say nothing about incoming host ports.
        if t.forward || t.direction != "in" {
            continue;
        }
        let action = if t.action == "deny" || t.action == "reject" { Action::Deny } else { Action::Allow };
        let from_any = is_anywhere(&t.src) && t.sport == "any" && t.sapp.is_empty();
        if !is_anywhere(&t.src) && t.sapp.is_empty() && t.dport == "any" && action == Action::Deny && t.sport == "any" {
            match t.src.parse::<crate::net::prefix::Prefix>() {
                Ok(p) => bans.push(Ban { name: format!("ufw {shown}"), members: vec![p] }),
                Err(e) => warnings.push(format!("ufw: rule {shown}: source {}: {}", t.src, e.0)),
            }
        }
        let proto = match t.proto.as_str() {
            "any" => None,
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            // esp, ah, gre, igmp, ipv6: no ports, nothing a published port receives.
            _ => continue,
        };
        let ports = if t.dport == "any" {
            None
        } else {
            match parse_ports(&t.dport) {
                Some(p) => Some(p),
                None => {
                    warnings.push(format!("ufw: rule {shown}: port {:?} not understood; skipped", t.dport));
                    continue;
                }
            }
        };
        // A rule to one destination address (`ufw allow to 198.18.5.1 port 4443`) is
        // kept as if to any of the host's addresses: approximate, since which address a
        // published port's traffic was sent to is not known here.
        rules.push(PortRule {
            intent: Intent { source: Source::Ufw, action, rule: shown.clone(), default_policy: false },
            ports,
            proto,
            v6: Some(t.v6),
            from_any,
            iface: (!t.iface_in.is_empty()).then(|| t.iface_in.clone()),
        });
    }
    (rules, bans, warnings)
}

/// `KEY=value` and `KEY="value"` lines of a shell-style config file.
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// The default incoming policy as the final rule, shown as `ufw status verbose` says it.
pub fn default_rule(policy: &str) -> Option<PortRule> {
    let (action, word) = match policy.to_uppercase().as_str() {
        "DROP" => (Action::Deny, "deny"),
        "REJECT" => (Action::Deny, "reject"),
        "ACCEPT" => (Action::Allow, "allow"),
        _ => return None,
    };
    Some(PortRule {
        intent: Intent {
            source: Source::Ufw,
            action,
            rule: format!("default {word} (incoming)"),
            default_policy: false,
        },
        ports: None,
        proto: None,
        v6: None,
        from_any: true,
        iface: None,
    })
}

/// What UFW says, when it is enabled (None otherwise: it then speaks for nothing).
pub struct UfwIntent {
    pub rules: Vec<PortRule>,
    pub bans: Vec<Ban>,
    pub summary: String,
    pub warnings: Vec<String>,
}

pub fn read(root: &Path) -> Option<UfwIntent> {
    let conf = std::fs::read_to_string(root.join("etc/ufw/ufw.conf")).ok()?;
    if conf_value(&conf, "ENABLED").as_deref() != Some("yes") {
        return None;
    }
    let mut warnings = Vec::new();
    let defaults = std::fs::read_to_string(root.join("etc/default/ufw")).unwrap_or_else(|e| {
        warnings.push(format!("ufw: cannot read etc/default/ufw: {e}"));
        String::new()
    });
    // ufw reads user6.rules only with IPV6=yes (and a kernel with IPv6).
    let ipv6 = conf_value(&defaults, "IPV6").as_deref() == Some("yes");
    let mut tuples = Vec::new();
    for (file, v6) in [("etc/ufw/user.rules", false), ("etc/ufw/user6.rules", true)] {
        if v6 && !ipv6 {
            continue;
        }
        match std::fs::read_to_string(root.join(file)) {
            Ok(text) => {
                let (t, w) = parse_tuples(&text, v6);
                tuples.extend(t);
                warnings.extend(w);
            }
            Err(e) => warnings.push(format!("ufw: cannot read {file}: {e}")),
        }
    }
    let (mut rules, bans, w) = rules_of(&tuples);
    warnings.extend(w);
    let policy = conf_value(&defaults, "DEFAULT_INPUT_POLICY").unwrap_or_default();
    let default = default_rule(&policy);
    let word = default
        .as_ref()
        .map_or("unknown", |d| d.intent.rule.trim_start_matches("default ").split(' ').next().unwrap_or(""));
    let summary = format!("ufw: active, default incoming {word}, {} rules", tuples.len());
    if let Some(d) = default {
        rules.push(d);
    } else {
        warnings.push(format!("ufw: DEFAULT_INPUT_POLICY {policy:?} not understood"));
    }
    Some(UfwIntent { rules, bans, summary, warnings })
}

#[cfg(test)]
mod tests;
