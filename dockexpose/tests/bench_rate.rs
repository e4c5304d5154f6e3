//! Benchmark, not a test (ignored; `cargo xtask bench` runs it): the rate of new
//! connections through a published port with dockexpose attached (bridge and uplink
//! programs, daemon writing the audit log) against detached, interleaved in one run.
//! Goal: attached >= 0.95x detached. Needs root and Docker.

mod support;

use std::time::Duration;

use support::{docker, *};

const ROUNDS: usize = 4;
const LENGTH: Duration = Duration::from_secs(3);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn connection_rate_attached_vs_detached() {
    let test = "connection_rate_attached_vs_detached";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("r");
    let hook = bench_uplink_hook();
    let port = 30000 + outside.n as u16;
    let _web = docker::Container::run(
        &format!("dx-rate-{}", outside.n),
        &["-p", &format!("{port}:80")],
        &image,
        &["80", "5300"],
    );
    let json = std::env::temp_dir().join(format!("dockexpose-rate-{}.json", outside.n));
    // Warm up conntrack, ARP, the container.
    connect_loop(&outside.ns, outside.src4(), outside.host4(port), Duration::from_millis(500));

    let (mut detached, mut attached) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so that drift over the run hits both alike.
        for attach in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let watcher = attach.then(|| {
                Watcher::start(
                    &["--uplink", &outside.uplink, "--uplink-hook", &hook, "--quiet", "--stats-interval", "0"],
                    json.clone(),
                )
            });
            let n = connect_loop(&outside.ns, outside.src4(), outside.host4(port), LENGTH);
            let rate = n as f64 / LENGTH.as_secs_f64();
            if let Some(w) = watcher {
                let (records, status, _) = w.stop();
                assert!(status.success());
                let reached = records.iter().filter(|r| r["stage"] == "reached").count();
                assert!(reached >= n, "every connection recorded while attached: {reached} < {n}");
                attached.push(rate);
            } else {
                detached.push(rate);
            }
            eprintln!("round {round}: {:>9} {rate:>8.0} connections/s", if attach { "attached" } else { "detached" });
        }
    }
    let (d, a) = (median(detached.clone()), median(attached.clone()));
    let ratio = a / d;
    println!("connection rate through a published port ({ROUNDS} rounds of {LENGTH:?}, interleaved):");
    println!("  detached  {d:>8.0} /s (median; all: {detached:.0?})");
    println!("  attached  {a:>8.0} /s (median; all: {attached:.0?})");
    println!("  ratio     {ratio:.3}x  goal >= 0.95x: {}", if ratio >= 0.95 { "met" } else { "NOT met" });
}
