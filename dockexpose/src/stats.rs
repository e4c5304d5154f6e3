//! Kernel and userspace counters: formatting, and noticing loss as soon as it happens.

use dockexpose_common::Counter;

use crate::{kernel::loader::CounterSnapshot, output::alerts::HealthCondition};

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
    /// Kernel records of the daemon's own verify probes (`watch --verify-every`): not
    /// outside connections, not written.
    pub probe_records: u64,
    /// Times the kernel woke the ring-buffer reader, and records it took.
    pub reader_wakeups: u64,
    pub records_read: u64,
    /// stderr lines dropped because the stderr thread was behind (a reader that
    /// stopped reading): `output::console`.
    pub stderr_lines_dropped: u64,
    /// From a packet's kernel timestamp to its record in the audit log (attempted and
    /// reached records; verdicts wait for their window by design), and to its alert.
    pub record_latency: LatencySummary,
    pub alert_latency: LatencySummary,
}

/// p50 and p99 of a latency, in microseconds (0 when nothing was measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Latencies in microseconds, in log-linear buckets (8 per power of two): percentiles
/// within 12.5 %, in constant memory, at the cost of an add per sample.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: vec![0; 64 * 8], count: 0 }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < 8 {
            return us as usize;
        }
        let p = 63 - us.leading_zeros() as usize;
        (p - 2) * 8 + ((us >> (p - 3)) & 7) as usize
    }

    /// The largest value that falls into bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < 8 {
            return i as u64;
        }
        let (p, sub) = (i / 8 + 2, (i % 8) as u64);
        ((8 + sub + 1) << (p - 3)) - 1
    }

    pub fn record(&mut self, us: u64) {
        self.buckets[Self::bucket(us)] += 1;
        self.count += 1;
    }

    /// The value below which a share `q` (0..=1) of the samples fall, rounded up to
    /// its bucket's bound; 0 with no samples.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::upper(i);
            }
        }
        Self::upper(self.buckets.len() - 1)
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary { p50_us: self.percentile(0.5), p99_us: self.percentile(0.99) }
    }
}

impl PipelineCounters {
    /// Records that never reached the outputs.
    pub fn lost(&self) -> u64 {
        self.kernel.get(Counter::RingbufFull) + self.reader_lost
    }

    /// Every counter by name, kernel's first (`status` shows them all).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Counter::ALL.iter().map(|c| (c.name(), self.kernel.get(*c))).collect();
        out.extend([
            ("reader_lost", self.reader_lost),
            ("unbound_attempts", self.unbound_attempts),
            ("answers_received", self.answers_received),
            ("attempts_untracked", self.attempts_untracked),
            ("probe_records", self.probe_records),
            ("reader_wakeups", self.reader_wakeups),
            ("records_read", self.records_read),
            ("stderr_lines_dropped", self.stderr_lines_dropped),
            ("record_latency_p50_us", self.record_latency.p50_us),
            ("record_latency_p99_us", self.record_latency.p99_us),
            ("alert_latency_p50_us", self.alert_latency.p50_us),
            ("alert_latency_p99_us", self.alert_latency.p99_us),
        ]);
        out
    }

    /// `name=value` pairs on one line: the last word of a run (`final counters`).
    pub fn format(&self) -> String {
        self.named().iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ")
    }

    /// A few words for people on what happened since `before`: connections that reached
    /// containers, attempts on the uplinks, and loss (always said, even when nothing).
    pub fn summary(&self, before: &PipelineCounters) -> String {
        let since = |c: Counter| self.kernel.get(c).saturating_sub(before.kernel.get(c));
        let lost = self.lost().saturating_sub(before.lost());
        let mut line = format!(
            "{} connections reached containers, {} attempts seen on the uplinks",
            since(Counter::ReachedEmitted),
            since(Counter::AttemptsEmitted)
        );
        if lost == 0 {
            line.push_str(", nothing lost");
        } else {
            line.push_str(&format!(", {lost} RECORDS LOST (see the warning)"));
        }
        if self.record_latency.p99_us > 0 {
            line.push_str(&format!("; record latency p99 {:.1} ms", self.record_latency.p99_us as f64 / 1000.0));
        }
        line
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
    /// Warnings for whatever got worse since the last call, with the health condition
    /// each one is.
    pub fn warnings(&mut self, now: &PipelineCounters) -> Vec<(HealthCondition, String)> {
        let mut out = Vec::new();
        let lost = now.lost();
        if lost > self.lost {
            let line = format!(
                "WARNING: {} connection records lost ({} in total: ring buffer full {}, reader overrun {}); \
                 the audit log is incomplete. Fewer watched sources or a faster disk for --json help",
                lost - self.lost,
                lost,
                now.kernel.get(Counter::RingbufFull),
                now.reader_lost
            );
            out.push((HealthCondition::RecordsLost, line));
            self.lost = lost;
        }
        let failures = now.kernel.get(Counter::MapUpdateFailed);
        if failures > self.map_failures {
            let line = format!(
                "WARNING: {} kernel flow-table updates failed ({} in total): some flows may be reported twice",
                failures - self.map_failures,
                failures
            );
            out.push((HealthCondition::FlowTable, line));
            self.map_failures = failures;
        }
        let uninspected = now.kernel.get(Counter::BridgeUninspected);
        if uninspected > self.uninspected {
            let line = format!(
                "WARNING: {} packets from outside reached a container bridge and could not be inspected \
                 ({} in total, counter bridge_uninspected): an IPv6 extension-header chain longer than the \
                 program walks, a truncated transport header, or a fragment conntrack could not place. \
                 A connection may have started unseen",
                uninspected - self.uninspected,
                uninspected
            );
            out.push((HealthCondition::Uninspected, line));
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
        PipelineCounters { kernel: k, reader_lost, ..Default::default() }
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
    fn the_summary_says_what_happened_since_the_last_one_and_always_says_loss() {
        let (before, now) = (counters(0, 0), counters(2, 1));
        let line = now.summary(&before);
        assert!(line.contains("reached containers"), "{line}");
        assert!(line.contains("3 RECORDS LOST"), "{line}");
        assert!(
            now.summary(&now).contains("0 connections reached containers")
                && now.summary(&now).contains("nothing lost")
        );
        assert!(line.len() < 200, "a short line: {line}");
        assert!(now.summary(&PipelineCounters::default()).starts_with("7 connections reached containers"));
    }

    #[test]
    fn each_loss_is_reported_once() {
        let mut t = LossTracker::default();
        assert!(t.warnings(&counters(0, 0)).is_empty());
        let w = t.warnings(&counters(3, 1));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, HealthCondition::RecordsLost);
        assert!(w[0].1.contains("4 connection records lost"), "{}", w[0].1);
        assert!(t.warnings(&counters(3, 1)).is_empty());
        assert!(t.warnings(&counters(5, 1))[0].1.contains("2 connection records lost"));
    }

    #[test]
    fn latency_percentiles_are_within_an_eighth() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(0.99), 0, "nothing measured");
        for us in 1..=1000 {
            h.record(us);
        }
        let (p50, p99) = (h.percentile(0.5), h.percentile(0.99));
        assert!((500..=563).contains(&p50), "p50 {p50}");
        assert!((990..=1114).contains(&p99), "p99 {p99}");
        h.record(5_000_000);
        assert!(h.percentile(1.0) >= 5_000_000, "the maximum is not lost");
        for us in [0, 7, 8, 15, 16, 1 << 40] {
            let b = LatencyHistogram::bucket(us);
            assert!(LatencyHistogram::upper(b) >= us && (b == 0 || LatencyHistogram::upper(b - 1) < us), "{us}");
        }
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
        assert_eq!(w[0].0, HealthCondition::Uninspected);
        assert!(w[0].1.contains("2 packets from outside reached a container bridge"), "{}", w[0].1);
        assert!(t.warnings(&c).is_empty(), "said once");
    }
}
