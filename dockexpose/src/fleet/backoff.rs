//! How long to wait before trying a store again (the shipper, the bridge): doubling
//! from 1 s to a cap, each wait shortened by up to a fifth at random so that a fleet
//! of hosts does not come back to a store at the same instant.

use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Backoff {
    tries: u32,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        Self { tries: 0, cap }
    }

    /// After a success: the next failure waits 1 s again.
    pub fn reset(&mut self) {
        self.tries = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let full = FIRST.saturating_mul(1 << self.tries.min(16)).min(self.cap);
        self.tries = self.tries.saturating_add(1);
        // No randomness crate: the clock's nanoseconds are random enough for spreading.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        jittered(full, nanos)
    }
}

/// `full` less up to a fifth of it, by `noise`.
fn jittered(full: Duration, noise: u32) -> Duration {
    full - full / 5 * (noise % 1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_below_it() {
        let mut b = Backoff::new(Duration::from_secs(15));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (w, full) in waits.iter().zip([1u64, 2, 4, 8, 15, 15, 15, 15]) {
            let full = Duration::from_secs(full);
            assert!(*w <= full && *w >= full * 4 / 5, "{w:?} for {full:?}");
        }
        assert_eq!(jittered(Duration::from_secs(10), 0), Duration::from_secs(10));
        assert_eq!(jittered(Duration::from_secs(10), 999), Duration::from_millis(8002));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1), "back to 1 s after a success");
    }
}
