//! Kernel and userspace counters: formatting, and noticing loss as soon as it happens.

use dockexpose_common::Counter;

use crate::kernel::loader::CounterSnapshot;

/// Counters of the whole pipeline at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounters {
    pub kernel: CounterSnapshot,
    /// Records the ring-buffer reader could not hand over (channel full).
    pub reader_lost: u64,
    /// Attempts at a published port number on an address it is not bound to (e.g. the
    /// host address of a port published on 127.0.0.1 only): not reported.
    pub unbound_attempts: u64,
    /// "Answered" events received (they decide verdicts; no record of their own).
    pub answers_received: u64,
    /// Attempts that got no verdict because the tracker was full (a flood).
    pub attempts_untracked: u64,
}

impl PipelineCounters {
    /// Records that never reached the outputs.
    pub fn lost(&self) -> u64 {
        self.kernel.get(Counter::RingbufFull) + self.reader_lost
    }

    /// `name=value` pairs on one line.
    pub fn format(&self) -> String {
        let mut parts: Vec<String> =
            Counter::ALL.iter().map(|c| format!("{}={}", c.name(), self.kernel.get(*c))).collect();
        parts.push(format!("reader_lost={}", self.reader_lost));
        parts.push(format!("unbound_attempts={}", self.unbound_attempts));
        parts.push(format!("answers_received={}", self.answers_received));
        parts.push(format!("attempts_untracked={}", self.attempts_untracked));
        parts.join(" ")
    }
}

/// Remembers what was already reported, so that each new loss is reported once.
#[derive(Debug, Default)]
pub struct LossTracker {
    lost: u64,
    map_failures: u64,
    uninspected: u64,
}

impl LossTracker {
    /// Warnings for whatever got worse since the last call.
    pub fn warnings(&mut self, now: &PipelineCounters) -> Vec<String> {
        let mut out = Vec::new();
        let lost = now.lost();
        if lost > self.lost {
            out.push(format!(
                "WARNING: {} connection records lost ({} in total: ring buffer full {}, reader overrun {}); \
                 the audit log is incomplete. Fewer watched sources or a faster disk for --json help",
                lost - self.lost,
                lost,
                now.kernel.get(Counter::RingbufFull),
                now.reader_lost
            ));
            self.lost = lost;
        }
        let failures = now.kernel.get(Counter::MapUpdateFailed);
        if failures > self.map_failures {
            out.push(format!(
                "WARNING: {} kernel flow-table updates failed ({} in total): some flows may be reported twice",
                failures - self.map_failures,
                failures
            ));
            self.map_failures = failures;
        }
        let uninspected = now.kernel.get(Counter::BridgeUninspected);
        if uninspected > self.uninspected {
            out.push(format!(
                "WARNING: {} packets from outside reached a container bridge and could not be inspected \
                 ({} in total, counter bridge_uninspected): an IPv6 extension-header chain longer than the \
                 program walks, a truncated transport header, or a fragment conntrack could not place. \
                 A connection may have started unseen",
                uninspected - self.uninspected,
                uninspected
            ));
            self.uninspected = uninspected;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ringbuf_full: u64, reader_lost: u64) -> PipelineCounters {
        let mut k = CounterSnapshot::default();
        k.0[Counter::RingbufFull as usize] = ringbuf_full;
        k.0[Counter::ReachedEmitted as usize] = 7;
        PipelineCounters { kernel: k, reader_lost, unbound_attempts: 0, answers_received: 0, attempts_untracked: 0 }
    }

    #[test]
    fn format_names_every_counter() {
        let s = counters(0, 0).format();
        for c in Counter::ALL {
            assert!(s.contains(c.name()), "{} missing in {s}", c.name());
        }
        assert!(s.contains("reached_emitted=7"));
        assert!(s.contains("reader_lost=0"));
    }

    #[test]
    fn each_loss_is_reported_once() {
        let mut t = LossTracker::default();
        assert!(t.warnings(&counters(0, 0)).is_empty());
        let w = t.warnings(&counters(3, 1));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("4 connection records lost"), "{}", w[0]);
        assert!(t.warnings(&counters(3, 1)).is_empty());
        assert!(t.warnings(&counters(5, 1))[0].contains("2 connection records lost"));
    }

    #[test]
    fn uninspected_packets_raise_their_own_warning() {
        let mut t = LossTracker::default();
        let mut c = counters(0, 0);
        c.kernel.0[Counter::Unparsed as usize] = 40; // uplink-side: informational only
        assert!(t.warnings(&c).is_empty());
        c.kernel.0[Counter::BridgeUninspected as usize] = 2;
        let w = t.warnings(&c);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("2 packets from outside reached a container bridge"), "{}", w[0]);
        assert!(t.warnings(&c).is_empty(), "said once");
    }
}
