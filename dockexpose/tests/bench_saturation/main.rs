//! Benchmark, not a test (ignored; `cargo xtask bench` runs it): dockexpose AT
//! SATURATION against its PEERS (issues 8 and 22). A real HTTP server (busybox httpd
//! in a container) behind a published port, ApacheBench in an outside namespace
//! opening new connections (no keep-alive) with enough concurrent clients to keep
//! both CPUs busy. Each tool in turn (dockexpose with its real audit log, tcpdump,
//! `conntrack -E`, ulogd2 fed by NFLOG, and the empty program as the floor) is
//! attached against detached, interleaved (rounds.rs). Reports per tool the median
//! ratios of connections per second and host CPU per connection (/proc/stat), its own
//! process's CPU per connection (schedstat) and what it recorded per connection; for
//! dockexpose also ring-buffer wakeups and the record/alert latencies, saturated and
//! idle (report.rs). Prints one peers table with the goals met or NOT met (table.rs).
//! Needs root, Docker, busybox-static, apache2-utils (`ab`), tcpdump, conntrack,
//! ulogd2 and ulogd2-json. DOCKEXPOSE_BENCH_ROUNDS sets the rounds of every tool
//! (trial runs).
//!
//! Asserts only what must hold whatever the speed: every connection ab completed
//! while dockexpose was attached is a "reached" record in its audit log, and every
//! peer recorded something (a peer that records nothing is no result).

mod ab;
mod measure;
mod peers;
mod report;
mod rounds;
#[path = "../support/mod.rs"]
mod support;
mod table;
mod tools;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use ab::*;
use measure::*;
use support::{docker, *};

/// Rounds each way for dockexpose, and for each other tool (fewer: they add to the
/// bench's length, and only their ratios are compared).
const ROUNDS: usize = 7;
const PEER_ROUNDS: usize = 5;
/// Seconds of load per round.
pub(crate) const LENGTH_S: u32 = 4;
/// Concurrent clients tried in turn until the CPUs are saturated.
const CLIENTS: [u32; 3] = [16, 32, 64];
/// Busy share of all CPUs that counts as saturated.
pub(crate) const SATURATED: f64 = 0.90;
pub(crate) const IDLE_CONNECTIONS: usize = 20;
pub(crate) const IDLE_GAP: Duration = Duration::from_millis(50);

/// The rounds of dockexpose and of the others: DOCKEXPOSE_BENCH_ROUNDS for both, if set.
fn rounds() -> (usize, usize) {
    match std::env::var("DOCKEXPOSE_BENCH_ROUNDS") {
        Ok(v) => {
            let n = v.parse().expect("DOCKEXPOSE_BENCH_ROUNDS: a number of rounds");
            assert!(n > 0, "DOCKEXPOSE_BENCH_ROUNDS must be at least 1");
            (n, n)
        }
        Err(_) => (ROUNDS, PEER_ROUNDS),
    }
}

/// The Linux bridge of Docker's default network (docker0 unless configured otherwise).
fn default_bridge() -> String {
    let fmt = "{{index .Options \"com.docker.network.bridge.name\"}}";
    let name = sh(&["docker", "network", "inspect", "bridge", "-f", fmt]).trim().to_string();
    if name.is_empty() {
        "docker0".to_string()
    } else {
        name
    }
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn saturation_attached_vs_detached() {
    let test = "saturation_attached_vs_detached";
    if !docker::ready(test) {
        return;
    }
    if Command::new("ab").arg("-V").output().is_err() {
        panic!("{test}: ab not found: install apache2-utils (`cargo xtask setup` does)");
    }
    for (tool, package) in [("tcpdump", "tcpdump"), ("conntrack", "conntrack"), ("ulogd", "ulogd2")] {
        if Command::new(tool).arg("--version").output().is_err() {
            panic!("{test}: {tool} not found: install {package} (`cargo xtask setup` does)");
        }
    }
    let image = docker::http_image();
    let outside = OutsideHost::new("s");
    let hook = bench_uplink_hook();
    // Many short connections from one address: use the whole port range, so that a
    // port comes back only long after its last use.
    sh(&["ip", "netns", "exec", &outside.ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    let port = 31000 + outside.n as u16;
    let _web = docker::Container::run(&format!("dx-sat-{}", outside.n), &["-p", &format!("{port}:80")], &image, &[]);
    // The audit log's dir goes on drop, also when the bench panics.
    let json_dir = peers::TempDir::new("sat");
    let json = json_dir.0.join("audit.json");
    let url = format!("http://{}:{port}/", outside.v4(1));
    let src = outside.src4();
    let src_text = src.to_string();
    let jiffy = us_per_jiffy();
    // The audit log plus one alert sink, as the cost goals ask: syslog over UDP to a
    // receiver on loopback that counts what arrives.
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = format!("udp://{}", syslog.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while syslog.recv(&mut buf).is_ok() {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let watch_args =
        ["--uplink", &outside.uplink, "--uplink-hook", &hook, "--quiet", "--stats-interval", "0", "--syslog", &sink];
    let bridge = default_bridge();

    // The server answers (it may take a moment to start).
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_ab_quietly(&outside.ns, &url).is_err() {
        assert!(Instant::now() < deadline, "busybox httpd in the container does not answer {url}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // What else runs on the machine (other builds and tests skew every figure).
    let (b0, t0) = cpu_jiffies();
    std::thread::sleep(Duration::from_secs(1));
    let (b1, t1) = cpu_jiffies();
    let background = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    eprintln!("background: CPUs {:.1}% busy before the load", background * 100.0);

    // Enough clients to saturate both CPUs (detached, 2 s each).
    let mut clients = CLIENTS[0];
    for &c in &CLIENTS {
        let (b0, t0) = cpu_jiffies();
        let ab = run_ab(&outside.ns, &ab_args(c, 2, src, &url));
        let (b1, t1) = cpu_jiffies();
        let share = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        eprintln!(
            "calibration: -c {c}: {:.0} connections/s, CPUs {:.1}% busy",
            ab.complete as f64 / ab.seconds,
            share * 100.0
        );
        clients = c;
        if share >= SATURATED {
            break;
        }
    }
    let invocation = format!("ip netns exec {} {}", outside.ns, ab_args(clients, LENGTH_S, src, &url).join(" "));
    eprintln!("load: {invocation}");
    eprintln!("outputs: the audit log and one alert sink (syslog {sink})");

    let (dx_rounds, peer_rounds) = rounds();
    let load = rounds::Load { ns: outside.ns.clone(), args: ab_args(clients, LENGTH_S, src, &url), jiffy };
    let mut dx = tools::Dockexpose {
        args: watch_args.iter().map(|s| s.to_string()).collect(),
        json: json.clone(),
        src: src_text.clone(),
        watcher: None,
    };
    let mut all = vec![rounds::run_rounds(&mut dx, dx_rounds, &load)];
    let mut others: Vec<Box<dyn tools::Tool>> = vec![
        Box::new(peers::Tcpdump::new(&bridge)),
        Box::new(peers::Conntrack::new(&src_text)),
        Box::new(peers::Ulogd::new(&bridge, &src_text, outside.n)),
        Box::new(tools::Floor::new(&bridge, &outside.uplink, &hook)),
    ];
    for tool in &mut others {
        all.push(rounds::run_rounds(tool.as_mut(), peer_rounds, &load));
    }

    // Latency when idle: a slow sequential client, attached. Also measured from
    // outside: connect to the record appearing in the audit log.
    let w = Watcher::start(&watch_args, json.clone());
    let mut seen_ms = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        let t0 = Instant::now();
        let sport = http_get(&outside.ns, src, outside.host4(port));
        let needle = format!("\"src_ip\":\"{src_text}\",\"src_port\":{sport},");
        let deadline = t0 + Duration::from_secs(2);
        loop {
            let text = std::fs::read_to_string(&json).unwrap_or_default();
            if text.lines().any(|l| l.contains("\"stage\":\"reached\"") && l.contains(&needle)) {
                seen_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(IDLE_GAP);
    }
    let (_, status, lines) = w.stop();
    assert!(status.success());
    let last = lines.iter().find(|l| l.contains("final counters")).expect("a final counters line");
    let [p50, p99, alert_p99] = tools::latencies(last);

    let missing = IDLE_CONNECTIONS - seen_ms.len();
    let idle = report::Idle { p50, p99, alert_p99, seen_ms, missing };
    let alerts = received.load(std::sync::atomic::Ordering::Relaxed);
    let ctx = report::Context { invocation, background, jiffy, alerts };
    report::print_dockexpose(&all[0], &ctx, &idle);
    table::print_peers_table(&all);
}
