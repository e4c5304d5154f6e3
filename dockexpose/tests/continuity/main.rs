//! No record lost across restarts, upgrades and crashes, on the real engine, with
//! traffic from an outside namespace to a published port (the bypass story):
//! - `kill -9` in the middle of traffic, then a restart;
//! - SIGTERM, then a second copy of the binary (an upgrade) adopting the kernel side;
//! - no daemon for 30 s while connections arrive, then a start;
//! - a layout change (and bogus pins) forcing a fresh start, reported;
//! - a second daemon on the same ring refused by the lock;
//! - Docker going away and coming back (a relay the test cuts) while pinned.
//!
//! Every connection made before, during and after the event must have exactly one
//! `attempted` and one `reached` record, or records that repeat the same (boot_id,
//! cpu, kseq): a duplicate a reader can tell. Each test prints its gap:
//! `GAP <test>: N connections, L records lost, D duplicates flagged, U undetectable`.
//! Addresses: 198.18.60-79.x, names dx10*. Pins under /sys/fs/bpf/dx10-*, removed by
//! a guard (`dockexpose cleanup`) even when the test fails.

#[path = "../support/mod.rs"]
mod support;

mod adoption;
mod restarts;
mod without_daemon;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

/// A pin directory and lock file of this test, removed (with everything pinned) on drop.
struct Pins {
    dir: String,
    lock: String,
}

impl Pins {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let p =
            Self { dir: format!("/sys/fs/bpf/dx10-{tag}-{id}"), lock: format!("/run/dockexpose/dx10-{tag}-{id}.lock") };
        p.cleanup();
        p
    }

    fn cleanup(&self) {
        let _ = Command::new(BIN).args(["cleanup", "--pin-dir", &self.dir, "--lock-file", &self.lock]).output();
        let _ = std::fs::remove_file(&self.lock);
    }

    /// The one version directory under the pin root.
    fn version_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.dir).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(dirs.len(), 1, "one layout directory: {dirs:?}");
        dirs.pop().unwrap()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The bypass story: an outside host (198.18.`n`.0/24) whose INPUT is dropped, and a
/// container publishing `port` to it.
struct Story {
    outside: OutsideHost,
    _web: docker::Container,
    port: u16,
    pins: Pins,
    json: PathBuf,
}

impl Story {
    fn new(tag: &str, n: u32) -> Self {
        let image = docker::echo_image();
        let outside = OutsideHost::with_n(&format!("10{tag}"), n);
        let port = 46_000 + n as u16;
        let web =
            docker::Container::run(&format!("dx10-{tag}-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
        let json = json_path(&format!("dx10-{tag}"));
        let _ = std::fs::remove_file(&json);
        Self { outside, _web: web, port, pins: Pins::new(tag), json }
    }

    fn args(&self) -> Vec<String> {
        [
            "--stats-interval",
            "0",
            "--quiet",
            "--uplink",
            &self.outside.uplink,
            "--pin-dir",
            &self.pins.dir,
            "--lock-file",
            &self.pins.lock,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start(&self) -> Watcher {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Watcher::restart(&args, self.json.clone())
    }

    fn start_cmd(&self, cmd: Command) -> Watcher {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Watcher::spawn_command(cmd, &args, self.json.clone())
    }

    /// One connection from outside to the published port: its source port.
    fn connect(&self) -> Option<u16> {
        tcp_connect(&self.outside.ns, Some(self.outside.src4()), self.outside.host4(self.port)).ok()
    }

    fn records(&self) -> Vec<Value> {
        read_json(&self.json)
    }
}

impl Drop for Story {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.json);
    }
}

fn read_json(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // While a daemon writes, the last line may be cut (the buffer goes out in 64 KiB
    // pieces): only complete lines count.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

/// Connections from outside in the background, one every `every`, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    ports: Arc<Mutex<Vec<u16>>>,
    failed: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(story: &Story, every: Duration) -> Self {
        let (stop, ports, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
        let (s, p, f) = (stop.clone(), ports.clone(), failed.clone());
        let (ns, src, dst) = (story.outside.ns.clone(), story.outside.src4(), story.outside.host4(story.port));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                match tcp_connect(&ns, Some(src), dst) {
                    Ok(port) => p.lock().unwrap().push(port),
                    Err(_) => *f.lock().unwrap() += 1,
                }
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
        });
        Self { stop, ports, failed, thread: Some(thread) }
    }

    fn count(&self) -> usize {
        self.ports.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let failed = *self.failed.lock().unwrap();
        assert_eq!(failed, 0, "every connection from outside must get through (the bypass)");
        self.ports.lock().unwrap().clone()
    }
}

/// The gap: for each connection (source port), its `attempted` and `reached` records.
#[derive(Debug, Default, PartialEq, Eq)]
struct Gap {
    connections: usize,
    lost: usize,
    flagged: usize,
    undetectable: usize,
}

/// (boot_id, cpu, kseq): a kernel record's name.
type RecordName = (String, u64, u64);

fn gap(records: &[Value], src: &str, ports: &[u16]) -> (Gap, Vec<String>) {
    let mut by: BTreeMap<(u64, &str), Vec<RecordName>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["src_ip"] == src && r["proto"] == "tcp") {
        let (Some(port), Some(stage)) = (r["src_port"].as_u64(), r["stage"].as_str()) else { continue };
        let id = (
            r["boot_id"].as_str().unwrap_or("").to_string(),
            r["cpu"].as_u64().unwrap_or(u64::MAX),
            r["kseq"].as_u64().unwrap_or(u64::MAX),
        );
        by.entry((port, stage)).or_default().push(id);
    }
    let mut g = Gap { connections: ports.len(), ..Gap::default() };
    let mut problems = Vec::new();
    // A source port can come back (ephemeral ports are reused): each use is a connection.
    let mut uses: BTreeMap<u16, usize> = BTreeMap::new();
    for &port in ports {
        *uses.entry(port).or_default() += 1;
    }
    for (&port, &expected) in &uses {
        for stage in ["attempted", "reached"] {
            let ids = by.get(&(u64::from(port), stage)).cloned().unwrap_or_default();
            for id in &ids {
                assert!(
                    !id.0.is_empty() && id.1 != u64::MAX && id.2 != u64::MAX,
                    "record without boot_id/cpu/kseq: {id:?}"
                );
            }
            let mut distinct = ids.clone();
            distinct.sort();
            distinct.dedup();
            // Same (boot_id, cpu, kseq) twice: a duplicate anyone can tell.
            g.flagged += ids.len() - distinct.len();
            if distinct.len() < expected {
                g.lost += expected - distinct.len();
                problems.push(format!(
                    "{stage} of source port {port}: {} records for {expected} connections",
                    distinct.len()
                ));
            } else if distinct.len() > expected {
                g.undetectable += distinct.len() - expected;
                problems.push(format!(
                    "{stage} of source port {port}: {} distinct records for {expected} connections: {ids:?}",
                    distinct.len()
                ));
            }
        }
    }
    (g, problems)
}

fn starts(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["event"] == "daemon_start").collect()
}

fn report(test: &str, g: &Gap, problems: &[String]) {
    eprintln!(
        "GAP {test}: {} connections, {} records lost, {} duplicates flagged, {} undetectable",
        g.connections, g.lost, g.flagged, g.undetectable
    );
    assert!(problems.is_empty(), "{test}: {problems:#?}");
    assert_eq!((g.lost, g.undetectable), (0, 0));
}

/// Pinned link -> (link id, program id), from bpftool.
fn link_programs(version_dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(version_dir.join("links")).unwrap().flatten() {
        let o = Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(e.path())
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(
            o.status.success(),
            "bpftool link show pinned {}: {}",
            e.path().display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap()),
        );
    }
    out
}
