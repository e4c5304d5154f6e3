//! How far the writer thread has written, as the daemon's loop reads it on its own
//! turns. An acknowledgement through a channel would wake the loop once per write
//! (on this kind of machine a wakeup costs tens of µs, more than the records it
//! acknowledges); here the writer only stores how far it got and when, and wakes the
//! loop only when the loop asked (`want_wake`): when it holds records back because the
//! hand-off is full, and while it stops.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

/// Write times kept for the loop's latency figures; older ones give way (the loop
/// takes them every turn, so only a stalled loop loses samples, never records).
const TIMES_KEPT: usize = 1024;

#[derive(Default)]
pub struct Acks {
    /// The last chunk number written.
    written: AtomicU64,
    /// (last chunk number in a write, when it finished), oldest first.
    times: Mutex<VecDeque<(u64, Instant)>>,
    /// The loop waits for the next write: say it through the channel too.
    want_wake: AtomicBool,
}

impl Acks {
    /// The writer wrote every chunk up to `seq`. True: the loop asked to be woken.
    pub fn wrote(&self, seq: u64, at: Instant) -> bool {
        {
            let mut times = self.times.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if times.len() >= TIMES_KEPT {
                times.pop_front();
            }
            times.push_back((seq, at));
        }
        self.written.store(seq, Ordering::Release);
        self.want_wake.swap(false, Ordering::AcqRel)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The next write wakes the loop. Set before the loop reads `written` again, so a
    /// write that finishes in between is either seen or said.
    pub fn wake_on_write(&self) {
        self.want_wake.store(true, Ordering::Release);
    }

    /// The write times since the last call.
    pub fn take_times(&self) -> VecDeque<(u64, Instant)> {
        std::mem::take(&mut *self.times.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_wakes_the_loop_only_when_asked_and_once() {
        let acks = Acks::default();
        let t = Instant::now();
        assert!(!acks.wrote(1, t), "not asked: no wakeup");
        assert_eq!(acks.written(), 1);
        acks.wake_on_write();
        assert!(acks.wrote(2, t), "asked: woken");
        assert!(!acks.wrote(3, t), "once per asking");
        assert_eq!(acks.take_times().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(acks.take_times().is_empty());
    }

    #[test]
    fn write_times_are_bounded_when_nobody_takes_them() {
        let acks = Acks::default();
        for seq in 1..=(TIMES_KEPT as u64 + 10) {
            acks.wrote(seq, Instant::now());
        }
        let times = acks.take_times();
        assert_eq!(times.len(), TIMES_KEPT);
        assert_eq!(times.front().map(|(s, _)| *s), Some(11), "the oldest gave way");
    }
}
