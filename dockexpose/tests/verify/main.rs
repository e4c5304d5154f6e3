//! `dockexpose verify` against the real Docker engine: verdicts per port and uplink,
//! agreement with a real nmap run from outside, nothing leaking to the probe sources,
//! nothing left in conntrack, and the time 100 ports take. Needs root and Docker.

#[path = "../support/mod.rs"]
mod support;

mod interrupted;
mod ports;
mod uplinks;

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
    eprintln!(
        "--- dockexpose verify {args:?} ({} ms)\n{stdout}{}",
        elapsed.as_millis(),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let found: Vec<&String> =
        v.iter().filter(|x| x.1 == proto && x.2 == endpoint && x.3 == via).map(|x| &x.0).collect();
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
    let out =
        Command::new("ip").args(&full).output().expect("nmap (Debian package nmap; cargo xtask setup installs it)");
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
    let out = Command::new("conntrack")
        .args(["-L", "-f", fam, "-s", addr])
        .output()
        .expect("conntrack (Debian package conntrack)");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}
