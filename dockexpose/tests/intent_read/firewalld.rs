//! firewalld's zones, written by firewall-offline-cmd.

use super::*;

#[test]
fn intent_firewalld_zones_written_by_firewall_offline_cmd() {
    let test = "intent_firewalld_zones_written_by_firewall_offline_cmd";
    if !support::privileged(test) {
        return;
    }
    if !have("firewall-offline-cmd")
        || !Path::new("/etc/firewalld").is_dir()
        || !Path::new("/usr/lib/firewalld/zones").is_dir()
    {
        skip(test, "firewalld is not installed");
        return;
    }
    let bed = Bed::new("fwd");
    let root = bed.dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    // firewalld's runtime directory: the daemon "runs" for this root.
    std::fs::create_dir_all(root.join("run/firewalld")).unwrap();
    std::os::unix::fs::symlink("/usr/lib/firewalld", root.join("usr/lib/firewalld")).unwrap();
    let etc = root.join("etc/firewalld");
    sh(&["cp", "-a", "/etc/firewalld", &etc.to_string_lossy()]);
    // The operator's words, written by firewalld's own offline tool into the private copy.
    let script = format!(
        "mount --bind {etc} /etc/firewalld && {{ firewall-offline-cmd --set-default-zone=public >/dev/null 2>&1 || true; }} && \
         firewall-offline-cmd --zone=public --add-port=8080/tcp >/dev/null && \
         firewall-offline-cmd --zone=public --add-service=http >/dev/null && \
         firewall-offline-cmd --zone=public --add-rich-rule='rule family=\"ipv4\" port port=\"5432\" protocol=\"tcp\" reject' >/dev/null && \
         firewall-offline-cmd --zone=public --add-rich-rule='rule family=\"ipv4\" source address=\"198.18.7.3\" drop' >/dev/null && \
         firewall-offline-cmd --zone=trusted --add-interface=dxi0 >/dev/null && \
         firewall-offline-cmd --zone=public --list-rich-rules",
        etc = etc.display()
    );
    let rich = sh(&["unshare", "-m", "sh", "-c", &script]);
    let rich_line = |has: &str| -> String {
        rich.lines().find(|l| l.contains(has)).unwrap_or_else(|| panic!("no {has} in:\n{rich}")).trim().to_string()
    };
    let none = || Err::<String, String>("not asked".into());
    let book = IntentBook::read_with(
        &root,
        &Dumps {
            iptables: none(),
            ip6tables: none(),
            ipset: none(),
            nft: none(),
            // As if its daemon ran: the zones are what firewall-offline-cmd wrote.
            firewalld_runs: true,
        },
    );
    assert_eq!(book.source, Some(Source::Firewalld), "{}: {:?}", book.summary, book.warnings);
    assert_eq!(book.summary, "firewalld: active, default zone public, interfaces dxi0→trusted");
    let at = |port, v6, iface| book.for_port(port, Proto::Tcp, v6, iface).expect("an intent");
    let p = at(8080, false, None);
    assert_eq!((p.action, p.rule.as_str()), (Action::Allow, "zone public: port 8080/tcp"));
    assert_eq!(at(80, true, None).rule, "zone public: service http");
    let r = at(5432, false, None);
    assert_eq!((r.action, r.rule), (Action::Deny, format!("zone public: {}", rich_line("5432"))));
    let d = at(18080, false, None);
    assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "zone public: target default (reject)"));
    let t = at(18080, false, Some("dxi0"));
    assert_eq!((t.action, t.rule.as_str()), (Action::Allow, "zone trusted: target ACCEPT"));
    let ban = book.ban_of("198.18.7.3".parse().unwrap()).expect("the rich drop rule is a ban");
    assert_eq!(ban.name, format!("firewalld zone public: {}", rich_line("198.18.7.3")));
}
