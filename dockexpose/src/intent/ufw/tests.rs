//! Unit tests of ufw.rs.

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
    let book = super::super::IntentBook::from_rules(Some(Source::Ufw), String::new(), rules, bans);
    let at = |port, proto, v6, iface| book.for_port(port, proto, v6, iface).map(|i| (i.action, i.rule));
    assert_eq!(at(8080, Proto::Tcp, false, None), Some((Action::Deny, "[ 2] 8080/tcp DENY IN Anywhere".into())));
    assert_eq!(
        at(8080, Proto::Tcp, true, None),
        Some((Action::Deny, "[15] 8080/tcp (v6) DENY IN Anywhere (v6)".into()))
    );
    assert_eq!(at(9005, Proto::Udp, false, None).unwrap().0, Action::Allow);
    assert_eq!(at(9005, Proto::Tcp, false, None).unwrap().1, "default deny (incoming)");
    assert_eq!(
        at(5001, Proto::Tcp, true, None).unwrap(),
        (Action::Deny, "[17] 5000,5001/tcp (v6) REJECT IN Anywhere (v6)".into())
    );
    assert_eq!(at(2222, Proto::Tcp, false, None).unwrap().0, Action::Allow, "limit counts as allow");
    // Interface rules hold only on that interface.
    assert_eq!(at(7000, Proto::Tcp, false, Some("eth1")).unwrap().0, Action::Allow);
    assert_eq!(at(7000, Proto::Tcp, false, None).unwrap().1, "default deny (incoming)");
    // From one network only: not from anywhere, so the default speaks.
    assert_eq!(at(6000, Proto::Tcp, false, None).unwrap().1, "default deny (incoming)");
    assert_eq!(at(3000, Proto::Tcp, true, None).unwrap().1, "default deny (incoming)");
    // App rules: both port lists, one number.
    assert_eq!(at(443, Proto::Tcp, false, None).unwrap().1, "[ 9] DxiWeb ALLOW IN Anywhere # web here");
    assert_eq!(at(8443, Proto::Udp, true, None).unwrap().1, "[20] DxiWeb (v6) ALLOW IN Anywhere (v6) # web here");
    // Routed and outgoing rules are not incoming intent.
    assert_eq!(at(80, Proto::Tcp, false, None).unwrap().1, "[ 9] DxiWeb ALLOW IN Anywhere # web here");
    assert_eq!(at(25, Proto::Tcp, false, None).unwrap().1, "default deny (incoming)");
    assert_eq!(at(1234, Proto::Tcp, false, None).unwrap().1, "[13] 1234/tcp ALLOW IN Anywhere (log)");
    assert_eq!(book.bans.len(), 1);
    assert_eq!(book.bans[0].name, "ufw [ 4] Anywhere DENY IN 198.18.3.2");
    assert!(book.ban_of("198.18.3.2".parse().unwrap()).is_some());
    assert!(book.ban_of("198.18.3.3".parse().unwrap()).is_none());
}

#[test]
fn ufw_conf_values_and_defaults() {
    // Debian's /etc/default/ufw lines.
    let d = "# Set to yes to apply rules to support IPv6\nIPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\nDEFAULT_OUTPUT_POLICY=\"ACCEPT\"\n";
    assert_eq!(conf_value(d, "DEFAULT_INPUT_POLICY").as_deref(), Some("DROP"));
    assert_eq!(conf_value(d, "IPV6").as_deref(), Some("yes"));
    assert_eq!(conf_value("ENABLED=no\n", "ENABLED").as_deref(), Some("no"));
    assert_eq!(default_rule("REJECT").unwrap().intent.rule, "default reject (incoming)");
    assert_eq!(default_rule("ACCEPT").unwrap().intent.action, Action::Allow);
    assert!(default_rule("bogus").is_none());
}

#[test]
fn ufw_malformed_tuples_warn() {
    let (t, w) = parse_tuples("### tuple ### allow tcp 22\n", false);
    assert!(t.is_empty());
    assert_eq!(w.len(), 1);
    assert_eq!(parse_ports("80,443,8000:8100"), Some(vec![(80, 80), (443, 443), (8000, 8100)]));
    assert_eq!(parse_ports("any"), None);
}
