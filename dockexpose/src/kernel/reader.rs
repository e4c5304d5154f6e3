//! The ring-buffer reader's pace and what it reports; the reader itself is ring.rs. It
//! only reads records and hands them, in batches, to a bounded channel. Decoding,
//! correlation and output happen elsewhere, so the reader keeps up.
//!
//! Wakeups are batched: the kernel programs submit records without waking the reader
//! unless the ring holds more than `WAKEUP_BYTES`; a short timer in ring.rs collects the
//! rest. On a busy host that is one wakeup per batch instead of one per record, and
//! never more than `DRAIN_EVERY` of delay. On a quiet host the timer stops: once a
//! tick finds nothing new, the reader raises the idle flag (`IdleFlag`) and sleeps
//! until the next record, which clears the flag and wakes it (a slow safety tick,
//! `IDLE_CHECK`, bounds the wait should a wakeup ever be missed).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{Array, MapData};
use dockexpose_common::DAEMON_STATE_READER_IDLE;

/// The longest a record waits in the ring when no batch is large enough to wake us.
/// Each tick costs the loop and the writer a wakeup (about 100 µs of CPU on a small
/// VM): at 50 ms instead of 20, a busy host spent ~15 % less daemon CPU per
/// connection, and records still reach the log well within 100 ms. A quiet host's
/// first record does not wait for it (the idle flag wakes the reader).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Most records in one batch handed over.
pub const MAX_BATCH: usize = 1024;
/// While idle (no timer), the ring is looked at this often all the same.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The DAEMON_STATE slot the kernel programs look at when they write a record: raised,
/// the next record clears it and wakes the reader.
pub struct IdleFlag(Array<MapData, u64>);

impl IdleFlag {
    pub fn new(state: Array<MapData, u64>) -> Self {
        Self(state)
    }

    /// Raises the flag. False if the map refused (the reader then keeps its timer).
    pub fn raise(&mut self) -> bool {
        self.0.set(DAEMON_STATE_READER_IDLE, 1, 0).is_ok()
    }

    /// Lowers it (at stop: the next daemon starts with its timer, and no record wakes
    /// a reader that is gone).
    pub fn lower(&mut self) {
        let _ = self.0.set(DAEMON_STATE_READER_IDLE, 0, 0);
    }
}

/// What the reader did, shared with the daemon loop for reports.
#[derive(Clone, Default)]
pub struct ReaderStats {
    /// Records the reader could not hand over (channel full), counted and reported as loss.
    lost: Arc<AtomicU64>,
    /// Times the kernel woke the reader (epoll readiness).
    wakeups: Arc<AtomicU64>,
    /// Records taken from the ring.
    records: Arc<AtomicU64>,
}

impl ReaderStats {
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// The kernel woke the reader.
    pub(crate) fn add_wakeup(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// `records` taken from the ring, `short` of them unusable.
    pub(crate) fn add_records(&self, records: u64, short: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.lost.fetch_add(short, Ordering::Relaxed);
    }
}
