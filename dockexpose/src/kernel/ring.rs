//! The records' ring buffer, read in place, with its space released only once the
//! records are in the audit log (at least once).
//!
//! aya's `RingBuf` gives a record's space back to the kernel as soon as the record is
//! dropped: a daemon killed between that moment and its next audit-log flush loses
//! what it held. Here the ring is mapped directly (the kernel's layout: a consumer page
//! we write, a producer page and the data pages, mapped twice in a row, that we only
//! read) and there are two positions:
//! - the reader's own cursor, which runs ahead: records copied out and handed to the
//!   daemon loop;
//! - the kernel's consumer position, which the committer moves, and only to the end
//!   of batches whose records the audit log's writer has acknowledged as written
//!   (`state::release`).
//!
//! The consumer position lives in the map itself. With the map pinned, the next daemon
//! starts reading where this one last committed: a record written but not committed
//! before a crash is written again, and is told as a duplicate by its (boot id, cpu,
//! sequence number).

use std::{
    io,
    ops::Deref,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::MapData;
use dockexpose_common::ConnEvent;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::{interval, MissedTickBehavior},
};

use super::reader::{IdleFlag, ReaderStats, DRAIN_EVERY, IDLE_CHECK, MAX_BATCH};
use crate::error::{Error, Result};

/// A record being written (BPF_RINGBUF_BUSY_BIT) or thrown away (BPF_RINGBUF_DISCARD_BIT).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
/// Every record starts with an 8-byte header (length with the bits above, page offset).
const HEADER: u64 = 8;

/// One mapping, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The kernel's ring buffer of records, mapped.
pub struct EventRing {
    fd: OwnedFd,
    consumer: Mapping,
    producer: Mapping,
    page: u64,
    size: u64,
}

// SAFETY: the mappings are shared memory accessed only through atomics (positions,
// record headers) and plain reads of committed records; the fd is owned.
unsafe impl Send for EventRing {}
unsafe impl Sync for EventRing {}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl EventRing {
    /// Maps the ring-buffer map `map` (its own fd, duplicated: the map may be dropped).
    pub fn from_map(map: &MapData) -> io::Result<Self> {
        let size = u64::from(map.info().map_err(io::Error::other)?.max_entries());
        let fd = map.fd().as_fd().try_clone_to_owned()?;
        Self::from_fd(fd, size)
    }

    fn from_fd(fd: OwnedFd, size: u64) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!("ring buffer size {size} is not a power of two")));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let map = |len: u64, prot: i32, offset: u64| -> io::Result<Mapping> {
            // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the
            // offsets and protections (the producer side is read-only).
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    prot,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(Mapping { addr, len: len as usize })
        };
        let consumer = map(page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = map(page + 2 * size, libc::PROT_READ, page)?;
        Ok(Self { fd, consumer, producer, page, size })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of the consumer page, page-aligned, mapped for our life.
        unsafe { &*(self.consumer.addr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of the producer page.
        unsafe { &*(self.producer.addr as *const AtomicU64) }
    }

    fn data(&self, pos: u64) -> *const u8 {
        // SAFETY: within the data pages (the offset is masked; a record that wraps is
        // contiguous thanks to the double mapping).
        unsafe { (self.producer.addr as *const u8).add((self.page + (pos & (self.size - 1))) as usize) }
    }

    /// Where the kernel may write up to: everything before it is released.
    pub fn committed(&self) -> u64 {
        self.consumer_pos().load(Ordering::Acquire)
    }

    /// Where the kernel writes next.
    pub fn produced(&self) -> u64 {
        self.producer_pos().load(Ordering::Acquire)
    }

    /// The ring's data size in bytes.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    /// Releases the space of every record before `pos` to the kernel (never backwards).
    pub fn commit(&self, pos: u64) {
        let cons = self.consumer_pos();
        if pos > cons.load(Ordering::Acquire) {
            cons.store(pos, Ordering::Release);
        }
    }

    /// The record at `pos`, if one is complete there: its bytes (None when discarded)
    /// and the position after it.
    fn record_at(&self, pos: u64) -> Option<(Option<&[u8]>, u64)> {
        if pos >= self.produced() {
            return None;
        }
        // SAFETY: an aligned u32 header inside the data pages, written by the kernel.
        let header = unsafe { &*(self.data(pos) as *const AtomicU32) };
        let len = header.load(Ordering::Acquire);
        if len & BUSY_BIT != 0 {
            return None;
        }
        let body = u64::from(len & !(BUSY_BIT | DISCARD_BIT));
        let next = pos + (body + HEADER).div_ceil(8) * 8;
        if len & DISCARD_BIT != 0 {
            return Some((None, next));
        }
        // SAFETY: the record's body follows its header, committed (not busy).
        let bytes = unsafe { std::slice::from_raw_parts(self.data(pos + HEADER), body as usize) };
        Some((Some(bytes), next))
    }

    /// Copies out up to `max` records from `from`; returns the position after the last.
    /// Records too short to be a `ConnEvent` are skipped and counted in `short`.
    pub fn read(&self, from: u64, max: usize, out: &mut Vec<ConnEvent>, short: &mut u64) -> u64 {
        // Room for what is there at once (one record's span, header included): no
        // regrowth, and no copy of the records taken so far, on the way.
        let span = (size_of::<ConnEvent>() as u64 + HEADER).div_ceil(8) * 8;
        let waiting = self.produced().saturating_sub(from) / span;
        out.reserve(usize::try_from(waiting).unwrap_or(max).min(max));
        let mut pos = from;
        let mut taken = 0;
        while taken < max {
            let Some((bytes, next)) = self.record_at(pos) else { break };
            if let Some(bytes) = bytes {
                if bytes.len() < size_of::<ConnEvent>() {
                    *short += 1;
                } else {
                    // SAFETY: ConnEvent is repr(C) plain data; the length is checked.
                    out.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ConnEvent>()) });
                    taken += 1;
                }
            }
            pos = next;
        }
        pos
    }

    /// Records waiting between the committed position and the producer (the backlog a
    /// starting daemon finds), and their bytes.
    pub fn backlog(&self) -> (u64, u64) {
        let (start, end) = (self.committed(), self.produced());
        let (mut pos, mut records) = (start, 0);
        while let Some((bytes, next)) = self.record_at(pos) {
            records += u64::from(bytes.is_some());
            pos = next;
        }
        (records, end.saturating_sub(start))
    }
}

/// The ring, and how far the daemon loop has handled what the reader gave it.
pub struct RingShared {
    pub ring: EventRing,
    /// The end position of the last batch the loop dropped (handled).
    handled: AtomicU64,
}

impl RingShared {
    pub fn new(ring: EventRing) -> Arc<Self> {
        let start = ring.committed();
        Arc::new(Self { ring, handled: AtomicU64::new(start) })
    }
}

/// Records handed to the daemon loop. Dropping it (once handled) marks its ring space
/// as releasable at the next commit.
pub struct Batch {
    events: Vec<ConnEvent>,
    end: u64,
    shared: Arc<RingShared>,
}

impl Batch {
    /// A batch of records that did not come from the ring (nothing to release).
    fn disarm(mut self) -> Vec<ConnEvent> {
        self.end = 0;
        std::mem::take(&mut self.events)
    }
}

impl Deref for Batch {
    type Target = [ConnEvent];
    fn deref(&self) -> &[ConnEvent] {
        &self.events
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.shared.handled.fetch_max(self.end, Ordering::AcqRel);
    }
}

/// Moves the kernel's consumer position to what is in the audit log.
pub struct Committer {
    shared: Arc<RingShared>,
    committable: u64,
    /// Fault injection for tests (hidden): never release, as a daemon killed between
    /// every write and its release would.
    never: bool,
}

/// Hidden: a test sets it to make the window between write and release as wide as a
/// whole run, so that a `kill -9` leaves every record to be written again.
pub const FAULT_NEVER_RELEASE_ENV: &str = "DOCKEXPOSE_FAULT_NEVER_RELEASE";

impl Committer {
    pub fn new(shared: Arc<RingShared>) -> Self {
        let committable = shared.ring.committed();
        let never = std::env::var_os(FAULT_NEVER_RELEASE_ENV).is_some_and(|v| v == "1");
        Self { shared, committable, never }
    }

    /// The end of every batch the loop has handled (dropped): each of its records is
    /// encoded for the audit log, or kept by `state::pending`.
    pub fn handled(&self) -> u64 {
        self.shared.handled.load(Ordering::Acquire)
    }

    /// The audit log's writer has written every record before `position`
    /// (`state::release` says which): its ring space goes back to the kernel. Never
    /// backwards.
    pub fn release(&mut self, position: u64) {
        self.committable = self.committable.max(position);
        if !self.never {
            self.shared.ring.commit(self.committable);
        }
    }

    /// The position released so far.
    pub fn position(&self) -> u64 {
        self.shared.ring.committed()
    }
}

/// Reads the ring from the committed position until told to stop (or the channel
/// closes). A batch the channel has no room for stays in the ring (the cursor goes
/// back to it): the kernel counts what the ring then cannot hold.
///
/// With an idle flag (`reader::IdleFlag`), the timer runs only while records come: a
/// tick that finds nothing new raises the flag and the reader sleeps until the next
/// record wakes it (or `IDLE_CHECK`). Without one it ticks always.
pub async fn run(
    shared: Arc<RingShared>,
    tx: mpsc::Sender<Batch>,
    stats: ReaderStats,
    mut idle_flag: Option<IdleFlag>,
    mut stop: oneshot::Receiver<()>,
) -> Result<u64> {
    let poll = PollFd(shared.ring.fd.as_raw_fd());
    // SAFETY: the fd belongs to the ring, which `shared` keeps open for longer than
    // this task registers it.
    let mut fd = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::RingBuffer(e.into_parts().1))?;
    let mut cursor = shared.ring.committed();
    let mut tick = interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut idle_check = interval(IDLE_CHECK);
    idle_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut idle = false;
    let result = loop {
        let open = tokio::select! {
            _ = &mut stop => break Ok(cursor),
            guard = fd.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => break Err(Error::RingBuffer(e)),
                };
                stats.add_wakeup();
                guard.clear_ready();
                if idle {
                    // Records come again: the timer batches them from now on.
                    idle = false;
                    tick.reset();
                }
                drain(&shared, &mut cursor, &tx, &stats)
            }
            _ = tick.tick(), if !idle => {
                let before = cursor;
                let open = drain(&shared, &mut cursor, &tx, &stats);
                if cursor == before {
                    idle = go_idle(&shared, cursor, idle_flag.as_mut());
                    idle_check.reset();
                }
                open
            }
            _ = idle_check.tick(), if idle => drain(&shared, &mut cursor, &tx, &stats),
        };
        if !open {
            break Ok(cursor);
        }
    };
    if let Some(flag) = &mut idle_flag {
        flag.lower();
    }
    result
}

/// Nothing new since the last tick: raises the idle flag, then looks at the ring once
/// more (a record written before the kernel could see the flag does not wake us; it
/// is seen here). True: the reader may sleep without its timer.
fn go_idle(shared: &RingShared, cursor: u64, flag: Option<&mut IdleFlag>) -> bool {
    let Some(flag) = flag else { return false };
    // Records wait that the loop has no room for yet (its channel full): no sleep, and
    // no system call to raise the flag on every tick.
    if shared.ring.produced() != cursor {
        return false;
    }
    // The map update is a system call: a full barrier before the read below.
    flag.raise() && shared.ring.produced() == cursor
}

/// Takes every record still in the ring past `cursor` (at exit, once the reader has
/// stopped); they are released by the next commit once written.
pub fn drain_rest(shared: &Arc<RingShared>, cursor: u64, stats: &ReaderStats) -> Batch {
    let mut events = Vec::new();
    let mut short = 0;
    let end = shared.ring.read(cursor, usize::MAX, &mut events, &mut short);
    stats.add_records(events.len() as u64 + short, short);
    Batch { events, end, shared: shared.clone() }
}

fn drain(shared: &Arc<RingShared>, cursor: &mut u64, tx: &mpsc::Sender<Batch>, stats: &ReaderStats) -> bool {
    loop {
        let mut events = Vec::new();
        let mut short = 0;
        let end = shared.ring.read(*cursor, MAX_BATCH, &mut events, &mut short);
        if end == *cursor {
            return true;
        }
        let n = events.len() as u64;
        let batch = Batch { events, end, shared: shared.clone() };
        match tx.try_send(batch) {
            Ok(()) => {
                stats.add_records(n + short, short);
                *cursor = end;
            }
            Err(mpsc::error::TrySendError::Full(b)) => {
                // Left in the ring for the next round.
                let _ = b.disarm();
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(b)) => {
                let _ = b.disarm();
                return false;
            }
        }
    }
}

/// The ring's fd, borrowed for epoll (the ring owns it and outlives the reader).
struct PollFd(RawFd);

impl AsRawFd for PollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
