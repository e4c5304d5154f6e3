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
            warnings.push(format!(
                "ufw: skipping malformed tuple (bad length): {}",
                body.trim()
            ));
            continue;
        }
        // 6 or 8 fields: the old format without direction, which means "in".
        let (mut direction, mut iface_in, mut iface_out) =
            ("in".to_string(), String::new(), String::new());
        if f.len() == 7 || f.len() == 9 {
            let last = f[f.len() - 1];
            direction = last.split('_').next().unwrap_or("in").to_string();
            if let Some((a, b)) = last.split_once('!') {
                iface_in = a
                    .split_once('_')
                    .map(|x| x.1)
                    .unwrap_or_default()
                    .to_string();
                iface_out = b
                    .split_once('_')
                    .map(|x| x.1)
                    .unwrap_or_default()
                    .to_string();
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
        let mut parts = action
            .to_lowercase()
            .splitn(2, '_')
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter();
        let act = parts.next().unwrap_or_default();
        let act = if ["allow", "reject", "limit"].contains(&act.as_str()) {
            act
        } else {
            "deny".into()
        };
        let app = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.replace("%20", " ")
            }
        };
        let (dapp, sapp) = if f.len() >= 8 {
            (app(f[6]), app(f[7]))
        } else {
            (String::new(), String::new())
        };
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
    let bytes: Vec<u8> = (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
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
        let d = if self.dapp.is_empty() {
            &self.dport
        } else {
            &self.dapp
        };
        let s = if self.sapp.is_empty() {
            &self.sport
        } else {
            &self.sapp
        };
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
            let (addr, app, port) = if dst {
                (&self.dst, &self.dapp, &self.dport)
            } else {
                (&self.src, &self.sapp, &self.sport)
            };
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
                    if show_proto
                        && self.proto != "any"
                        && self.dst == self.src
                        && self.dport == self.sport
                    {
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
            let (on_dst, on_src) = if self.forward {
                (&self.iface_out, &self.iface_in)
            } else {
                (&self.iface_in, &self.iface_out)
            };
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
        let dir = if self.forward {
            "FWD".to_string()
        } else {
            self.direction.to_uppercase()
        };
        let mut s = format!(
            "[{number:2}] {} {} {} {}",
            loc[0],
            self.action.to_uppercase(),
            dir,
            loc[1]
        );
        if !attribs.is_empty() {
            s += &format!(" ({})", attribs.join(", "));
        }
        if !self.comment.is_empty() {
            s += &format!(" # {}", self.comment);
        }
        // "[ 3]" keeps its padding: collapse only after the number.
        let (num, rest) = s.split_at(5);
        format!(
            "{num}{}",
            rest.split_whitespace().collect::<Vec<_>>().join(" ")
        )
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
        let action = if t.action == "deny" || t.action == "reject" {
            Action::Deny
        } else {
            Action::Allow
        };
        let from_any = is_anywhere(&t.src) && t.sport == "any" && t.sapp.is_empty();
        if !is_anywhere(&t.src)
            && t.sapp.is_empty()
            && t.dport == "any"
            && action == Action::Deny
            && t.sport == "any"
        {
            match t.src.parse::<crate::net::prefix::Prefix>() {
                Ok(p) => bans.push(Ban {
                    name: format!("ufw {shown}"),
                    members: vec![p],
                }),
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
                    warnings.push(format!(
                        "ufw: rule {shown}: port {:?} not understood; skipped",
                        t.dport
                    ));
                    continue;
                }
            }
        };
        // A rule to one destination address (`ufw allow to 198.18.5.1 port 4443`) is
        // kept as if to any of the host's addresses: approximate, since which address a
        // published port's traffic was sent to is not known here.
        rules.push(PortRule {
            intent: Intent {
                source: Source::Ufw,
                action,
                rule: shown.clone(),
                default_policy: false,
            },
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
    let word = default.as_ref().map_or("unknown", |d| {
        d.intent
            .rule
            .trim_start_matches("default ")
            .split(' ')
            .next()
            .unwrap_or("")
    });
    let summary = format!(
        "ufw: active, default incoming {word}, {} rules",
        tuples.len()
    );
    if let Some(d) = default {
        rules.push(d);
    } else {
        warnings.push(format!(
            "ufw: DEFAULT_INPUT_POLICY {policy:?} not understood"
        ));
    }
    Some(UfwIntent {
        rules,
        bans,
        summary,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by ufw 0.36.2 (Debian 12) in a scratch namespace, trimmed to the tuples:
    // allow 22/tcp, deny 8080/tcp, allow 9000:9010/udp, deny from 198.18.3.2, reject
    // 5000,5001/tcp, allow in on eth1 7000/tcp, limit 2222/tcp, allow from
    // 198.18.4.0/24 port 6000, allow DxiWeb (80,443/tcp|8443/udp) comment, deny out 25,
    // route allow 80/tcp, allow to 198.18.5.1 port 4443, allow log 1234/tcp,
    // allow from fd42:198:3::/64 port 3000.
    const USER_RULES: &str = "*filter
:ufw-user-input - [0:0]
### RULES ###

### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 22 -j ACCEPT

### tuple ### deny tcp 8080 0.0.0.0/0 any 0.0.0.0/0 in
-A ufw-user-input -p tcp --dport 8080 -j DROP

### tuple ### allow udp 9000:9010 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### deny any any 0.0.0.0/0 any 198.18.3.2 in
### tuple ### reject tcp 5000,5001 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow tcp 7000 0.0.0.0/0 any 0.0.0.0/0 in_eth1
### tuple ### limit tcp 2222 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow any 6000 0.0.0.0/0 any 198.18.4.0/24 in
### tuple ### allow tcp 80,443 0.0.0.0/0 any 0.0.0.0/0 DxiWeb - in comment=7765622068657265
### tuple ### allow udp 8443 0.0.0.0/0 any 0.0.0.0/0 DxiWeb - in comment=7765622068657265
### tuple ### deny any 25 0.0.0.0/0 any 0.0.0.0/0 out
### tuple ### route:allow tcp 80 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### allow tcp 4443 198.18.5.1 any 0.0.0.0/0 in
### tuple ### allow_log tcp 1234 0.0.0.0/0 any 0.0.0.0/0 in

### END RULES ###
";
    const USER6_RULES: &str = "### RULES ###
### tuple ### allow tcp 22 ::/0 any ::/0 in
### tuple ### deny tcp 8080 ::/0 any ::/0 in
### tuple ### allow udp 9000:9010 ::/0 any ::/0 in
### tuple ### reject tcp 5000,5001 ::/0 any ::/0 in
### tuple ### allow tcp 7000 ::/0 any ::/0 in_eth1
### tuple ### limit tcp 2222 ::/0 any ::/0 in
### tuple ### allow tcp 80,443 ::/0 any ::/0 DxiWeb - in comment=7765622068657265
### tuple ### allow udp 8443 ::/0 any ::/0 DxiWeb - in comment=7765622068657265
### tuple ### deny any 25 ::/0 any ::/0 out
### tuple ### route:allow tcp 80 ::/0 any ::/0 in
### tuple ### allow_log tcp 1234 ::/0 any ::/0 in
### tuple ### allow tcp 3000 ::/0 any fd42:198:3::/64 in
";

    // `ufw status numbered` for the rules above, as ufw 0.36.2 printed it.
    const STATUS: &str = "[ 1] 22/tcp                     ALLOW IN    Anywhere
[ 2] 8080/tcp                   DENY IN     Anywhere
[ 3] 9000:9010/udp              ALLOW IN    Anywhere
[ 4] Anywhere                   DENY IN     198.18.3.2
[ 5] 5000,5001/tcp              REJECT IN   Anywhere
[ 6] 7000/tcp on eth1           ALLOW IN    Anywhere
[ 7] 2222/tcp                   LIMIT IN    Anywhere
[ 8] 6000                       ALLOW IN    198.18.4.0/24
[ 9] DxiWeb                     ALLOW IN    Anywhere                   # web here
[10] 25                         DENY OUT    Anywhere                   (out)
[11] 80/tcp                     ALLOW FWD   Anywhere
[12] 198.18.5.1 4443/tcp        ALLOW IN    Anywhere
[13] 1234/tcp                   ALLOW IN    Anywhere                   (log)
[14] 22/tcp (v6)                ALLOW IN    Anywhere (v6)
[15] 8080/tcp (v6)              DENY IN     Anywhere (v6)
[16] 9000:9010/udp (v6)         ALLOW IN    Anywhere (v6)
[17] 5000,5001/tcp (v6)         REJECT IN   Anywhere (v6)
[18] 7000/tcp (v6) on eth1      ALLOW IN    Anywhere (v6)
[19] 2222/tcp (v6)              LIMIT IN    Anywhere (v6)
[20] DxiWeb (v6)                ALLOW IN    Anywhere (v6)              # web here
[21] 25 (v6)                    DENY OUT    Anywhere (v6)              (out)
[22] 80/tcp (v6)                ALLOW FWD   Anywhere (v6)
[23] 1234/tcp (v6)              ALLOW IN    Anywhere (v6)              (log)
[24] 3000/tcp                   ALLOW IN    fd42:198:3::/64";

    fn collapse(s: &str) -> String {
        let (n, r) = s.split_at(5);
        format!("{n}{}", r.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn tuples() -> Vec<Tuple> {
        let (mut t, w) = parse_tuples(USER_RULES, false);
        let (t6, w6) = parse_tuples(USER6_RULES, true);
        assert!(w.is_empty() && w6.is_empty(), "{w:?} {w6:?}");
        t.extend(t6);
        t
    }

    #[test]
    fn ufw_numbers_and_renders_as_status_numbered() {
        let t = tuples();
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        let mut got = Vec::new();
        for r in &t {
            let a = r.app_tuple();
            if a.is_empty() || seen.insert(a) {
                n += 1;
                got.push(r.render(n));
            }
        }
        let want: Vec<String> = STATUS.lines().map(collapse).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ufw_rules_give_port_intents_and_bans() {
        let (mut rules, bans, w) = rules_of(&tuples());
        assert!(w.is_empty(), "{w:?}");
        rules.push(default_rule("DROP").unwrap());
        let book =
            super::super::IntentBook::from_rules(Some(Source::Ufw), String::new(), rules, bans);
        let at = |port, proto, v6, iface| {
            book.for_port(port, proto, v6, iface)
                .map(|i| (i.action, i.rule))
        };
        assert_eq!(
            at(8080, Proto::Tcp, false, None),
            Some((Action::Deny, "[ 2] 8080/tcp DENY IN Anywhere".into()))
        );
        assert_eq!(
            at(8080, Proto::Tcp, true, None),
            Some((
                Action::Deny,
                "[15] 8080/tcp (v6) DENY IN Anywhere (v6)".into()
            ))
        );
        assert_eq!(at(9005, Proto::Udp, false, None).unwrap().0, Action::Allow);
        assert_eq!(
            at(9005, Proto::Tcp, false, None).unwrap().1,
            "default deny (incoming)"
        );
        assert_eq!(
            at(5001, Proto::Tcp, true, None).unwrap(),
            (
                Action::Deny,
                "[17] 5000,5001/tcp (v6) REJECT IN Anywhere (v6)".into()
            )
        );
        assert_eq!(
            at(2222, Proto::Tcp, false, None).unwrap().0,
            Action::Allow,
            "limit counts as allow"
        );
        // Interface rules hold only on that interface.
        assert_eq!(
            at(7000, Proto::Tcp, false, Some("eth1")).unwrap().0,
            Action::Allow
        );
        assert_eq!(
            at(7000, Proto::Tcp, false, None).unwrap().1,
            "default deny (incoming)"
        );
        // From one network only: not from anywhere, so the default speaks.
        assert_eq!(
            at(6000, Proto::Tcp, false, None).unwrap().1,
            "default deny (incoming)"
        );
        assert_eq!(
            at(3000, Proto::Tcp, true, None).unwrap().1,
            "default deny (incoming)"
        );
        // App rules: both port lists, one number.
        assert_eq!(
            at(443, Proto::Tcp, false, None).unwrap().1,
            "[ 9] DxiWeb ALLOW IN Anywhere # web here"
        );
        assert_eq!(
            at(8443, Proto::Udp, true, None).unwrap().1,
            "[20] DxiWeb (v6) ALLOW IN Anywhere (v6) # web here"
        );
        // Routed and outgoing rules are not incoming intent.
        assert_eq!(
            at(80, Proto::Tcp, false, None).unwrap().1,
            "[ 9] DxiWeb ALLOW IN Anywhere # web here"
        );
        assert_eq!(
            at(25, Proto::Tcp, false, None).unwrap().1,
            "default deny (incoming)"
        );
        assert_eq!(
            at(1234, Proto::Tcp, false, None).unwrap().1,
            "[13] 1234/tcp ALLOW IN Anywhere (log)"
        );
        assert_eq!(book.bans.len(), 1);
        assert_eq!(book.bans[0].name, "ufw [ 4] Anywhere DENY IN 198.18.3.2");
        assert!(book.ban_of("198.18.3.2".parse().unwrap()).is_some());
        assert!(book.ban_of("198.18.3.3".parse().unwrap()).is_none());
    }

    #[test]
    fn ufw_conf_values_and_defaults() {
        // Debian's /etc/default/ufw lines.
        let d = "# Set to yes to apply rules to support IPv6\nIPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n";
        assert_eq!(
            conf_value(d, "DEFAULT_INPUT_POLICY").as_deref(),
            Some("DROP")
        );
        assert_eq!(conf_value(d, "IPV6").as_deref(), Some("yes"));
        assert_eq!(conf_value("ENABLED=no\n", "ENABLED").as_deref(), Some("no"));
        assert_eq!(
            default_rule("REJECT").unwrap().intent.rule,
            "default reject (incoming)"
        );
        assert_eq!(default_rule("ACCEPT").unwrap().intent.action, Action::Allow);
        assert!(default_rule("bogus").is_none());
    }

    #[test]
    fn ufw_malformed_tuples_warn() {
        let (t, w) = parse_tuples("### tuple ### allow tcp 22\n", false);
        assert!(t.is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(
            parse_ports("80,443,8000:8100"),
            Some(vec![(80, 80), (443, 443), (8000, 8100)])
        );
        assert_eq!(parse_ports("any"), None);
    }
}
