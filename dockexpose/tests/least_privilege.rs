//! Least privilege, shown: the bypass story detected by a daemon that runs as
//! `nobody`, in the `docker` group (the Docker socket), with exactly CAP_BPF,
//! CAP_PERFMON and CAP_NET_ADMIN (setpriv, util-linux: every other capability dropped
//! from the bounding set too). Its pins go to a private bpffs instance owned by that
//! user (the machine's /sys/fs/bpf is left alone), unmounted by a guard.
//! A missing capability is named in the error, with the fix.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use support::{docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");
const NOBODY: &str = "65534";
/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const EXACT_MASK: u64 = (1 << 12) | (1 << 38) | (1 << 39);

/// setpriv is there, or the test is skipped (a failure under CI).
fn have_setpriv(test: &str) -> bool {
    if Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = "setpriv (util-linux) not installed";
    if std::env::var_os("CI").is_some() || std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
        panic!("{test}: SKIPPED: {why}, and this run demands it");
    }
    skip(test, why)
}

/// A folder owned by nobody:docker with a bpffs mounted in it.
struct Sandbox {
    dir: PathBuf,
    /// Unmounts and removes it on drop.
    _undo: Undo,
}

impl Sandbox {
    fn new(gid: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dx10-lp-{}", std::process::id()));
        let bpffs = dir.join("bpffs");
        std::fs::create_dir_all(&bpffs).unwrap();
        let mut undo = Undo::default();
        undo.push(&["rm", "-rf", dir.to_str().unwrap()]);
        sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()]);
        undo.push(&["umount", bpffs.to_str().unwrap()]);
        sh(&["chown", "-R", &format!("{NOBODY}:{gid}"), dir.to_str().unwrap()]);
        sh(&["chmod", "0750", dir.to_str().unwrap()]);
        Self { dir, _undo: undo }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn docker_gid() -> String {
    let group = std::fs::read_to_string("/etc/group").unwrap();
    group
        .lines()
        .find_map(|l| l.strip_prefix("docker:x:").and_then(|rest| rest.split(':').next()).map(str::to_string))
        .expect("a docker group owns the Docker socket")
}

/// `setpriv ... dockexpose` as nobody:docker with exactly `caps` (e.g. "+bpf,+perfmon").
fn setpriv(gid: &str, caps: &str) -> Command {
    let set = format!("-all,{caps}");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
        "--",
        BIN,
    ]);
    cmd
}

fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_string();
    u64::from_str_radix(&hex, 16).unwrap()
}

#[test]
fn the_bypass_story_is_detected_with_exactly_three_capabilities() {
    let test = "the_bypass_story_is_detected_with_exactly_three_capabilities";
    if !docker::ready(test) || !have_setpriv(test) {
        return;
    }
    let gid = docker_gid();
    let sandbox = Sandbox::new(&gid);
    let image = docker::echo_image();
    let outside = OutsideHost::with_n("10p", 68);
    let port = 46_068;
    let web = docker::Container::run("dx10-lp-68", &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    let json = PathBuf::from(sandbox.path("audit.jsonl"));
    let (pins, lock) = (sandbox.path("bpffs/dockexpose"), sandbox.path("lock"));
    let args = [
        "--stats-interval",
        "0",
        "--uplink",
        outside.uplink.as_str(),
        "--pin-dir",
        &pins,
        "--lock-file",
        &lock,
        "--detach-on-exit",
    ];
    let w = Watcher::spawn_command(setpriv(&gid, "+bpf,+perfmon,+net_admin"), &args, json);
    assert_eq!(cap_eff(w.pid()), EXACT_MASK, "exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN");
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some(NOBODY)),
        "runs as nobody:\n{status}"
    );

    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port))
        .expect("published port reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success(), "{lines:#?}");
    let r = records
        .iter()
        .find(|r| r["stage"] == "reached" && r["src_port"] == sport)
        .unwrap_or_else(|| panic!("no reached record: {records:#?}"));
    assert_eq!(r["container"]["name"], web.name.as_str(), "named through the Docker socket (group access)");
    assert_eq!(r["host_port"], port);
    assert!(records.iter().any(|r| r["stage"] == "attempted" && r["src_port"] == sport));
    assert!(tcx_programs(&outside.uplink, false).is_empty(), "--detach-on-exit: nothing left");
    drop(sandbox);
}

#[test]
fn a_missing_capability_is_named_with_the_fix() {
    let test = "a_missing_capability_is_named_with_the_fix";
    if !privileged(test) || !have_setpriv(test) {
        return;
    }
    let gid = docker_gid();
    for (caps, missing) in
        [("+bpf,+net_admin", "CAP_PERFMON"), ("+perfmon,+net_admin", "CAP_BPF"), ("+bpf,+perfmon", "CAP_NET_ADMIN")]
    {
        let out = setpriv(&gid, caps).args(["watch", "--no-docker", "--bridge", "lo"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("lacks {missing}")), "{caps}: {err}");
        assert!(err.contains("Fix:") && err.contains("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"), "{err}");
    }
}
