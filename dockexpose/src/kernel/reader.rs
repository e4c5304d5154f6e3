//! The ring-buffer reader: it only reads records and hands them to a bounded channel.
//! Decoding, correlation and output happen elsewhere, so the reader keeps up.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use dockexpose_common::ConnEvent;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::error::{Error, Result};

/// Records the reader could not hand over (channel full), counted and reported as loss.
#[derive(Clone, Default)]
pub struct ReaderLoss(Arc<AtomicU64>);

impl ReaderLoss {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reads until the channel closes. Records are copied out of the ring at once, so
/// the kernel gets its space back before anything else runs.
pub async fn run(ring: RingBuf<MapData>, tx: mpsc::Sender<ConnEvent>, loss: ReaderLoss) -> Result<()> {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::RingBuffer(e.into_parts().1))?;
    loop {
        let mut guard = fd.readable_mut().await.map_err(Error::RingBuffer)?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<ConnEvent>() {
                loss.0.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // SAFETY: ConnEvent is repr(C) plain data; the length is checked above.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnEvent>()) };
            drop(item);
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    loss.0.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
        }
        guard.clear_ready();
    }
}
