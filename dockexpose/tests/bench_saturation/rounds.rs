//! The rounds of one tool: the same ab load with the tool detached and attached,
//! interleaved, each round's figures, and their medians.

use std::time::{Duration, Instant};

use crate::{
    ab::run_ab,
    measure::*,
    tools::{Stopped, Tool},
};

/// Share of the CPUs that other builds may take in a round before it counts as skewed.
pub(crate) const SKEWED: f64 = 0.02;

/// The load every round runs: `ab ARGS` in namespace `ns`.
pub(crate) struct Load {
    pub ns: String,
    pub args: Vec<String>,
    pub jiffy: f64,
}

/// One measured round.
#[derive(Default)]
pub(crate) struct Round {
    pub rate: f64,
    pub complete: u64,
    pub failed: u64,
    pub busy_share: f64,
    /// Share of all CPUs that other engineers' compilers used during the load.
    pub compilers: f64,
    pub host_us: f64,
    /// The tool's own process (utime and stime in jiffies).
    pub tool_user_us: Option<f64>,
    pub tool_sys_us: Option<f64>,
    /// user + system from schedstat (ns precision).
    pub tool_us: Option<f64>,
    pub wakeups: Option<f64>,
    pub records: Option<f64>,
    pub record_p50: Option<f64>,
    pub record_p99: Option<f64>,
    pub alert_p99: Option<f64>,
}

/// One tool's rounds: (detached, attached).
pub(crate) struct Rounds {
    pub tool: &'static str,
    pub peer: bool,
    pub detached: Vec<Round>,
    pub attached: Vec<Round>,
}

impl Rounds {
    pub(crate) fn med(&self, attached: bool, f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
        median(if attached { &self.attached } else { &self.detached }.iter().filter_map(f).collect())
    }

    /// The median of the rounds' own ratios, attached / detached: each round's two
    /// halves ran back to back, so the machine's drift between rounds (20 % here, more
    /// than any tool costs) cancels within a round instead of landing in the ratio.
    pub(crate) fn ratio(&self, f: impl Fn(&Round) -> f64 + Copy) -> f64 {
        paired_median(&self.attached, &self.detached, f)
    }

    /// Median attached / median detached (how the ratios were taken before: shown
    /// beside the paired one, for comparison with older runs).
    pub(crate) fn ratio_of_medians(&self, f: impl Fn(&Round) -> f64 + Copy) -> f64 {
        self.med(true, |r| Some(f(r))).unwrap() / self.med(false, |r| Some(f(r))).unwrap()
    }

    pub(crate) fn rate_ratio(&self) -> f64 {
        self.ratio(|r| r.rate)
    }

    pub(crate) fn host_ratio(&self) -> f64 {
        self.ratio(|r| r.host_us)
    }

    pub(crate) fn skewed(&self) -> usize {
        self.detached.iter().chain(&self.attached).filter(|r| r.compilers > SKEWED).count()
    }
}

/// The median of `f(attached[i]) / f(detached[i])` over the rounds.
pub(crate) fn paired_median(attached: &[Round], detached: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    let ratios: Vec<f64> = attached.iter().zip(detached).map(|(a, d)| f(a) / f(d)).collect();
    median(ratios).unwrap_or(f64::NAN)
}

/// `rounds` rounds each way, alternating which goes first so that drift over the run
/// hits both alike.
pub(crate) fn run_rounds(tool: &mut dyn Tool, rounds: usize, load: &Load) -> Rounds {
    eprintln!("{}: {rounds} rounds each way", tool.name());
    let started = Instant::now();
    let mut out = Rounds { tool: tool.name(), peer: tool.is_peer(), detached: Vec::new(), attached: Vec::new() };
    for round in 0..rounds {
        for attach in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let r = if attach { attached_round(tool, load) } else { detached_round(load) };
            eprintln!("{}", describe(tool.name(), round, attach, &r));
            if attach {
                out.attached.push(r)
            } else {
                out.detached.push(r)
            }
        }
    }
    // What each tool adds to the bench's length.
    eprintln!("{}: {rounds} rounds each way took {:.0} s", tool.name(), started.elapsed().as_secs_f64());
    out
}

fn detached_round(load: &Load) -> Round {
    let compilers0 = compiler_jiffies();
    let (b0, t0) = cpu_jiffies();
    let ab = run_ab(&load.ns, &load.args);
    let (b1, t1) = cpu_jiffies();
    Round {
        rate: ab.complete as f64 / ab.seconds,
        complete: ab.complete,
        failed: ab.failed,
        busy_share: (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        compilers: compiler_use(&compilers0, &compiler_jiffies()) as f64 / (t1 - t0).max(1) as f64,
        host_us: (b1 - b0) as f64 * load.jiffy / ab.complete.max(1) as f64,
        ..Round::default()
    }
}

fn attached_round(tool: &mut dyn Tool, load: &Load) -> Round {
    tool.start();
    let before = tool.pid().map(|p| (proc_cpu(p), proc_cpu_ns(p)));
    let compilers0 = compiler_jiffies();
    let (b0, t0) = cpu_jiffies();
    let ab = run_ab(&load.ns, &load.args);
    let (b1, t1) = cpu_jiffies();
    // The work the load caused includes what the tool still has queued when ab ends:
    // wait until it has written it all, then sample. Reading the tool's output to
    // know that is the bench's own work: its CPU is taken back out of the host's.
    let reading = thread_cpu_us();
    settle(tool, ab.complete);
    let reading = thread_cpu_us() - reading;
    let after = tool.pid().map(|p| (proc_cpu(p), proc_cpu_ns(p)));
    let (b2, _) = cpu_jiffies();
    let conns = ab.complete.max(1) as f64;
    let mut r = Round {
        rate: ab.complete as f64 / ab.seconds,
        complete: ab.complete,
        failed: ab.failed,
        busy_share: (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        compilers: compiler_use(&compilers0, &compiler_jiffies()) as f64 / (t1 - t0).max(1) as f64,
        host_us: ((b2 - b0) as f64 * load.jiffy - reading).max(0.0) / conns,
        ..Round::default()
    };
    if let (Some(((u0, s0), ns0)), Some(((u1, s1), ns1))) = (before, after) {
        r.tool_us = Some(ns1.saturating_sub(ns0) as f64 / 1000.0 / conns);
        r.tool_user_us = Some((u1 - u0) as f64 * load.jiffy / conns);
        r.tool_sys_us = Some((s1 - s0) as f64 * load.jiffy / conns);
    }
    let Stopped { records, wakeups, latencies } = tool.stop(ab.complete);
    r.records = records.map(|v| v as f64 / conns);
    r.wakeups = wakeups.map(|v| v as f64 / conns);
    [r.record_p50, r.record_p99, r.alert_p99] = latencies;
    r
}

/// Until the tool has recorded `complete` connections, or its count stops growing
/// for a second (a peer that loses events), at most 10 s. A tool whose output can
/// only be read once it stops is not waited for: a fixed wait would add the machine's
/// other work to its host CPU, and to no other tool's.
fn settle(tool: &dyn Tool, complete: u64) {
    let Some(mut seen) = tool.recorded() else { return };
    let (deadline, mut grew) = (Instant::now() + Duration::from_secs(10), Instant::now());
    while seen < complete && Instant::now() < deadline && grew.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let now = tool.recorded().unwrap_or(seen);
        if now > seen {
            grew = Instant::now();
        }
        seen = now;
    }
}

fn describe(tool: &str, round: usize, attach: bool, r: &Round) -> String {
    format!(
        "{tool} round {round}: {:>8} {:>7.0} conn/s ({} done, {} failed), CPUs {:.1}% busy, host {:.1} µs/conn{}{}{}",
        if attach { "attached" } else { "detached" },
        r.rate,
        r.complete,
        r.failed,
        r.busy_share * 100.0,
        r.host_us,
        match (r.tool_us, r.tool_user_us, r.tool_sys_us) {
            (Some(t), Some(u), Some(s)) => format!(", tool {t:.2} µs/conn ({u:.2} user + {s:.2} sys in jiffies)"),
            _ => String::new(),
        },
        r.records.map(|v| format!(", records/conn {v:.3}")).unwrap_or_default(),
        if r.compilers > SKEWED {
            format!("  [other builds used {:.0}% of the CPUs: skewed]", r.compilers * 100.0)
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(rates: &[f64]) -> Vec<Round> {
        rates.iter().map(|&rate| Round { rate, ..Default::default() }).collect()
    }

    #[test]
    fn the_ratio_is_the_median_of_each_rounds_own_ratio() {
        // The machine slows down in rounds 1 and 2 for both halves alike: each round's
        // ratio sees through it, the ratio of the two medians does not.
        let detached = rounds(&[4320.0, 3584.0, 3541.0, 4104.0, 4111.0]);
        let attached = rounds(&[4262.0, 3603.0, 3833.0, 3997.0, 3886.0]);
        let paired = paired_median(&attached, &detached, |r| r.rate);
        assert!((paired - 4262.0 / 4320.0).abs() < 1e-9, "{paired}");
        let set = Rounds { tool: "t", peer: false, detached, attached };
        assert!((set.ratio_of_medians(|r| r.rate) - 3886.0 / 4104.0).abs() < 1e-9);
        assert!(paired_median(&[], &[], |r| r.rate).is_nan(), "no rounds: no figure, never 1.0");
    }
}
