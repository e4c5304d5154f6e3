//! A reused tuple and ISN is a new connection; a retransmit is not.

use super::*;

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
        .args(["--sport", &sport.to_string(), "--seq", &seq.to_string(), "--count", &count.to_string()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "reuse.py {mode}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
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
    let w = Watcher::start(&["--uplink", &outside.uplink, "--stats-interval", "0"], json_path("reuse"));
    let (reused_port, retransmit_port) = (40000 + n as u16, 41000 + n as u16);
    let answers = reuse(&outside.ns, "reuse", outside.host4(port), reused_port, 0x1234_5678, 8);
    assert_eq!(answers, 8, "the container accepted each of the 8 connections");
    let retransmit_answers = reuse(&outside.ns, "retransmit", outside.host4(port), retransmit_port, 0x0bad_cafe, 4);
    assert!(retransmit_answers >= 1);
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines.iter().find(|l| l.contains("final counters")).expect("final counters");
    eprintln!("{test}: {last}");
    let new = reached(&records, reused_port);
    assert_eq!(new.len(), 8, "8 connections on one tuple and ISN, 8 records: {new:?}");
    assert!(new.iter().all(|r| r["host_port"] == port));
    let once = reached(&records, retransmit_port);
    assert_eq!(once.len(), 1, "one connection whose SYN was sent 4 times, one record: {once:?}");
}
