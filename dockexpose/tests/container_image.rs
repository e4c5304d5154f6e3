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

/// packaging/container/build.sh, then a look at what the image holds: exactly the
/// binary, the programs verify runs (ip, conntrack, nft) and their libraries; no shell,
/// no package manager.
fn build_image(image: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/container/build.sh");
    let out = Command::new(&script).args([BIN, image]).output().unwrap();
    assert!(out.status.success(), "build.sh: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let files =
        sh(&["sh", "-c", &format!("docker save {image} | tar -xO --wildcards '*/layer.tar' | tar -t | grep -v '/$'")]);
    let files: Vec<&str> = files.lines().map(|f| f.trim_start_matches("./")).collect();
    for wanted in ["usr/local/bin/dockexpose", "usr/sbin/ip", "usr/sbin/conntrack", "usr/sbin/nft"] {
        assert!(files.contains(&wanted), "{wanted} missing: {files:?}");
    }
    let helper = |f: &str| ["usr/sbin/ip", "usr/sbin/conntrack", "usr/sbin/nft"].contains(&f);
    assert!(
        files.iter().all(|f| f.starts_with("usr/local/bin/dockexpose")
            || helper(f)
            || f.contains("lib")
            || f.starts_with("etc/")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.ends_with("bin/sh")), "no shell in the image: {files:?}");
}

/// `docker run` of the image as the README shows it: the network of the host, every
/// capability dropped but `caps`, bpffs and the Docker socket mounted.
fn run_image(name: &str, image: &str, caps: &[&str], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("docker");
    cmd.args(["run", "-d", "--name", name, "--network", "host", "--cap-drop", "ALL"]);
    for c in caps {
        cmd.args(["--cap-add", c]);
    }
    cmd.args(["-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", image]);
    cmd.args(args).output().unwrap()
}

/// The kernel side's capabilities by name, or, on an engine that does not know CAP_BPF
/// (this machine's Docker 20.10), SYS_ADMIN in their place; plus `extra`. Returns the
/// capabilities the container runs with.
fn run_with_kernel_caps(name: &str, image: &str, extra: &[&str], args: &[&str]) -> String {
    let exact: Vec<&str> = ["BPF", "PERFMON", "NET_ADMIN"].iter().chain(extra).copied().collect();
    let out = run_image(name, image, &exact, args);
    if out.status.success() {
        return exact.join(" ");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown capability"), "the engine refused for another reason: {err}");
    eprintln!(
        "NOTE: this engine does not know CAP_BPF/CAP_PERFMON by name ({}); running with SYS_ADMIN in their place",
        err.trim()
    );
    sh_quiet(&["docker", "rm", "-f", name]);
    let fallback: Vec<&str> = ["SYS_ADMIN", "NET_ADMIN"].iter().chain(extra).copied().collect();
    let out = run_image(name, image, &fallback, args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fallback.join(" ")
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
    build_image(&image);

    let outside = OutsideHost::with_n("10i", 69);
    let port = 46_069;
    let img = docker::echo_image();
    let web =
        docker::Container::run(&format!("dx10-img-web-{id}"), &["-p", &format!("{port}:80")], &img, &["80", "5300"]);
    let args = [
        "watch",
        "--json",
        "-",
        "--stats-interval",
        "0",
        "--uplink",
        &outside.uplink,
        "--pin-dir",
        &pins,
        "--detach-on-exit",
    ];
    let caps = run_with_kernel_caps(&name, &image, &[], &args);
    let start = Instant::now();
    while !logs(&name).1.contains("dockexpose: watching") {
        assert!(start.elapsed() < Duration::from_secs(30), "not watching: {:?}", logs(&name));
        std::thread::sleep(Duration::from_millis(100));
    }
    let inspect = sh(&[
        "docker",
        "inspect",
        "--format",
        "{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.NetworkMode}}",
        &name,
    ]);
    assert!(inspect.starts_with("[ALL]") && inspect.contains("host"), "{inspect}");

    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port))
        .expect("published port reachable from outside");
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

/// `watch --verify-every` in the image: verify's pass at start runs there (its packet
/// socket, private veth, sentinel child, pins, and the image's ip, conntrack and nft),
/// gives an EXPOSED and a HELD record with the rule that dropped the probe, and leaves
/// no link, nftables table or verify pin behind once the container stops.
#[test]
fn the_image_runs_verify_with_its_programs() {
    if !docker::ready("the_image_runs_verify_with_its_programs") {
        return;
    }
    let id = std::process::id();
    let image = format!("dx10-dockexpose-v:{id}");
    let name = format!("dx10-image-v-{id}");
    let pins = format!("/sys/fs/bpf/dx10-imgv-{id}");
    let _guard = Cleanup { container: name.clone(), image: image.clone(), pins: pins.clone() };
    build_image(&image);

    let outside = OutsideHost::with_n("10v", 68);
    let base = free_ports(23_100, 2);
    let (open, dropped) = (base, base + 1);
    let img = docker::echo_image();
    let web = docker::Container::run(
        &format!("dx10-imgv-web-{id}"),
        &["-p", &format!("{open}:80"), "-p", &format!("{dropped}:80")],
        &img,
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
    let probe_src = outside.v4(77);
    let links = || {
        sh(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect::<Vec<_>>()
    };
    let (links_before, tables_before) = (links(), sh(&["nft", "list", "tables"]));
    let verify_pins = || {
        std::fs::read_dir("/sys/fs/bpf/dockexpose-verify")
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let pins_before = verify_pins();

    let from = format!("{probe_src}/32");
    let args = [
        "watch",
        "--json",
        "-",
        "--stats-interval",
        "0",
        "--uplink",
        &outside.uplink,
        "--pin-dir",
        &pins,
        "--detach-on-exit",
        "--verify-every",
        "1h",
        "--verify-from",
        &from,
    ];
    // NET_RAW: verify's packet socket.
    let caps = run_with_kernel_caps(&name, &image, &["NET_RAW"], &args);
    let records =
        |stdout: &str| stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect::<Vec<_>>();
    let start = Instant::now();
    let (exposed, held) = loop {
        let (stdout, stderr) = logs(&name);
        let rs = records(&stdout);
        let find = |port: u16| rs.iter().find(|r| r["stage"] == "verified" && r["host_port"] == port).cloned();
        if let (Some(e), Some(h)) = (find(open), find(dropped)) {
            break (e, h);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no verified records within 30 s:\n{stdout}\n{stderr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = start.elapsed();
    assert_eq!(exposed["verdict"], "EXPOSED", "{exposed}");
    assert_eq!(held["verdict"], "HELD", "{held}");
    for r in [&exposed, &held] {
        assert_eq!(r["src_ip"], probe_src.as_str(), "{r}");
        assert_eq!(r["container"]["name"], web.name.as_str(), "{r}");
    }
    // The image's nft read the trace: the rule is named.
    assert!(held["why"].as_str().is_some_and(|w| w.starts_with("dropped by ip filter DOCKER-USER: ")), "{held}");
    let start = Instant::now();
    let summary = loop {
        if let Some(l) = logs(&name).1.lines().find(|l| l.contains("dockexpose: verify (")) {
            break l.to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no verify summary: {:?}", logs(&name));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(summary.contains(" 0 remain"), "{summary}");
    sh(&["docker", "stop", "-t", "10", &name]);
    let (stdout, stderr) = logs(&name);
    assert!(!stderr.contains("warning: verify"), "{stderr}");
    let from_probes =
        records(&stdout).into_iter().filter(|r| r["src_ip"] == probe_src.as_str() && r["stage"] != "verified").count();
    assert_eq!(from_probes, 0, "the probes were reported as connections:\n{stdout}");
    assert_eq!(links(), links_before, "links left behind");
    assert_eq!(sh(&["nft", "list", "tables"]), tables_before, "nftables tables left behind");
    assert_eq!(verify_pins(), pins_before, "verify pins left behind");
    eprintln!("image with --cap-drop ALL --cap-add {caps}: verified in {took:?}; {summary}");
}
