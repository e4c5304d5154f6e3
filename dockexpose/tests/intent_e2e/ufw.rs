//! UFW says deny, the port is exposed: `explain` says why, the rule it prints makes the
//! deny hold, and live records carry the contradiction (and a bypassed ban).

use super::*;

#[test]
fn ufw_denies_8080_yet_it_is_exposed_explain_says_why_and_its_rule_makes_it_hold() {
    let test = "ufw_denies_8080_yet_it_is_exposed_explain_says_why_and_its_rule_makes_it_hold";
    if !ready(test) {
        return;
    }
    let e = engine("uf");
    let (ufw, _containers) = story(&e);
    let outside: IpAddr = e.outside_v4().parse().unwrap();
    assert!(
        tcp_connect(&e.outside_ns, Some(outside), e.host4(8080)).is_ok(),
        "the story: UFW denies 8080, the outside reaches it"
    );

    // A container's IPv6 address answers once its duplicate address detection is
    // over (a second or two after it starts): explain probes a settled host. (The
    // test image listens on IPv4 only: over IPv6 the container answers with a RST.)
    let outside6: IpAddr = e.outside_v6().parse().unwrap();
    let settle = Instant::now() + Duration::from_secs(10);
    while [8080, 9090].iter().any(|&p| !reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(p)))) {
        if Instant::now() > settle {
            let errs: Vec<String> = [8080, 9090]
                .iter()
                .map(|&p| format!("{p}: {:?}", tcp_connect(&e.outside_ns, Some(outside6), e.host6(p))))
                .collect();
            panic!(
                "IPv6 published ports never answered from outside: {errs:?}\n{}\n{}\n{}",
                e.in_ns(&["ip6tables", "-S"]),
                e.in_ns(&["ip6tables", "-t", "nat", "-S"]),
                e.in_ns(&["ip", "-6", "addr"])
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // explain: the contradiction, why, and the fix; the allowed port agrees.
    let (code, rows) = explain(&e, &ufw.root);
    assert_eq!(code, 1, "a contradiction exists");
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        let r = row(&rows, 8080, family);
        assert_eq!(r["reality"], "EXPOSED", "{r}");
        assert_eq!(r["contradiction"], true, "{r}");
        assert_eq!(r["intent"]["source"], "ufw");
        assert_eq!(r["intent"]["action"], "deny");
        let shown = ufw.status_line(if v6 { "8080/tcp (v6)" } else { "8080/tcp" }, v6);
        assert_eq!(r["intent"]["rule"], shown.as_str(), "the rule as `ufw status numbered` shows it");
        assert_eq!(r["uplink"], e.uplink.as_str());
        let why = r["why"].as_str().unwrap();
        assert!(
            why.to_lowercase().contains("dnat to ")
                && why.contains("accepted by ")
                && why.contains("INPUT, where UFW lives, never saw it"),
            "{why}"
        );
        let fix = r["suggested_rule"].as_str().unwrap();
        assert!(
            fix.starts_with(if v6 { "ip6tables " } else { "iptables " }) && fix.contains("--ctorigdstport 8080"),
            "{fix}"
        );
        let allowed = row(&rows, 9090, family);
        assert_eq!(
            (allowed["reality"].as_str(), allowed["contradiction"].as_bool()),
            (Some("EXPOSED"), Some(false)),
            "{allowed}"
        );
        assert!(allowed["suggested_rule"].is_null());
    }

    // As people read it, for one port: the story in one line per family.
    let out = explain_cmd(&e, &ufw.root, &["8080/tcp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("explain 8080/tcp:\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text.lines().find(|l| l.starts_with("8080/tcp ipv4 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(": CONTRADICTION: UFW says deny ([ 1] 8080/tcp DENY IN Anywhere); reality EXPOSED; why: "),
        "{line}"
    );
    assert!(line.contains("; fix: iptables -I DOCKER-USER "), "{line}");
    assert!(!text.contains("9090/tcp"), "only the port asked about: {text}");
    assert!(text.lines().any(|l| l == "2 contradictions in 2 rows"), "{text}");

    // The fixes, run as printed: explain agrees, the allowed port is still reachable.
    for family in ["ipv4", "ipv6"] {
        let fix = row(&rows, 8080, family)["suggested_rule"].as_str().unwrap().to_string();
        e.in_ns(&["sh", "-c", &fix]);
    }
    let (code, rows) = explain(&e, &ufw.root);
    assert_eq!(code, 0, "no contradiction left: {rows:#?}");
    for family in ["ipv4", "ipv6"] {
        assert_eq!(row(&rows, 8080, family)["reality"], "HELD");
        assert_eq!(row(&rows, 8080, family)["contradiction"], false);
        assert_eq!(row(&rows, 9090, family)["reality"], "EXPOSED");
    }
    assert!(tcp_connect(&e.outside_ns, Some(outside), e.host4(9090)).is_ok(), "the allowed port still answers");
    assert!(tcp_connect(&e.outside_ns, Some(outside), e.host4(8080)).is_err(), "8080 holds now");
    assert!(
        reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(9090))),
        "IPv6: the allowed port still reaches the container"
    );
    assert!(!reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(8080))), "IPv6: 8080 holds now");
}

#[test]
fn live_records_carry_the_contradiction_and_a_bypassed_ban_and_alert_once() {
    let test = "live_records_carry_the_contradiction_and_a_bypassed_ban_and_alert_once";
    if !ready(test) {
        return;
    }
    if Command::new("ipset").arg("--version").output().is_err() {
        skip(test, "ipset is not installed: the ban part is not run");
        return;
    }
    let e = engine("ul");
    let (ufw, _containers) = story(&e);
    // A ban as fail2ban's ipset action makes it: a set, dropped in INPUT.
    let banned = format!("{}.9", e.outside_v4().rsplit_once('.').unwrap().0);
    e.in_ns(&["ipset", "create", "dxban", "hash:ip"]);
    e.in_ns(&["ipset", "add", "dxban", &banned]);
    e.in_ns(&["iptables", "-I", "INPUT", "-m", "set", "--match-set", "dxban", "src", "-j", "DROP"]);
    sh(&["ip", "-n", &e.outside_ns, "addr", "add", &format!("{banned}/24"), "dev", "eth0"]);

    let json = std::env::temp_dir().join(format!("dx-intent-live-{}.jsonl", run_id()));
    let root = ufw.root.to_str().unwrap().to_string();
    let mut w = e.watch(&["--intent-root", &root], json.clone());
    w.wait_for_line("firewall intent: ufw", Duration::from_secs(10));
    let outside: IpAddr = e.outside_v4().parse().unwrap();
    for _ in 0..2 {
        tcp_connect(&e.outside_ns, Some(outside), e.host4(8080)).expect("8080 reached from outside");
    }
    tcp_connect(&e.outside_ns, Some(outside), e.host4(9090)).expect("9090 reached from outside");
    tcp_connect(&e.outside_ns, Some(banned.parse().unwrap()), e.host4(9090))
        .expect("the banned source reaches 9090 all the same");
    std::thread::sleep(Duration::from_secs(1));
    let (records, _, stderr) = w.stop();
    let _ = std::fs::remove_file(&json);
    let reached: Vec<&Value> = records.iter().filter(|r| r["stage"] == "reached").collect();
    let denied: Vec<&&Value> = reached.iter().filter(|r| r["host_port"] == 8080).collect();
    assert_eq!(denied.len(), 2, "{reached:#?}");
    for r in &denied {
        assert_eq!(r["contradiction"], true, "{r}");
        assert_eq!(r["intent"]["source"], "ufw");
        assert_eq!(r["intent"]["rule"], ufw.status_line("8080/tcp", false).as_str());
    }
    let allowed =
        reached.iter().find(|r| r["host_port"] == 9090 && r["src_ip"] == e.outside_v4().as_str()).expect("9090 record");
    assert_eq!(
        (allowed["contradiction"].as_bool(), allowed["intent"]["action"].as_str()),
        (Some(false), Some("allow")),
        "{allowed}"
    );
    assert!(allowed.get("ban_bypassed").is_none());
    let bypass = reached.iter().find(|r| r["src_ip"] == banned.as_str()).expect("the banned source's record");
    assert_eq!(bypass["ban_bypassed"], "ipset dxban", "{bypass}");
    assert_eq!(bypass["contradiction"], true);
    let alerts: Vec<&String> = stderr.iter().filter(|l| l.contains("CONTRADICTION:")).collect();
    let port_alerts: Vec<&&String> = alerts.iter().filter(|l| l.contains("UFW denies 8080/tcp")).collect();
    assert_eq!(port_alerts.len(), 1, "once per port and rule: {alerts:#?}");
    let expected = format!("yet {} reached container dxe-web-{} through 8080", e.outside_v4(), e.n);
    assert!(port_alerts[0].contains(&expected), "{}", port_alerts[0]);
    assert!(alerts.iter().any(|l| l.contains("ipset dxban bans") && l.contains("(ban_bypassed)")), "{alerts:#?}");
}
