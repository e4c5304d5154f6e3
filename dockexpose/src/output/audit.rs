//! The JSON-lines audit log: the system of record. Records are encoded into a buffer
//! in the order they come and pushed to the file after each batch the daemon handles,
//! before it waits again: a burst costs a few writes, not one per record, and nothing
//! seen stays unwritten while the daemon is idle.
//!
//! It survives operations:
//! - `reopen` (SIGUSR1, SIGHUP) opens the path anew, so logrotate's rename + `create`
//!   works (the old file is closed; nothing more goes into it);
//! - optional size-based rotation (`rotate_size`, `max_files`: path.1, path.2, ...);
//! - a write that fails (ENOSPC, EIO, ...) never stops the daemon and loses nothing
//!   the daemon can hold: the file is cut back to its last whole line, the lines stay
//!   in memory (up to `HOLD_MAX` bytes) and are written again as soon as the disk
//!   takes data; meanwhile the kernel's ring is not released past them (the daemon
//!   asks `holding`), so a crash loses none either, and past `HOLD_MAX` the daemon
//!   stops taking records (`full`): they wait in the ring, whose loss the kernel
//!   counts. A warning is given at most once a minute.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    formats::{Formatter, JsonFormat},
    record::Record,
};
use crate::error::{Error, Result};

/// How often a continuing write failure is said again.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Most bytes buffered between flushes before a flush is forced (a huge batch).
const FLUSH_AT: usize = 1 << 20;
/// Most bytes held in memory while the log cannot be written; past it the records
/// wait in the kernel's ring instead.
pub const HOLD_MAX: usize = 16 << 20;

/// Size-based rotation: past `size` bytes the file becomes path.1 (path.1 becomes
/// path.2 ...), keeping `max_files` old files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub size: u64,
    pub max_files: u32,
}

enum Target {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        file: File,
        size: u64,
    },
    /// No audit log asked for.
    Off,
}

/// What the audit log has done, for counters, status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    pub lines_written: u64,
    /// Lines that could not be encoded (a serializer bug): gone.
    pub lines_lost: u64,
    /// Lines held in memory because the log cannot be written right now (disk full,
    /// I/O error): written as soon as it can be.
    pub lines_held: u64,
    /// Their bytes.
    pub bytes_held: u64,
    pub reopens: u64,
    pub rotations: u64,
    /// The log is failing right now.
    pub failing: bool,
}

pub struct AuditLog {
    target: Target,
    rotation: Option<Rotation>,
    buf: Vec<u8>,
    /// Lines in `buf`.
    buffered: u64,
    stats: AuditStats,
    /// The failure being reported, and when it was last said.
    failure: Option<(String, Instant)>,
    /// `--json-format` ecs or ocsf; None: native, written straight from the record.
    formatter: Option<Formatter>,
}

impl AuditLog {
    /// `-` means stdout. The file is opened now so that a bad path fails at start.
    pub fn open(path: Option<&Path>, rotation: Option<Rotation>) -> Result<Self> {
        let target = match path {
            None => Target::Off,
            Some(p) if p == Path::new("-") => Target::Stdout(io::stdout()),
            Some(p) => {
                let file = open_file(p).map_err(|source| Error::JsonOutput { path: p.to_path_buf(), source })?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Target::File { path: p.to_path_buf(), file, size }
            }
        };
        Ok(Self {
            target,
            rotation,
            buf: Vec::with_capacity(1 << 16),
            buffered: 0,
            stats: AuditStats::default(),
            failure: None,
            formatter: None,
        })
    }

    pub fn is_off(&self) -> bool {
        matches!(self.target, Target::Off)
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.target {
            Target::File { path, .. } => Some(path),
            _ => None,
        }
    }

    pub fn stats(&self) -> AuditStats {
        self.stats
    }

    pub fn set_rotation(&mut self, rotation: Option<Rotation>) {
        self.rotation = rotation;
    }

    /// The shape of every line from now on (`--json-format`).
    pub fn set_format(&mut self, formatter: Formatter) {
        self.formatter = (formatter.format != JsonFormat::Native).then_some(formatter);
    }

    /// Appends one connection record, in the log's format.
    pub fn write_connection(&mut self, rec: &Record) {
        match &self.formatter {
            None => self.write_native(rec),
            Some(f) => {
                let event = f.record(rec);
                self.write_json(&event)
            }
        }
    }

    /// Appends one line about the daemon itself (`daemon_start`, `exposure_changed`...),
    /// in the log's format.
    pub fn write_record<T: serde::Serialize>(&mut self, line: &T) {
        match &self.formatter {
            None => self.write_json(line),
            Some(f) => match serde_json::to_value(line) {
                Ok(native) => {
                    let event = f.daemon_line(native);
                    self.write_json(&event)
                }
                Err(_) => self.stats.lines_lost += 1,
            },
        }
    }

    /// Appends a native record, encoded by `record_json` (serde's output, faster).
    fn write_native(&mut self, rec: &Record) {
        if self.is_off() {
            return;
        }
        super::record_json::write(rec, &mut self.buf);
        self.buf.push(b'\n');
        self.buffered += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Appends one JSON line, encoded straight into the buffer.
    fn write_json<T: serde::Serialize + ?Sized>(&mut self, record: &T) {
        if self.is_off() {
            return;
        }
        let start = self.buf.len();
        if serde_json::to_writer(&mut self.buf, record).is_err() {
            // Only a serializer bug gets here: the half-written line is dropped, counted.
            self.buf.truncate(start);
            self.stats.lines_lost += 1;
            return;
        }
        self.buf.push(b'\n');
        self.buffered += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Pushes the buffered lines to the file or stdout. Returns the warning to show,
    /// if the write failed and the operator has not been told within a minute. What
    /// cannot be written stays buffered, for the next flush.
    pub fn flush(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let result = match &mut self.target {
            Target::Off => Ok(()),
            Target::Stdout(out) => out.write_all(&self.buf).and_then(|()| out.flush()),
            Target::File { file, size, .. } => match file.write_all(&self.buf) {
                Ok(()) => {
                    *size += self.buf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // A partial write leaves half a line: cut the file back to the
                    // last whole one (ftruncate works on a full disk).
                    let _ = file.set_len(*size);
                    Err(e)
                }
            },
        };
        match result {
            Ok(()) => {
                let lines = std::mem::take(&mut self.buffered);
                self.stats.lines_written += lines;
                self.buf.clear();
                if self.buf.capacity() > HOLD_MAX {
                    self.buf.shrink_to(1 << 16);
                }
                let said = self.recovered(lines);
                (self.stats.lines_held, self.stats.bytes_held) = (0, 0);
                self.rotate_if_due();
                said
            }
            Err(e) => {
                self.stats.failing = true;
                (self.stats.lines_held, self.stats.bytes_held) = (self.buffered, self.buf.len() as u64);
                let now = Instant::now();
                let due = self.failure.as_ref().is_none_or(|(_, at)| now.duration_since(*at) >= WARN_EVERY);
                if !due {
                    return None;
                }
                let reason = e.to_string();
                self.failure = Some((reason.clone(), now));
                Some(format!(
                    "WARNING: writing the audit log {} failed ({reason}): {} records held until it can be written (in memory, and the kernel's ring is not released past them); detection goes on",
                    self.describe(),
                    self.buffered,
                ))
            }
        }
    }

    /// Lines wait to be written after a failure: the ring must not be released past them.
    pub fn holding(&self) -> bool {
        self.stats.failing && !self.buf.is_empty()
    }

    /// As much is held in memory as the daemon allows: records should wait in the ring.
    pub fn full(&self) -> bool {
        self.holding() && self.buf.len() >= HOLD_MAX
    }

    /// After a failure, the first write that works is said.
    fn recovered(&mut self, lines: u64) -> Option<String> {
        if !self.stats.failing {
            return None;
        }
        self.stats.failing = false;
        self.failure = None;
        Some(format!(
            "dockexpose: the audit log {} is written again; the {lines} records held while it failed are in it",
            self.describe(),
        ))
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::File { path, .. } => path.display().to_string(),
            Target::Stdout(_) => "(stdout)".into(),
            Target::Off => "(off)".into(),
        }
    }

    /// Opens the path anew (logrotate renamed it). What is buffered goes to the old
    /// file first. Returns what to tell the operator.
    pub fn reopen(&mut self) -> Option<String> {
        let warning = self.flush();
        let Target::File { path, file, size } = &mut self.target else { return warning };
        match open_file(path) {
            Ok(f) => {
                *size = f.metadata().map(|m| m.len()).unwrap_or(0);
                *file = f;
                self.stats.reopens += 1;
                warning
            }
            Err(e) => Some(format!(
                "WARNING: reopening the audit log {} failed ({e}); still writing to the file open before",
                path.display()
            )),
        }
    }

    fn rotate_if_due(&mut self) {
        let Some(rot) = self.rotation else { return };
        let Target::File { path, size, .. } = &self.target else { return };
        if *size < rot.size {
            return;
        }
        let path = path.clone();
        for i in (1..rot.max_files).rev() {
            let _ = std::fs::rename(numbered(&path, i), numbered(&path, i + 1));
        }
        if rot.max_files == 0 {
            let _ = std::fs::remove_file(&path);
        } else {
            let _ = std::fs::rename(&path, numbered(&path, 1));
        }
        self.stats.rotations += 1;
        if let Target::File { path, file, size } = &mut self.target {
            if let Ok(f) = open_file(path) {
                *file = f;
                *size = 0;
            }
        }
    }
}

/// path.N
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Appended, created 0640: the log names who reached what, not for every user.
fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dockexpose-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    #[test]
    fn reopen_follows_a_rename_as_logrotate_does() {
        let path = temp("reopen");
        let mut log = AuditLog::open(Some(&path), None).unwrap();
        log.write_record(&serde_json::json!({"n": 1}));
        assert!(log.flush().is_none());
        std::fs::rename(&path, numbered(&path, 1)).unwrap();
        log.write_record(&serde_json::json!({"n": 2}));
        assert!(log.reopen().is_none());
        log.write_record(&serde_json::json!({"n": 3}));
        log.flush();
        assert_eq!(std::fs::read_to_string(numbered(&path, 1)).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        assert_eq!((log.stats().lines_written, log.stats().reopens), (3, 1));
    }

    #[test]
    fn size_rotation_keeps_max_files() {
        let path = temp("rotate");
        let mut log = AuditLog::open(Some(&path), Some(Rotation { size: 100, max_files: 2 })).unwrap();
        for n in 0..40 {
            log.write_record(&serde_json::json!({"n": n, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}));
            log.flush();
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
        let mut log = AuditLog::open(Some(Path::new("/dev/full")), None).unwrap();
        log.write_record(&serde_json::json!({"n": 1}));
        log.write_record(&serde_json::json!({"n": 2}));
        let warning = log.flush().expect("the first failure is said");
        assert!(warning.contains("No space left on device") && warning.contains("2 records held"), "{warning}");
        log.write_record(&serde_json::json!({"n": 3}));
        assert!(log.flush().is_none(), "at most one warning a minute");
        let st = log.stats();
        assert_eq!((st.lines_lost, st.lines_held, st.lines_written, st.failing), (0, 3, 0, true));
        assert!(log.holding() && !log.full());
    }

    #[test]
    fn lines_held_through_a_failure_are_written_once_it_clears() {
        let path = temp("held");
        let mut log = AuditLog::open(Some(&path), None).unwrap();
        // The file descriptor swapped for /dev/full: the same as the disk filling up.
        if let Target::File { file, .. } = &mut log.target {
            *file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        }
        for n in 0..30 {
            log.write_record(&serde_json::json!({"n": n}));
            log.flush();
        }
        assert!(log.holding());
        assert_eq!(log.stats().lines_held, 30);
        // Space again.
        if let Target::File { file, size, .. } = &mut log.target {
            *file = open_file(&path).unwrap();
            *size = 0;
        }
        let said = log.flush().expect("the recovery is said");
        assert!(said.contains("30 records held"), "{said}");
        let lines: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, (0..30).collect::<Vec<_>>(), "every held line, once, in order");
        assert!(!log.holding());
        assert_eq!((log.stats().lines_written, log.stats().lines_held, log.stats().lines_lost), (30, 0, 0));
    }

    #[test]
    fn a_bad_path_fails_at_open() {
        let e = AuditLog::open(Some(Path::new("/nonexistent/dir/audit.jsonl")), None).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/dir/audit.jsonl"), "{e}");
    }
}
