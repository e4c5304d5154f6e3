//! iptables INPUT and ipset, and an empty INPUT that says no intent.

use super::*;

#[test]
fn intent_iptables_input_and_ipset_in_a_namespace() {
    let test = "intent_iptables_input_and_ipset_in_a_namespace";
    if !support::privileged(test) {
        return;
    }
    for tool in ["ipset", "iptables", "iptables-save", "ip6tables-save"] {
        if !have(tool) {
            skip(test, &format!("{tool} is not installed"));
            return;
        }
    }
    let bed = Bed::new("ipt");
    bed.exec(&["ipset", "create", "dxi-block", "hash:ip"]);
    bed.exec(&["ipset", "add", "dxi-block", "198.18.7.9"]);
    bed.exec(&["iptables", "-P", "INPUT", "DROP"]);
    bed.exec(&["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]);
    bed.exec(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"]);
    bed.exec(&["iptables", "-I", "INPUT", "-m", "set", "--match-set", "dxi-block", "src", "-j", "DROP"]);
    bed.exec(&["ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "REJECT"]);
    let listed = bed.exec(&["iptables", "-S", "INPUT"]);
    let rule_8080 =
        listed.lines().find(|l| l.contains("--dport 8080")).expect("iptables -S shows the rule").to_string();

    // The pure path, on the tools' output taken from outside the namespace.
    let empty = bed.dir.join("root");
    std::fs::create_dir_all(&empty).unwrap();
    let dumps = Dumps {
        iptables: Ok(bed.exec(&["iptables-save", "-t", "filter"])),
        ip6tables: Ok(bed.exec(&["ip6tables-save", "-t", "filter"])),
        ipset: Ok(bed.exec(&["ipset", "save"])),
        nft: Err("not asked".into()),
        firewalld_runs: false,
    };
    let fed = IntentBook::read_with(&empty, &dumps);
    // And `read` itself, running the tools inside the namespace.
    let book = bed.read(&empty);
    for b in [&fed, &book] {
        assert_eq!(b.source, Some(Source::Iptables), "{}: {:?}", b.summary, b.warnings);
        let allow = b.for_port(8080, Proto::Tcp, false, None).unwrap();
        assert_eq!((allow.action, allow.rule), (Action::Allow, rule_8080.clone()));
        let other = b.for_port(8081, Proto::Tcp, false, None).unwrap();
        assert_eq!((other.action, other.rule.as_str()), (Action::Deny, "policy DROP"));
        let v6 = b.for_port(8443, Proto::Tcp, true, None).unwrap();
        assert_eq!(v6.action, Action::Deny);
        assert!(v6.rule.contains("--dport 8443 -j REJECT"), "{}", v6.rule);
        // ip6tables' INPUT accepts: 8080 over IPv6 reads as its policy.
        assert_eq!(b.for_port(8080, Proto::Tcp, true, None).unwrap().rule, "policy ACCEPT");
        let ban = b.ban_of("198.18.7.9".parse().unwrap()).expect("the ipset is a ban");
        assert_eq!(ban.name, "ipset dxi-block");
        assert!(b.ban_of("198.18.7.8".parse().unwrap()).is_none());
    }
    assert!(book.warnings.iter().all(|w| !w.contains("iptables-save")), "{:?}", book.warnings);
}

#[test]
fn intent_empty_input_says_no_intent() {
    let test = "intent_empty_input_says_no_intent";
    if !support::privileged(test) {
        return;
    }
    if !have("iptables-save") {
        skip(test, "iptables-save is not installed");
        return;
    }
    let bed = Bed::new("empty");
    // A fresh namespace: INPUT policy ACCEPT and no rules (the tables exist once listed).
    bed.exec(&["iptables", "-S", "INPUT"]);
    bed.exec(&["ip6tables", "-S", "INPUT"]);
    let book = bed.read(&bed.dir);
    assert_eq!(book.source, None, "{}", book.summary);
    assert_eq!(
        book.summary,
        "no host firewall found: INPUT accepts everything (policy ACCEPT, no rules); no intent to compare"
    );
    assert_eq!(book.for_port(8080, Proto::Tcp, false, None), None);
}
