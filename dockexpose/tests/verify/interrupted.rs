//! A run interrupted (SIGINT) or killed outright (SIGKILL): nothing left behind.

use super::*;

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
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("pid:[")
            .trim_end_matches(']')
            .to_string();
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
