//! The container image, built here without a registry (packaging/container/build.sh:
//! the binary and exactly the libraries ldd names, `docker import`), run on the real
//! engine with the network of the host, every capability dropped but the kernel
//! side's, bpffs and the Docker socket mounted: it detects the bypass story.
//!
//! CAP_BPF and CAP_PERFMON by name need an engine that knows them; this machine's
//! Docker 20.10 (Debian) refuses them ("unknown capability"). The test then asserts
//! that refusal and runs with the fallback such engines need (CAP_SYS_ADMIN, which
//! holds the BPF privileges, and CAP_NET_ADMIN), and says so.

mod support;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

struct Cleanup {
    container: String,
    image: String,
    pins: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sh_quiet(&["docker", "rm", "-f", &self.container]);
        sh_quiet(&["docker", "rmi", "-f", &self.image]);
        let lock = format!("{}.lock", self.pins.replace("/sys/fs/bpf/", "/run/dockexpose/"));
        sh_quiet(&[BIN, "cleanup", "--pin-dir", &self.pins, "--lock-file", &lock]);
        let _ = std::fs::remove_file(&lock);
    }
}

fn logs(container: &str) -> (String, String) {
    let out = Command::new("docker").args(["logs", container]).output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_image_detects_the_bypass_story_with_dropped_capabilities() {
    if !docker::ready("the_image_detects_the_bypass_story_with_dropped_capabilities") {
        return;
    }
    let id = std::process::id();
    let image = format!("dx10-dockexpose:{id}");
    let name = format!("dx10-image-{id}");
    let pins = format!("/sys/fs/bpf/dx10-img-{id}");
    let _guard = Cleanup { container: name.clone(), image: image.clone(), pins: pins.clone() };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/container/build.sh");
    let out = Command::new(&script).args([BIN, &image]).output().unwrap();
    assert!(out.status.success(), "build.sh: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    // Exactly the binary and its libraries: no shell, no package manager.
    let files = sh(&["sh", "-c", &format!("docker save {image} | tar -xO --wildcards '*/layer.tar' | tar -t | grep -v '/$'")]);
    let files: Vec<&str> = files.lines().map(|f| f.trim_start_matches("./")).collect();
    assert!(files.contains(&"usr/local/bin/dockexpose"), "{files:?}");
    assert!(files.iter().all(|f| f.starts_with("usr/local/bin/dockexpose") || f.contains("lib") || f.starts_with("etc/")), "{files:?}");
    assert!(!files.iter().any(|f| f.ends_with("bin/sh")), "no shell in the image: {files:?}");

    let outside = OutsideHost::with_n("10i", 69);
    let port = 46_069;
    let img = docker::echo_image();
    let web = docker::Container::run(&format!("dx10-img-web-{id}"), &["-p", &format!("{port}:80")], &img, &["80", "5300"]);
    let run = |caps: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", &name, "--network", "host", "--cap-drop", "ALL"]);
        for c in caps {
            cmd.args(["--cap-add", c]);
        }
        cmd.args(["-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", &image]);
        cmd.args(["watch", "--json", "-", "--stats-interval", "0", "--uplink", &outside.uplink, "--pin-dir", &pins, "--detach-on-exit"]);
        cmd.output().unwrap()
    };
    let exact = run(&["BPF", "PERFMON", "NET_ADMIN"]);
    let caps = if exact.status.success() {
        "BPF PERFMON NET_ADMIN"
    } else {
        let err = String::from_utf8_lossy(&exact.stderr);
        assert!(err.contains("unknown capability"), "the engine refused for another reason: {err}");
        eprintln!("NOTE: this engine does not know CAP_BPF/CAP_PERFMON by name ({}); running with SYS_ADMIN NET_ADMIN", err.trim());
        sh_quiet(&["docker", "rm", "-f", &name]);
        let fallback = run(&["SYS_ADMIN", "NET_ADMIN"]);
        assert!(fallback.status.success(), "{}", String::from_utf8_lossy(&fallback.stderr));
        "SYS_ADMIN NET_ADMIN"
    };
    let start = Instant::now();
    while !logs(&name).1.contains("dockexpose: watching") {
        assert!(start.elapsed() < Duration::from_secs(30), "not watching: {:?}", logs(&name));
        std::thread::sleep(Duration::from_millis(100));
    }
    let inspect = sh(&["docker", "inspect", "--format", "{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.NetworkMode}}", &name]);
    assert!(inspect.starts_with("[ALL]") && inspect.contains("host"), "{inspect}");

    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("published port reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    sh(&["docker", "stop", "-t", "10", &name]);
    let (stdout, stderr) = logs(&name);
    let records: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let r = records
        .iter()
        .find(|r| r["stage"] == "reached" && r["src_port"] == sport)
        .unwrap_or_else(|| panic!("no reached record in the container's output:\n{stdout}\n{stderr}"));
    assert_eq!(r["container"]["name"], web.name.as_str());
    assert_eq!(r["host_port"], port);
    assert!(records.iter().any(|r| r["event"] == "daemon_start"));
    assert!(stderr.contains("SIGTERM: detached"), "{stderr}");
    assert!(tcx_programs(&outside.uplink, false).is_empty(), "--detach-on-exit: nothing left");
    eprintln!("image run with --cap-drop ALL --cap-add {caps}: reached record for source port {sport}");
}
