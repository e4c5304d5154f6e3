//! The record is never blinded and never guesses (issue 17), tried as an attacker
//! would on the real engine: a trickle of connections to an address no container
//! holds during a SYN flood, direct routing next to the published path, one tuple
//! and ISN reused for new connections, a spoofed trusted source. Needs root, Docker
//! and scapy; every namespace, link, route and rule is removed by a guard.

mod support;

use std::{
    net::{SocketAddr, SocketAddrV4},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::Value;
use support::{craft::craft, docker, *};

fn reached(records: &[Value], sport: u16) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["stage"] == "reached" && r["src_port"] == sport)
        .collect()
}

/// A host on docker0 that no container is: a VM or LXC guest bridged into Docker's
/// network (a netns whose veth is a port of docker0), listening on TCP `port`.
struct Guest {
    ns: String,
    addr: String,
    _services: Services,
    _undo: Undo,
}

impl Guest {
    /// A guest listening on TCP 7000, allowed in DOCKER-USER, that `outside` routes to
    /// through the host.
    fn reachable_from(outside: &OutsideHost) -> (Self, Undo) {
        let guest = Guest::new(outside.n, 7000);
        let accept = docker::docker_user_rule(&["-d", guest.addr.as_str(), "-j", "ACCEPT"]);
        sh(&["ip", "-n", &outside.ns, "route", "add", &format!("{}/32", guest.addr), "via", &outside.v4(1)]);
        (guest, accept)
    }

    fn new(n: u32, port: u16) -> Self {
        let subnet = sh(&[
            "docker",
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
        ]);
        assert_eq!(
            subnet.trim(),
            "172.17.0.0/16",
            "docker0's subnet: this test places a guest in 172.17.254.0/24"
        );
        let (ns, host_end) = (format!("dxg{n}"), format!("dxgv{n}"));
        let addr = format!("172.17.254.{n}");
        let in_use = sh(&[
            "docker",
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{range .Containers}}{{.IPv4Address}} {{end}}",
        ]);
        assert!(
            !in_use.contains(&format!("{addr}/")),
            "{addr} is a container's address"
        );
        let mut undo = Undo::default();
        sh(&["ip", "netns", "add", &ns]);
        undo.push(&["ip", "netns", "del", &ns]);
        sh(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        undo.push(&["ip", "link", "del", &host_end]);
        sh(&["ip", "link", "set", &host_end, "master", "docker0", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            "172.17.0.1",
        ]);
        let services = Services::start(&ns, port, port + 1);
        Guest {
            ns,
            addr,
            _services: services,
            _undo: undo,
        }
    }
}

/// An outside host, and an echo container publishing TCP port `base` + the run number.
fn published_echo(tag: &str, base: u16) -> (OutsideHost, docker::Container, u16) {
    let image = docker::echo_image();
    let outside = OutsideHost::new(tag);
    let port = base + outside.n as u16;
    let name = format!("dx-{tag}-{}", outside.n);
    let c = docker::Container::run(&name, &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    (outside, c, port)
}

#[test]
fn a_trickle_to_an_address_no_container_holds_never_blinds_the_ring_during_a_flood() {
    let test = "a_trickle_to_an_address_no_container_holds_never_blinds_the_ring_during_a_flood";
    if !docker::ready(test) {
        return;
    }
    let (outside, _web, port) = published_echo("t", 29000);
    let n = outside.n;
    let spoofed = format!("198.19.{n}.0/24");
    assert_unrouted(&spoofed);
    let mut undo = Undo::default();
    sh(&[
        "ip",
        "route",
        "add",
        &spoofed,
        "via",
        &outside.v4(2),
        "dev",
        &outside.uplink,
    ]);
    undo.push(&["ip", "route", "del", &spoofed]);
    let (guest, _accept) = Guest::reachable_from(&outside);
    let w = Watcher::start(
        &[
            "--uplink",
            &outside.uplink,
            "--quiet",
            "--stats-interval",
            "0",
        ],
        json_path("trickle"),
    );

    // One connection every 0.4 s to the guest, for as long as the flood lasts.
    let stop = Arc::new(AtomicBool::new(false));
    let (ns, src, dst, s) = (
        outside.ns.clone(),
        outside.src4(),
        SocketAddr::new(guest.addr.parse().unwrap(), 7000),
        stop.clone(),
    );
    let trickle = std::thread::spawn(move || {
        let mut sports = Vec::new();
        while !s.load(Ordering::Relaxed) {
            sports.push(tcp_connect(&ns, Some(src), dst).expect("the guest answers"));
            std::thread::sleep(Duration::from_millis(400));
        }
        sports
    });
    std::thread::sleep(Duration::from_secs(2));
    let flood_dst = SocketAddrV4::new(outside.v4(1).parse().unwrap(), port);
    let sent = syn_flood(
        &outside.ns,
        [198, 19, n as u8],
        flood_dst,
        300_000,
        25_000,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let sports = trickle.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines
        .iter()
        .find(|l| l.contains("final counters"))
        .expect("final counters");
    let lost = counter(last, "ringbuf_full_lost");
    eprintln!(
        "{test}: {sent} spoofed SYNs, {} trickle connections; ring lost {lost} ({last})",
        sports.len()
    );
    assert!(
        sent >= 150_000,
        "the flood was too slow to mean anything: {sent}"
    );
    assert_eq!(
        lost, 0,
        "the ring lost records while the trickle waited for identity"
    );
    // The guest closes first, so the client may use a source port again at once: each
    // port has as many records as connections were made from it.
    let mut made: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    for sport in &sports {
        *made.entry(*sport).or_default() += 1;
    }
    for (sport, times) in made {
        let r: Vec<_> = reached(&records, sport).into_iter().filter(|r| r["src_ip"] == outside.v4(2).as_str()).collect();
        assert_eq!(r.len(), times, "trickle connections from port {sport}: {r:?}");
        assert!(r.iter().all(|r| r["dst_ip"] == guest.addr.as_str() && r["container"].is_null()), "{r:?}");
    }
    assert!(!guest.ns.is_empty());
}

#[test]
fn direct_routing_and_the_published_path_are_told_apart() {
    let test = "direct_routing_and_the_published_path_are_told_apart";
    if !docker::ready(test) {
        return;
    }
    let (outside, web, port) = published_echo("r", 21000);
    let ip = web.ip("bridge");
    // A neighbour routes to the container itself; Docker before 28 accepts it in FORWARD.
    sh(&[
        "ip",
        "-n",
        &outside.ns,
        "route",
        "add",
        &format!("{ip}/32"),
        "via",
        &outside.v4(1),
    ]);
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--stats-interval", "0"],
        json_path("routed"),
    );
    let published = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port))
        .expect("published path");
    let direct = tcp_connect(
        &outside.ns,
        Some(outside.src4()),
        SocketAddr::new(ip.parse().unwrap(), 80),
    )
    .expect("direct path");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let p = reached(&records, published);
    let d = reached(&records, direct);
    eprintln!("{test}: published {p:?}\ndirect {d:?}");
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0]["exposure"].as_str(), p[0]["host_port"].as_u64()),
        (Some("published"), Some(u64::from(port)))
    );
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0]["exposure"], "direct",
        "routed straight to the container: {}",
        d[0]
    );
    assert!(
        d[0]["host_port"].is_null() && d[0]["host_ip"].is_null(),
        "no host port was used: {}",
        d[0]
    );
    assert_eq!(d[0]["container"]["name"], web.name.as_str());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("EXPOSED DIRECTLY ROUTED PORT {}", web.name))),
        "alerted as exposure without publishing: {lines:#?}"
    );
}

/// Runs support/reuse.py in `ns`; returns the SYN-ACKs it got.
fn reuse(ns: &str, mode: &str, dst: SocketAddr, sport: u16, seq: u32, count: u32) -> u64 {
    let script = format!("{}/tests/support/reuse.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "python3",
            &script,
            mode,
            "--dst",
            &dst.ip().to_string(),
            "--dport",
            &dst.port().to_string(),
        ])
        .args([
            "--sport",
            &sport.to_string(),
            "--seq",
            &seq.to_string(),
            "--count",
            &count.to_string(),
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reuse.py {mode}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON line");
    v["answers"].as_u64().unwrap()
}

#[test]
fn a_reused_tuple_and_isn_is_a_new_connection_and_a_retransmit_is_not() {
    let test = "a_reused_tuple_and_isn_is_a_new_connection_and_a_retransmit_is_not";
    if !docker::ready(test) {
        return;
    }
    let (outside, _web, port) = published_echo("q", 22000);
    let n = outside.n;
    // The namespace's kernel would answer each SYN-ACK with a RST of its own.
    sh(&[
        "ip",
        "netns",
        "exec",
        &outside.ns,
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--tcp-flags",
        "RST",
        "RST",
        "-j",
        "DROP",
    ]);
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--stats-interval", "0"],
        json_path("reuse"),
    );
    let (reused_port, retransmit_port) = (40000 + n as u16, 41000 + n as u16);
    let answers = reuse(
        &outside.ns,
        "reuse",
        outside.host4(port),
        reused_port,
        0x1234_5678,
        8,
    );
    assert_eq!(
        answers, 8,
        "the container accepted each of the 8 connections"
    );
    let retransmit_answers = reuse(
        &outside.ns,
        "retransmit",
        outside.host4(port),
        retransmit_port,
        0x0bad_cafe,
        4,
    );
    assert!(retransmit_answers >= 1);
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines
        .iter()
        .find(|l| l.contains("final counters"))
        .expect("final counters");
    eprintln!("{test}: {last}");
    let new = reached(&records, reused_port);
    assert_eq!(
        new.len(),
        8,
        "8 connections on one tuple and ISN, 8 records: {new:?}"
    );
    assert!(new.iter().all(|r| r["host_port"] == port));
    let once = reached(&records, retransmit_port);
    assert_eq!(
        once.len(),
        1,
        "one connection whose SYN was sent 4 times, one record: {once:?}"
    );
}

#[test]
fn a_spoofed_trusted_source_is_reported_and_a_real_one_is_not() {
    let test = "a_spoofed_trusted_source_is_reported_and_a_real_one_is_not";
    if !docker::ready(test) {
        return;
    }
    if sh(&["sysctl", "-n", "net.ipv4.conf.all.rp_filter"]).trim() == "1" {
        panic!("{test}: net.ipv4.conf.all.rp_filter=1 drops the spoofed packet before any container: the test needs 0 or 2");
    }
    let image = docker::echo_image();
    // The admin network (trusted) behind one uplink; the internet behind another.
    let admin = OutsideHost::new("a");
    let internet = OutsideHost::with_n("i", (admin.n + 101) % 200 + 20);
    let n = admin.n;
    let udp_port = 23000 + n as u16;
    let _svc = docker::Container::run(
        &format!("dx-trusted-{n}"),
        &["-p", &format!("{udp_port}:5300/udp")],
        &image,
        &["80", "5300"],
    );
    let trusted = format!("198.18.{n}.0/24");
    let w = Watcher::start(
        &[
            "--uplink",
            &admin.uplink,
            "--uplink",
            &internet.uplink,
            "--trusted",
            &trusted,
            "--stats-interval",
            "0",
        ],
        json_path("trusted"),
    );
    // The admin host itself: trusted, never reported.
    let (real_port, _) = udp_exchange(&admin.ns, Some(admin.src4()), admin.host4(udp_port), 1);
    // From the internet, with the admin host's address: a one-packet UDP exploit.
    let spoof_port = 42000 + n as u16;
    let target = SocketAddr::new(internet.v4(1).parse().unwrap(), udp_port);
    craft(
        &internet.ns,
        "udp4-plain",
        admin.src4(),
        target,
        spoof_port,
        Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines
        .iter()
        .find(|l| l.contains("final counters"))
        .expect("final counters");
    eprintln!("{test}: {last}");
    assert!(
        reached(&records, real_port).is_empty(),
        "the real admin host is trusted"
    );
    let spoofed = reached(&records, spoof_port);
    assert_eq!(
        spoofed.len(),
        1,
        "the spoofed trusted source is reported: {records:?}"
    );
    assert_eq!(spoofed[0]["src_ip"], admin.v4(2).as_str());
    assert_eq!(spoofed[0]["spoofed_trusted"], true);
    assert!(
        lines.iter().any(|l| l.contains("SPOOFED TRUSTED SOURCE")),
        "{lines:#?}"
    );
}

#[test]
fn a_record_waiting_for_identity_survives_kill_9_without_holding_the_ring() {
    let test = "a_record_waiting_for_identity_survives_kill_9_without_holding_the_ring";
    if !docker::ready(test) {
        return;
    }
    let outside = OutsideHost::new("k");
    let (guest, _accept) = Guest::reachable_from(&outside);
    let (pin_dir, lock) = (
        format!("/sys/fs/bpf/dx17-pending-{}", std::process::id()),
        format!("/run/dockexpose/dx17-pending-{}.lock", std::process::id()),
    );
    let cleanup = |bin: &str| {
        let _ = Command::new(bin)
            .args(["cleanup", "--pin-dir", &pin_dir, "--lock-file", &lock])
            .output();
        let _ = std::fs::remove_file(&lock);
    };
    let bin = env!("CARGO_BIN_EXE_dockexpose");
    cleanup(bin);
    let args = [
        "--uplink",
        outside.uplink.as_str(),
        "--stats-interval",
        "0",
        "--pin-dir",
        pin_dir.as_str(),
        "--lock-file",
        lock.as_str(),
    ];
    let json = json_path("pending-kill");
    let w = Watcher::start(&args, json.clone());
    let sport = tcp_connect(
        &outside.ns,
        Some(outside.src4()),
        SocketAddr::new(guest.addr.parse().unwrap(), 7000),
    )
    .expect("the guest answers");
    // Killed while the record waits (up to a second) for a name.
    std::thread::sleep(Duration::from_millis(200));
    w.kill9();
    let in_log = |json: &std::path::Path| {
        std::fs::read_to_string(json)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"src_port\":{sport}")) && l.contains("\"reached\""))
            .count()
    };
    assert_eq!(
        in_log(&json),
        0,
        "not written before the kill (it was waiting)"
    );
    let w = Watcher::restart(&args, json.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let (_, status, lines) = w.stop();
    cleanup(bin);
    assert!(status.success());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("records the previous daemon held")),
        "{lines:#?}"
    );
    assert_eq!(in_log(&json), 1, "written once by the next daemon");
}
