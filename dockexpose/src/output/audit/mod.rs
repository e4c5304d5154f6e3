//! The JSON-lines audit log: the system of record. Records are encoded into a buffer
//! in the order they come; after each batch the daemon handles, the buffer is handed,
//! as one numbered chunk, to a writer thread that owns the file (`writer`). The
//! daemon's loop never waits on the disk: a write that blocks for seconds stalls that
//! thread only, and the loop goes on reading the ring and answering `status`.
//!
//! Nothing is lost silently and nothing is released early:
//! - the writer acknowledges the last chunk it wrote (`acks`, read by the loop on its
//!   turns; `Report::Written` wakes the loop only when it asked); the ring and the
//!   pinned copies of `state::pending` are released only that far (`state::release`),
//!   so a crash loses nothing that was not yet written;
//! - the hand-off is bounded: chunks the writer has not taken wait here, in order;
//!   past `HOLD_MAX` bytes not yet written (a slow or full disk) the daemon stops taking
//!   records (`full`): they wait in the kernel's ring, whose loss the kernel counts;
//! - a write that fails (ENOSPC, EIO, ...) never stops the daemon: the writer keeps
//!   the lines and writes them as soon as the disk takes data, said at most once a
//!   minute, and the recovery once;
//! - `reopen` (SIGUSR1, SIGHUP) opens the path anew after what was handed before it,
//!   so logrotate's rename + `create` works; optional size-based rotation
//!   (`rotate_size`, `max_files`: path.1, path.2, ...);
//! - at exit, `close` hands over what is left and waits (bounded) for the writer.

mod acks;
mod writer;

use std::{
    collections::VecDeque,
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use acks::Acks;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
pub use writer::Report;
use writer::{Command, Spares, Target, Writer};

use super::{
    formats::{Formatter, JsonFormat},
    record::Record,
};
use crate::error::{Error, Result};

/// Most bytes buffered between flushes before a flush is forced (a huge batch).
const FLUSH_AT: usize = 1 << 20;
/// Most bytes handed to the writer and not yet written (held while the disk is slow
/// or failing); past it the records wait in the kernel's ring instead.
pub const HOLD_MAX: usize = 16 << 20;
/// Chunks the hand-off holds; more wait in `outbox` (bounded by HOLD_MAX).
const HANDOFF_CHUNKS: usize = 64;

/// Size-based rotation: past `size` bytes the file becomes path.1 (path.1 becomes
/// path.2 ...), keeping `max_files` old files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub size: u64,
    pub max_files: u32,
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

/// The writer thread, as the loop sees it.
struct Handoff {
    tx: SyncSender<Command>,
    thread: std::thread::JoinHandle<()>,
    path: Option<PathBuf>,
}

pub struct AuditLog {
    /// None: no audit log asked for.
    handoff: Option<Handoff>,
    /// What the writer says; taken by the daemon's loop (`take_reports`).
    reports: Option<UnboundedReceiver<Report>>,
    buf: Vec<u8>,
    /// Lines in `buf`.
    buffered: u64,
    /// Commands the hand-off had no room for, in order.
    outbox: VecDeque<Command>,
    /// The last chunk number handed, and the last the writer wrote.
    handed: u64,
    written: u64,
    /// Each chunk handed and not yet written, with its size: what is held.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    /// The writer's figures; `lines_lost` is the loop's own.
    stats: Arc<Mutex<AuditStats>>,
    lines_lost: u64,
    /// The writer thread is gone (a panic): said once.
    writer_gone: bool,
    /// `--json-format` ecs or ocsf; None: native, written straight from the record.
    formatter: Option<Formatter>,
    /// How far the writer wrote (read on the loop's turns).
    acks: Arc<Acks>,
    /// Buffers the writer gave back, for the next chunks.
    spares: Spares,
    /// The size of the last chunk handed: the next buffer starts that large.
    last_chunk: usize,
    /// The native record's encoder (it keeps the last container's bytes).
    encoder: crate::output::record_json::Encoder,
}

impl AuditLog {
    /// `-` means stdout. The file is opened now so that a bad path fails at start,
    /// and handed to the writer thread.
    pub fn open(path: Option<&Path>, rotation: Option<Rotation>) -> Result<Self> {
        let target = match path {
            None => None,
            Some(p) if p == Path::new("-") => Some(Target::Stdout(io::stdout())),
            Some(p) => {
                let file = open_file(p).map_err(|source| Error::JsonOutput { path: p.to_path_buf(), source })?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Some(Target::File { path: p.to_path_buf(), file, size })
            }
        };
        let path = path.filter(|p| *p != Path::new("-")).map(Path::to_path_buf);
        let (mut log, reports) = Self::start(target, rotation, path)?;
        log.reports = Some(reports);
        Ok(log)
    }

    /// The writer thread on `target` (None: no log). Returns the log, with the
    /// writer's reports taken for tests.
    fn start(
        target: Option<Target>,
        rotation: Option<Rotation>,
        path: Option<PathBuf>,
    ) -> Result<(Self, UnboundedReceiver<Report>)> {
        let stats = Arc::new(Mutex::new(AuditStats::default()));
        let (acks, spares) = (Arc::new(Acks::default()), Spares::default());
        // Unbounded, yet bounded by the hand-off: at most one acknowledgement per
        // chunk or reopen, and a warning a minute.
        let (report_tx, reports) = unbounded_channel();
        let handoff = match target {
            None => None,
            Some(target) => {
                let (tx, rx) = sync_channel(HANDOFF_CHUNKS);
                let writer = Writer::new(target, rotation, stats.clone(), acks.clone(), spares.clone());
                let thread = std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || writer.run(rx, report_tx))
                    .map_err(|source| Error::JsonOutput {
                        path: path.clone().unwrap_or_else(|| PathBuf::from("-")),
                        source,
                    })?;
                Some(Handoff { tx, thread, path })
            }
        };
        let log = Self {
            handoff,
            reports: None,
            buf: Vec::with_capacity(1 << 16),
            buffered: 0,
            outbox: VecDeque::new(),
            handed: 0,
            written: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            stats,
            lines_lost: 0,
            writer_gone: false,
            formatter: None,
            acks,
            spares,
            last_chunk: 1 << 16,
            encoder: Default::default(),
        };
        Ok((log, reports))
    }

    pub fn is_off(&self) -> bool {
        self.handoff.is_none()
    }

    pub fn path(&self) -> Option<&Path> {
        self.handoff.as_ref().and_then(|h| h.path.as_deref())
    }

    /// What the writer says, for the daemon's loop to wait on (once; None after,
    /// and for no log).
    pub fn take_reports(&mut self) -> Option<UnboundedReceiver<Report>> {
        self.reports.take()
    }

    pub fn stats(&self) -> AuditStats {
        let mut st = *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        st.lines_lost = self.lines_lost;
        st
    }

    pub fn set_rotation(&mut self, rotation: Option<Rotation>) {
        self.command(Command::Rotation(rotation));
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

    /// Appends a native record, encoded by `record_json` (serde's output, faster).
    fn write_native(&mut self, rec: &Record) {
        if self.is_off() {
            return;
        }
        self.encoder.write(rec, &mut self.buf);
        self.buf.push(b'\n');
        self.buffered += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
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
                Err(_) => self.lines_lost += 1,
            },
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
            self.lines_lost += 1;
            return;
        }
        self.buf.push(b'\n');
        self.buffered += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Hands the buffered lines to the writer as one chunk, never waiting: what the
    /// hand-off has no room for waits here, in order, for the next flush. Returns the
    /// warning to give if the writer thread is gone (once).
    pub fn flush(&mut self) -> Option<String> {
        self.sync();
        if !self.buf.is_empty() {
            self.handed += 1;
            self.last_chunk = self.buf.len();
            let next = self.next_buffer();
            let bytes = std::mem::replace(&mut self.buf, next);
            self.in_flight.push_back((self.handed, bytes.len()));
            self.in_flight_bytes += bytes.len();
            let lines = std::mem::take(&mut self.buffered);
            self.outbox.push_back(Command::Chunk { seq: self.handed, bytes, lines });
        }
        self.send()
    }

    /// A spare buffer from the writer, or a new one as large as the last chunk.
    fn next_buffer(&self) -> Vec<u8> {
        let spare = self.spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut buf = spare.unwrap_or_default();
        buf.reserve(self.last_chunk.clamp(1 << 12, FLUSH_AT) + (self.last_chunk >> 3));
        buf
    }

    /// Takes in how far the writer has written (chunks no longer held) and hands over
    /// what waited for room. Returns the warning to give if the writer thread is gone.
    pub fn sync(&mut self) -> Option<String> {
        let seq = self.acks.written();
        if seq > self.written {
            self.written = seq;
            while self.in_flight.front().is_some_and(|(s, _)| *s <= seq) {
                if let Some((_, n)) = self.in_flight.pop_front() {
                    self.in_flight_bytes -= n;
                }
            }
        }
        self.send()
    }

    /// The loop is about to wait while the log holds it back (the hand-off full, or as
    /// much unwritten as allowed), or while it stops: the next write wakes it. Reads
    /// the writer's progress after asking, so no write is missed (`full` and `unsent`
    /// are up to date after). Returns the warning to give if the writer is gone.
    pub fn wake_on_write(&mut self) -> Option<String> {
        self.acks.wake_on_write();
        self.sync()
    }

    /// When the writer finished its writes since the last call: (last chunk, when).
    pub fn write_times(&self) -> VecDeque<(u64, Instant)> {
        self.acks.take_times()
    }

    /// Sends what waits in the outbox, as far as the hand-off has room.
    fn send(&mut self) -> Option<String> {
        let handoff = self.handoff.as_ref()?;
        while let Some(cmd) = self.outbox.pop_front() {
            match handoff.tx.try_send(cmd) {
                Ok(()) => {}
                Err(TrySendError::Full(cmd)) => {
                    self.outbox.push_front(cmd);
                    return None;
                }
                Err(TrySendError::Disconnected(cmd)) => {
                    // Only a panic in the writer gets here: hold everything (the ring
                    // with it), and say so once.
                    self.outbox.push_front(cmd);
                    self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failing = true;
                    if std::mem::replace(&mut self.writer_gone, true) {
                        return None;
                    }
                    return Some(format!(
                        "WARNING: the audit log {}'s writer thread is gone: nothing more is written, the kernel's ring is not released; restart dockexpose",
                        self.describe()
                    ));
                }
            }
        }
        None
    }

    fn command(&mut self, cmd: Command) {
        if self.is_off() {
            return;
        }
        self.flush();
        self.outbox.push_back(cmd);
        self.send();
    }

    /// What the writer said: the acknowledgement is taken into account; a line for
    /// the operator is returned, with whether the log is failing.
    pub fn report(&mut self, report: Report) -> Option<(String, Option<bool>)> {
        match report {
            // Room in the hand-off again (the acknowledgement itself is in `acks`).
            Report::Written { .. } => self.sync().map(|w| (w, Some(true))),
            Report::Health { line, failing } => Some((line, Some(failing))),
            Report::Notice(line) => Some((line, None)),
            Report::Closed => None,
        }
    }

    /// The last chunk number handed (0: none yet).
    pub fn handed(&self) -> u64 {
        self.handed
    }

    /// The last chunk number the writer wrote.
    pub fn written(&self) -> u64 {
        self.written.max(self.acks.written())
    }

    /// Chunks wait for room in the hand-off: try again soon.
    pub fn unsent(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// As much waits to be written as the daemon allows: records should wait in the ring.
    pub fn full(&self) -> bool {
        self.in_flight_bytes + self.buf.len() >= HOLD_MAX
    }

    /// Bytes handed and not yet written.
    pub fn unwritten_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    fn describe(&self) -> String {
        match (&self.handoff, self.path()) {
            (None, _) => "(off)".into(),
            (Some(_), Some(p)) => p.display().to_string(),
            (Some(_), None) => "(stdout)".into(),
        }
    }

    /// Opens the path anew (logrotate renamed it), after what was handed before.
    /// The outcome comes as a report.
    pub fn reopen(&mut self, signal: &'static str) {
        if self.path().is_some() {
            self.command(Command::Reopen { signal });
        }
    }

    /// At exit: hands over what is left, closes the hand-off and waits, at most
    /// `wait`, for the writer to write it. Returns the lines to say (the writer's, and
    /// one if it did not finish in time).
    pub async fn close(
        &mut self,
        reports: &mut UnboundedReceiver<Report>,
        wait: Duration,
    ) -> Vec<(String, Option<bool>)> {
        let (mut said, what) = (Vec::new(), self.describe());
        if let Some(w) = self.flush() {
            said.push((w, Some(true)));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let finished = tokio::time::timeout_at(deadline, async {
            // The outbox first (the hand-off takes it as the writer goes), then the end.
            while self.unsent() && !self.writer_gone {
                tokio::select! {
                    Some(r) = reports.recv() => said.extend(self.report(r)),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => { self.send(); }
                }
            }
            let Some(handoff) = self.handoff.take() else { return };
            drop(handoff.tx);
            while let Some(r) = reports.recv().await {
                if r == Report::Closed {
                    break;
                }
                said.extend(self.report(r));
            }
            let _ = handoff.thread.join();
        })
        .await;
        if finished.is_err() {
            said.push((
                format!(
                    "WARNING: the audit log {what} was not written within {} s at exit: {} bytes handed to it may be missing (their records stay in the kernel's ring for the next daemon)",
                    wait.as_secs(),
                    self.in_flight_bytes,
                ),
                Some(true),
            ));
        }
        said
    }
}

/// Appended, created 0640: the log names who reached what, not for every user.
fn open_file(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests;
