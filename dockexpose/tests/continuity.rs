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

mod support;

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
        let p = Self { dir: format!("/sys/fs/bpf/dx10-{tag}-{id}"), lock: format!("/run/dockexpose/dx10-{tag}-{id}.lock") };
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
        let web = docker::Container::run(&format!("dx10-{tag}-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
        let json = json_path(&format!("dx10-{tag}"));
        let _ = std::fs::remove_file(&json);
        Self { outside, _web: web, port, pins: Pins::new(tag), json }
    }

    fn args(&self) -> Vec<String> {
        ["--stats-interval", "0", "--quiet", "--uplink", &self.outside.uplink, "--pin-dir", &self.pins.dir, "--lock-file", &self.pins.lock]
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
        let (stop, ports, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
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
        let id = (r["boot_id"].as_str().unwrap_or("").to_string(), r["cpu"].as_u64().unwrap_or(u64::MAX), r["kseq"].as_u64().unwrap_or(u64::MAX));
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
                assert!(!id.0.is_empty() && id.1 != u64::MAX && id.2 != u64::MAX, "record without boot_id/cpu/kseq: {id:?}");
            }
            let mut distinct = ids.clone();
            distinct.sort();
            distinct.dedup();
            // Same (boot_id, cpu, kseq) twice: a duplicate anyone can tell.
            g.flagged += ids.len() - distinct.len();
            if distinct.len() < expected {
                g.lost += expected - distinct.len();
                problems.push(format!("{stage} of source port {port}: {} records for {expected} connections", distinct.len()));
            } else if distinct.len() > expected {
                g.undetectable += distinct.len() - expected;
                problems.push(format!("{stage} of source port {port}: {} distinct records for {expected} connections: {ids:?}", distinct.len()));
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

#[test]
fn kill_9_mid_traffic_then_restart_loses_nothing() {
    if !docker::ready("kill_9_mid_traffic_then_restart_loses_nothing") {
        return;
    }
    let story = Story::new("k", 61);
    let w1 = story.start();
    let traffic = Traffic::start(&story, Duration::from_millis(10));
    while traffic.count() < 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Killed in the middle of traffic: records in flight were read, maybe written,
    // but their ring space never released.
    w1.kill9();
    let at_kill = traffic.count();
    std::thread::sleep(Duration::from_secs(1));
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let before = traffic.count();
    while traffic.count() < before + 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2, "{s:#?}");
    assert_eq!((s[0]["kernel_state"].as_str(), s[1]["kernel_state"].as_str()), (Some("fresh"), Some("resumed")));
    assert_eq!(s[1]["previous_stop"], "crash", "a SIGKILL leaves the running mark: {:?}", s[1]);
    assert_eq!(s[1]["lost_since_last_stop"], 0);
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("{} connections while no daemon ran (killed at {at_kill})", before - at_kill);
    report("kill_9", &g, &problems);
}

#[test]
fn sigterm_then_a_second_binary_adopts_links_and_ring() {
    if !docker::ready("sigterm_then_a_second_binary_adopts_links_and_ring") {
        return;
    }
    let story = Story::new("u", 62);
    // The "new version": another copy of the binary, started from elsewhere.
    let dir = std::env::temp_dir().join(format!("dx10-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dockexpose-next");
    std::fs::copy(BIN, &copy).unwrap();
    let w1 = story.start();
    let traffic = Traffic::start(&story, Duration::from_millis(20));
    while traffic.count() < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let links_before = link_programs(&story.pins.version_dir());
    let (_, status, lines) = w1.stop();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("the kernel side stays attached")), "{lines:#?}");
    // Between the two: the kernel keeps recording.
    let at_stop = traffic.count();
    std::thread::sleep(Duration::from_secs(1));
    let mut w2 = story.start_cmd(Command::new(&copy));
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    w2.wait_for_line("the previous daemon's pinned link, program replaced", Duration::from_secs(5));
    let links_after = link_programs(&story.pins.version_dir());
    let before = traffic.count();
    while traffic.count() < before + 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);

    // Same links (never detached), new programs behind them.
    assert!(!links_before.is_empty());
    for (pin, (link, prog)) in &links_before {
        let (link2, prog2) = links_after.get(pin).unwrap_or_else(|| panic!("{pin} gone after the upgrade: {links_after:?}"));
        assert_eq!(link, link2, "{pin}: the link itself is kept");
        assert_ne!(prog, prog2, "{pin}: its program is replaced by the new daemon's");
    }
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2);
    assert_eq!((s[1]["kernel_state"].as_str(), s[1]["previous_stop"].as_str()), (Some("resumed"), Some("clean")));
    let backlog = s[1]["backlog_records"].as_u64().unwrap();
    let gap_connections = (before - at_stop) as u64;
    assert!(backlog >= gap_connections * 2 - 2, "the ring held the gap's records: backlog {backlog}, {gap_connections} connections");
    assert!(records.iter().any(|r| r["event"] == "daemon_stop" && r["kernel_side"] == "kept"));
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("{gap_connections} connections while no daemon ran; backlog at start {backlog} records");
    report("sigterm_upgrade", &g, &problems);
}

/// Pinned link -> (link id, program id), from bpftool.
fn link_programs(version_dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(version_dir.join("links")).unwrap().flatten() {
        let o = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(e.path()).output().expect("bpftool (cargo xtask setup installs it)");
        assert!(o.status.success(), "bpftool link show pinned {}: {}", e.path().display(), String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        out.insert(e.file_name().to_string_lossy().into_owned(), (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap()));
    }
    out
}

#[test]
fn thirty_seconds_without_a_daemon_are_written_by_the_next() {
    if !docker::ready("thirty_seconds_without_a_daemon_are_written_by_the_next") {
        return;
    }
    let story = Story::new("g", 63);
    let w1 = story.start();
    let first = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // 30 s with no daemon, connections arriving.
    let traffic = Traffic::start(&story, Duration::from_millis(250));
    std::thread::sleep(Duration::from_secs(30));
    let mut gap_ports = traffic.finish();
    assert!(gap_ports.len() >= 100, "{} connections in 30 s", gap_ports.len());
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let last = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1]["kernel_state"], "resumed");
    assert_eq!(s[1]["backlog_records"].as_u64(), Some(gap_ports.len() as u64 * 2), "attempted + reached per connection: {:?}", s[1]);
    assert_eq!(s[1]["lost_since_last_stop"], 0);
    // The gap's records come after the start record, before the last connection's.
    let pos = |port: u16| records.iter().position(|r| r["src_port"] == port && r["stage"] == "reached").unwrap();
    let start_at = records.iter().position(|r| r["event"] == "daemon_start" && r["kernel_state"] == "resumed").unwrap();
    assert!(gap_ports.iter().all(|p| pos(*p) > start_at && pos(*p) < pos(last)));
    let mut all = vec![first];
    all.append(&mut gap_ports);
    all.push(last);
    let (g, problems) = gap(&records, &story.outside.v4(2), &all);
    report("no_daemon_30s", &g, &problems);
    // Their timestamps are when the kernel saw them, not when they were written.
    let r = records.iter().find(|r| r["src_port"] == all[1] && r["stage"] == "reached").unwrap();
    assert!(r["ts"].as_str().unwrap() < s[1]["ts"].as_str().unwrap(), "{r} written with the time it was seen, before {}", s[1]);
}

#[test]
fn a_layout_change_or_bogus_pins_start_fresh_and_say_so() {
    if !docker::ready("a_layout_change_or_bogus_pins_start_fresh_and_say_so") {
        return;
    }
    let story = Story::new("r", 64);
    let w1 = story.start();
    let old_dir = story.pins.version_dir();
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // A build with another layout (the hidden salt stands for one).
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_LAYOUT_SALT", "dx10-next-layout");
    let mut w2 = story.start_cmd(cmd);
    w2.wait_for_line("kernel state reset", Duration::from_secs(5));
    assert!(!old_dir.exists(), "the old layout's pins are removed (its programs detached)");
    let new_dir = story.pins.version_dir();
    assert_ne!(new_dir, old_dir);
    let after_reset = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w2.stop();
    assert!(status.success());

    // Bogus pins: a map of the wrong shape where FLOWS should be.
    let flows = new_dir.join("maps/FLOWS");
    std::fs::remove_file(&flows).unwrap();
    let o = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&flows)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "16", "name", "FLOWS"])
        .output()
        .expect("bpftool");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_LAYOUT_SALT", "dx10-next-layout");
    let mut w3 = story.start_cmd(cmd);
    w3.wait_for_line("kernel state reset", Duration::from_secs(5));
    let after_bogus = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w3.stop();
    assert!(status.success());

    let records = story.records();
    let resets: Vec<&Value> = records.iter().filter(|r| r["event"] == "kernel_state_reset").collect();
    assert_eq!(resets.len(), 2, "{resets:#?}");
    assert!(resets[0]["reason"].as_str().unwrap().contains("layout"), "{}", resets[0]);
    assert!(resets[1]["reason"].as_str().unwrap().contains("map FLOWS is"), "{}", resets[1]);
    let s = starts(&records);
    let states: Vec<&str> = s.iter().map(|r| r["kernel_state"].as_str().unwrap()).collect();
    assert_eq!(states, ["fresh", "reset", "reset"]);
    let (g, problems) = gap(&records, &story.outside.v4(2), &[after_reset, after_bogus]);
    report("layout_reset", &g, &problems);
    // A fresh ring numbers above the old one: no (boot, cpu, kseq) repeats.
    let mut names: Vec<(String, u64, u64)> = records
        .iter()
        .filter(|r| r["kseq"].is_u64())
        .map(|r| (r["boot_id"].as_str().unwrap().to_string(), r["cpu"].as_u64().unwrap(), r["kseq"].as_u64().unwrap()))
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "record names are unique across resets");
}

#[test]
fn a_second_daemon_on_the_same_ring_is_refused_naming_the_first() {
    if !docker::ready("a_second_daemon_on_the_same_ring_is_refused_naming_the_first") {
        return;
    }
    let story = Story::new("l", 65);
    let w1 = story.start();
    let args = story.args();
    let out = Command::new(BIN).arg("watch").args(&args).args(["--json", "/dev/null"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("another dockexpose (pid {})", w1.pid())), "{err}");
    assert!(err.contains("Fix:"), "{err}");
    // cleanup refuses too while it runs.
    let out = Command::new(BIN).args(["cleanup", "--pin-dir", &story.pins.dir, "--lock-file", &story.pins.lock]).output().unwrap();
    assert!(!out.status.success(), "cleanup under a running daemon: {}", String::from_utf8_lossy(&out.stdout));
    let sport = story.connect().expect("bypass");
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w1.stop();
    assert!(status.success());
    assert!(story.records().iter().any(|r| r["src_port"] == sport && r["stage"] == "reached"));
    // Once it stopped, cleanup removes everything and the programs detach.
    let out = Command::new(BIN).args(["cleanup", "--pin-dir", &story.pins.dir, "--lock-file", &story.pins.lock]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!Path::new(&story.pins.dir).exists());
    assert!(!tcx_programs(&story.outside.uplink, false).iter().any(|p| p.starts_with("uplink")), "detached by cleanup");
}

#[test]
fn detach_on_exit_leaves_nothing() {
    if !docker::ready("detach_on_exit_leaves_nothing") {
        return;
    }
    let story = Story::new("d", 66);
    let mut args = story.args();
    args.push("--detach-on-exit".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = Watcher::restart(&args, story.json.clone());
    assert_eq!(tcx_programs(&story.outside.uplink, false), ["uplink_ingress"]);
    let (_, status, lines) = w.stop();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("detached from")), "{lines:#?}");
    assert!(tcx_programs(&story.outside.uplink, false).is_empty());
    assert!(!Path::new(&story.pins.dir).exists(), "pins removed");
    assert!(story.records().iter().any(|r| r["event"] == "daemon_stop" && r["kernel_side"] == "detached"));
}

#[test]
fn docker_going_away_while_pinned_keeps_detection_and_identity_returns() {
    if !docker::ready("docker_going_away_while_pinned_keeps_detection_and_identity_returns") {
        return;
    }
    let story = Story::new("y", 67);
    let sock = std::env::temp_dir().join(format!("dx10-relay-{}.sock", std::process::id()));
    let mut relay = docker::SocketRelay::start(&sock);
    let endpoint = format!("unix://{}", sock.display());
    let mut args = story.args();
    args.extend(["--docker-host".to_string(), endpoint]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut w = Watcher::restart(&args, story.json.clone());
    let traffic = Traffic::start(&story, Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    relay.stop();
    w.wait_for_line("keeping the kernel side and the last known inventory", Duration::from_secs(5));
    let away = traffic.count();
    std::thread::sleep(Duration::from_secs(2));
    let _relay = docker::SocketRelay::start(&sock);
    let back = Instant::now();
    let found = loop {
        if w.lines().iter().filter(|l| l.contains("Docker inventory: ")).count() >= 2 {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = found.unwrap_or_else(|| panic!("identity not back within 5 s: {:?}", w.lines()));
    std::thread::sleep(Duration::from_millis(500));
    let ports = traffic.finish();
    std::thread::sleep(Duration::from_millis(300));
    let (_, status, _) = w.stop();
    assert!(status.success());
    let records = story.records();
    let (g, problems) = gap(&records, &story.outside.v4(2), &ports);
    eprintln!("Docker back after {took:?}; {} connections after it went away", ports.len().saturating_sub(away));
    report("docker_away", &g, &problems);
    // Named before and after; while away, named from the last inventory.
    for p in &ports {
        let r = records.iter().find(|r| r["src_port"] == *p && r["stage"] == "reached").unwrap();
        assert!(r["container"]["name"].as_str().is_some_and(|n| n.starts_with("dx10-y-")), "{r}");
    }
}

#[test]
fn records_written_but_not_released_before_a_crash_come_back_flagged() {
    if !docker::ready("records_written_but_not_released_before_a_crash_come_back_flagged") {
        return;
    }
    let story = Story::new("f", 70);
    // A daemon that writes but never releases (the fault hook): its SIGKILL leaves
    // every record it wrote in the ring, as a crash right after a write would.
    let mut cmd = Command::new(BIN);
    cmd.env("DOCKEXPOSE_FAULT_NEVER_RELEASE", "1");
    let mut w1 = story.start_cmd(cmd);
    let first: Vec<u16> = (0..20).map(|_| story.connect().expect("bypass")).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while story.records().iter().filter(|r| r["stage"] == "reached").count() < first.len() {
        assert!(Instant::now() < deadline && w1.is_running(), "records not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    w1.kill9();
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let after: Vec<u16> = (0..5).map(|_| story.connect().expect("bypass")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (_, status, _) = w2.stop();
    assert!(status.success());
    let records = story.records();
    let s = starts(&records);
    assert_eq!(s[1]["backlog_records"].as_u64(), Some(first.len() as u64 * 2), "everything written is still in the ring: {}", s[1]);
    let mut all = first.clone();
    all.extend(after);
    let (g, problems) = gap(&records, &story.outside.v4(2), &all);
    report("written_not_released", &g, &problems);
    assert_eq!(g.flagged, first.len() * 2, "each record written before the crash comes back once, flagged");
}

#[test]
fn beyond_the_ring_while_no_daemon_runs_every_record_is_written_or_counted_lost() {
    if !docker::ready("beyond_the_ring_while_no_daemon_runs_every_record_is_written_or_counted_lost") {
        return;
    }
    let story = Story::new("o", 71);
    // Spoofed sources in 198.18.72.0/24, routed back into the outside namespace.
    let spoofed = "198.18.72.0/24";
    assert_unrouted(spoofed);
    let mut undo = Undo::default();
    sh(&["ip", "route", "add", spoofed, "via", &story.outside.v4(2), "dev", &story.outside.uplink]);
    undo.push(&["ip", "route", "del", spoofed]);
    let w1 = story.start();
    let (_, status, _) = w1.stop();
    assert!(status.success());
    // 30 000 new connections (60 000 records) into a ring of about 43 000.
    let dst = std::net::SocketAddrV4::new(story.outside.v4(1).parse().unwrap(), story.port);
    let sent = syn_flood(&story.outside.ns, [198, 18, 72], dst, 30_000, 15_000, Duration::from_secs(10));
    assert!(sent >= 29_000, "{sent} SYNs sent");
    std::thread::sleep(Duration::from_millis(500));
    let mut w2 = story.start();
    w2.wait_for_line("kernel side resumed", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = loop {
        let records = story.records();
        if let Some(s) = starts(&records).get(1).map(|v| (*v).clone()) {
            let backlog = s["backlog_records"].as_u64().unwrap() as usize;
            if records.iter().filter(|r| r["kseq"].is_u64()).count() >= backlog {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "backlog not written within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, status, lines) = w2.stop();
    assert!(status.success());
    drop(undo);
    let records = story.records();
    let backlog = start["backlog_records"].as_u64().unwrap();
    let lost = start["lost_since_last_stop"].as_u64().unwrap();
    let capacity = start["ring_bytes"].as_u64().unwrap() / 96;
    assert!(backlog > capacity * 9 / 10, "the ring was full: {backlog} of about {capacity}");
    assert!(lost > 0, "beyond capacity: counted lost");
    // Every number a CPU gave is a record in the log or a record counted lost.
    let since = start["kernel_state_since"].as_str().unwrap().to_string();
    let first = records.iter().find(|r| r["event"] == "daemon_start").unwrap();
    assert_eq!(first["kernel_state_since"].as_str(), Some(since.as_str()));
    let created: u64 = created_secs(&since);
    let mut per_cpu: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["kseq"].is_u64()) {
        per_cpu.entry(r["cpu"].as_u64().unwrap()).or_default().push(r["kseq"].as_u64().unwrap());
    }
    // What each CPU numbered last (lost records included), from the pinned map.
    let issued = record_seq(&story.pins.version_dir().join("maps/RECORD_SEQ"));
    let mut missing = 0;
    for (cpu, last) in &issued {
        let written = per_cpu.get_mut(cpu).map_or(0, |seqs| {
            seqs.sort_unstable();
            seqs.dedup();
            seqs.len() as u64
        });
        missing += last - (created << 32) - written;
    }
    let final_line = lines.iter().find(|l| l.contains("final counters")).unwrap();
    let ring_lost = counter(final_line, "ringbuf_full_lost");
    eprintln!(
        "GAP ring_overflow: {sent} SYNs while no daemon ran; backlog {backlog} records written, {lost} counted lost at start; sequence gaps {missing}, ringbuf_full_lost {ring_lost}"
    );
    assert_eq!(missing, ring_lost, "every record is in the log or counted lost");
    assert_eq!(lost, ring_lost, "all of it lost while no daemon ran");
}

/// The per-CPU values of the pinned RECORD_SEQ map (bpftool's JSON: a number, or the
/// value's bytes in hex when the map has no BTF).
fn record_seq(path: &Path) -> BTreeMap<u64, u64> {
    let o = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(path).output().expect("bpftool");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let entry = &v[0];
    let values = entry["values"].as_array().or_else(|| entry["formatted"]["values"].as_array()).unwrap_or_else(|| panic!("{v}"));
    values
        .iter()
        .map(|c| {
            let value = match &c["value"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::Array(bytes) => bytes
                    .iter()
                    .rev()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()),
                other => panic!("{other}"),
            };
            (c["cpu"].as_u64().unwrap(), value)
        })
        .collect()
}

/// Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS.ffffffZ" (the daemon's format).
fn created_secs(ts: &str) -> u64 {
    let n = |a: usize, b: usize| ts[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)) as u64
}

#[test]
fn links_the_next_daemon_does_not_claim_are_detached() {
    if !privileged("links_the_next_daemon_does_not_claim_are_detached") {
        return;
    }
    let pins = Pins::new("c");
    let id = std::process::id() % 1000;
    let (keep, drop_) = (format!("dx10ck{id}"), format!("dx10cd{id}"));
    let mut undo = Undo::default();
    for (i, b) in [&keep, &drop_].into_iter().enumerate() {
        let net = format!("10.251.{}.0/24", 73 + i);
        assert_unrouted(&net);
        sh(&["ip", "link", "add", b, "type", "bridge"]);
        undo.push(&["ip", "link", "del", b]);
        sh(&["ip", "addr", "add", &format!("10.251.{}.1/24", 73 + i), "dev", b]);
        sh(&["ip", "link", "set", b, "up"]);
    }
    let json = json_path("dx10-claim");
    let common = ["--no-docker", "--stats-interval", "0", "--pin-dir", pins.dir.as_str(), "--lock-file", pins.lock.as_str()];
    let mut a = common.to_vec();
    a.extend(["--bridge", keep.as_str(), "--bridge", drop_.as_str()]);
    let (_, status, _) = Watcher::restart(&a, json.clone()).stop();
    assert!(status.success());
    assert_eq!(tcx_programs(&drop_, true), ["bridge_egress"], "kept attached after SIGTERM");
    let mut b = common.to_vec();
    b.extend(["--bridge", keep.as_str()]);
    let mut w = Watcher::restart(&b, json.clone());
    // Until claimed or released, the previous daemon's program keeps recording there.
    assert_eq!(tcx_programs(&drop_, true), ["bridge_egress"]);
    w.wait_for_line("is not watched now: detached", Duration::from_secs(25));
    assert!(tcx_programs(&drop_, true).is_empty(), "released");
    assert_eq!(tcx_programs(&keep, true), ["bridge_egress"], "claimed: still attached");
    let links: Vec<String> = std::fs::read_dir(pins.version_dir().join("links")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(links.len(), 2, "only the kept bridge's two links stay pinned: {links:?}");
    let (_, status, _) = w.stop();
    assert!(status.success());
    let _ = std::fs::remove_file(&json);
    drop(pins);
    assert!(tcx_programs(&keep, true).is_empty(), "cleanup detached the rest");
}

#[test]
fn xdp_links_are_adopted_too_and_dropped_when_the_hook_changes() {
    if !docker::ready("xdp_links_are_adopted_too_and_dropped_when_the_hook_changes") {
        return;
    }
    let story = Story::new("x", 74);
    let start = |hook: &str| {
        let mut args = story.args();
        args.extend(["--uplink-hook".to_string(), hook.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Watcher::restart(&args, story.json.clone())
    };
    let (_, status, _) = start("xdp").stop();
    assert!(status.success());
    assert!(xdp_attached(&story.outside.uplink), "the XDP link stays attached after SIGTERM");
    let xdp_pin = format!("uplink_xdp@{}", sh(&["cat", &format!("/sys/class/net/{}/ifindex", story.outside.uplink)]).trim());
    let before = link_programs(&story.pins.version_dir());
    let during = story.connect().expect("bypass");
    let mut w = start("xdp");
    w.wait_for_line("the previous daemon's pinned link, program replaced", Duration::from_secs(5));
    let after = link_programs(&story.pins.version_dir());
    let (b, a) = (before.get(&xdp_pin).unwrap(), after.get(&xdp_pin).unwrap());
    assert_eq!(b.0, a.0, "the same XDP link");
    assert_ne!(b.1, a.1, "its program replaced");
    let (_, status, _) = w.stop();
    assert!(status.success());
    // Back to the default hook: the pinned XDP link goes, TCX ingress takes over.
    let (_, status, _) = start("tc").stop();
    assert!(status.success());
    assert!(!xdp_attached(&story.outside.uplink), "the XDP link of the other hook is detached");
    assert_eq!(tcx_programs(&story.outside.uplink, false), ["uplink_ingress"]);
    let records = story.records();
    let (g, problems) = gap(&records, &story.outside.v4(2), &[during]);
    report("xdp_adoption", &g, &problems);
}
