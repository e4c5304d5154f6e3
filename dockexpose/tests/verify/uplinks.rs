//! Uplinks and the ways in: an L3 uplink, both ways in, and a reply policy routing
//! sends elsewhere.

use super::*;

#[test]
fn an_l3_uplink_is_verified_as_a_real_connection_through_it_finds_it() {
    let test = "an_l3_uplink_is_verified_as_a_real_connection_through_it_finds_it";
    if !docker::ready(test) {
        return;
    }
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use support::tun::{ipv4_tcp_syn, ipv6_tcp_syn, tcp_reply, Tun};
    let image = docker::echo_image();
    let n = run_id();
    let port = free_ports(27000 + n as u16, 1);
    let _web = docker::Container::run(&format!("dx-vl3-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    // A VPN's tunnel: this test is the process on the other end of it.
    let m = 230 + (n + 7) % 20;
    let name = format!("dxvl3{n}");
    let tun = Tun::create(&name, &format!("198.18.{m}.1/24"), &format!("fd42:198:{m}::1/64"));
    let (host, peer): (Ipv4Addr, Ipv4Addr) =
        (format!("198.18.{m}.1").parse().unwrap(), format!("198.18.{m}.2").parse().unwrap());

    // Reality: a SYN from the far end of the tunnel gets the container's SYN-ACK back.
    tun.write(&ipv4_tcp_syn(peer, host, 45100, port, 0x5100_0000));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut reachable = false;
    while Instant::now() < deadline && !reachable {
        if let Some(p) = tun.read_timeout(Duration::from_millis(200)) {
            reachable = tcp_reply(&p).is_some_and(|(s, sp, d, dp, flags)| {
                (s, sp, d, dp) == (IpAddr::V4(host), port, IpAddr::V4(peer), 45100) && flags & 0x12 == 0x12
            });
        }
    }
    assert!(reachable, "the container answers through the tunnel");
    // IPv6 the same way (the engine has no IPv6 network: docker-proxy, if it listens,
    // answers on the host).
    let (host6, peer6): (Ipv6Addr, Ipv6Addr) =
        (format!("fd42:198:{m}::1").parse().unwrap(), format!("fd42:198:{m}::2").parse().unwrap());
    tun.write(&ipv6_tcp_syn(peer6, host6, 45101, port, 0x5100_0001));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut reachable6 = false;
    while Instant::now() < deadline && !reachable6 {
        if let Some(p) = tun.read_timeout(Duration::from_millis(200)) {
            reachable6 = tcp_reply(&p).is_some_and(|(s, sp, d, dp, flags)| {
                (s, sp, d, dp) == (IpAddr::V6(host6), port, IpAddr::V6(peer6), 45101) && flags & 0x12 == 0x12
            });
        }
    }

    let run = verify(&["--uplink", &name]);
    let v = verdicts(&run.lines);
    let ours = verdict_of(&v, "tcp", &format!("{host}:{port}"), &name);
    eprintln!("{test}: reality: open through the tunnel; verify: {ours}");
    assert_eq!(ours, "EXPOSED", "verify agrees with the connection through the tunnel: {:#?}", run.lines);
    let ours6 = verdict_of(&v, "tcp", &format!("[{host6}]:{port}"), &name);
    eprintln!("{test}: IPv6 reality: {}; verify: {ours6}", if reachable6 { "answered" } else { "no answer" });
    // Known gap (issue 18): over IPv6 the probe from the default source is not answered
    // although a connection through the tunnel is; verify must at least never claim
    // an exposure reality does not show.
    assert!(reachable6 || !matches!(ours6.as_str(), "EXPOSED" | "PROXY"), "no false exposure over IPv6");
    // The probe's answer never reached the far end of the tunnel.
    let mut leaked = 0;
    while let Some(p) = tun.read_timeout(Duration::from_millis(300)) {
        // (The real connection's SYN-ACK, retransmitted to the far end, is not one.)
        if tcp_reply(&p).is_some_and(|(_, sp, d, _, _)| sp == port && d != IpAddr::V4(peer) && d != IpAddr::V6(peer6)) {
            leaked += 1;
        }
    }
    assert_eq!(leaked, 0, "the guard kept the probe's answers off the tunnel");
}

#[test]
fn both_ways_in_agree_with_a_real_connection_and_nothing_leaks() {
    let test = "both_ways_in_agree_with_a_real_connection_and_nothing_leaks";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("j");
    let n = outside.n as u16;
    let b = free_ports(13500 + n * 2, 2);
    let (open, dropped) = (b, b + 1);
    let _c = docker::Container::run(
        &format!("dx-verify-j-{n}"),
        &["-p", &format!("{open}:80"), "-p", &format!("{dropped}:80")],
        &image,
        &["80", "5300"],
    );
    let _drop = docker::docker_user_rule(&[
        "-i",
        &outside.uplink,
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctorigdstport",
        &dropped.to_string(),
        "-j",
        "DROP",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    // The truth, from the outside host: a real connection to each port.
    let reach = |port: u16| connects(&outside.ns, &outside.v4(1), port);
    assert!(reach(open) && !reach(dropped), "the test bed: {open} open, {dropped} dropped from outside");
    let ports = [format!("{open}/tcp"), format!("{dropped}/tcp")];
    let from = format!("{}/32", outside.v4(77));
    let qdiscs = || {
        sh(&["tc", "qdisc", "show"]).lines().filter(|l| l.contains("clsact")).map(str::to_string).collect::<Vec<_>>()
    };
    let qdiscs_before = qdiscs();
    for way in ["redirect", "live-frames"] {
        let capture = Capture::start(&outside.ns, &format!("host {}", outside.v4(77)), way);
        let run = verify(&[
            "--uplink",
            &outside.uplink,
            "--from",
            &from,
            "--port",
            &ports[0],
            "--port",
            &ports[1],
            "--injection",
            way,
        ]);
        let leaked = capture.stop();
        if way == "live-frames" && run.code == 2 {
            // This kernel refuses live frames: the error says so and names the way round.
            let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
                .args(["verify", "--uplink", &outside.uplink, "--port", &ports[0], "--injection", way])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("refuses XDP live frames") && err.contains("--injection redirect"), "{err}");
            eprintln!("{test}: live frames refused by this kernel; the redirect way was checked alone");
            continue;
        }
        let v = verdicts(&run.lines);
        let of = |port: u16| v.iter().find(|x| x.2.ends_with(&format!(":{port}"))).map(|x| x.0.clone());
        assert_eq!(of(open).as_deref(), Some("EXPOSED"), "{way}: {:?}", run.lines);
        assert_eq!(of(dropped).as_deref(), Some("HELD"), "{way}: {:?}", run.lines);
        assert_eq!(run.code, 1, "{way}");
        assert!(leaked.is_empty(), "{way}: packets to the probe source left the host: {leaked:?}");
        assert_eq!(conntrack_from(&outside.v4(77)), 0, "{way}");
        let left: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("dxinj"))
            .collect();
        assert!(left.is_empty(), "{way}: the private veth stayed: {left:?}");
        assert_eq!(qdiscs(), qdiscs_before, "{way}: the guard left a qdisc behind (TCX needs none)");
    }
}

#[test]
fn a_reply_policy_routing_sends_elsewhere_meets_the_guard_too() {
    let test = "a_reply_policy_routing_sends_elsewhere_meets_the_guard_too";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("p");
    let second = SecondUplink::new(outside.n);
    let n = outside.n as u16;
    let port = free_ports(13900 + n, 1);
    let c =
        docker::Container::run(&format!("dx-verify-p-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    let src = outside.v4(77);
    // `ip route get` names the first uplink for the probe source; a rule sends the
    // container's replies to it out of the second one instead.
    let table = (1000 + n).to_string();
    let from = format!("{}/32", c.ip("bridge"));
    let to = format!("{src}/32");
    let mut undo = Undo::default();
    sh(&["ip", "route", "add", &to, "via", &format!("198.19.{}.2", second.n), "dev", &second.uplink, "table", &table]);
    undo.push(&["ip", "route", "flush", "table", &table]);
    sh(&["ip", "rule", "add", "from", &from, "to", &to, "lookup", &table, "priority", "90"]);
    undo.push(&["ip", "rule", "del", "from", &from, "to", &to, "lookup", &table, "priority", "90"]);
    let named = sh(&["ip", "route", "get", &src]);
    assert!(named.contains(&outside.uplink), "the test bed: the main table names the first uplink: {named}");
    std::thread::sleep(Duration::from_millis(300));
    let capture = Capture::start(&second.ns, &format!("host {src}"), "policy");
    let p = format!("{port}/tcp");
    let run = verify(&["--uplink", &outside.uplink, "--from", &format!("{src}/32"), "--port", &p]);
    let leaked = capture.stop();
    assert!(leaked.is_empty(), "the reply left by the interface policy routing chose: {leaked:?}");
    assert!(run.lines.iter().any(|l| l.starts_with("EXPOSED")), "{:?}", run.lines);
    let cleanup = run.lines.iter().find(|l| l.starts_with("cleanup:")).expect("a cleanup line");
    assert!(cleanup.contains(&second.uplink), "the second uplink is guarded: {cleanup}");
    assert_eq!(conntrack_from(&src), 0);
}
