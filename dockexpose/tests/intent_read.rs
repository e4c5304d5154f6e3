//! `IntentBook::read` against the real tools (root): UFW, ipset with iptables, and
//! fail2ban, each in a network namespace of its own, with private copies of their
//! configuration, so that the root namespace's firewall and /etc are never touched.
//! Addresses: 198.18.7.0/24 only.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dockexpose::{
    intent::{Action, Dumps, IntentBook, Source},
    kernel::event::Proto,
};
use support::{sh, sh_quiet, skip};

/// A namespace and a scratch directory, removed on drop (also when a test fails); a
/// fail2ban server started in it is stopped first.
struct Bed {
    ns: String,
    dir: PathBuf,
    f2b_sock: Option<PathBuf>,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let ns = format!("dxi-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["ip", "netns", "add", &ns]);
        Bed {
            ns,
            dir,
            f2b_sock: None,
        }
    }

    /// Runs a command inside the namespace, panicking on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.ns];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// `IntentBook::read(root)` on a thread inside the namespace: the tools it runs
    /// (iptables-save, ipset, nft) see the namespace's tables.
    fn read(&self, root: &Path) -> IntentBook {
        let root = root.to_path_buf();
        support::in_netns(&self.ns, move || IntentBook::read(&root))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(sock) = &self.f2b_sock {
            sh_quiet(&["fail2ban-client", "-s", &sock.to_string_lossy(), "stop"]);
            // A server that did not answer: by its own pid file, never by name.
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("f2b.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        sh_quiet(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A `ufw status numbered` line with its column padding collapsed, as the book shows it.
fn collapse(line: &str) -> String {
    let (n, r) = line.trim_end().split_at(5);
    format!("{n}{}", r.split_whitespace().collect::<Vec<_>>().join(" "))
}

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
    sh(&[
        "cp",
        "-a",
        "/etc/default/ufw",
        &default_ufw.to_string_lossy(),
    ]);
    // A private copy: no sysctl changes, IPv6 rules on, defaults as Debian ships them.
    let sysctl = bed.dir.join("sysctl.conf");
    std::fs::write(&sysctl, "").unwrap();
    let defaults = std::fs::read_to_string(&default_ufw).unwrap();
    let defaults: String = defaults
        .lines()
        .filter(|l| !l.starts_with("IPT_SYSCTL=") && !l.starts_with("IPV6="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &default_ufw,
        format!("{defaults}IPV6=yes\nIPT_SYSCTL={}\n", sysctl.display()),
    )
    .unwrap();

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
            .find(|l| {
                l.starts_with('[')
                    && has.iter().all(|h| l.contains(h))
                    && !not.iter().any(|n| l.contains(n))
            })
            .unwrap_or_else(|| panic!("no line with {has:?} in ufw's status:\n{status}"));
        collapse(l)
    };

    let book = bed.read(&root);
    assert_eq!(
        book.source,
        Some(Source::Ufw),
        "{}: {:?}",
        book.summary,
        book.warnings
    );
    assert!(
        book.summary
            .starts_with("ufw: active, default incoming deny"),
        "{}",
        book.summary
    );
    let at = |port, proto, v6| {
        book.for_port(port, proto, v6, None)
            .unwrap_or_else(|| panic!("no intent for {port}"))
    };
    let deny4 = at(8080, Proto::Tcp, false);
    assert_eq!(
        (deny4.action, deny4.rule),
        (Action::Deny, line(&["8080/tcp", "DENY"], &["(v6)"]))
    );
    let deny6 = at(8080, Proto::Tcp, true);
    assert_eq!(
        (deny6.action, deny6.rule),
        (Action::Deny, line(&["8080/tcp (v6)", "DENY"], &[]))
    );
    let allow = at(22, Proto::Tcp, false);
    assert_eq!(
        (allow.action, allow.rule),
        (Action::Allow, line(&["22/tcp", "ALLOW"], &["(v6)"]))
    );
    assert_eq!(
        at(9005, Proto::Udp, true).rule,
        line(&["9000:9010/udp (v6)"], &[])
    );
    let other = at(18080, Proto::Tcp, false);
    assert_eq!(
        (other.action, other.rule.as_str()),
        (Action::Deny, "default deny (incoming)")
    );
    let ban = book
        .ban_of("198.18.7.2".parse().unwrap())
        .expect("ufw deny from is a ban");
    assert_eq!(
        ban.name,
        format!("ufw {}", line(&["DENY", "198.18.7.2"], &[]))
    );
    assert!(book.ban_of("198.18.7.3".parse().unwrap()).is_none());
}

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
    bed.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
    bed.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT",
    ]);
    bed.exec(&[
        "iptables",
        "-I",
        "INPUT",
        "-m",
        "set",
        "--match-set",
        "dxi-block",
        "src",
        "-j",
        "DROP",
    ]);
    bed.exec(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "8443",
        "-j",
        "REJECT",
    ]);
    let listed = bed.exec(&["iptables", "-S", "INPUT"]);
    let rule_8080 = listed
        .lines()
        .find(|l| l.contains("--dport 8080"))
        .expect("iptables -S shows the rule")
        .to_string();

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
        assert_eq!(
            b.source,
            Some(Source::Iptables),
            "{}: {:?}",
            b.summary,
            b.warnings
        );
        let allow = b.for_port(8080, Proto::Tcp, false, None).unwrap();
        assert_eq!(
            (allow.action, allow.rule),
            (Action::Allow, rule_8080.clone())
        );
        let other = b.for_port(8081, Proto::Tcp, false, None).unwrap();
        assert_eq!(
            (other.action, other.rule.as_str()),
            (Action::Deny, "policy DROP")
        );
        let v6 = b.for_port(8443, Proto::Tcp, true, None).unwrap();
        assert_eq!(v6.action, Action::Deny);
        assert!(v6.rule.contains("--dport 8443 -j REJECT"), "{}", v6.rule);
        // ip6tables' INPUT accepts: 8080 over IPv6 reads as its policy.
        assert_eq!(
            b.for_port(8080, Proto::Tcp, true, None).unwrap().rule,
            "policy ACCEPT"
        );
        let ban = b
            .ban_of("198.18.7.9".parse().unwrap())
            .expect("the ipset is a ban");
        assert_eq!(ban.name, "ipset dxi-block");
        assert!(b.ban_of("198.18.7.8".parse().unwrap()).is_none());
    }
    assert!(
        book.warnings.iter().all(|w| !w.contains("iptables-save")),
        "{:?}",
        book.warnings
    );
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

#[test]
fn intent_fail2ban_jail_in_a_namespace_is_a_ban() {
    let test = "intent_fail2ban_jail_in_a_namespace_is_a_ban";
    if !support::privileged(test) {
        return;
    }
    if !have("fail2ban-server")
        || !have("fail2ban-client")
        || !Path::new("/etc/fail2ban/jail.conf").exists()
    {
        skip(test, "fail2ban is not installed");
        return;
    }
    let mut bed = Bed::new("f2b");
    // A private configuration: Debian's files, its jail.d (which enables sshd) left out.
    let conf = bed.dir.join("conf");
    sh(&["cp", "-a", "/etc/fail2ban", &conf.to_string_lossy()]);
    for e in std::fs::read_dir(conf.join("jail.d")).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let log = bed.dir.join("dxi.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(
        conf.join("fail2ban.local"),
        "[Definition]\ndbfile = :memory:\n",
    )
    .unwrap();
    std::fs::write(
        conf.join("jail.local"),
        format!(
            "[DEFAULT]\nbackend = polling\nbanaction = iptables-multiport\n\n[dxi]\nenabled = true\nfilter = sshd\nport = 8080\nlogpath = {}\n",
            log.display()
        ),
    )
    .unwrap();
    let sock = bed.dir.join("f2b.sock");
    let (sock_s, pid, srv_log) = (
        sock.to_string_lossy().into_owned(),
        bed.dir.join("f2b.pid"),
        bed.dir.join("server.log"),
    );
    bed.f2b_sock = Some(sock.clone());
    bed.exec(&[
        "fail2ban-server",
        "-c",
        &conf.to_string_lossy(),
        "-s",
        &sock_s,
        "-p",
        &pid.to_string_lossy(),
        "--logtarget",
        &srv_log.to_string_lossy(),
        "-x",
        "-b",
    ]);
    sh(&[
        "fail2ban-client",
        "-s",
        &sock_s,
        "set",
        "dxi",
        "banip",
        "198.18.7.10",
    ]);
    // The action inserts its chain when the ban is carried out: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !bed
        .exec(&["iptables-save", "-t", "filter"])
        .contains("-A f2b-dxi -s 198.18.7.10/32")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "fail2ban did not ban: {}",
            std::fs::read_to_string(&srv_log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let book = bed.read(&bed.dir);
    let ban = book
        .ban_of("198.18.7.10".parse().unwrap())
        .unwrap_or_else(|| panic!("no ban: {:?}", book.bans));
    assert_eq!(ban.name, "fail2ban jail dxi");
    assert!(book.ban_of("198.18.7.11".parse().unwrap()).is_none());
}

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
        rich.lines()
            .find(|l| l.contains(has))
            .unwrap_or_else(|| panic!("no {has} in:\n{rich}"))
            .trim()
            .to_string()
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
    assert_eq!(
        book.source,
        Some(Source::Firewalld),
        "{}: {:?}",
        book.summary,
        book.warnings
    );
    assert_eq!(
        book.summary,
        "firewalld: active, default zone public, interfaces dxi0→trusted"
    );
    let at = |port, v6, iface| {
        book.for_port(port, Proto::Tcp, v6, iface)
            .expect("an intent")
    };
    let p = at(8080, false, None);
    assert_eq!(
        (p.action, p.rule.as_str()),
        (Action::Allow, "zone public: port 8080/tcp")
    );
    assert_eq!(at(80, true, None).rule, "zone public: service http");
    let r = at(5432, false, None);
    assert_eq!(
        (r.action, r.rule),
        (Action::Deny, format!("zone public: {}", rich_line("5432")))
    );
    let d = at(18080, false, None);
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Action::Deny, "zone public: target default (reject)")
    );
    let t = at(18080, false, Some("dxi0"));
    assert_eq!(
        (t.action, t.rule.as_str()),
        (Action::Allow, "zone trusted: target ACCEPT")
    );
    let ban = book
        .ban_of("198.18.7.3".parse().unwrap())
        .expect("the rich drop rule is a ban");
    assert_eq!(
        ban.name,
        format!("firewalld zone public: {}", rich_line("198.18.7.3"))
    );
}
