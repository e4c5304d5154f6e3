//! What the benchmark attaches around a round: a `Tool`. dockexpose itself (the daemon
//! writing its real audit log) and the floor (dockexpose's empty program on the same
//! hooks, no process); the peers (tcpdump, conntrack, ulogd2) are in peers.rs.

use std::path::PathBuf;

use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use dockexpose::kernel::loader::{Kernel, KernelSettings};
use dockexpose_common::program_names;

use crate::{
    measure::maybe_counter,
    support::{tcx_programs, Watcher},
};

/// What a tool counted in one attached round.
#[derive(Default)]
pub(crate) struct Stopped {
    /// Records it wrote (dockexpose: records read from the ring).
    pub records: Option<u64>,
    pub wakeups: Option<u64>,
    /// dockexpose's record p50, record p99 and alert p99 (µs).
    pub latencies: [Option<f64>; 3],
}

pub(crate) trait Tool {
    fn name(&self) -> &'static str;
    /// A peer is one dockexpose must beat; the floor and dockexpose are not.
    fn is_peer(&self) -> bool {
        true
    }
    /// Attaches and returns once the tool records.
    fn start(&mut self);
    /// The tool's own process, whose CPU is its cost (None: the kernel does it all).
    fn pid(&self) -> Option<u32>;
    /// This round's connections recorded so far, when the tool's output can be read
    /// while it runs (None: only at stop).
    fn recorded(&self) -> Option<u64>;
    /// Detaches; panics when it recorded nothing of the round's `complete`
    /// connections (a peer that records nothing is no win to report).
    fn stop(&mut self, complete: u64) -> Stopped;
}

/// dockexpose watching, with its real JSON audit log and one alert sink.
pub(crate) struct Dockexpose {
    pub args: Vec<String>,
    pub json: PathBuf,
    /// The source address of the load: its "reached" records are counted.
    pub src: String,
    pub watcher: Option<Watcher>,
}

impl Tool for Dockexpose {
    fn name(&self) -> &'static str {
        "dockexpose"
    }

    fn is_peer(&self) -> bool {
        false
    }

    fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.watcher = Some(Watcher::start(&args, self.json.clone()));
    }

    fn pid(&self) -> Option<u32> {
        self.watcher.as_ref().map(Watcher::pid)
    }

    fn recorded(&self) -> Option<u64> {
        Some(reached_in_log(&self.json, &self.src) as u64)
    }

    fn stop(&mut self, complete: u64) -> Stopped {
        let (records, status, lines) = self.watcher.take().expect("dockexpose started").stop();
        assert!(status.success(), "dockexpose exited with {status}");
        let reached = records.iter().filter(|r| r["stage"] == "reached" && r["src_ip"] == self.src.as_str()).count();
        assert!(
            reached as u64 >= complete,
            "every connection recorded while attached: {reached} reached records < {complete} connections"
        );
        let last = lines.iter().find(|l| l.contains("final counters")).expect("a final counters line");
        Stopped {
            records: maybe_counter(last, "records_read"),
            wakeups: maybe_counter(last, "reader_wakeups"),
            latencies: latencies(last),
        }
    }
}

/// The daemon's latency figures from its final counters line.
pub(crate) fn latencies(last: &str) -> [Option<f64>; 3] {
    ["record_latency_p50_us", "record_latency_p99_us", "alert_latency_p99_us"]
        .map(|n| maybe_counter(last, n).map(|v| v as f64))
}

/// "reached" records of `src` in the audit log so far.
pub(crate) fn reached_in_log(json: &std::path::Path, src: &str) -> usize {
    let needle = format!("\"src_ip\":\"{src}\"");
    std::fs::read_to_string(json)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"stage\":\"reached\"") && l.contains(&needle))
        .count()
}

/// The floor: dockexpose's empty programs on the hooks dockexpose uses (TCX egress
/// and ingress on the bridge; TCX egress on the uplink and, for attempts, TCX ingress
/// or XDP as `hook` says). What any eBPF observer pays before doing anything.
pub(crate) struct Floor {
    pub bridge: String,
    pub uplink: String,
    /// "tc" or "xdp", as dockexpose's --uplink-hook.
    pub hook: String,
    /// Loaded once; dropping it detaches every link (TCX and XDP links are fds).
    kernel: Option<Kernel>,
}

impl Floor {
    pub(crate) fn new(bridge: &str, uplink: &str, hook: &str) -> Self {
        Self { bridge: bridge.into(), uplink: uplink.into(), hook: hook.into(), kernel: None }
    }

    fn load() -> Kernel {
        let (mut kernel, _ring) = Kernel::load(KernelSettings::default()).expect("load dockexpose's eBPF object");
        let p: &mut SchedClassifier = kernel
            .program_mut(program_names::BENCH_EMPTY_CLASSIFIER)
            .expect("bench_empty_classifier in the object")
            .try_into()
            .expect("a classifier");
        p.load().expect("load bench_empty_classifier");
        let p: &mut Xdp =
            kernel.program_mut(program_names::BENCH_EMPTY_XDP).expect("bench_empty_xdp").try_into().expect("XDP");
        p.load().expect("load bench_empty_xdp");
        kernel
    }
}

impl Tool for Floor {
    fn name(&self) -> &'static str {
        "empty program (floor)"
    }

    fn is_peer(&self) -> bool {
        false
    }

    fn start(&mut self) {
        let mut kernel = Self::load();
        let tc: &mut SchedClassifier =
            kernel.program_mut(program_names::BENCH_EMPTY_CLASSIFIER).unwrap().try_into().unwrap();
        let tcx = || TcAttachOptions::TcxOrder(LinkOrder::default());
        for (iface, dir) in [
            (&self.bridge, TcAttachType::Egress),
            (&self.bridge, TcAttachType::Ingress),
            (&self.uplink, TcAttachType::Egress),
        ] {
            tc.attach_with_options(iface, dir, tcx())
                .unwrap_or_else(|e| panic!("attach the empty classifier to {iface}: {e}"));
        }
        if self.hook == "xdp" {
            let xdp: &mut Xdp = kernel.program_mut(program_names::BENCH_EMPTY_XDP).unwrap().try_into().unwrap();
            // As dockexpose: native where the driver has it, generic otherwise.
            if xdp.attach(&self.uplink, XdpMode::Driver).is_err() {
                xdp.attach(&self.uplink, XdpMode::Skb).expect("attach the empty XDP program");
            }
        } else {
            tc.attach_with_options(&self.uplink, TcAttachType::Ingress, tcx())
                .expect("attach the empty classifier to the uplink's ingress");
        }
        // It runs where dockexpose would: check the kernel says so.
        for (iface, egress) in [(&self.bridge, true), (&self.bridge, false), (&self.uplink, true)] {
            let progs = tcx_programs(iface, egress);
            assert!(progs.iter().any(|p| p.starts_with("bench_empty")), "empty program not on {iface}: {progs:?}");
        }
        self.kernel = Some(kernel);
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn recorded(&self) -> Option<u64> {
        None
    }

    fn stop(&mut self, _complete: u64) -> Stopped {
        drop(self.kernel.take());
        let left = tcx_programs(&self.bridge, true);
        assert!(!left.iter().any(|p| p.starts_with("bench_empty")), "empty program still on {}: {left:?}", self.bridge);
        Stopped::default()
    }
}
