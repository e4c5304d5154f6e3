//! The kernel-program benchmark (run by `cargo xtask bench`, as root): what the kernel
//! programs cost per packet, measured by the kernel itself with BPF_PROG_TEST_RUN.
//! Outside the product's source: a bench target (`cargo bench --bench
//! kernel_programs -- --repeat N --rounds R`); its pure helpers are unit-tested through
//! tests/bench_helpers.rs.
//!
//! Every program runs `--repeat` times on a crafted frame, and the kernel reports the
//! mean time per run (whole nanoseconds, test harness included). Each figure is set
//! beside an empty program of the same type on the same kind of frame, which is what
//! the harness alone costs: the ratio is the program's own weight.
//!
//! Fairness: within a round, empty and real programs alternate (empty, real, empty,
//! real ...; the order is reversed every other round), and every figure is the median
//! over `--rounds` rounds, printed with its min..max.
//!
//! The SYN that `bridge_egress` reports writes one ring-buffer record per run: the ring
//! (1 MiB, 72-byte records + 8-byte headers) fills after ~13k runs, after which the
//! program takes its "ring buffer full" path. So that figure is taken in batches of
//! `SYN_BATCH` runs, draining the ring between batches, and is the mean weighted by
//! batch size. The kernel counters read afterwards show the records really were made.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, RingBuf},
    programs::{Program, TestRun, TestRunOptions, TestRunResult},
};
use dockexpose_common::{program_names, Counter};

use dockexpose::{
    host::privileges,
    kernel::loader::{CounterSnapshot, Kernel, KernelSettings},
};

#[derive(Debug, clap::Parser, Clone)]
#[command(name = "kernel_programs", about = "Measure dockexpose's kernel programs with BPF_PROG_TEST_RUN (as root)")]
pub struct BenchArgs {
    /// Runs per measurement (the kernel's repeat count).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Rounds; every figure is the median over rounds.
    #[arg(long, value_name = "R", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn main() {
    let args = <BenchArgs as clap::Parser>::parse();
    if let Err(e) = run(&args) {
        // `{:#}`: the whole chain (what failed, then the kernel's reason).
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs per BPF_PROG_TEST_RUN call for the record-writing SYN: well under the
/// ~13k records the ring buffer holds.
pub const SYN_BATCH: u32 = 8_192;

/// Goal: the bridge fast path costs at most this many times the empty classifier.
pub const GOAL_BRIDGE_FASTPATH: f64 = 1.5;
/// Goal: a SYN that writes a record (conntrack lookup included) costs at most this many
/// times the empty classifier.
pub const GOAL_BRIDGE_RECORD: f64 = 6.0;
/// Goal: the uplink program on its fast path (not a new flow) stays within this.
pub const GOAL_XDP_FASTPATH: f64 = 1.5;
/// Flag: the uplink program on a SYN to an unpublished port (a map lookup, no record).
pub const GOAL_XDP_CLOSE: f64 = 2.5;

/// TCX_NEXT (TC_ACT_UNSPEC, -1) as the test run reports it.
const TCX_NEXT: u32 = u32::MAX;
const XDP_PASS: u32 = 2;

// ---------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const ARP_PAYLOAD_LEN: usize = 28;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The outside host of every frame.
pub const OUTSIDE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40_000);
/// A container behind the bridge (after DNAT).
pub const CONTAINER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 251, 0, 2), 80);
/// The host's uplink address, on a port that is not published.
pub const HOST_UNPUBLISHED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 8080);

/// RFC 1071 checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (20 bytes) + TCP (20 bytes, no options), no payload: 54 bytes.
pub fn ipv4_tcp_frame(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + IPV4_HLEN + TCP_HLEN);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());

    let ip = f.len();
    f.push(0x45); // version 4, IHL 5
    f.push(0); // DSCP/ECN
    f.extend_from_slice(&((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes()); // identification
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    f.push(64); // TTL
    f.push(dockexpose_common::PROTO_TCP);
    f.extend_from_slice(&[0, 0]); // checksum, filled below
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let csum = ipv4_checksum(&f[ip..]);
    f[ip + 10..ip + 12].copy_from_slice(&csum.to_be_bytes());

    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // sequence
    let ack = if flags & TCP_ACK != 0 { 1u32 } else { 0 };
    f.extend_from_slice(&ack.to_be_bytes());
    f.push(((TCP_HLEN / 4) as u8) << 4); // data offset
    f.push(flags);
    f.extend_from_slice(&64_240u16.to_be_bytes()); // window
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum (not checked by the programs), urgent
    f
}

/// An ARP request (Ethernet + 28-byte ARP payload): 42 bytes.
pub fn arp_frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + ARP_PAYLOAD_LEN);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes()); // protocol type
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&OUTSIDE.ip().octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&Ipv4Addr::new(10, 251, 0, 1).octets());
    f
}

/// The frames the programs are measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A SYN from outside to a container: `bridge_egress` writes a record for it.
    SynRecord,
    /// An ACK of the same flow: the fast path, most traffic.
    AckFastpath,
    /// An ARP request: not IP.
    NonIp,
    /// A SYN to a host port nobody publishes: `uplink_xdp` looks it up and lets it be.
    SynUnpublished,
}

impl FrameKind {
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::SynRecord => "syn_record",
            FrameKind::AckFastpath => "ack_fastpath",
            FrameKind::NonIp => "non_ip",
            FrameKind::SynUnpublished => "syn_unpublished",
        }
    }

    pub fn build(self) -> Vec<u8> {
        match self {
            FrameKind::SynRecord => ipv4_tcp_frame(OUTSIDE, CONTAINER, TCP_SYN),
            FrameKind::AckFastpath => ipv4_tcp_frame(OUTSIDE, CONTAINER, TCP_ACK),
            FrameKind::NonIp => arp_frame(),
            FrameKind::SynUnpublished => ipv4_tcp_frame(OUTSIDE, HOST_UNPUBLISHED, TCP_SYN),
        }
    }
}

// ---------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------

/// Median of the samples (mean of the middle two for an even count); None when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// Mean of per-batch means, weighted by each batch's run count.
pub fn weighted_mean(batches: &[(f64, u32)]) -> Option<f64> {
    let runs: u64 = batches.iter().map(|&(_, n)| u64::from(n)).sum();
    if runs == 0 {
        return None;
    }
    Some(batches.iter().map(|&(mean, n)| mean * f64::from(n)).sum::<f64>() / runs as f64)
}

/// Sizes of the batches that make `total` runs, none above `batch`.
pub fn batches(total: u32, batch: u32) -> impl Iterator<Item = u32> {
    let batch = batch.max(1);
    let full = total / batch;
    let rest = total % batch;
    std::iter::repeat_n(batch, full as usize).chain((rest > 0).then_some(rest))
}

// ---------------------------------------------------------------------------------
// What is measured
// ---------------------------------------------------------------------------------

struct Figure {
    program: &'static str,
    frame: FrameKind,
    /// Index of the empty program this figure is compared with (None: it is one).
    baseline: Option<usize>,
    /// Runs in batches with the ring buffer drained between them.
    batched: bool,
    expected_retval: u32,
    samples: Vec<f64>,
}

impl Figure {
    fn new(program: &'static str, frame: FrameKind, baseline: Option<usize>, expected_retval: u32) -> Self {
        Self { program, frame, baseline, batched: false, expected_retval, samples: Vec::new() }
    }
}

const EMPTY_TC: usize = 0;
const BRIDGE_ACK: usize = 1;
const BRIDGE_SYN: usize = 2;
const BRIDGE_NON_IP: usize = 3;
const EMPTY_XDP_SYN: usize = 4;
const XDP_SYN: usize = 5;
const EMPTY_XDP_ACK: usize = 6;
const XDP_ACK: usize = 7;

fn figures() -> Vec<Figure> {
    use program_names::*;
    use FrameKind::*;
    let mut syn = Figure::new(BRIDGE_EGRESS, SynRecord, Some(EMPTY_TC), TCX_NEXT);
    syn.batched = true;
    vec![
        Figure::new(BENCH_EMPTY_CLASSIFIER, AckFastpath, None, TCX_NEXT),
        Figure::new(BRIDGE_EGRESS, AckFastpath, Some(EMPTY_TC), TCX_NEXT),
        syn,
        Figure::new(BRIDGE_EGRESS, NonIp, Some(EMPTY_TC), TCX_NEXT),
        Figure::new(BENCH_EMPTY_XDP, SynUnpublished, None, XDP_PASS),
        Figure::new(UPLINK_XDP, SynUnpublished, Some(EMPTY_XDP_SYN), XDP_PASS),
        Figure::new(BENCH_EMPTY_XDP, AckFastpath, None, XDP_PASS),
        Figure::new(UPLINK_XDP, AckFastpath, Some(EMPTY_XDP_ACK), XDP_PASS),
    ]
}

/// One round: each real program right after its empty counterpart.
const ROUND: [usize; 10] = [
    EMPTY_TC,
    BRIDGE_ACK,
    EMPTY_TC,
    BRIDGE_SYN,
    EMPTY_TC,
    BRIDGE_NON_IP,
    EMPTY_XDP_SYN,
    XDP_SYN,
    EMPTY_XDP_ACK,
    XDP_ACK,
];

/// The order of round `r`: as written on even rounds, reversed on odd ones.
pub fn round_order(r: u32) -> Vec<usize> {
    let mut order = ROUND.to_vec();
    if r % 2 == 1 {
        order.reverse();
    }
    order
}

struct Bench {
    kernel: Kernel,
    ring: RingBuf<MapData>,
    /// Records drained from the ring buffer since the last reset.
    drained: u64,
}

impl Bench {
    fn test_run(&mut self, name: &'static str, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let prog = self
            .kernel
            .program_mut(name)
            .with_context(|| format!("kernel program {name} is missing from the eBPF object"))?;
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        let result = match prog {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => bail!("kernel program {name} is neither a classifier nor an XDP program"),
        };
        result.with_context(|| format!("BPF_PROG_TEST_RUN of {name} ({repeat} runs) failed"))
    }

    fn drain(&mut self) {
        while let Some(record) = self.ring.next() {
            drop(record);
            self.drained += 1;
        }
    }

    /// Mean ns per run of one figure over `repeat` runs.
    fn measure(&mut self, fig: &Figure, frame: &[u8], repeat: u32) -> Result<f64> {
        let sizes: Vec<u32> = if fig.batched { batches(repeat, SYN_BATCH).collect() } else { vec![repeat] };
        let mut done = Vec::with_capacity(sizes.len());
        for n in sizes {
            if fig.batched {
                self.drain();
            }
            let r = self.test_run(fig.program, frame, n)?;
            if r.return_value != fig.expected_retval {
                bail!(
                    "{} on {} returned {} instead of {}: the program does not take the path measured",
                    fig.program,
                    fig.frame.name(),
                    r.return_value,
                    fig.expected_retval
                );
            }
            done.push((r.duration.as_nanos() as f64, n));
        }
        if fig.batched {
            self.drain();
        }
        weighted_mean(&done).context("no runs")
    }
}

fn load_baselines(kernel: &mut Kernel) -> Result<()> {
    for name in [program_names::BENCH_EMPTY_CLASSIFIER, program_names::BENCH_EMPTY_XDP] {
        let prog = kernel
            .program_mut(name)
            .with_context(|| format!("kernel program {name} is missing from the eBPF object"))?;
        let loaded = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            _ => bail!("kernel program {name} is neither a classifier nor an XDP program"),
        };
        loaded.with_context(|| format!("loading kernel program {name} failed"))?;
    }
    Ok(())
}

fn delta(after: &CounterSnapshot, before: &CounterSnapshot, c: Counter) -> u64 {
    after.get(c).saturating_sub(before.get(c))
}

/// "1.45x" for a real figure, or the baseline mark.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0).then(|| value / baseline)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repeat == 0 || args.rounds == 0 {
        bail!("--repeat and --rounds must be at least 1");
    }
    privileges::check()?;
    // The same SYN runs a million times: with a zero retransmit window each run is a
    // new connection (a record), not a repeat of the first.
    let (mut kernel, ring) = Kernel::load(KernelSettings { retransmit_window_ns: 0, ..KernelSettings::default() })?;
    load_baselines(&mut kernel)?;
    let mut bench = Bench { kernel, ring, drained: 0 };
    let mut figs = figures();
    let frames: Vec<Vec<u8>> = figs.iter().map(|f| f.frame.build()).collect();

    // Warm-up (not recorded): fault in the maps, the frames, the code paths.
    let warm = args.repeat.min(10_000);
    for (i, fig) in figs.iter().enumerate() {
        bench.measure(fig, &frames[i], warm)?;
    }

    bench.drained = 0;
    let before = bench.kernel.counters()?;
    for r in 0..args.rounds {
        for i in round_order(r) {
            let ns = bench.measure(&figs[i], &frames[i], args.repeat)?;
            figs[i].samples.push(ns);
        }
    }
    let after = bench.kernel.counters()?;

    print_report(args, &figs, &before, &after, bench.drained);
    Ok(())
}

struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(samples: &[f64]) -> Summary {
    Summary {
        median: median(samples).unwrap_or(f64::NAN),
        min: samples.iter().copied().fold(f64::INFINITY, f64::min),
        max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn print_report(args: &BenchArgs, figs: &[Figure], before: &CounterSnapshot, after: &CounterSnapshot, drained: u64) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "dockexpose bench: BPF_PROG_TEST_RUN, {} runs per measurement, {} rounds (kernel {})",
        args.repeat,
        args.rounds,
        release.trim()
    );
    println!(
        "figures: median over rounds of the kernel's mean ns/run (whole ns per measurement; \
         test harness included, as in the empty programs)"
    );
    let sums: Vec<Summary> = figs.iter().map(|f| summarize(&f.samples)).collect();
    let line = |i: usize| {
        let f = &figs[i];
        let s = &sums[i];
        let vs = match f.baseline {
            Some(b) => match ratio(s.median, sums[b].median) {
                Some(x) => format!("{x:5.2}x empty"),
                None => "    -x empty".to_string(),
            },
            None => "baseline".to_string(),
        };
        let batched =
            if f.batched { format!("  (batches of {SYN_BATCH}, ring drained between)") } else { String::new() };
        println!(
            "  {:<23} {:<16} {:6.1} ns/run (min {:6.1} max {:6.1})  {}{}",
            f.program,
            f.frame.name(),
            s.median,
            s.min,
            s.max,
            vs,
            batched
        );
    };
    println!();
    println!("bridge (TC classifier):");
    for i in [EMPTY_TC, BRIDGE_ACK, BRIDGE_SYN, BRIDGE_NON_IP] {
        line(i);
    }
    println!();
    println!("uplink (XDP):");
    for i in [EMPTY_XDP_SYN, XDP_SYN, EMPTY_XDP_ACK, XDP_ACK] {
        line(i);
    }

    let syn_runs = u64::from(args.repeat) * u64::from(args.rounds);
    let emitted = delta(after, before, Counter::ReachedEmitted);
    let lost = delta(after, before, Counter::RingbufFull);
    println!();
    println!(
        "syn_record records: {}={} {}={} (over {} measured SYN runs; {} records drained)",
        Counter::ReachedEmitted.name(),
        emitted,
        Counter::RingbufFull.name(),
        lost,
        syn_runs,
        drained
    );
    if emitted != syn_runs || lost != 0 {
        println!("  warning: not every SYN run wrote a record: the syn_record figure mixes in other paths");
    }

    let goal = |label: &str, i: usize, limit: f64| {
        let b = figs[i].baseline.expect("goals compare real programs");
        match ratio(sums[i].median, sums[b].median) {
            Some(x) => {
                let verdict = if x <= limit { "met" } else { "NOT met" };
                println!("  {label} (<= {limit:.1}x {}): {x:.2}x  {verdict}", figs[b].program);
            }
            None => println!("  {label}: no baseline figure"),
        }
    };
    println!();
    println!("goals:");
    goal("bridge_egress fast path (ack_fastpath) within 1.5x of empty", BRIDGE_ACK, GOAL_BRIDGE_FASTPATH);
    goal(
        "bridge_egress new-flow record (syn_record, conntrack asked) within 6x of empty",
        BRIDGE_SYN,
        GOAL_BRIDGE_RECORD,
    );
    goal("uplink_xdp fast path (ack_fastpath) within 1.5x of empty", XDP_ACK, GOAL_XDP_FASTPATH);
    goal("uplink_xdp on syn_unpublished (no record) within 2.5x of empty", XDP_SYN, GOAL_XDP_CLOSE);
}

#[cfg(test)]
#[path = "kernel_programs/tests.rs"]
mod tests;
