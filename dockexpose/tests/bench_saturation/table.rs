//! The peers table (issue 22): one markdown row per tool, each ratio against the same
//! load with no tool at all, and dockexpose's goals marked met or NOT met.

use crate::{
    measure::{goal, show},
    rounds::Rounds,
};

// The goals of issue 22, as median ratios against no tool at all (`Rounds::ratio`).
pub(crate) const GOAL_RATE_RATIO: f64 = 0.99;
pub(crate) const GOAL_HOST_CPU_RATIO: f64 = 1.02;
pub(crate) const GOAL_DAEMON_US: f64 = 2.0;

/// "Linux 6.18.44, 2 CPUs, AMD EPYC ...": the machine the figures are from.
pub(crate) fn machine() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown model");
    format!("Linux {}, {cpus} CPUs, {model}", release.trim())
}

fn ratio_cell(v: f64, verdict: Option<&str>) -> String {
    match verdict {
        Some(verdict) => format!("{v:.3}x {verdict}"),
        None => format!("{v:.3}x"),
    }
}

/// Prints the table; `all[0]` is dockexpose. Returns how many goals were met, of how many.
pub(crate) fn print_peers_table(all: &[Rounds]) -> (usize, usize) {
    let dx = &all[0];
    let (rate, host) = (dx.rate_ratio(), dx.host_ratio());
    let daemon = dx.med(true, |r| r.tool_us);
    let peers: Vec<&Rounds> = all.iter().filter(|r| r.peer).collect();
    let behind_rate: Vec<&str> = peers.iter().filter(|p| rate <= p.rate_ratio()).map(|p| p.tool).collect();
    let behind_cpu: Vec<&str> = peers.iter().filter(|p| host >= p.host_ratio()).map(|p| p.tool).collect();
    let ahead = |behind: &[&str]| {
        if behind.is_empty() {
            "met".to_string()
        } else {
            format!("NOT met (behind {})", behind.join(", "))
        }
    };
    let goals = [
        (format!("rate >= {GOAL_RATE_RATIO}x"), goal(Some(rate), |x| x >= GOAL_RATE_RATIO).to_string()),
        (
            format!("host CPU/conn <= {GOAL_HOST_CPU_RATIO}x"),
            goal(Some(host), |x| x <= GOAL_HOST_CPU_RATIO).to_string(),
        ),
        (format!("daemon CPU <= {GOAL_DAEMON_US} µs/conn"), goal(daemon, |x| x <= GOAL_DAEMON_US).to_string()),
        ("ahead of every peer on rate".to_string(), ahead(&behind_rate)),
        ("ahead of every peer on CPU".to_string(), ahead(&behind_cpu)),
    ];

    println!();
    println!(
        "PEERS: the same load through a published port, each tool attached vs no tool at all, interleaved; each ratio is the median of the rounds' own (attached / the detached half next to it)"
    );
    println!("machine: {}", machine());
    println!();
    println!("| tool | rounds | rate ratio | host CPU/conn ratio | tool's own CPU µs/conn | records/conn | wakeups/conn | dockexpose ahead (rate, CPU) |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in all {
        let is_dx = std::ptr::eq(r, dx);
        let (rr, hr) = (r.rate_ratio(), r.host_ratio());
        let vs = if is_dx {
            "-".to_string()
        } else if !r.peer {
            "floor, not a peer".to_string()
        } else {
            let yes = |b: bool| if b { "yes" } else { "NO" };
            format!("{}, {}", yes(rate > rr), yes(host < hr))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {vs} |",
            r.tool,
            r.attached.len(),
            ratio_cell(rr, is_dx.then_some(goals[0].1.as_str())),
            ratio_cell(hr, is_dx.then_some(goals[1].1.as_str())),
            match (r.med(true, |x| x.tool_us), is_dx) {
                (Some(us), true) => format!("{} {}", show(Some(us), "µs"), goals[2].1),
                (Some(us), false) => show(Some(us), "µs"),
                (None, _) => "none (kernel only)".to_string(),
            },
            show(r.med(true, |x| x.records), "").trim_end(),
            show(r.med(true, |x| x.wakeups), "").trim_end(),
        );
    }
    println!();
    println!("| dockexpose's goal | verdict |");
    println!("|---|---|");
    for (what, verdict) in &goals {
        println!("| {what} | {verdict} |");
    }
    let skewed: usize = all.iter().map(Rounds::skewed).sum();
    let total: usize = all.iter().map(|r| r.detached.len() + r.attached.len()).sum();
    println!("rounds skewed by other builds: {skewed} of {total}");
    let met = goals.iter().filter(|(_, v)| v == "met").count();
    println!("PEERS SUMMARY: {met}/{} goals met", goals.len());
    (met, goals.len())
}
