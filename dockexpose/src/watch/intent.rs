//! The firewall's word in the daemon: read at start, read again when the ground
//! moves (a ruleset change, firewalld, a Docker event) and every `REREAD` anyway
//! (a UFW rule written to its files before it is loaded), always off the loop: the
//! reading runs commands (`iptables-save`, `ipset save`) that must not stall the
//! ring reader. Each new reading goes to the contradiction stage.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::Watcher;
use crate::{intent::IntentBook, output::human::escape_untrusted};

/// A reading this old is read again even when nothing said the ground moved.
const REREAD: Duration = Duration::from_secs(30);

pub(super) struct IntentState {
    root: PathBuf,
    tx: mpsc::UnboundedSender<IntentBook>,
    reading: bool,
    /// The ground moved while a reading ran: read once more when it ends.
    again: bool,
    last: Option<Instant>,
    summary: Option<String>,
}

impl IntentState {
    pub(super) fn new(root: PathBuf) -> (Self, mpsc::UnboundedReceiver<IntentBook>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { root, tx, reading: false, again: false, last: None, summary: None }, rx)
    }

    /// The first reading, before any record: done in place (at start, a few
    /// milliseconds of commands stall nothing).
    pub(super) fn read_now(&mut self) -> IntentBook {
        self.last = Some(Instant::now());
        IntentBook::read(&self.root)
    }

    /// Starts a reading on a blocking thread, unless one runs (then it runs again
    /// after it).
    pub(super) fn read(&mut self) {
        if self.reading {
            self.again = true;
            return;
        }
        self.reading = true;
        self.last = Some(Instant::now());
        let (root, tx) = (self.root.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(IntentBook::read(&root));
        });
    }

    /// About once a second: a reading that has grown old is started again.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.last.is_none_or(|t| now.duration_since(t) >= REREAD) {
            self.read();
        }
    }
}

impl Watcher {
    /// A reading came back: the contradiction stage uses it from the next record on;
    /// what changed in its summary (and its warnings, once) is said on stderr.
    pub(super) fn intent_read(&mut self, book: IntentBook) {
        let state = &mut self.intent;
        state.reading = false;
        if std::mem::take(&mut state.again) {
            state.read();
        }
        if state.summary.as_deref() != Some(book.summary.as_str()) {
            crate::say!("dockexpose: firewall intent: {}", escape_untrusted(&book.summary));
            for w in &book.warnings {
                crate::say!("warning: firewall intent: {}", escape_untrusted(w));
            }
            state.summary = Some(book.summary.clone());
        }
        self.outputs.contradictions.set_book(Arc::new(book));
    }
}
