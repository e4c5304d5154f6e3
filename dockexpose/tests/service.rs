//! Running as a service: the systemd unit (packaging/systemd/dockexpose.service) passes
//! `systemd-analyze verify` and keeps its hardening; READY=1 reaches a NOTIFY_SOCKET
//! listener once the programs are attached (a path socket and an abstract one), and
//! STOPPING=1 on SIGTERM.

mod support;

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

fn unit_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/dockexpose.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tool is there, or the test is skipped (a failure under CI).
fn have(tool: &str, test: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = format!("{tool} not installed (cargo xtask setup installs it)");
    if std::env::var_os("CI").is_some() || std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
        panic!("{test}: SKIPPED: {why}, and this run demands it");
    }
    skip(test, &why)
}

#[test]
fn the_unit_keeps_its_hardening_and_the_traps_out() {
    let unit = unit_text();
    let lines: Vec<&str> = unit.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for wanted in [
        "Type=notify",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW",
        "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
        "StateDirectory=dockexpose",
        "RuntimeDirectory=dockexpose",
        "LogsDirectory=dockexpose",
        "SystemCallFilter=@system-service bpf perf_event_open",
    ] {
        assert!(lines.contains(&wanted), "{wanted} missing from the unit");
    }
    // ProtectKernelTunables= would remount /sys/fs/bpf read-only: no pinning.
    assert!(!lines.iter().any(|l| l.starts_with("ProtectKernelTunables=yes")));
    let exec = lines.iter().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains(" watch ") && exec.contains("/var/log/dockexpose/") && exec.contains("/run/dockexpose/lock"),
        "{exec}"
    );
    assert!(!exec.contains("--detach-on-exit") && !exec.contains("--no-pin"), "a restart must not leave a gap: {exec}");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let test = "the_unit_passes_systemd_analyze_verify";
    if !have("systemd-analyze", test) {
        return;
    }
    // verify checks that ExecStart= exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("dx10-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("dockexpose.service");
    std::fs::write(&unit, unit_text().replace("/usr/local/bin/dockexpose", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(!text.contains("dockexpose.service:"), "warnings about the unit: {text}");
    // The exposure score (lower is better), as the README shows it.
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    eprintln!("{line}");
    let score: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 3.0, "exposure {score} (was 2.3 when written): {text}");
}

/// Waits for one datagram on `sock`.
fn recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_is_sent_once_attached_and_stopping_on_sigterm() {
    if !privileged("ready_is_sent_once_attached_and_stopping_on_sigterm") {
        return;
    }
    // A bridge of this test's own (10.251.69.0/24), removed by the guard.
    let bridge = format!("dx10nb{}", std::process::id() % 1000);
    assert_unrouted("10.251.69.0/24");
    let mut undo = Undo::default();
    sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
    undo.push(&["ip", "link", "del", &bridge]);
    sh(&["ip", "addr", "add", "10.251.69.1/24", "dev", &bridge]);
    sh(&["ip", "link", "set", &bridge, "up"]);
    let path = std::env::temp_dir().join(format!("dx10-notify-{}.sock", std::process::id()));
    let abstract_name = format!("dx10-notify-{}", std::process::id());
    for target in [path.display().to_string(), format!("@{abstract_name}")] {
        let listener = if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap()).unwrap()
        } else {
            let _ = std::fs::remove_file(&path);
            UnixDatagram::bind(&path).unwrap()
        };
        let mut cmd = Command::new(BIN);
        cmd.env("NOTIFY_SOCKET", &target);
        let started = Instant::now();
        let w = Watcher::spawn_command(
            cmd,
            &["--no-docker", "--bridge", &bridge, "--no-pin", "--stats-interval", "0"],
            json_path("dx10-notify"),
        );
        let ready = recv(&listener, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no READY=1 on {target}: {:?}", w.lines()));
        assert_eq!(ready, "READY=1", "{target}");
        // Sent once attached: the programs are on the bridge, the watching line printed.
        assert_eq!(tcx_programs(&bridge, true), ["bridge_egress"], "READY=1 before the programs were attached");
        assert!(w.lines().iter().any(|l| l.contains("dockexpose: watching")));
        eprintln!("READY=1 on {target} {:?} after start", started.elapsed());
        let (_, status, _) = w.stop();
        assert!(status.success());
        assert_eq!(recv(&listener, Duration::from_secs(5)).as_deref(), Some("STOPPING=1"), "{target}");
        assert!(recv(&listener, Duration::from_millis(200)).is_none(), "READY=1 is sent once");
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(json_path("dx10-notify"));
    drop(undo);
}
