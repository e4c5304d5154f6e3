//! `dockexpose verify` against the real Docker engine: verdicts per port and uplink,
//! agreement with a real nmap run from outside, nothing leaking to the probe sources,
//! nothing left in conntrack, and the time 100 ports take. Needs root and Docker.

mod support;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{docker, *};

/// A second uplink: a veth to a namespace of its own, in 198.19.N.0/24 (the other half
/// of the benchmarking range: OutsideHost uses 198.18.N.0/24 with the same N).
struct SecondUplink {
    ns: String,
    uplink: String,
    n: u32,
}

impl SecondUplink {
    fn new(n: u32) -> Self {
        assert_unrouted(&format!("198.19.{n}.0/24"));
        let (ns, uplink, peer) = (format!("dxv2o{n}"), format!("dxv2u{n}"), format!("dxv2x{n}"));
        sh_quiet(&["ip", "netns", "del", &ns]);
        sh_quiet(&["ip", "link", "del", &uplink]);
        sh(&["ip", "netns", "add", &ns]);
        let me = SecondUplink { ns: ns.clone(), uplink: uplink.clone(), n };
        sh(&["ip", "link", "add", &uplink, "type", "veth", "peer", "name", &peer]);
        sh(&["ip", "link", "set", &peer, "netns", &ns]);
        sh(&["ip", "addr", "add", &format!("198.19.{n}.1/24"), "dev", &uplink]);
        sh(&["ip", "link", "set", &uplink, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", &peer, "name", "eth0"]);
        sh(&["ip", "-n", &ns, "addr", "add", &format!("198.19.{n}.2/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("198.19.{n}.1")]);
        me
    }
    fn host4(&self) -> String {
        format!("198.19.{}.1", self.n)
    }
}

impl Drop for SecondUplink {
    fn drop(&mut self) {
        sh_quiet(&["ip", "link", "del", &self.uplink]);
        sh_quiet(&["ip", "netns", "del", &self.ns]);
    }
}

/// tcpdump in a namespace, writing to a file until stopped.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(ns: &str, filter: &str, tag: &str) -> Self {
        let file = std::env::temp_dir().join(format!("dx-verify-{tag}-{}.pcap", std::process::id()));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-U", "-w", file.to_str().unwrap(), filter])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (Debian package tcpdump; cargo xtask setup installs it)");
        std::thread::sleep(Duration::from_millis(700));
        Capture { child, file }
    }
    /// Packets captured.
    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("tcpdump").args(["-n", "-r", self.file.to_str().unwrap()]).output().unwrap();
        let _ = std::fs::remove_file(&self.file);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct VerifyRun {
    code: i32,
    lines: Vec<String>,
    elapsed: Duration,
}

fn verify(args: &[&str]) -> VerifyRun {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose")).arg("verify").args(args).output().unwrap();
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("--- dockexpose verify {args:?} ({} ms)\n{stdout}{}", elapsed.as_millis(), String::from_utf8_lossy(&out.stderr));
    VerifyRun { code: out.status.code().unwrap_or(-1), lines: stdout.lines().map(str::to_string).collect(), elapsed }
}

/// (verdict word, proto, "addr:port" or "[addr]:port", uplink) of each probe line.
fn verdicts(lines: &[String]) -> Vec<(String, String, String, String)> {
    lines
        .iter()
        .filter(|l| ["EXPOSED", "HELD", "PROXY"].iter().any(|v| l.starts_with(v)))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let via = w.iter().position(|x| *x == "via").map(|i| w[i + 1].trim_end_matches(':').to_string()).unwrap();
            (w[0].to_string(), w[1].to_string(), w[2].to_string(), via)
        })
        .collect()
}

fn verdict_of(v: &[(String, String, String, String)], proto: &str, endpoint: &str, via: &str) -> String {
    let found: Vec<&String> = v.iter().filter(|x| x.1 == proto && x.2 == endpoint && x.3 == via).map(|x| &x.0).collect();
    assert_eq!(found.len(), 1, "one verdict for {proto} {endpoint} via {via}: {v:?}");
    found[0].clone()
}

fn guard_drops(lines: &[String]) -> u64 {
    let l = lines.iter().find(|l| l.starts_with("cleanup:")).expect("cleanup line");
    let w: Vec<&str> = l.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "dropped").unwrap();
    w[i + 1].parse().unwrap()
}

/// nmap's state per port ("open", "closed", "filtered", "open|filtered").
fn nmap(ns: &str, args: &[&str]) -> BTreeMap<u16, String> {
    let mut full = vec!["netns", "exec", ns, "nmap", "-n", "-Pn", "--max-retries", "1", "--host-timeout", "60s"];
    full.extend_from_slice(args);
    let out = Command::new("ip").args(&full).output().expect("nmap (Debian package nmap; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("--- nmap {args:?}\n{text}");
    let mut states = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 2 && w[0].contains('/') {
            if let Ok(p) = w[0].split('/').next().unwrap().parse::<u16>() {
                states.insert(p, w[1].to_string());
            }
        }
    }
    states
}

/// Whether a real TCP connection from namespace `ns` to `ip`:`port` is accepted.
fn connects(ns: &str, ip: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    Command::new("ip").args(["netns", "exec", ns, "timeout", "2", "bash", "-c", &script]).status().unwrap().success()
}

fn conntrack_from(addr: &str) -> usize {
    let fam = if addr.contains(':') { "ipv6" } else { "ipv4" };
    let out = Command::new("conntrack").args(["-L", "-f", fam, "-s", addr]).output().expect("conntrack (Debian package conntrack)");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

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
            "-p", &format!("{open}:80"),
            "-p", &format!("{silent}:81"),
            "-p", &format!("{udp}:5300/udp"),
            "-p", &format!("127.0.0.1:{local}:80"),
            "-p", &format!("{dropped}:80"),
        ],
        &image,
        &["80", "5300"],
    );
    let dropped_s = dropped.to_string();
    let _rule = docker::docker_user_rule(&["-i", &outside.uplink, "-p", "tcp", "-m", "conntrack", "--ctorigdstport", &dropped_s, "-j", "DROP"]);
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
    let ports: Vec<String> = [open, silent, local, dropped].iter().map(|p| format!("{p}/tcp")).chain([format!("{udp}/udp")]).collect();
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
    assert_eq!(verdict_of(&v, "tcp", &format!("{h1}:{silent}"), u1), "EXPOSED", "published, nothing listening: the container's kernel answers RST");
    assert_eq!(verdict_of(&v, "udp", &format!("{h1}:{udp}"), u1), "EXPOSED");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h1}:{dropped}"), u1), "HELD", "DOCKER-USER -i {u1} drops it");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h2}:{dropped}"), u2), "EXPOSED", "the rule names the other uplink");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h6}:{open}"), u1), "PROXY", "IPv6 through docker-proxy");
    assert_eq!(verdict_of(&v, "tcp", &format!("{h6}:{silent}"), u1), "HELD", "INPUT drops IPv6 to the proxy");
    // The netfilter trace names the rule that dropped it: DOCKER-USER, for that uplink;
    // and the INPUT chain for IPv6 to the proxy (the test's UFW-like chain).
    let held = run.lines.iter().find(|l| l.starts_with("HELD") && l.contains(&format!(":{dropped} "))).expect("a HELD line");
    assert!(held.contains("dropped by ip filter DOCKER-USER: ") && held.contains(&format!("iifname \"{u1}\"")), "{held}");
    let held6 = run.lines.iter().find(|l| l.starts_with("HELD") && l.contains(&format!("{h6}:{silent} "))).expect("a HELD v6 line");
    assert!(held6.contains("dropped by ip6 filter "), "{held6}");
    let local_line = run.lines.iter().find(|l| l.contains(&format!("127.0.0.1:{local}->"))).expect("the loopback binding is listed");
    assert!(local_line.starts_with("LOCAL") && local_line.contains("not reachable from outside"), "{local_line}");
    assert!(!v.iter().any(|x| x.2.ends_with(&format!(":{local}"))), "a loopback binding is not probed");
    assert!(run.lines.iter().any(|l| l.contains(&format!("container dx-verify-{n} (image {image})"))));

    // Nothing reached the outside: the guard dropped the answers, none was captured.
    assert!(guard_drops(&run.lines) > 0, "the guard dropped the answers");
    assert!(leaked1.is_empty() && leaked2.is_empty(), "packets to the probe sources left the host: {leaked1:?} {leaked2:?}");
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
            let ours = v.iter().find(|x| x.1 == proto && x.2 == format!("{host}:{p}") && x.3 == via).map(|x| x.0.clone());
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
    compare(&nmap(&outside.ns, &["-6", "-sS", "-p", &format!("{open},{silent}"), &outside.v6(1)]), "tcp", &h6, u1, &[open, silent]);
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
    let _c = docker::Container::run(&format!("dx-verify-e-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
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
    let _c = docker::Container::run(&format!("dx-verify-h-{n}"), &["-p", &format!("{first}-{last}:80-179")], &image, &["80", "5300"]);
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
    eprintln!("verify of 100 published ports (IPv4, one uplink, rate 200/s): {} ms, {exposed} EXPOSED", run.elapsed.as_millis());
    assert_eq!(exposed, 100, "every published port answers (80 listens, the rest RST)");
    assert_eq!(run.code, 1);
    assert_eq!(conntrack_from(&outside.v4(77)), 0);
}

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
    let (host, peer): (Ipv4Addr, Ipv4Addr) = (format!("198.18.{m}.1").parse().unwrap(), format!("198.18.{m}.2").parse().unwrap());

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
    let (host6, peer6): (Ipv6Addr, Ipv6Addr) = (format!("fd42:198:{m}::1").parse().unwrap(), format!("fd42:198:{m}::2").parse().unwrap());
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
fn an_interrupted_run_leaves_nothing_behind_and_nothing_leaks() {
    interrupted_run("an_interrupted_run_leaves_nothing_behind_and_nothing_leaks", libc::SIGINT);
}

#[test]
fn a_run_killed_outright_is_cleaned_up_by_its_sentinel_and_nothing_leaks() {
    interrupted_run("a_run_killed_outright_is_cleaned_up_by_its_sentinel_and_nothing_leaks", libc::SIGKILL);
}

/// verify on 40 published ports, stopped by `signal` half a second into probing; then
/// nothing of it is left and nothing leaks out of the outside link.
fn interrupted_run(test: &str, signal: i32) {
    if !docker::ready(test) {
        return;
    }
    use std::io::{BufRead, BufReader};
    let image = docker::echo_image();
    let outside = OutsideHost::new(if signal == libc::SIGKILL { "k" } else { "w" });
    let n = outside.n as u16;
    // 40 published ports, all to the listening port: each probe opens a half-open
    // connection whose SYN-ACK the container retransmits unless it is cleaned up.
    let base = free_ports(22500 + (n % 100) * 40, 40);
    let publish: Vec<String> = (0..40).flat_map(|i| ["-p".to_string(), format!("{}:80", base + i)]).collect();
    let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
    let _c = docker::Container::run(&format!("dx-verify-int-{n}"), &publish, &image, &["80", "5300"]);
    std::thread::sleep(Duration::from_millis(500));
    let src4 = outside.v4(77);
    let cap = Capture::start(&outside.ns, &format!("ip and dst host {src4}"), "int");
    let from = format!("{src4}/32");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["verify", "--uplink", &outside.uplink, "--from", &from, "--rate", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .inspect(|_| {
                let _ = tx.send(());
            })
            .collect::<Vec<String>>()
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("verify's header line");
    // Interrupt once probes are out: their conntrack entries say so.
    let deadline = Instant::now() + Duration::from_secs(20);
    while conntrack_from(&src4) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(conntrack_from(&src4) >= 3, "probes were sent before the interruption");
    unsafe { libc::kill(pid as i32, signal) };
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    eprintln!("{test}:\n{}", lines.join("\n"));
    if signal == libc::SIGKILL {
        assert_eq!(status.code(), None, "killed outright");
        // The sentinel sees the run's pipe close and cleans up; the pins go last.
        // Named by the run's pid namespace and pid (the child shares ours).
        let pidns = std::fs::read_link("/proc/self/ns/pid").unwrap().to_string_lossy().trim_start_matches("pid:[").trim_end_matches(']').to_string();
        let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/dockexpose-verify/{pidns}_{pid}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while pins.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!pins.exists(), "the sentinel removed the guard's pins within 30 s");
    } else {
        assert_eq!(status.code(), Some(130), "interrupted: exit code 130");
        let interrupted = lines.iter().find(|l| l.starts_with("interrupted: ")).expect("the interruption is said");
        assert!(!interrupted.starts_with("interrupted: 0 ") && !interrupted.contains(" 40 of 40 "), "{interrupted}");
        assert!(lines.iter().any(|l| l.starts_with("cleanup:") && l.ends_with(" 0 remain")), "{lines:#?}");
    }
    // The containers would retransmit their SYN-ACKs at 1, 3 and 7 s.
    std::thread::sleep(Duration::from_secs(8));
    let leaked = cap.stop();
    assert!(leaked.is_empty(), "packets to the probe source left the host after the interruption: {leaked:#?}");
    assert_eq!(conntrack_from(&src4), 0, "conntrack entries of probes remain");
    let tables = sh(&["nft", "list", "tables"]);
    assert!(!tables.contains("dockexpose_verify"), "the trace table remains: {tables}");
    let raw = sh(&["iptables", "-t", "raw", "-S"]);
    assert!(!raw.contains("TRACE"), "a TRACE rule remains: {raw}");
    let neigh = sh(&["ip", "neigh", "show", &src4]);
    assert!(neigh.trim().is_empty(), "a neighbour entry for the probe source remains: {neigh}");
    let links = sh(&["ip", "-br", "link"]);
    assert!(!links.contains("dxinj"), "the private veth remains: {links}");
    // No guard is left anywhere: its program is loaded no more.
    let progs = sh(&["bpftool", "prog", "show"]);
    assert!(!progs.contains("uplink_probe_gu"), "the guard is still attached somewhere: {progs}");
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
    let _drop = docker::docker_user_rule(&["-i", &outside.uplink, "-p", "tcp", "-m", "conntrack", "--ctorigdstport", &dropped.to_string(), "-j", "DROP"]);
    std::thread::sleep(Duration::from_millis(300));
    // The truth, from the outside host: a real connection to each port.
    let reach = |port: u16| connects(&outside.ns, &outside.v4(1), port);
    assert!(reach(open) && !reach(dropped), "the test bed: {open} open, {dropped} dropped from outside");
    let ports = [format!("{open}/tcp"), format!("{dropped}/tcp")];
    let from = format!("{}/32", outside.v4(77));
    let qdiscs = || sh(&["tc", "qdisc", "show"]).lines().filter(|l| l.contains("clsact")).map(str::to_string).collect::<Vec<_>>();
    let qdiscs_before = qdiscs();
    for way in ["redirect", "live-frames"] {
        let capture = Capture::start(&outside.ns, &format!("host {}", outside.v4(77)), way);
        let run = verify(&["--uplink", &outside.uplink, "--from", &from, "--port", &ports[0], "--port", &ports[1], "--injection", way]);
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
    let c = docker::Container::run(&format!("dx-verify-p-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
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
        lines.iter().find(|l| l.contains(&format!("{proto} {ip}:"))).cloned().unwrap_or_else(|| panic!("no {proto} line for {ip}: {lines:#?}"))
    };

    // Docker's default: FORWARD policy DROP, nothing accepts an unpublished port.
    let policy = sh(&["iptables", "-S", "FORWARD"]);
    assert!(policy.lines().next() == Some("-P FORWARD DROP"), "the test bed: Docker's FORWARD policy is DROP: {policy}");
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
