//! UFW's rules read as `ufw status numbered` shows them.

use super::*;

#[test]
fn intent_ufw_in_a_namespace_reads_as_ufw_status_numbered() {
    let test = "intent_ufw_in_a_namespace_reads_as_ufw_status_numbered";
    if !support::privileged(test) {
        return;
    }
    if !have("ufw") || !Path::new("/etc/ufw").is_dir() {
        skip(test, "ufw is not installed");
        return;
    }
    let bed = Bed::new("ufw");
    let root = bed.dir.join("root");
    std::fs::create_dir_all(root.join("etc/default")).unwrap();
    let (etc_ufw, default_ufw) = (root.join("etc/ufw"), root.join("etc/default/ufw"));
    sh(&["cp", "-a", "/etc/ufw", &etc_ufw.to_string_lossy()]);
    sh(&["cp", "-a", "/etc/default/ufw", &default_ufw.to_string_lossy()]);
    // A private copy: no sysctl changes, IPv6 rules on, defaults as Debian ships them.
    let sysctl = bed.dir.join("sysctl.conf");
    std::fs::write(&sysctl, "").unwrap();
    let defaults = std::fs::read_to_string(&default_ufw).unwrap();
    let defaults: String = defaults
        .lines()
        .filter(|l| !l.starts_with("IPT_SYSCTL=") && !l.starts_with("IPV6="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&default_ufw, format!("{defaults}IPV6=yes\nIPT_SYSCTL={}\n", sysctl.display())).unwrap();

    let script = format!(
        "mount --bind {etc} /etc/ufw && mount --bind {def} /etc/default/ufw && \
         ip netns exec {ns} sh -c 'ufw --force enable >/dev/null && ufw default deny incoming >/dev/null && \
         ufw allow 22/tcp >/dev/null && ufw deny 8080/tcp >/dev/null && ufw allow 9000:9010/udp >/dev/null && \
         ufw deny from 198.18.7.2 >/dev/null && ufw status numbered'",
        etc = etc_ufw.display(),
        def = default_ufw.display(),
        ns = bed.ns
    );
    let status = sh(&["unshare", "-m", "sh", "-c", &script]);
    let line = |has: &[&str], not: &[&str]| -> String {
        let l = status
            .lines()
            .find(|l| l.starts_with('[') && has.iter().all(|h| l.contains(h)) && !not.iter().any(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {has:?} in ufw's status:\n{status}"));
        collapse(l)
    };

    let book = bed.read(&root);
    assert_eq!(book.source, Some(Source::Ufw), "{}: {:?}", book.summary, book.warnings);
    assert!(book.summary.starts_with("ufw: active, default incoming deny"), "{}", book.summary);
    let at = |port, proto, v6| book.for_port(port, proto, v6, None).unwrap_or_else(|| panic!("no intent for {port}"));
    let deny4 = at(8080, Proto::Tcp, false);
    assert_eq!((deny4.action, deny4.rule), (Action::Deny, line(&["8080/tcp", "DENY"], &["(v6)"])));
    let deny6 = at(8080, Proto::Tcp, true);
    assert_eq!((deny6.action, deny6.rule), (Action::Deny, line(&["8080/tcp (v6)", "DENY"], &[])));
    let allow = at(22, Proto::Tcp, false);
    assert_eq!((allow.action, allow.rule), (Action::Allow, line(&["22/tcp", "ALLOW"], &["(v6)"])));
    assert_eq!(at(9005, Proto::Udp, true).rule, line(&["9000:9010/udp (v6)"], &[]));
    let other = at(18080, Proto::Tcp, false);
    assert_eq!((other.action, other.rule.as_str()), (Action::Deny, "default deny (incoming)"));
    let ban = book.ban_of("198.18.7.2".parse().unwrap()).expect("ufw deny from is a ban");
    assert_eq!(ban.name, format!("ufw {}", line(&["DENY", "198.18.7.2"], &[])));
    assert!(book.ban_of("198.18.7.3".parse().unwrap()).is_none());
}
