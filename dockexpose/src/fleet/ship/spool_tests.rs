use std::io::Write as _;

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("dockexpose-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn append(path: &Path, from: usize, n: usize) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for i in from..from + n {
        writeln!(f, r#"{{"ts":"2026-12-07T10:00:00Z","stage":"reached","container":null,"record_id":"r{i}"}}"#)
            .unwrap();
    }
}

fn ids(b: &Batch) -> Vec<String> {
    b.records.iter().map(|r| r.record_id.clone()).collect()
}

#[test]
fn whole_lines_in_batches_and_daemon_lines_skipped() {
    let d = dir("lines");
    let log = d.0.join("audit.jsonl");
    append(&log, 0, 3);
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{\"event\":\"start\"}\n{\"ts\":").unwrap();
    let (mut s, w) = Spool::open(&log, None).unwrap();
    assert!(w.is_none());
    assert_eq!(s.pending(), 3);
    assert_eq!(ids(&s.read(2).unwrap().unwrap()), ["r0", "r1"]);
    assert_eq!(ids(&s.read(2).unwrap().unwrap()), ["r2"]);
    assert!(s.read(2).unwrap().is_none(), "a half-written line waits");
    assert_eq!(s.pending(), 0);
}

#[test]
fn rotation_is_followed_and_what_is_deleted_unshipped_is_counted() {
    let d = dir("rotate");
    let log = d.0.join("audit.jsonl");
    append(&log, 0, 5);
    let (mut s, _) = Spool::open(&log, None).unwrap();
    let first = s.read(2).unwrap().unwrap();
    assert_eq!(ids(&first), ["r0", "r1"]);
    // Rotated: the old file becomes .1, a new one starts.
    std::fs::rename(&log, numbered(&log, 1)).unwrap();
    append(&log, 5, 4);
    s.poll().unwrap();
    assert_eq!(s.pending(), 3 + 4);
    assert_eq!(ids(&s.read(10).unwrap().unwrap()), ["r2", "r3", "r4"]);
    // The old file is finished: the next read moves to the new one.
    assert_eq!(ids(&s.read(1).unwrap().unwrap()), ["r5"]);
    // Rotated twice more with max_files 1: the file being read is deleted unshipped.
    std::fs::rename(&log, numbered(&log, 1)).unwrap();
    append(&log, 9, 2);
    s.poll().unwrap();
    std::fs::rename(&log, numbered(&log, 1)).unwrap();
    append(&log, 11, 1);
    s.poll().unwrap();
    assert_eq!(s.lost(), 3, "r6, r7 and r8 were deleted unshipped");
    let rest: Vec<String> = std::iter::from_fn(|| s.read(10).unwrap()).flat_map(|b| ids(&b)).collect();
    assert_eq!(rest, ["r9", "r10", "r11"]);
}

#[test]
fn a_checkpoint_resumes_in_its_file_after_a_rotation() {
    let d = dir("resume");
    let log = d.0.join("audit.jsonl");
    append(&log, 0, 4);
    let (mut s, _) = Spool::open(&log, None).unwrap();
    s.read(3).unwrap().unwrap();
    let (dev, ino, offset) = s.position().unwrap();
    drop(s);
    std::fs::rename(&log, numbered(&log, 1)).unwrap();
    append(&log, 4, 1);
    let cp = Checkpoint { dev, ino, offset, shipped: 3, lost: 0 };
    let (mut s, w) = Spool::open(&log, Some(&cp)).unwrap();
    assert!(w.is_none());
    let rest: Vec<String> = std::iter::from_fn(|| s.read(10).unwrap()).flat_map(|b| ids(&b)).collect();
    assert_eq!(rest, ["r3", "r4"]);
    // Its file gone: said, and everything kept is shipped.
    std::fs::remove_file(numbered(&log, 1)).unwrap();
    let (_, w) = Spool::open(&log, Some(&cp)).unwrap();
    assert!(w.unwrap().contains("gone"));
}
