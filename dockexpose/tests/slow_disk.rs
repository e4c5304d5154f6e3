//! A slow disk never stalls detection (issue 22): the audit log on a FUSE filesystem
//! whose every write() sleeps 2 s (tests/support/slowfs.py, direct_io). While writes
//! block, `dockexpose status` (answered by the daemon's loop) answers at once, and
//! every connection made during the slowness is in the log exactly once, with nothing
//! lost in the ring or by the reader. Needs root, python3 with fusepy (PyPI) and
//! libfuse2 (`cargo xtask setup` installs both); the mount is removed by a guard.
//! The same for stderr: a pipe nobody reads never stalls the loop, and the lines it
//! could not take are counted (`stderr_lines_dropped`).

#[path = "support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// How long each write blocks while the disk is slow.
const SLOW_WRITE: Duration = Duration::from_secs(2);
/// How long the disk stays slow.
const SLOW_FOR: Duration = Duration::from_secs(7);
/// "Well under a second": the longest a status answer may take while writes block.
const STATUS_LIMIT: Duration = Duration::from_millis(500);

/// The slow filesystem, mounted; unmounted (and its process ended) on drop.
struct SlowFs {
    child: Child,
    mount: PathBuf,
    backing: PathBuf,
    delay: PathBuf,
    stats: PathBuf,
}

impl SlowFs {
    fn mount(dir: &Path) -> Self {
        let (backing, mount) = (dir.join("backing"), dir.join("mnt"));
        let (delay, stats) = (dir.join("delay_ms"), dir.join("write_stats"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(&delay, "0").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/slowfs.py");
        let child = Command::new("python3")
            .args([script, backing.to_str().unwrap(), mount.to_str().unwrap()])
            .args([delay.to_str().unwrap(), stats.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start python3 slowfs.py");
        let fs = Self { child, mount, backing, delay, stats };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs.mounted() {
            assert!(Instant::now() < deadline, "slowfs did not mount at {}", fs.mount.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        fs
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts.lines().any(|l| l.split_whitespace().nth(1) == self.mount.to_str() && l.contains("fuse"))
    }

    fn set_delay(&self, d: Duration) {
        std::fs::write(&self.delay, d.as_millis().to_string()).unwrap();
    }

    /// Every write()'s duration so far.
    fn write_times(&self) -> Vec<f64> {
        std::fs::read_to_string(&self.stats)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        self.set_delay(Duration::ZERO);
        // Lazy: a daemon killed mid-write may still hold the file open.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fusepy (and libfuse2 under it) present?
fn fusepy() -> Result<(), String> {
    let out = Command::new("python3").args(["-c", "import fuse"]).output().map_err(|e| format!("python3: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("python3 cannot import fuse (fusepy, libfuse2): {}", String::from_utf8_lossy(&out.stderr).trim()))
}

/// One `dockexpose status --json`: how long it took, and the ring bytes unreleased.
fn status(socket: &Path) -> (Duration, Option<u64>) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["status", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let took = start.elapsed();
    let report: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    (took, report.and_then(|r| r["health"]["audit"]["ring_bytes_unreleased"].as_u64()))
}

#[test]
fn a_slow_disk_costs_no_record_and_never_stalls_the_loop() {
    let test = "a_slow_disk_costs_no_record_and_never_stalls_the_loop";
    if !privileged(test) {
        return;
    }
    if let Err(why) = fusepy() {
        if std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
            panic!("{test}: {why}: run `cargo xtask setup`");
        }
        skip(test, &format!("{why}; run `cargo xtask setup`"));
        return;
    }
    let dir = std::env::temp_dir().join(format!("dockexpose-slowdisk-{}", run_id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bed = Bed::new("sd");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let fs = SlowFs::mount(&dir);
    let socket = dir.join("dockexpose.sock");
    let args = ["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0", "--quiet"];
    let w = Watcher::start(
        &[&args[..], &["--status-socket", socket.to_str().unwrap()]].concat(),
        fs.mount.join("audit.jsonl"),
    );
    let log = fs.backing.join("audit.jsonl");
    let (ns, src, dst) = (bed.outside.ns.clone(), Some(bed.outside.v4(2).parse().unwrap()), bed.host_tcp_v4());
    let first = tcp_connect(&ns, src, dst).expect("outside reaches the container");

    // Slow from here: each write blocks SLOW_WRITE. A client connects every 100 ms
    // while the status is asked for every 100 ms.
    fs.set_delay(SLOW_WRITE);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let client = std::thread::spawn(move || {
        let mut made = Vec::new();
        while !s.load(Ordering::Relaxed) {
            made.push(tcp_connect(&ns, src, dst).expect("outside reaches the container"));
            std::thread::sleep(Duration::from_millis(100));
        }
        made
    });
    let slow_from = Instant::now();
    let (mut answers, mut slowest, mut unreleased_max) = (0, Duration::ZERO, 0u64);
    while slow_from.elapsed() < SLOW_FOR {
        let (took, unreleased) = status(&socket);
        answers += 1;
        slowest = slowest.max(took);
        unreleased_max = unreleased_max.max(unreleased.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut made = client.join().unwrap();
    made.push(first);
    let blocked_at_end = fs.write_times().iter().filter(|t| **t >= 1.0).count();
    fs.set_delay(Duration::ZERO);

    // Fast again: everything gets written; then the daemon stops.
    let deadline = Instant::now() + Duration::from_secs(15);
    let in_log = |port: u16| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"src_port\":{port},")) && l.contains("\"reached\""))
            .count()
    };
    // The server closes first, so the client may use a source port again at once:
    // each port has as many records as connections were made from it.
    let mut per_port: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    for p in &made {
        *per_port.entry(*p).or_default() += 1;
    }
    while per_port.iter().any(|(p, times)| in_log(*p) < *times) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, status_code, lines) = w.stop();
    assert!(status_code.success(), "{lines:#?}");
    let last = lines.iter().find(|l| l.contains("final counters")).expect("final counters");
    let (ring_lost, reader_lost) = (counter(last, "ringbuf_full_lost"), counter(last, "reader_lost"));
    let writes = fs.write_times();
    let longest_write = writes.iter().copied().fold(0.0, f64::max);
    let counts: Vec<(u16, usize, usize)> = per_port.iter().map(|(p, times)| (*p, *times, in_log(*p))).collect();
    let missing = counts.iter().filter(|(_, times, n)| n < times).count();
    let twice = counts.iter().filter(|(_, times, n)| n > times).count();
    eprintln!(
        "{test}: {} connections ({} made while each write blocked {} s); {} writes, longest {longest_write:.3} s, \
         {blocked_at_end} of them blocked >= 1 s; {answers} status answers, slowest {} ms; ring bytes unreleased \
         at worst {unreleased_max} (of {}); missing {missing}, twice {twice}; ringbuf_full_lost={ring_lost} \
         reader_lost={reader_lost}",
        made.len(),
        made.len() - 1,
        SLOW_WRITE.as_secs(),
        writes.len(),
        slowest.as_millis(),
        dockexpose_common::EVENTS_RING_BYTES,
    );
    assert!(longest_write >= SLOW_WRITE.as_secs_f64() * 0.9, "the disk was never slow: {writes:?}");
    assert!(made.len() >= 30, "too few connections to mean anything: {}", made.len());
    assert_eq!((ring_lost, reader_lost), (0, 0), "{last}");
    assert_eq!((missing, twice), (0, 0), "every connection once in the log (port, made, logged): {counts:?}");
    assert!(slowest < STATUS_LIMIT, "the loop stalled behind the disk: a status answer took {slowest:?}");
    drop(fs);
}

/// The daemon with its stderr on a pipe this test never reads; killed on drop.
struct Unread(Child);

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stderr_nobody_reads_never_stalls_the_loop_and_its_dropped_lines_are_counted() {
    let test = "a_stderr_nobody_reads_never_stalls_the_loop_and_its_dropped_lines_are_counted";
    if !privileged(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dockexpose-stderr-{}", run_id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bed = Bed::new("se");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let (socket, log) = (dir.join("dockexpose.sock"), dir.join("audit.jsonl"));
    // Not --quiet: a line per connection, into a pipe whose 64 KiB fill at once.
    let mut daemon = Unread(
        Command::new(env!("CARGO_BIN_EXE_dockexpose"))
            .args(["watch", "--no-pin", "--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0"])
            .args(["--status-socket", socket.to_str().unwrap(), "--json", log.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dockexpose"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&socket).1.is_none() {
        assert!(Instant::now() < deadline, "the daemon never answered on {}", socket.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two clients, for more lines than the pipe and the daemon's queue hold.
    let clients: Vec<_> = [2, 3]
        .into_iter()
        .map(|host| {
            let (ns, src, dst) = (bed.outside.ns.clone(), bed.outside.v4(host).parse().unwrap(), bed.host_tcp_v4());
            std::thread::spawn(move || connect_loop(&ns, src, dst, Duration::from_secs(10)))
        })
        .collect();
    let (mut answers, mut slowest) = (0, Duration::ZERO);
    while !clients.iter().all(|c| c.is_finished()) {
        slowest = slowest.max(status(&socket).0);
        answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let made: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["status", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).expect("a status answer");
    let dropped = report["counters"]["stderr_lines_dropped"].as_u64().expect("stderr_lines_dropped");
    let lost = report["health"]["losses"]["stderr_lines_lost"].as_u64().unwrap_or(0);
    let (ring_lost, reader_lost) =
        (report["counters"]["ringbuf_full_lost"].as_u64(), report["counters"]["reader_lost"].as_u64());
    let written =
        std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.contains("\"reached\"")).count();
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let stop_from = Instant::now();
    let status_code = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(stop_from.elapsed() < Duration::from_secs(10), "dockexpose did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "{test}: {made} connections, {written} reached records in the log; {answers} status answers, slowest {} ms; \
         stderr lines dropped {dropped} (lost in all {lost}); ring lost {ring_lost:?}, reader lost {reader_lost:?}; \
         stopped in {} ms",
        slowest.as_millis(),
        stop_from.elapsed().as_millis(),
    );
    assert!(status_code.success(), "{status_code}");
    assert!(made >= 1000, "too few connections to fill the pipe and the queue: {made}");
    assert!(dropped > 0 && lost >= dropped, "the lines the stalled stderr could not take are counted");
    assert_eq!((ring_lost, reader_lost), (Some(0), Some(0)));
    assert!(written >= made, "every connection in the log: {written} of {made}");
    assert!(slowest < STATUS_LIMIT, "the loop stalled behind stderr: a status answer took {slowest:?}");
}
