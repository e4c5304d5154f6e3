//! Verdicts per published port against nmap and real connections: expected ports,
//! a hundred ports, unpublished ports a neighbour routes to.

use super::*;

#[test]
fn verdicts_per_port_and_uplink_agree_with_nmap_and_nothing_leaks() {
    if !docker::ready("verdicts_per_port_and_uplink_agree_with_nmap_and_nothing_leaks") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("v");
    let second = SecondUplink::new(outside.n);
    let n = outside.n as u16;
    // open (listening), published but nothing listening, UDP, loopback-only, dropped
    // in DOCKER-USER for the first uplink only.
    let b = free_ports(12000 + n * 5, 5);
    let (open, silent, udp, local, dropped) = (b, b + 1, b + 2, b + 3, b + 4);
    let _c = docker::Container::run(
        &format!("dx-verify-{n}"),
        &[
            "-p",
            &format!("{open}:80"),
            "-p",
            &format!("{silent}:81"),
            "-p",
            &format!("{udp}:5300/udp"),
            "-p",
            &format!("127.0.0.1:{local}:80"),
            "-p",
            &format!("{dropped}:80"),
        ],
        &image,
        &["80", "5300"],
    );
    let dropped_s = dropped.to_string();
    let _rule = docker::docker_user_rule(&[
        "-i",
        &outside.uplink,
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctorigdstport",
        &dropped_s,
        "-j",
        "DROP",
    ]);
    // IPv6 (Docker 20.10 here has none): docker-proxy answers on the host, INPUT path;
    // the operator allowed `open` for IPv6 on INPUT (ufw allow), nothing else.
    let chain = format!("DXIv{}", outside.n);
    let open_s = open.to_string();
    sh(&["ip6tables", "-I", &chain, "1", "-p", "tcp", "--dport", &open_s, "-j", "ACCEPT"]);
    std::thread::sleep(Duration::from_millis(500));

    let (src4, src6) = (outside.v4(77), outside.v6(77));
    let capture_filter = format!("dst host {src4} or dst host {src6}");
    let cap1 = Capture::start(&outside.ns, &capture_filter, "u1");
    let cap2 = Capture::start(&second.ns, &capture_filter, "u2");
    let ports: Vec<String> =
        [open, silent, local, dropped].iter().map(|p| format!("{p}/tcp")).chain([format!("{udp}/udp")]).collect();
    let mut args: Vec<&str> = vec!["--uplink", &outside.uplink, "--uplink", &second.uplink];
    let from4 = format!("{src4}/32");
    let from6 = format!("{src6}/128");
    args.extend(["--from", &from4, "--from", &from6]);
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let run = verify(&args);
    let leaked1 = cap1.stop();
    let leaked2 = cap2.stop();
    assert_eq!(run.code, 1, "exposed ports were not expected: exit code 1");
    let v = verdicts(&run.lines);
    let (h1, h2, h6) = (outside.v4(1), second.host4(), format!("[{}]", outside.v6(1)));
    let (u1, u2) = (outside.uplink.as_str(), second.uplink.as_str());
    assert_eq!(verdict_of(&v, "tcp", &format!("{h1}:{open}"), u1), "EXPOSED");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h2}:{open}"), u2), "EXPOSED");
    assert_eq!(
        verdict_of(&v, "tcp", &format!("{h1}:{silent}"), u1),
        "EXPOSED",
        "published, nothing listening: the container's kernel answers RST"
    );
    assert_eq!(verdict_of(&v, "udp", &format!("{h1}:{udp}"), u1), "EXPOSED");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h1}:{dropped}"), u1), "HELD", "DOCKER-USER -i {u1} drops it");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h2}:{dropped}"), u2), "EXPOSED", "the rule names the other uplink");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h6}:{open}"), u1), "PROXY", "IPv6 through docker-proxy");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h6}:{silent}"), u1), "HELD", "INPUT drops IPv6 to the proxy");
    // The netfilter trace names the rule that dropped it: DOCKER-USER, for that uplink;
    // and the INPUT chain for IPv6 to the proxy (the test's UFW-like chain).
    let held =
        run.lines.iter().find(|l| l.starts_with("HELD") && l.contains(&format!(":{dropped} "))).expect("a HELD line");
    assert!(
        held.contains("dropped by ip filter DOCKER-USER: ") && held.contains(&format!("iifname \"{u1}\"")),
        "{held}"
    );
    let held6 = run
        .lines
        .iter()
        .find(|l| l.starts_with("HELD") && l.contains(&format!("{h6}:{silent} ")))
        .expect("a HELD v6 line");
    assert!(held6.contains("dropped by ip6 filter "), "{held6}");
    let local_line =
        run.lines.iter().find(|l| l.contains(&format!("127.0.0.1:{local}->"))).expect("the loopback binding is listed");
    assert!(local_line.starts_with("LOCAL") && local_line.contains("not reachable from outside"), "{local_line}");
    assert!(!v.iter().any(|x| x.2.ends_with(&format!(":{local}"))), "a loopback binding is not probed");
    assert!(run.lines.iter().any(|l| l.contains(&format!("container dx-verify-{n} (image {image})"))));

    // Nothing reached the outside: the guard dropped the answers, none was captured.
    assert!(guard_drops(&run.lines) > 0, "the guard dropped the answers");
    assert!(
        leaked1.is_empty() && leaked2.is_empty(),
        "packets to the probe sources left the host: {leaked1:?} {leaked2:?}"
    );
    // Nothing left in conntrack.
    assert_eq!(conntrack_from(&src4) + conntrack_from(&src6), 0, "conntrack entries of probes remain");
    assert!(run.lines.iter().any(|l| l.starts_with("cleanup:") && l.ends_with(" 0 remain")));

    // A real scan from outside, port by port.
    let tcp_list = format!("{open},{silent},{local},{dropped}");
    let mut agree = 0;
    let mut total = 0;
    let mut compare = |states: &BTreeMap<u16, String>, proto: &str, host: &str, via: &str, ports: &[u16]| {
        for &p in ports {
            let state = states.get(&p).cloned().unwrap_or_else(|| "missing".into());
            let ours =
                v.iter().find(|x| x.1 == proto && x.2 == format!("{host}:{p}") && x.3 == via).map(|x| x.0.clone());
            // open/closed: the packet got an answer through the published port. For a
            // loopback-only binding (not probed) a "closed" is the host's own kernel
            // answering where nothing listens (an uplink without INPUT drop): not the
            // container, so only "open" would contradict "not reachable".
            let reachable_by_nmap = if ours.is_none() { state == "open" } else { state == "open" || state == "closed" };
            let reachable_by_us = matches!(ours.as_deref(), Some("EXPOSED" | "PROXY"));
            total += 1;
            if reachable_by_nmap == reachable_by_us {
                agree += 1;
            } else {
                eprintln!("DISAGREE {proto} {host}:{p} via {via}: nmap {state}, verify {ours:?}");
            }
        }
    };
    let tcp_ports = [open, silent, local, dropped];
    compare(&nmap(&outside.ns, &["-sS", "-p", &tcp_list, &h1]), "tcp", &h1, u1, &tcp_ports);
    compare(&nmap(&second.ns, &["-sS", "-p", &tcp_list, &h2]), "tcp", &h2, u2, &tcp_ports);
    compare(&nmap(&outside.ns, &["-sU", "-p", &udp.to_string(), &h1]), "udp", &h1, u1, &[udp]);
    compare(
        &nmap(&outside.ns, &["-6", "-sS", "-p", &format!("{open},{silent}"), &outside.v6(1)]),
        "tcp",
        &h6,
        u1,
        &[open, silent],
    );
    eprintln!("verify and nmap agree on {agree}/{total} ports");
    assert_eq!(agree, total, "verify and nmap disagree");
    sh_quiet(&["ip6tables", "-D", &chain, "-p", "tcp", "--dport", &open_s, "-j", "ACCEPT"]);
}

#[test]
fn expected_ports_give_exit_code_zero_and_default_sources_are_stated() {
    if !docker::ready("expected_ports_give_exit_code_zero_and_default_sources_are_stated") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("w");
    let n = outside.n as u16;
    let port = free_ports(13200 + n, 1);
    let _c =
        docker::Container::run(&format!("dx-verify-e-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    std::thread::sleep(Duration::from_millis(300));
    let p = format!("{port}/tcp");
    let run = verify(&["--uplink", &outside.uplink, "--port", &p, "--expect-exposed", &p]);
    assert_eq!(run.code, 0, "the only exposed port is expected");
    assert!(run.lines[0].contains("198.51.100.77") && run.lines[0].contains("documentation"), "{}", run.lines[0]);
    assert!(run.lines.iter().any(|l| l.starts_with("EXPOSED") && l.contains("(expected: --expect-exposed)")));
    assert_eq!(conntrack_from("198.51.100.77"), 0);
    // Errors: exit code 2 with the fix.
    let bad = verify(&["--uplink", "dx-no-such-if0", "--port", &p]);
    assert_eq!(bad.code, 2);
    let bad = verify(&["--from", "not-a-cidr", "--port", &p]);
    assert_eq!(bad.code, 2);
}

#[test]
fn a_hundred_published_ports_are_verified_quickly() {
    if !docker::ready("a_hundred_published_ports_are_verified_quickly") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("h");
    let n = outside.n as u16;
    let first = free_ports(14000 + n * 100 % 8000, 100);
    let last = first + 99;
    let _c = docker::Container::run(
        &format!("dx-verify-h-{n}"),
        &["-p", &format!("{first}-{last}:80-179")],
        &image,
        &["80", "5300"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let ports: Vec<String> = (first..=last).map(|p| format!("{p}/tcp")).collect();
    let from4 = format!("{}/32", outside.v4(77));
    let mut args: Vec<&str> = vec!["--uplink", &outside.uplink, "--from", &from4];
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let run = verify(&args);
    let v = verdicts(&run.lines);
    let exposed = v.iter().filter(|x| x.0 == "EXPOSED" && x.1 == "tcp").count();
    eprintln!(
        "verify of 100 published ports (IPv4, one uplink, rate 200/s): {} ms, {exposed} EXPOSED",
        run.elapsed.as_millis()
    );
    assert_eq!(exposed, 100, "every published port answers (80 listens, the rest RST)");
    assert_eq!(run.code, 1);
    assert_eq!(conntrack_from(&outside.v4(77)), 0);
}

#[test]
fn direct_exposure_of_unpublished_ports_agrees_with_a_neighbour_that_routes_to_the_bridge() {
    let test = "direct_exposure_of_unpublished_ports_agrees_with_a_neighbour_that_routes_to_the_bridge";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("d");
    let n = outside.n;
    // No -p at all: 80/tcp and 5300/udp listen inside.
    let c = docker::Container::run(&format!("dx-verify-d-{n}"), &[], &image, &["80", "5300"]);
    let ip = c.ip("bridge");
    // The neighbour routes the container subnet to this host.
    sh(&["ip", "-n", &outside.ns, "route", "add", "172.17.0.0/16", "via", &outside.v4(1)]);
    std::thread::sleep(Duration::from_millis(300));
    let neighbour_connects = || connects(&outside.ns, &ip, 80);
    let from = format!("{}/32", outside.v4(77));
    let direct = || verify(&["--direct", "--uplink", &outside.uplink, "--from", &from]);
    let line_of = |lines: &[String], proto: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("{proto} {ip}:")))
            .cloned()
            .unwrap_or_else(|| panic!("no {proto} line for {ip}: {lines:#?}"))
    };

    // Docker's default: FORWARD policy DROP, nothing accepts an unpublished port.
    let policy = sh(&["iptables", "-S", "FORWARD"]);
    assert!(
        policy.lines().next() == Some("-P FORWARD DROP"),
        "the test bed: Docker's FORWARD policy is DROP: {policy}"
    );
    let held = direct();
    assert!(held.lines[0].contains("--direct"), "{}", held.lines[0]);
    let tcp = line_of(&held.lines, "tcp");
    assert!(tcp.starts_with("HELD") && tcp.contains("never published"), "{tcp}");
    assert!(!neighbour_connects(), "the neighbour cannot connect either");
    assert_eq!(held.code, 0, "nothing reachable");

    // FORWARD policy ACCEPT (a host without Docker's DROP): exposed without publishing.
    let mut undo = Undo::default();
    sh(&["iptables", "-P", "FORWARD", "ACCEPT"]);
    undo.push(&["iptables", "-P", "FORWARD", "DROP"]);
    let open = direct();
    let tcp = line_of(&open.lines, "tcp");
    assert!(tcp.starts_with("EXPOSED (direct)") && tcp.contains("policy accept"), "{tcp}");
    let udp = line_of(&open.lines, "udp");
    assert!(udp.starts_with("EXPOSED (direct)"), "{udp}");
    assert!(neighbour_connects(), "the neighbour connects too");
    assert_eq!(open.code, 1);
    drop(undo);

    // A rule that lets the uplink through to the bridge: the rule is named.
    let _rule = docker::docker_user_rule(&["-i", &outside.uplink, "-o", "docker0", "-j", "ACCEPT"]);
    let ruled = direct();
    let tcp = line_of(&ruled.lines, "tcp");
    assert!(tcp.starts_with("EXPOSED (direct)") && tcp.contains("DOCKER-USER"), "{tcp}");
    assert!(neighbour_connects());
    assert_eq!(conntrack_from(&outside.v4(77)), 0, "nothing of the probes is left");
}
