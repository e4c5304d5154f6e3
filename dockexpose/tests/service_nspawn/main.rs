//! The systemd unit (packaging/systemd/dockexpose.service) under a real systemd: a
//! minimal Debian tree (debootstrap, cached under the target directory so that a
//! machine pays for it once) booted with `systemd-nspawn --boot` in the host's network
//! namespace, with the capabilities the unit asks for, bpffs and the Docker socket
//! bound in. The unit as shipped, plus a drop-in that turns on `--verify-every`, is
//! started with `systemctl start`; then:
//! - it reaches active/running, which for Type=notify means READY=1 arrived;
//! - verify's pass at start runs under the unit's sandbox (its AF_PACKET socket, its
//!   private veth, the `verify-sentinel` child, the pins, `ip`, `conntrack`, `nft`):
//!   an EXPOSED and a HELD `verified` record in the audit log, the HELD one naming the
//!   DOCKER-USER rule (read from `nft monitor trace`), the summary line in the journal;
//! - a real connection from an outside namespace to the published port is recorded;
//! - `systemctl stop` leaves no link, nft table, conntrack entry or verify pin behind
//!   (the kernel side stays pinned by design; `dockexpose cleanup` then removes it).
//!
//! This machine has no systemd as PID 1, hence no machined: `machinectl shell` and
//! `systemd-run -M` cannot reach the container; commands run in it through `nsenter`
//! into the namespaces of its PID 1, and the machine is powered off by signalling
//! systemd-nspawn (SIGTERM: a clean poweroff), killed if it does not stop in time.

#[path = "../support/mod.rs"]
mod support;

mod debian;
mod machine;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

use debian::*;
use machine::*;

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

/// What the tree holds beyond minbase: systemd as init, and the programs verify runs.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,iptables,conntrack,nftables";

#[test]
fn the_unit_runs_verify_under_a_real_systemd_and_leaves_the_host_as_found() {
    let test = "the_unit_runs_verify_under_a_real_systemd_and_leaves_the_host_as_found";
    if !docker::ready(test)
        || !have("systemd-nspawn", "systemd-container", test)
        || !have("debootstrap", "debootstrap", test)
    {
        return;
    }
    let started = Instant::now();
    let Some(tree) = debian_tree(test) else {
        return;
    };
    let tree_time = started.elapsed();

    // The test bed: an outside host, a published port and one that DOCKER-USER drops.
    let image = docker::echo_image();
    let outside = OutsideHost::new("ns");
    let n = outside.n as u16;
    let base = free_ports(24000 + 10 * n, 2);
    let (open, dropped) = (base, base + 1);
    let name = format!("dx-nspawn-web-{n}");
    let _c = docker::Container::run(
        &name,
        &["-p", &format!("{open}:80"), "-p", &format!("{dropped}:80")],
        &image,
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

    // Host side of the container: its own bpffs directory (the container's /sys/fs/bpf,
    // so the unit's pins and verify's stay apart from any other), its log directory,
    // the unit as shipped and a drop-in that turns verify on.
    let id = std::process::id();
    let bpf_dir = PathBuf::from(format!("/sys/fs/bpf/dx-nspawn-{id}"));
    let work = std::env::temp_dir().join(format!("dx-nspawn-{id}"));
    let logs = work.join("log");
    let dropin = work.join("dockexpose.service.d");
    let mut paths = Paths(vec![work.clone()]);
    // systemd-nspawn's runtime directory, when this test is the first to make it.
    if !Path::new("/run/systemd/nspawn").exists() {
        paths.0.insert(0, PathBuf::from("/run/systemd/nspawn"));
    }
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::create_dir(&bpf_dir).unwrap();
    paths.0.push(bpf_dir.clone());
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/dockexpose.service");
    std::fs::write(
        dropin.join("verify.conf"),
        format!(
            "# Written by tests/service_nspawn.rs: verify at start, from the outside host's\n\
             # network, on its uplink only.\n[Service]\n\
             Environment=DOCKEXPOSE_VERIFY_EVERY=1h DOCKEXPOSE_VERIFY_FROM={probe_src}/32 DOCKEXPOSE_UPLINK={} DOCKEXPOSE_STATS_INTERVAL=0\n",
            outside.uplink
        ),
    )
    .unwrap();
    let before = host_state(&probe_src);

    let binds = [
        (bpf_dir.display().to_string(), "/sys/fs/bpf".to_string(), false),
        ("/var/run/docker.sock".to_string(), "/run/docker.sock".to_string(), false),
        (BIN.to_string(), "/usr/local/bin/dockexpose".to_string(), true),
        (unit.display().to_string(), "/etc/systemd/system/dockexpose.service".to_string(), true),
        (dropin.display().to_string(), "/etc/systemd/system/dockexpose.service.d".to_string(), true),
        (logs.display().to_string(), "/var/log/dockexpose".to_string(), false),
    ];
    let boot_at = Instant::now();
    let machine = Machine::boot(&tree, &format!("dxnspawn{id}"), &binds, work.join("console.log"));
    let state = wait_for("the container's systemd up", Duration::from_secs(60), || {
        let out = machine.run(&["systemctl", "is-system-running", "--wait"]);
        let s = text(&out.stdout).trim().to_string();
        (s == "running" || s == "degraded").then_some(s)
    });
    let booted = boot_at.elapsed();
    if state == "degraded" {
        eprintln!("container degraded: {}", text(&machine.run(&["systemctl", "--failed", "--no-legend"]).stdout));
    }

    // Type=notify: `systemctl start` returns once READY=1 arrived (or fails).
    let start_at = Instant::now();
    let out = machine.run(&["systemctl", "start", "dockexpose.service"]);
    assert!(
        out.status.success(),
        "systemctl start: {}{}\n{}",
        text(&out.stderr),
        machine.show("Result,ExecMainStatus"),
        machine.journal()
    );
    let ready = start_at.elapsed();
    let props = machine.show("ActiveState,SubState,Type,NRestarts");
    for want in ["ActiveState=active", "SubState=running", "Type=notify", "NRestarts=0"] {
        assert!(props.contains(want), "{want} not in {props}\n{}", machine.journal());
    }
    // The sandbox is really there: seccomp, no new privileges, exactly the unit's four
    // capabilities (NET_ADMIN 12, NET_RAW 13, PERFMON 38, BPF 39).
    let main_pid = machine.show("MainPID").trim().trim_start_matches("MainPID=").to_string();
    let status = machine.sh(&["cat", &format!("/proc/{main_pid}/status")]);
    for want in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t000000c000003000"] {
        assert!(status.contains(want), "{want} not in the daemon's status: {status}");
    }
    assert!(
        !tcx_programs(&outside.uplink, false).is_empty(),
        "nothing attached on {}: {}",
        outside.uplink,
        machine.journal()
    );

    // Verify's pass at start, under the unit's sandbox.
    let json = logs.join("audit.jsonl");
    let verified = |port: u16| {
        let found = wait_until(Duration::from_secs(20), || {
            audit(&json).into_iter().find(|r| r["stage"] == "verified" && r["host_port"] == port)
        });
        found.unwrap_or_else(|| {
            panic!("no verified record for port {port} within 20 s: {:?}\n{}", audit(&json), machine.journal())
        })
    };
    let (exposed, held) = (verified(open), verified(dropped));
    let verify_time = start_at.elapsed();
    assert_eq!(exposed["verdict"], "EXPOSED", "{exposed}\n{}", machine.journal());
    assert_eq!(held["verdict"], "HELD", "{held}\n{}", machine.journal());
    for r in [&exposed, &held] {
        assert_eq!(r["src_ip"], probe_src.as_str(), "{r}");
        assert_eq!(r["container"]["name"], name.as_str(), "{r}");
        assert_eq!(r["iface"], outside.uplink.as_str(), "{r}");
    }
    // nft monitor trace ran under the sandbox: the rule is named.
    assert!(
        held["why"].as_str().is_some_and(|w| w.starts_with("dropped by ip filter DOCKER-USER: ")),
        "{held}\n{}",
        machine.journal()
    );
    let summary = wait_for("the verify summary in the journal", Duration::from_secs(10), || {
        machine.journal().lines().find(|l| l.contains("dockexpose: verify (")).map(str::to_string)
    });
    assert!(summary.contains("1 exposed") && summary.contains("1 held") && summary.contains(" 0 remain"), "{summary}");
    let journal = machine.journal();
    assert!(journal.contains("dockexpose: watching"), "{journal}");

    // A real connection from outside.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(open))
        .expect("published port reachable from outside");
    let reached = wait_for("the outsider's connection in the audit log", Duration::from_secs(10), || {
        audit(&json)
            .into_iter()
            .find(|r| r["stage"] == "reached" && r["src_port"] == sport && r["src_ip"] == outside.v4(2).as_str())
    });
    assert_eq!(reached["container"]["name"], name.as_str(), "{reached}");
    assert_eq!(reached["host_port"], open, "{reached}");

    // Stop: nothing of verify's left; the kernel side stays pinned (the unit's design),
    // until `dockexpose cleanup`.
    let stop_at = Instant::now();
    machine.sh(&["systemctl", "stop", "dockexpose.service"]);
    let stopped = stop_at.elapsed();
    let props = machine.show("ActiveState,Result");
    assert!(
        props.contains("ActiveState=inactive") && props.contains("Result=success"),
        "{props}\n{}",
        machine.journal()
    );
    let journal = machine.journal();
    let after = wait_for("verify's conntrack entries gone", Duration::from_secs(10), || {
        let s = host_state(&probe_src);
        (s.2 == before.2).then_some(s)
    });
    assert_eq!(after.0, before.0, "links");
    assert_eq!(after.1, before.1, "nftables tables");
    assert!(
        !bpf_dir.join("dockexpose-verify").exists()
            || std::fs::read_dir(bpf_dir.join("dockexpose-verify")).unwrap().next().is_none()
    );
    assert!(bpf_dir.join("dockexpose").exists(), "the kernel side stays pinned across a stop: {journal}");
    let cleanup = machine.sh(&[
        "dockexpose",
        "cleanup",
        "--pin-dir",
        "/sys/fs/bpf/dockexpose",
        "--lock-file",
        "/run/dockexpose/lock",
    ]);
    let detached = wait_until(Duration::from_secs(5), || tcx_programs(&outside.uplink, false).is_empty().then_some(()));
    assert!(
        detached.is_some(),
        "cleanup did not detach the uplink: {:?} attached; cleanup said {cleanup}; processes: {}",
        tcx_programs(&outside.uplink, false),
        text(&machine.run(&["ps", "-e", "-o", "pid,args"]).stdout)
    );
    let left: Vec<String> =
        std::fs::read_dir(&bpf_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| n == "dockexpose-verify"), "pins left after cleanup: {left:?}");
    // BPF firewalling (IPAddressDeny=) needs cgroup v2: say whether systemd applied it.
    let boot_log = text(&machine.run(&["journalctl", "-b", "--no-pager", "-o", "cat"]).stdout);
    let firewall =
        boot_log.lines().find(|l| l.contains("BPF firewalling")).unwrap_or("no BPF firewalling warning").to_string();
    drop(machine);
    let records = audit(&json);
    let from_probes = records.iter().filter(|r| r["src_ip"] == probe_src.as_str() && r["stage"] != "verified").count();
    assert_eq!(from_probes, 0, "the probes were reported as connections: {records:#?}");
    drop(paths);
    eprintln!(
        "tree {:.1} s, boot {:.1} s, READY=1 {:.1} s, verified {:.1} s after start, stop {:.1} s, whole test {:.1} s; {summary}; {firewall}",
        tree_time.as_secs_f64(),
        booted.as_secs_f64(),
        ready.as_secs_f64(),
        verify_time.as_secs_f64(),
        stopped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
