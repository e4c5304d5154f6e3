//! When the loop reads the host's interfaces and addresses again, and reconciles the
//! attachments with them.
//!
//! Reading them (two rtnetlink dumps, parsed) and reconciling (sysfs per attached
//! interface, the prefix tries) was most of an idle daemon's CPU, once a second,
//! although the host rarely changes. Every change that matters to them (an interface
//! added, removed, renamed, up or down, a port joining or leaving a bridge, an address
//! added or removed) is announced on rtnetlink's link and address groups, which the
//! link watcher (`ground`) reads. So the tick reads the host again only when the
//! watcher received anything since the last reading (any datagram, also one that made
//! no event, and a lost notification), when the loop asked for it (Docker's networks
//! changed, an attach failed and is retried), and every `RESYNC` all the same. While
//! the watcher is not running, every tick reads, as before.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The longest the host goes unread, whatever the link watcher says.
pub(super) const RESYNC: Duration = Duration::from_secs(30);

/// What the link watcher received, counted (shared with its thread).
#[derive(Debug, Default)]
pub struct LinkChanges {
    received: AtomicU64,
    watching: AtomicBool,
}

impl LinkChanges {
    /// The watcher runs from now on.
    pub fn watching(&self) {
        self.watching.store(true, Ordering::Release);
    }

    /// The watcher received a datagram, or lost some (the socket's queue overflowed).
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::AcqRel);
    }

    /// The watcher stopped: nothing tells of changes any more.
    pub fn stopped(&self) {
        self.watching.store(false, Ordering::Release);
    }

    /// How many datagrams so far; None while nobody watches.
    pub fn count(&self) -> Option<u64> {
        self.watching.load(Ordering::Acquire).then(|| self.received.load(Ordering::Acquire))
    }
}

/// The loop's side: when it last read the host, and what it had heard then.
#[derive(Debug, Default)]
pub(super) struct HostRefresh {
    /// The watcher's count when the host was last read.
    heard: Option<u64>,
    last: Option<Instant>,
    /// Asked for by the loop itself.
    asked: bool,
}

impl HostRefresh {
    /// Whether the host must be read now, given the watcher's `count` (read before
    /// the host is: a change during the reading is counted after, and read next time).
    pub(super) fn due(&self, count: Option<u64>, now: Instant) -> bool {
        self.asked
            || count.is_none()
            || count != self.heard
            || self.last.is_none_or(|last| now.saturating_duration_since(last) >= RESYNC)
    }

    /// The host was read at `now`, with the watcher's `count` taken before.
    pub(super) fn read(&mut self, count: Option<u64>, now: Instant) {
        (self.heard, self.last, self.asked) = (count, Some(now), false);
    }

    /// Read at the next tick (Docker's networks changed; an attach failed).
    pub(super) fn ask(&mut self) {
        self.asked = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_first_then_only_after_a_change_a_request_or_the_resync() {
        let (changes, mut refresh, t0) = (LinkChanges::default(), HostRefresh::default(), Instant::now());
        changes.watching();
        assert!(refresh.due(changes.count(), t0), "never read yet");
        refresh.read(changes.count(), t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(!refresh.due(changes.count(), t1), "nothing received, nothing asked: not read");

        changes.received();
        assert!(refresh.due(changes.count(), t1), "a datagram (any, even one that made no event)");
        refresh.read(changes.count(), t1);
        assert!(!refresh.due(changes.count(), t1 + Duration::from_secs(1)));

        refresh.ask();
        assert!(refresh.due(changes.count(), t1 + Duration::from_secs(1)), "asked by the loop");
        refresh.read(changes.count(), t1 + Duration::from_secs(1));
        assert!(!refresh.due(changes.count(), t1 + Duration::from_secs(2)));

        assert!(refresh.due(changes.count(), t1 + Duration::from_secs(1) + RESYNC), "the resync, whatever was heard");
    }

    #[test]
    fn while_nobody_watches_the_links_every_tick_reads_the_host() {
        let (changes, mut refresh, t0) = (LinkChanges::default(), HostRefresh::default(), Instant::now());
        refresh.read(changes.count(), t0);
        assert!(refresh.due(changes.count(), t0), "no watcher: read every time");
        changes.watching();
        assert!(refresh.due(changes.count(), t0), "a watcher just started: what it missed is read");
        refresh.read(changes.count(), t0);
        assert!(!refresh.due(changes.count(), t0));
        changes.stopped();
        assert!(refresh.due(changes.count(), t0), "the watcher stopped: back to every tick");
    }

    #[test]
    fn a_change_received_while_the_host_is_read_is_read_next_time() {
        let (changes, mut refresh, t0) = (LinkChanges::default(), HostRefresh::default(), Instant::now());
        changes.watching();
        let before = changes.count();
        changes.received(); // arrives between taking the count and the reading
        refresh.read(before, t0);
        assert!(refresh.due(changes.count(), t0), "the count moved past the one the reading took");
    }
}
