//! The audit log's writer thread: it owns the file, so that a slow or stalled disk
//! (a write that blocks for seconds, an fsync, a rotation) stalls this thread and never
//! the daemon's loop. It takes numbered chunks of whole lines in order from a bounded
//! hand-off, writes them (all that waits at once, in one writev: a slow disk gets
//! fewer, larger writes; the chunks are never copied), and acknowledges the last number
//! written (`acks`); the loop releases the ring only that far. Written chunks go back
//! to the loop as spare buffers.
//!
//! A write that fails (ENOSPC, EIO, ...) cuts the file back to its last whole line and
//! keeps the lines, retrying every RETRY_EVERY and taking what the loop hands over
//! meanwhile (the loop bounds that: `HOLD_MAX`); nothing is acknowledged until it is
//! written. The failure is said at most once a minute, the recovery once.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, IoSlice, Write},
    path::{Path, PathBuf},
    sync::{
        mpsc::{Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;

use super::{acks::Acks, open_file, AuditStats, Rotation};

/// How often the file is tried again after a failed write.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often a continuing write failure is said again.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the loop hands the writer, in order.
pub(super) enum Command {
    /// Whole lines, numbered from 1 in the order handed.
    Chunk {
        seq: u64,
        bytes: Vec<u8>,
        lines: u64,
    },
    /// Open the path anew (logrotate renamed it); `signal` is said with the outcome.
    Reopen {
        signal: &'static str,
    },
    Rotation(Option<Rotation>),
}

/// What the writer tells the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Every chunk up to `seq` is in the file (or on stdout). Said only when the loop
    /// asked to be woken (`Acks::wake_on_write`); otherwise it reads `Acks`.
    Written { seq: u64 },
    /// About the log's health: a failure (`failing`), or its recovery.
    Health { line: String, failing: bool },
    /// Anything else for the operator (a reopen).
    Notice(String),
    /// The hand-off closed and everything it could write is written: the thread ends.
    Closed,
}

pub(super) enum Target {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File, size: u64 },
}

impl Target {
    pub(super) fn describe(&self) -> String {
        match self {
            Target::File { path, .. } => path.display().to_string(),
            Target::Stdout(_) => "(stdout)".into(),
        }
    }
}

/// Spare buffers the writer gives back to the loop (fewer allocations and no regrowth
/// of a fresh buffer every turn); a few, and none larger than `SPARE_LARGEST`, so a
/// burst's buffers do not stay in memory.
pub(super) type Spares = Arc<Mutex<Vec<Vec<u8>>>>;
pub(super) const SPARES_KEPT: usize = 4;
const SPARE_LARGEST: usize = 1 << 20;

pub(super) struct Writer {
    pub(super) target: Target,
    rotation: Option<Rotation>,
    /// Chunks taken and not yet written (several while the disk is slow or fails).
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    held_lines: u64,
    /// The last chunk number in `held`.
    held_seq: u64,
    /// How far it wrote, for the loop.
    acks: Arc<Acks>,
    spares: Spares,
    /// Shared with the loop (status, metrics, counters).
    stats: Arc<Mutex<AuditStats>>,
    /// The failure being reported, and when it was last said.
    failure: Option<(String, Instant)>,
}

impl Writer {
    pub(super) fn new(
        target: Target,
        rotation: Option<Rotation>,
        stats: Arc<Mutex<AuditStats>>,
        acks: Arc<Acks>,
        spares: Spares,
    ) -> Self {
        Self {
            target,
            rotation,
            held: VecDeque::new(),
            held_bytes: 0,
            held_lines: 0,
            held_seq: 0,
            acks,
            spares,
            stats,
            failure: None,
        }
    }

    /// The thread: until the hand-off closes, then one last write of what is held.
    pub(super) fn run(mut self, rx: Receiver<Command>, reports: UnboundedSender<Report>) {
        let say = |r: Report| {
            let _ = reports.send(r);
        };
        loop {
            let next = if self.held.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(RETRY_EVERY)
            };
            let closed = match next {
                Ok(cmd) => {
                    self.take(cmd).into_iter().for_each(say);
                    // Everything else already waiting goes in the same write.
                    while let Ok(cmd) = rx.try_recv() {
                        self.take(cmd).into_iter().for_each(say);
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.write().into_iter().for_each(say);
            if closed {
                if !self.held.is_empty() {
                    say(Report::Health {
                        line: format!(
                            "WARNING: the audit log {} could not be written at exit: {} records not in it (they stay in the kernel's ring for the next daemon)",
                            self.target.describe(),
                            self.held_lines,
                        ),
                        failing: true,
                    });
                }
                say(Report::Closed);
                return;
            }
        }
    }

    /// One command. A chunk is only held here; `write` writes it.
    pub(super) fn take(&mut self, cmd: Command) -> Vec<Report> {
        match cmd {
            Command::Chunk { seq, bytes, lines } => {
                self.held_bytes += bytes.len();
                self.held.push_back(bytes);
                self.held_lines += lines;
                self.held_seq = seq;
                Vec::new()
            }
            Command::Rotation(r) => {
                self.rotation = r;
                Vec::new()
            }
            Command::Reopen { signal } => self.reopen(signal),
        }
    }

    /// Writes what is held. Returns the acknowledgement and what to tell the operator.
    pub(super) fn write(&mut self) -> Vec<Report> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let result = match &mut self.target {
            Target::Stdout(out) => write_chunks(out, &self.held).and_then(|()| out.flush()),
            Target::File { file, size, .. } => match write_chunks(file, &self.held) {
                Ok(()) => {
                    *size += self.held_bytes as u64;
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
        let mut out = Vec::new();
        match result {
            Ok(()) => {
                let lines = std::mem::take(&mut self.held_lines);
                self.held_bytes = 0;
                self.give_back_spares();
                let recovered = self.failure.take().is_some();
                {
                    let mut st = self.stats();
                    st.lines_written += lines;
                    (st.lines_held, st.bytes_held, st.failing) = (0, 0, false);
                }
                if recovered {
                    out.push(Report::Health {
                        line: format!(
                            "dockexpose: the audit log {} is written again; the {lines} records held while it failed are in it",
                            self.target.describe(),
                        ),
                        failing: false,
                    });
                }
                if self.acks.wrote(self.held_seq, Instant::now()) {
                    out.push(Report::Written { seq: self.held_seq });
                }
                self.rotate_if_due();
            }
            Err(e) => {
                {
                    let mut st = self.stats();
                    (st.lines_held, st.bytes_held, st.failing) = (self.held_lines, self.held_bytes as u64, true);
                }
                let now = Instant::now();
                let due = self.failure.as_ref().is_none_or(|(_, at)| now.duration_since(*at) >= WARN_EVERY);
                let reason = e.to_string();
                if due {
                    out.push(Report::Health {
                        line: format!(
                            "WARNING: writing the audit log {} failed ({reason}): {} records held until it can be written (in memory, and the kernel's ring is not released past them); detection goes on",
                            self.target.describe(),
                            self.held_lines,
                        ),
                        failing: true,
                    });
                    self.failure = Some((reason, now));
                }
            }
        }
        out
    }

    /// The written chunks, emptied, back to the loop (a few, not the large ones).
    fn give_back_spares(&mut self) {
        let mut spares = self.spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for mut chunk in self.held.drain(..) {
            if spares.len() < SPARES_KEPT && chunk.capacity() <= SPARE_LARGEST {
                chunk.clear();
                spares.push(chunk);
            }
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, AuditStats> {
        // A poisoned lock only means a panic elsewhere; the figures stay usable.
        self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the path anew. What is held goes to the old file first.
    fn reopen(&mut self, signal: &'static str) -> Vec<Report> {
        let mut out = self.write();
        let Target::File { path, file, size } = &mut self.target else { return out };
        match open_file(path) {
            Ok(f) => {
                *size = f.metadata().map(|m| m.len()).unwrap_or(0);
                *file = f;
                out.push(Report::Notice(format!("dockexpose: {signal}: audit log {} reopened", path.display())));
                self.stats().reopens += 1;
            }
            Err(e) => out.push(Report::Notice(format!(
                "WARNING: reopening the audit log {} failed ({e}); still writing to the file open before",
                path.display()
            ))),
        }
        out
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
        self.stats().rotations += 1;
        if let Target::File { path, file, size } = &mut self.target {
            if let Ok(f) = open_file(path) {
                *file = f;
                *size = 0;
            }
        }
    }
}

/// Writes every chunk, in order, with as few writev calls as the kernel allows.
pub(super) fn write_chunks(out: &mut impl Write, chunks: &VecDeque<Vec<u8>>) -> io::Result<()> {
    // Where the next byte to write is: a chunk and an offset into it.
    let (mut chunk, mut offset) = (0, 0);
    while chunk < chunks.len() {
        // IOV_MAX is 1024; the hand-off holds fewer chunks than that (HANDOFF_CHUNKS),
        // but a failing disk's held chunks can be more: written in slices.
        let slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .skip(chunk)
            .take(1024)
            .enumerate()
            .map(|(i, c)| IoSlice::new(if i == 0 { &c[offset..] } else { c }))
            .collect();
        let mut n = match out.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the audit log took no bytes")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && chunk < chunks.len() {
            let left = chunks[chunk].len() - offset;
            if n >= left {
                (n, chunk, offset) = (n - left, chunk + 1, 0);
            } else {
                (offset, n) = (offset + n, 0);
            }
        }
        // Empty chunks never reach the writer, but skip any all the same.
        while chunk < chunks.len() && chunks[chunk].len() == offset {
            (chunk, offset) = (chunk + 1, 0);
        }
    }
    Ok(())
}

/// path.N
pub(super) fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}
