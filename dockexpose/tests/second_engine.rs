//! A second Docker host (support::engine::SecondEngine): a dockerd in a network
//! namespace of its own, configured otherwise than the machine's engine, which stays
//! untouched. Shows what it is for: an SCTP port published by Docker and reached from
//! outside (impossible on the machine's engine), and dockexpose watching that engine.
//! Root and a Docker engine (for the test image); run one at a time:
//! `flock /tmp/dockexpose-root-tests.lock cargo test --release -p dockexpose --test second_engine -- --test-threads=1`

mod support;

use std::{net::IpAddr, time::Duration};

use support::{
    craft::craft,
    docker,
    engine::{kernel_has_sctp_sockets, Proxy, SecondEngine},
    json_path, sh, tcp_connect,
};

/// What the machine's own engine and network look like from the root namespace:
/// must be the same after the test.
fn root_state() -> String {
    let mut s = String::new();
    for (tool, table) in [
        ("iptables", "filter"),
        ("iptables", "nat"),
        ("iptables", "raw"),
        ("ip6tables", "filter"),
        ("ip6tables", "nat"),
    ] {
        s.push_str(&format!("== {tool} -t {table}\n"));
        s.push_str(&sh(&[tool, "-t", table, "-S"]));
    }
    s.push_str("== links\n");
    s.push_str(
        &sh(&["ip", "-o", "link", "show"])
            .lines()
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string() + "\n")
            .collect::<String>(),
    );
    s.push_str("== routes\n");
    s.push_str(&sh(&["ip", "route", "show"]));
    s.push_str(&sh(&["ip", "-6", "route", "show"]));
    s.push_str("== containers\n");
    s.push_str(&sh(&["docker", "ps", "-aq", "--no-trunc"]));
    s
}

#[test]
fn a_second_engine_publishes_sctp_and_dockexpose_watches_it() {
    if !docker::ready("a_second_engine_publishes_sctp_and_dockexpose_watches_it") {
        return;
    }
    let image = docker::echo_image(); // built on the machine's engine before the snapshot
    let before = root_state();

    // 1. Userland proxy off, as the brief of this engine asks: TCP publishing works,
    //    but dockerd reserves every published port with a listening socket of its
    //    own ("dummy proxy"), and this kernel has no SCTP sockets.
    {
        let off = SecondEngine::start("off", &[]);
        let sctp =
            off.try_run(&format!("dxe-off-{}", off.n), &["-p", "26100:3868/sctp", "-p", "26101:80"], &image, &[]);
        if kernel_has_sctp_sockets() {
            assert!(sctp.is_ok(), "a kernel with SCTP sockets publishes SCTP with the proxy off: {:?}", sctp.err());
        } else {
            let err = sctp.err().expect("this kernel has no SCTP sockets: dockerd cannot reserve the SCTP port");
            assert!(err.contains("protocol not supported"), "{err}");
            eprintln!("proxy off, -p 26100:3868/sctp: {err}");
        }
        let c = off.run(&format!("dxe-offtcp-{}", off.n), &["-p", "26101:80"], &image, &[]);
        let src: IpAddr = off.outside_v4().parse().unwrap();
        tcp_connect(&off.outside_ns, Some(src), off.host4(26101))
            .expect("TCP published with the proxy off, reached from outside");
        assert!(off
            .in_ns(&["iptables", "-t", "nat", "-S", "DOCKER"])
            .contains(&format!("--to-destination {}:80", c.ip("bridge"))));
    }
    assert_eq!(before, root_state(), "the first engine left something behind in the root namespace");

    // 2. The engine that publishes SCTP: userland proxy on, with a stand-in proxy.
    let engine = SecondEngine::start_with("sctp", Proxy::SctpStub, &[]);
    let c =
        engine.run(&format!("dxe-sctp-{}", engine.n), &["-p", "26100:3868/sctp", "-p", "26101:80"], &engine.image, &[]);
    let cip = c.ip("bridge");
    let ports = engine.docker(&["port", &c.name]);
    assert!(ports.contains("3868/sctp -> 0.0.0.0:26100"), "SCTP publish on this engine: {ports}");
    let nat = engine.in_ns(&["iptables", "-t", "nat", "-S", "DOCKER"]);
    assert!(
        nat.contains("-p sctp -m sctp --dport 26100 -j DNAT") && nat.contains(&format!("--to-destination {cip}:3868")),
        "{nat}"
    );
    // Docker's rules are in the engine's namespace only.
    assert!(
        !sh(&["iptables", "-t", "nat", "-S"]).contains("26100"),
        "the machine's nat table must not see the second engine"
    );

    let mut w = engine.watch(&["--stats-interval", "0"], json_path("engine"));
    w.wait_for_line("Docker inventory: 1 running containers", Duration::from_secs(20));

    // TCP from outside to the uplink address: DNAT to the container, greeting back.
    let src: IpAddr = engine.outside_v4().parse().unwrap();
    let sport = tcp_connect(&engine.outside_ns, Some(src), engine.host4(26101))
        .expect("TCP 26101 from outside reaches the container");

    // SCTP INIT from outside. Neither the engine nor the container can answer it (no
    // SCTP sockets): both send "protocol unreachable". The container's IP counter
    // of unknown protocols tells who did.
    let unknown = || c.snmp("Ip", "InUnknownProtos");
    let n0 = unknown();
    let control = craft(
        &engine.outside_ns,
        "sctp4-init",
        src,
        engine.host4(26109),
        41000 + engine.n as u16,
        Duration::from_secs(2),
    );
    assert_eq!(control.icmp.as_deref(), Some("3/2"), "unpublished SCTP port: the engine itself answers: {control:?}");
    assert_eq!(unknown(), n0, "an INIT to an unpublished port must not reach the container");
    let init = craft(
        &engine.outside_ns,
        "sctp4-init",
        src,
        engine.host4(26100),
        42000 + engine.n as u16,
        Duration::from_secs(2),
    );
    assert!(!init.answered, "{init:?}");
    assert_eq!(init.icmp.as_deref(), Some("3/2"), "the container's stack answers protocol unreachable: {init:?}");
    assert_eq!(unknown(), n0 + 1, "the INIT to the published SCTP port was DNAT'd to the container");
    let forwarded = engine.in_ns(&["iptables", "-L", "DOCKER", "-v", "-x", "-n"]);
    let sctp_rule = forwarded.lines().find(|l| l.contains("sctp dpt:3868")).unwrap_or_else(|| panic!("{forwarded}"));
    let accepted: u64 = sctp_rule.split_whitespace().next().unwrap().parse().unwrap();
    assert!(accepted >= 1, "FORWARD accepted the SCTP packet to the container: {sctp_rule}");

    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _lines) = w.stop();
    assert!(status.success(), "dockexpose exit: {status}");
    let ours: Vec<_> = records.iter().filter(|r| r["src_ip"] == engine.outside_v4().as_str()).collect();
    eprintln!("dockexpose records from the outside namespace:\n{ours:#?}");
    let tcp = ours
        .iter()
        .find(|r| r["stage"] == "reached" && r["proto"] == "tcp")
        .unwrap_or_else(|| panic!("no reached TCP record from the outside namespace:\n{records:#?}"));
    assert_eq!(tcp["src_port"], sport);
    assert_eq!(
        (tcp["dst_ip"].as_str(), tcp["dst_port"].as_u64(), tcp["host_port"].as_u64()),
        (Some(cip.as_str()), Some(80), Some(26101))
    );
    assert_eq!(tcp["container"]["name"], c.name.as_str());

    drop(c);
    let (ns, outside_ns, dir) = (engine.ns.clone(), engine.outside_ns.clone(), engine.dir.clone());
    let t = std::time::Instant::now();
    drop(engine);
    eprintln!("second engine torn down in {:?}", t.elapsed());
    let netns = sh(&["ip", "netns", "list"]);
    assert!(!netns.contains(&ns) && !netns.contains(&outside_ns), "namespaces left: {netns}");
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
    assert_eq!(before, root_state(), "the machine's engine, iptables, links or routes changed");
}
