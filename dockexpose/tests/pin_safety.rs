//! The pin directory is dockexpose's own, and one daemon at a time uses it (root):
//! - a bpffs mount root is refused as `--pin-dir` by `watch` and `cleanup`, and
//!   nothing in it is touched (a private bpffs mount in a private mount namespace);
//! - a start and `cleanup` remove only the layout directories dockexpose made, never
//!   another tool's `v*` directory under the same root;
//! - two daemons with one pin directory exclude each other whatever their `--lock-file`,
//!   naming the pid of the first; `cleanup` with another lock file refuses too.
//!
//! Pins under /sys/fs/bpf/dx17-*, removed by the test; a bridge 10.251.117.0/24.

mod support;

use std::{path::Path, process::Command, time::Duration};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("timeout").arg("20").arg(BIN).args(args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Removes on drop, even when the test fails: what dockexpose pinned under `root`
/// (`cleanup`), then the folders the test made there, deepest first, and `root`.
struct Leftovers {
    root: String,
    lock: String,
    made: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["cleanup", "--pin-dir", &self.root, "--lock-file", &self.lock]).output();
        for d in self.made.iter().rev() {
            let _ = std::fs::remove_dir(Path::new(&self.root).join(d));
        }
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// A bridge with an address for `--no-docker --bridge`, deleted on drop.
fn bridge(undo: &mut Undo) -> String {
    let name = format!("dx17b{}", std::process::id() % 10_000);
    assert_unrouted("10.251.117.0/24");
    sh(&["ip", "link", "add", &name, "type", "bridge"]);
    undo.push(&["ip", "link", "del", &name]);
    sh(&["ip", "addr", "add", "10.251.117.1/24", "dev", &name]);
    sh(&["ip", "link", "set", &name, "up"]);
    name
}

#[test]
fn a_bpffs_mount_root_is_refused_and_left_alone() {
    if !privileged("a_bpffs_mount_root_is_refused_and_left_alone") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dx17-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    // Another tool's pins: a directory named like a layout version, and others.
    let script = format!(
        "mount -t bpf bpf {d} && mkdir -p {d}/v0123456789ab/maps {d}/v1 {d}/tc/globals && \
         for p in {d} {d}/ {d}/. {d}/tc/..; do \
           echo \"== watch $p\"; timeout 10 {BIN} watch --no-docker --bridge lo --pin-dir $p --lock-file {d}.lock; echo \"exit $?\"; \
           echo \"== cleanup $p\"; {BIN} cleanup --pin-dir $p --lock-file {d}.lock; echo \"exit $?\"; \
         done; echo '== left'; ls {d}"
    );
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_file(format!("{d}.lock"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| *l == "exit 1").count(), 8, "every watch and cleanup refused:\n{text}");
    assert_eq!(text.matches("is the root of a bpffs mount").count(), 8, "{text}");
    assert!(text.contains("Fix: give a directory of its own"), "{text}");
    let left = text.rsplit("== left").next().unwrap();
    for name in ["v0123456789ab", "v1", "tc"] {
        assert!(left.lines().any(|l| l.trim() == name), "{name} still there:\n{text}");
    }
}

#[test]
fn only_what_dockexpose_made_is_removed() {
    if !privileged("only_what_dockexpose_made_is_removed") {
        return;
    }
    let mut undo = Undo::default();
    let br = bridge(&mut undo);
    let root = format!("/sys/fs/bpf/dx17-own-{}", std::process::id());
    let lock = format!("/run/dockexpose/dx17-own-{}.lock", std::process::id());
    let foreign = ["v0123456789ab/maps", "vendor", "other"];
    let _leftovers = Leftovers {
        root: root.clone(),
        lock: lock.clone(),
        made: ["v0123456789ab", "v0123456789ab/maps", "vendor", "other"].map(String::from).to_vec(),
    };
    for f in foreign {
        std::fs::create_dir_all(Path::new(&root).join(f)).unwrap();
    }
    let args = ["--no-docker", "--stats-interval", "0", "--bridge", &br, "--pin-dir", &root, "--lock-file", &lock];
    let json = json_path("dx17-own");
    let (_, status, _) = Watcher::start(&args, json.clone()).stop();
    let _ = std::fs::remove_file(&json);
    assert!(status.success());
    let ours: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !foreign.iter().any(|f| f.starts_with(n.as_str())))
        .collect();
    assert_eq!(ours.len(), 1, "its own layout directory: {ours:?}");
    for f in foreign {
        assert!(Path::new(&root).join(f).is_dir(), "a start left {f} alone");
    }
    let (code, out) = run(&["cleanup", "--pin-dir", &root, "--lock-file", &lock]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!Path::new(&root).join(&ours[0]).exists(), "its own directory removed: {out}");
    for f in foreign {
        assert!(Path::new(&root).join(f).is_dir(), "cleanup left {f} alone: {out}");
    }
    assert!(tcx_programs(&br, true).is_empty(), "detached by cleanup");
}

#[test]
fn one_pin_dir_is_one_daemon_whatever_the_lock_file() {
    if !privileged("one_pin_dir_is_one_daemon_whatever_the_lock_file") {
        return;
    }
    let mut undo = Undo::default();
    let br = bridge(&mut undo);
    let id = std::process::id();
    let root = format!("/sys/fs/bpf/dx17-lock-{id}");
    let (lock1, lock2) = (format!("/run/dockexpose/dx17-a-{id}.lock"), format!("/tmp/dx17-b-{id}.lock"));
    let args = |lock: &str| -> Vec<String> {
        ["--no-docker", "--stats-interval", "0", "--bridge", &br, "--pin-dir", &root, "--lock-file", lock]
            .map(String::from)
            .to_vec()
    };
    let _leftovers = Leftovers { root: root.clone(), lock: lock1.clone(), made: Vec::new() };
    let a1 = args(&lock1);
    let json = json_path("dx17-lock");
    let first = Watcher::start(&a1.iter().map(String::as_str).collect::<Vec<_>>(), json.clone());
    let mut second = vec!["watch".to_string()];
    second.extend(args(&lock2));
    second.extend(["--json".into(), "/dev/null".into()]);
    let (code, err) = run(&second.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(1), "a second daemon on the same pin directory is refused:\n{err}");
    assert!(err.contains(&format!("another dockexpose (pid {})", first.pid())), "{err}");
    assert!(err.contains(&root) && err.contains("Fix:"), "{err}");
    let (code, out) = run(&["cleanup", "--pin-dir", &root, "--lock-file", &lock2]);
    assert_eq!(code, Some(1), "cleanup under a running daemon, with another lock file: {out}");
    assert!(Path::new(&root).is_dir());
    std::thread::sleep(Duration::from_millis(200));
    let (_, status, _) = first.stop();
    let _ = std::fs::remove_file(&json);
    assert!(status.success());
    let (code, out) = run(&["cleanup", "--pin-dir", &root, "--lock-file", &lock2]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!Path::new(&root).exists());
    let _ = std::fs::remove_file(&lock1);
    let _ = std::fs::remove_file(&lock2);
}
