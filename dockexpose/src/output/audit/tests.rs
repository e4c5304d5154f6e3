use std::{fs::OpenOptions, time::Duration};

use super::{
    writer::{numbered, write_chunks, Command, Report, Spares, Target, Writer},
    *,
};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dockexpose-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("audit.jsonl")
}

/// Waits until the writer wrote all that was handed; returns the lines it said.
fn settle(log: &mut AuditLog, rx: &mut UnboundedReceiver<Report>) -> Vec<(String, Option<bool>)> {
    let mut said = Vec::new();
    loop {
        // Asked first, then read: a write in between is either seen here or said.
        said.extend(log.wake_on_write().map(|w| (w, Some(true))));
        if log.written() >= log.handed() && !log.unsent() {
            return said;
        }
        let r = rx.blocking_recv().expect("the writer runs");
        said.extend(log.report(r));
    }
}

/// What the writer says within `wait`, with nothing more handed.
fn said_within(log: &mut AuditLog, rx: &mut UnboundedReceiver<Report>, wait: Duration) -> Vec<(String, Option<bool>)> {
    std::thread::sleep(wait);
    let mut said = Vec::new();
    while let Ok(r) = rx.try_recv() {
        said.extend(log.report(r));
    }
    said
}

fn opened(path: &Path, rotation: Option<Rotation>) -> (AuditLog, UnboundedReceiver<Report>) {
    let mut log = AuditLog::open(Some(path), rotation).unwrap();
    let rx = log.take_reports().unwrap();
    (log, rx)
}

#[test]
fn reopen_follows_a_rename_as_logrotate_does() {
    let path = temp("reopen");
    let (mut log, mut rx) = opened(&path, None);
    log.write_record(&serde_json::json!({"n": 1}));
    assert!(log.flush().is_none());
    assert!(settle(&mut log, &mut rx).is_empty());
    std::fs::rename(&path, numbered(&path, 1)).unwrap();
    log.write_record(&serde_json::json!({"n": 2}));
    log.reopen("SIGUSR1");
    log.write_record(&serde_json::json!({"n": 3}));
    log.flush();
    let mut said = settle(&mut log, &mut rx);
    // The reopen's word may come just after the last acknowledgement.
    if said.is_empty() {
        said = said_within(&mut log, &mut rx, Duration::from_millis(200));
    }
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].0.contains("SIGUSR1: audit log") && said[0].0.ends_with("reopened") && said[0].1.is_none());
    assert_eq!(std::fs::read_to_string(numbered(&path, 1)).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
    assert_eq!((log.stats().lines_written, log.stats().reopens), (3, 1));
}

#[test]
fn size_rotation_keeps_max_files() {
    let path = temp("rotate");
    let (mut log, mut rx) = opened(&path, Some(Rotation { size: 100, max_files: 2 }));
    for n in 0..40 {
        log.write_record(&serde_json::json!({"n": n, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}));
        log.flush();
        settle(&mut log, &mut rx);
    }
    assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
    assert!(!numbered(&path, 3).exists(), "only max_files old files are kept");
    assert!(std::fs::metadata(&path).unwrap().len() < 100);
    assert!(log.stats().rotations >= 10);
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(numbered(&path, 1)).unwrap().lines().last().unwrap()).unwrap();
    assert!(last["n"].as_u64().unwrap() <= 39);
}

#[test]
fn a_failing_device_holds_lines_and_warns_once() {
    // /dev/full: every write fails with ENOSPC.
    let (mut log, mut rx) = opened(Path::new("/dev/full"), None);
    log.write_record(&serde_json::json!({"n": 1}));
    log.write_record(&serde_json::json!({"n": 2}));
    log.flush();
    let r = rx.blocking_recv().unwrap();
    let (warning, failing) = log.report(r).expect("the first failure is said");
    assert!(warning.contains("No space left on device") && warning.contains("2 records held"), "{warning}");
    assert_eq!(failing, Some(true));
    log.write_record(&serde_json::json!({"n": 3}));
    log.flush();
    // Three retries (every RETRY_EVERY): still failing, never said again.
    let said = said_within(&mut log, &mut rx, writer::RETRY_EVERY * 3);
    assert!(said.is_empty(), "at most one warning a minute: {said:?}");
    let st = log.stats();
    assert_eq!((st.lines_lost, st.lines_held, st.lines_written, st.failing), (0, 3, 0, true));
    // Nothing is acknowledged: the ring stays held; not yet as much as HOLD_MAX.
    assert_eq!((log.handed(), log.written()), (2, 0));
    assert!(!log.full());
}

#[test]
fn lines_held_through_a_failure_are_written_once_it_clears() {
    let path = temp("held");
    let stats = Arc::new(Mutex::new(AuditStats::default()));
    // The file descriptor is /dev/full: the same as the disk filling up.
    let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let acks = Arc::new(Acks::default());
    let mut w = Writer::new(
        Target::File { path: path.clone(), file: full, size: 0 },
        None,
        stats.clone(),
        acks.clone(),
        Spares::default(),
    );
    let mut said = Vec::new();
    for n in 0..30u64 {
        let bytes = format!("{{\"n\":{n}}}\n").into_bytes();
        said.extend(w.take(Command::Chunk { seq: n + 1, bytes, lines: 1 }));
        said.extend(w.write());
    }
    assert!(said.iter().all(|r| !matches!(r, Report::Written { .. })), "nothing acknowledged: {said:?}");
    assert_eq!(said.iter().filter(|r| matches!(r, Report::Health { failing: true, .. })).count(), 1, "{said:?}");
    assert_eq!(stats.lock().unwrap().lines_held, 30);
    // Space again.
    w.target = Target::File { path: path.clone(), file: open_file(&path).unwrap(), size: 0 };
    acks.wake_on_write();
    let said = w.write();
    let Some(Report::Health { line, failing: false }) = said.first() else { panic!("the recovery is said: {said:?}") };
    assert!(line.contains("30 records held"), "{line}");
    assert_eq!(said.last(), Some(&Report::Written { seq: 30 }), "every chunk acknowledged at once (asked to say so)");
    assert_eq!(acks.written(), 30);
    let lines: Vec<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, (0..30).collect::<Vec<_>>(), "every held line, once, in order");
    let st = *stats.lock().unwrap();
    assert_eq!((st.lines_written, st.lines_held, st.lines_lost, st.failing), (30, 0, 0, false));
}

#[test]
fn a_stalled_disk_never_blocks_the_hand_off_and_holds_past_hold_max() {
    // A pipe nobody reads: the writer blocks in write() as on a stalled disk.
    let (mut reader, pipe) = std::io::pipe().unwrap();
    let file = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
    let (mut log, mut rx) = AuditLog::start(
        Some(Target::File { path: PathBuf::from("/stalled"), file, size: 0 }),
        None,
        Some(PathBuf::from("/stalled")),
    )
    .unwrap();
    let pad = "x".repeat(1000);
    let mut n = 0u64;
    while !log.full() {
        for _ in 0..100 {
            log.write_record(&serde_json::json!({"n": n, "pad": pad}));
            n += 1;
        }
        // Returns at once however long the writer is stuck.
        assert!(log.flush().is_none());
        assert!(n < 100_000, "HOLD_MAX never reached");
    }
    assert!(log.unwritten_bytes() >= HOLD_MAX - 200_000, "{}", log.unwritten_bytes());
    assert!(log.written() < log.handed());
    // The disk comes back: everything, once, in order.
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text).unwrap();
        text
    });
    settle(&mut log, &mut rx);
    assert!(!log.full());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let said = rt.block_on(log.close(&mut rx, Duration::from_secs(10)));
    assert!(said.is_empty(), "{said:?}");
    let text = drain.join().unwrap();
    let got: Vec<u64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap()).collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert_eq!(log.stats().lines_written, n);
}

#[test]
fn close_writes_the_last_lines_and_waits_for_the_writer() {
    let path = temp("close");
    let (mut log, mut rx) = opened(&path, None);
    log.write_record(&serde_json::json!({"n": 1}));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let said = rt.block_on(log.close(&mut rx, Duration::from_secs(5)));
    assert!(said.is_empty(), "{said:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
    assert!(log.is_off(), "closed");
}

#[test]
fn a_bad_path_fails_at_open() {
    let e = AuditLog::open(Some(Path::new("/nonexistent/dir/audit.jsonl")), None).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/dir/audit.jsonl"), "{e}");
}

/// Takes at most 7 bytes a call, as a slow pipe or a signal-interrupted writev may.
struct Trickle(Vec<u8>);

impl std::io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        // Across slices, as writev does.
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(7 - n);
            self.0.extend_from_slice(&b[..take]);
            n += take;
            if n == 7 {
                break;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn chunks_are_written_whole_and_in_order_however_little_each_write_takes() {
    let chunks: VecDeque<Vec<u8>> =
        ["{\"n\":1}\n", "{\"n\":2}\n{\"n\":3}\n", "x\n", "{\"pad\":\"yyyyyyyyyyyyyyyyyyyyyy\"}\n"]
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
    let mut out = Trickle(Vec::new());
    write_chunks(&mut out, &chunks).unwrap();
    assert_eq!(out.0, chunks.iter().flatten().copied().collect::<Vec<u8>>());
}
