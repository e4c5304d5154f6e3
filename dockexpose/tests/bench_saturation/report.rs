//! dockexpose's own figures at saturation, in detail: rates, CPU, the ring, the
//! record and alert latencies (saturated and idle) against their goals.

use crate::{
    measure::*,
    rounds::{Round, Rounds, SKEWED},
    table::{GOAL_DAEMON_US, GOAL_HOST_CPU_RATIO, GOAL_RATE_RATIO},
    IDLE_CONNECTIONS, IDLE_GAP, LENGTH_S, SATURATED,
};

const GOAL_RECORD_P99_US: f64 = 100_000.0;
const GOAL_ALERT_P99_US: f64 = 250_000.0;

/// What the run around the rounds measured.
pub(crate) struct Context {
    pub invocation: String,
    /// Busy share of the CPUs before the load.
    pub background: f64,
    pub jiffy: f64,
    /// Alerts the syslog receiver got.
    pub alerts: u64,
}

/// The idle round: the daemon's latency figures and, seen from outside, connect to
/// record in the log.
pub(crate) struct Idle {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub alert_p99: Option<f64>,
    pub seen_ms: Vec<f64>,
    pub missing: usize,
}

pub(crate) fn print_dockexpose(dx: &Rounds, ctx: &Context, idle: &Idle) {
    let (detached, attached) = (&dx.detached, &dx.attached);
    let med = |v: &[Round], f: &dyn Fn(&Round) -> Option<f64>| median(v.iter().filter_map(f).collect());
    let (d_rate, a_rate) = (med(detached, &|r| Some(r.rate)).unwrap(), med(attached, &|r| Some(r.rate)).unwrap());
    let (d_host, a_host) = (med(detached, &|r| Some(r.host_us)).unwrap(), med(attached, &|r| Some(r.host_us)).unwrap());
    let (d_busy, a_busy) =
        (med(detached, &|r| Some(r.busy_share)).unwrap(), med(attached, &|r| Some(r.busy_share)).unwrap());
    let user = med(attached, &|r| r.tool_user_us);
    let sys = med(attached, &|r| r.tool_sys_us);
    let daemon = med(attached, &|r| r.tool_us);
    let wakeups = med(attached, &|r| r.wakeups);
    let records = med(attached, &|r| r.records);
    let (rec50, rec99, alert99) =
        (med(attached, &|r| r.record_p50), med(attached, &|r| r.record_p99), med(attached, &|r| r.alert_p99));
    let failed: u64 = detached.iter().chain(attached).map(|r| r.failed).sum();
    let (rate_ratio, host_ratio) = (dx.rate_ratio(), dx.host_ratio());
    let (rate_of_medians, host_of_medians) = (dx.ratio_of_medians(|r| r.rate), dx.ratio_of_medians(|r| r.host_us));
    let all = |v: &[Round]| v.iter().map(|r| format!("{:.0}", r.rate)).collect::<Vec<_>>().join(" ");

    println!(
        "dockexpose at saturation: {} rounds of {LENGTH_S} s each way, interleaved; medians, ratios as the median of each round's own",
        attached.len()
    );
    println!("  load: {}", ctx.invocation);
    println!(
        "  CPUs busy during the load: detached {:.1}%, attached {:.1}% (saturated: >= {:.0}%)",
        d_busy * 100.0,
        a_busy * 100.0,
        SATURATED * 100.0
    );
    println!("  CPUs busy before the load (other work on the machine): {:.1}%", ctx.background * 100.0);
    let skewed = dx.skewed();
    println!("  rounds with other builds running (skewed): {skewed} of {}", detached.len() + attached.len());
    if skewed > 0 || ctx.background > 0.10 {
        println!("  WARNING: other work shared the CPUs ({:.0}% busy before the load, {skewed} rounds where other builds took over {:.0}% of the CPUs): these figures are not the daemon's alone; rerun on a quiet machine", ctx.background * 100.0, SKEWED * 100.0);
    }
    println!("  ab failed requests: {failed} in all rounds");
    println!("  connections/s        detached {d_rate:>8.0}   attached {a_rate:>8.0}   ratio {rate_ratio:.3} (of the medians {rate_of_medians:.3})  (all: detached {}; attached {})", all(detached), all(attached));
    println!("  host CPU µs/conn     detached {d_host:>8.2}   attached {a_host:>8.2}   ratio {host_ratio:.3} (of the medians {host_of_medians:.3})");
    println!(
        "  daemon CPU µs/conn   total {} (schedstat, ns precision)   user {}   system {} (utime/stime: 10 ms jiffies, ±{:.2} µs/conn a round)",
        show(daemon, "µs"),
        show(user, "µs"),
        show(sys, "µs"),
        ctx.jiffy / med(attached, &|r| Some(r.complete as f64)).unwrap_or(1.0)
    );
    println!("  ring buffer          wakeups/conn {}   records/conn {}", show(wakeups, ""), show(records, ""));
    println!(
        "  latency (saturated)  record p50 {}   record p99 {}   alert p99 {}",
        show(rec50, "µs"),
        show(rec99, "µs"),
        show(alert99, "µs")
    );
    println!(
        "  latency (idle, {IDLE_CONNECTIONS} connections {IDLE_GAP:?} apart)  record p50 {}   record p99 {}   alert p99 {}",
        show(idle.p50, "µs"),
        show(idle.p99, "µs"),
        show(idle.alert_p99, "µs")
    );
    println!(
        "  idle, seen from outside: connect to record in the log p50 {}  max {}{}",
        show(percentile(idle.seen_ms.clone(), 50.0), "ms"),
        show(percentile(idle.seen_ms.clone(), 100.0), "ms"),
        if idle.missing > 0 { format!("  ({} not seen within 2 s)", idle.missing) } else { String::new() }
    );
    println!(
        "  alert sink           syslog over UDP: {} alerts received (one per new source and window; the audit log never waits for it)",
        ctx.alerts
    );
    let goals = [
        (format!("rate attached/detached >= {GOAL_RATE_RATIO}"), goal(Some(rate_ratio), |x| x >= GOAL_RATE_RATIO)),
        (
            format!("host CPU per connection attached/detached <= {GOAL_HOST_CPU_RATIO}"),
            goal(Some(host_ratio), |x| x <= GOAL_HOST_CPU_RATIO),
        ),
        (format!("daemon CPU (user+sys) <= {GOAL_DAEMON_US} µs per connection"), goal(daemon, |x| x <= GOAL_DAEMON_US)),
        ("record p99 <= 100 ms (saturated)".to_string(), goal(rec99, |x| x <= GOAL_RECORD_P99_US)),
        ("record p99 <= 100 ms (idle)".to_string(), goal(idle.p99, |x| x <= GOAL_RECORD_P99_US)),
        ("alert p99 <= 250 ms (saturated)".to_string(), goal(alert99, |x| x <= GOAL_ALERT_P99_US)),
        ("alert p99 <= 250 ms (idle)".to_string(), goal(idle.alert_p99, |x| x <= GOAL_ALERT_P99_US)),
    ];
    println!("  goals:");
    for (what, verdict) in &goals {
        println!("    {what}: {verdict}");
    }
    let met = goals.iter().filter(|(_, v)| *v == "met").count();
    println!(
        "SATURATION SUMMARY: {met}/{} goals met; rate x{rate_ratio:.3}, host CPU x{host_ratio:.3}, daemon {} /conn, record p99 {}, alert p99 {}; CPUs {:.0}% busy; {skewed} rounds skewed by other builds",
        goals.len(),
        show(daemon, "µs"),
        show(rec99, "µs"),
        show(alert99, "µs"),
        d_busy.min(a_busy) * 100.0
    );
}
