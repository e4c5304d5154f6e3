//! Lines for people on stderr (and stdout), written so that a stream nobody reads any
//! more never ends the process: `eprintln!` panics when the write fails (EPIPE once
//! the journal or a pipe's reader is gone; Rust ignores SIGPIPE). A failed line is
//! dropped and counted (`losses.stderr_lines_lost` in `dockexpose status`).
//!
//! Nor does a stream that stops being read stall the daemon: a pipe nobody drains, or
//! a journald that is busy, blocks write() once its buffer is full. While `watch` runs
//! (`Detached`), lines go through a bounded queue to a thread that writes them; a line
//! the queue has no room for is dropped and counted (`stderr_lines_dropped` in the
//! counters, and in `stderr_lines_lost`), never waited for.

use std::{
    fmt,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Mutex, PoisonError,
    },
    time::Duration,
};

static STDERR_LOST: AtomicU64 = AtomicU64::new(0);
static STDERR_DROPPED: AtomicU64 = AtomicU64::new(0);
/// The writer thread's queue while `watch` runs.
static QUEUE: Mutex<Option<LineQueue>> = Mutex::new(None);

/// Lines waiting for the stderr thread; past that, dropped and counted (a burst of
/// human lines; the audit log has every record).
const QUEUE_LINES: usize = 1024;

/// Writes one line to stderr (through the queue while one runs); a failure is
/// counted, never a panic, never a wait on the reader.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let queued = QUEUE.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|q| q.offer(args.to_string()));
    match queued {
        Some(true) => {}
        Some(false) => {
            STDERR_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        None => write_line(&mut std::io::stderr().lock(), &args.to_string()),
    }
}

fn write_line(out: &mut impl Write, line: &str) {
    if writeln!(out, "{line}").is_err() {
        STDERR_LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes to stdout (a command's answer), flushed; false when it could not be written.
pub fn stdout_text(args: fmt::Arguments<'_>) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).is_ok()
}

/// Lines that could not be written to stderr since the start (failed or dropped).
pub fn stderr_lines_lost() -> u64 {
    STDERR_LOST.load(Ordering::Relaxed) + STDERR_DROPPED.load(Ordering::Relaxed)
}

/// Of those, the lines dropped because the stderr thread was behind.
pub fn stderr_lines_dropped() -> u64 {
    STDERR_DROPPED.load(Ordering::Relaxed)
}

/// A bounded queue of lines and the thread that writes them to `out`.
struct LineQueue {
    tx: SyncSender<String>,
    /// Told when the thread has written everything and ended.
    done: Receiver<()>,
}

impl LineQueue {
    fn start(out: impl Write + Send + 'static, capacity: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<String>(capacity);
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new().name("stderr-writer".into()).spawn(move || {
            let mut out = out;
            for line in rx {
                write_line(&mut out, &line);
            }
            let _ = done_tx.send(());
        })?;
        Ok(Self { tx, done })
    }

    /// Queues a line; false when there is no room (the caller counts it).
    fn offer(&self, line: String) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The thread is gone (a panic): write here rather than lose the line.
            Err(TrySendError::Disconnected(line)) => {
                write_line(&mut std::io::stderr().lock(), &line);
                true
            }
        }
    }

    /// Closes the queue; waits at most `wait` for the thread to write what it holds.
    fn finish(self, wait: Duration) -> bool {
        drop(self.tx);
        self.done.recv_timeout(wait).is_ok()
    }
}

/// While it lives, stderr lines go through the queue and its thread; dropped, the
/// queue is written out (waiting a few seconds at most) and lines go straight again.
pub struct Detached(());

impl Detached {
    pub fn start() -> Self {
        // No thread (none can be made): lines are written directly, as before.
        if let Ok(q) = LineQueue::start(std::io::stderr(), QUEUE_LINES) {
            *QUEUE.lock().unwrap_or_else(PoisonError::into_inner) = Some(q);
        }
        Self(())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let queue = QUEUE.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(q) = queue {
            // A stderr nobody reads cannot keep the process from exiting.
            let _ = q.finish(Duration::from_secs(2));
        }
    }
}

/// `eprintln!` that never panics: see the module.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::console::stderr_line(format_args!($($arg)*))
    };
}

/// `println!` that never panics (the answer is lost if stdout is gone).
#[macro_export]
macro_rules! say_out {
    ($($arg:tt)*) => {{
        let _ = $crate::output::console::stdout_text(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

#[cfg(test)]
mod tests {
    use std::{io::Read, time::Instant};

    use super::*;

    #[test]
    fn lines_are_written_through_the_macros() {
        // The EPIPE case runs the binary with a closed pipe (tests/cli_errors.rs).
        crate::say!("console test line {}", 1);
        crate::say_out!("console test line {}", 2);
    }

    #[test]
    fn a_stream_nobody_reads_never_blocks_the_caller_and_drops_are_counted() {
        // A pipe nobody reads: the thread blocks once its 64 KiB are full.
        let (mut reader, pipe) = std::io::pipe().unwrap();
        let q = LineQueue::start(pipe, 16).unwrap();
        let line = "x".repeat(1000);
        let start = Instant::now();
        let taken = (0..1000).filter(|_| q.offer(line.clone())).count();
        assert!(start.elapsed() < Duration::from_secs(2), "offering waited: {:?}", start.elapsed());
        assert!(taken < 1000, "a stalled reader fills the queue: {taken} taken");
        // The reader comes back: every line taken is written, whole, in order.
        let drain = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        assert!(q.finish(Duration::from_secs(10)), "the thread wrote what it held");
        let text = drain.join().unwrap();
        assert_eq!(text.lines().count(), taken);
        assert!(text.lines().all(|l| l == line));
    }
}
