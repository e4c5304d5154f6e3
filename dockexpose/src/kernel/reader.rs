//! The ring-buffer reader: it only reads records and hands them, in batches, to a
//! bounded channel. Decoding, correlation and output happen elsewhere, so the reader
//! keeps up.
//!
//! Wakeups are batched: the kernel programs submit records without waking the reader
//! unless the ring holds more than `WAKEUP_BYTES`; a short timer here collects the
//! rest. On a busy host that is one wakeup per batch instead of one per record, and
//! never more than `DRAIN_EVERY` of delay.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use dockexpose_common::ConnEvent;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::{interval, MissedTickBehavior},
};

use crate::error::{Error, Result};

/// The longest a record waits in the ring when no batch is large enough to wake us.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Most records in one batch handed over.
pub const MAX_BATCH: usize = 1024;

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

    /// For the in-place reader (ring.rs): the kernel woke it.
    pub(crate) fn add_wakeup(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// For the in-place reader: `records` taken from the ring, `short` of them unusable.
    pub(crate) fn add_records(&self, records: u64, short: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.lost.fetch_add(short, Ordering::Relaxed);
    }
}

/// Reads until told to stop (or the channel closes), then hands the ring back, so that
/// the daemon can take what is left in it before exiting (records that no wakeup
/// announced yet are not lost at shutdown). Records are copied out of the ring at
/// once, so the kernel gets its space back before anything else runs.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<ConnEvent>>,
    stats: ReaderStats,
    mut stop: oneshot::Receiver<()>,
) -> Result<RingBuf<MapData>> {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::RingBuffer(e.into_parts().1))?;
    let mut tick = interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let open = tokio::select! {
            _ = &mut stop => return Ok(fd.into_inner()),
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(Error::RingBuffer)?;
                stats.wakeups.fetch_add(1, Ordering::Relaxed);
                let open = drain(guard.get_inner_mut(), &tx, &stats);
                guard.clear_ready();
                open
            }
            _ = tick.tick() => drain(fd.get_mut(), &tx, &stats),
        };
        if !open {
            return Ok(fd.into_inner());
        }
    }
}

/// Takes every record still in the ring (at exit, once the reader has stopped).
pub fn drain_rest(ring: &mut RingBuf<MapData>, stats: &ReaderStats) -> Vec<ConnEvent> {
    let mut rest = Vec::new();
    while let Some(ev) = next_record(ring, stats) {
        rest.extend(ev);
    }
    rest
}

/// Empties the ring into batches; false once the receiving side is gone.
fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Vec<ConnEvent>>, stats: &ReaderStats) -> bool {
    let mut batch: Vec<ConnEvent> = Vec::new();
    while let Some(ev) = next_record(ring, stats) {
        let Some(ev) = ev else { continue };
        batch.push(ev);
        if batch.len() == MAX_BATCH && !hand_over(std::mem::take(&mut batch), tx, stats) {
            return false;
        }
    }
    batch.is_empty() || hand_over(batch, tx, stats)
}

/// The next record of the ring (None inside: a record too short, counted as lost).
fn next_record(ring: &mut RingBuf<MapData>, stats: &ReaderStats) -> Option<Option<ConnEvent>> {
    let item = ring.next()?;
    stats.records.fetch_add(1, Ordering::Relaxed);
    if item.len() < size_of::<ConnEvent>() {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return Some(None);
    }
    // SAFETY: ConnEvent is repr(C) plain data; the length is checked above. Copied
    // out, so the kernel gets the space back when `item` drops.
    Some(Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnEvent>()) }))
}

fn hand_over(batch: Vec<ConnEvent>, tx: &mpsc::Sender<Vec<ConnEvent>>, stats: &ReaderStats) -> bool {
    match tx.try_send(batch) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(lost)) => {
            stats.lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
