//! The record-path benchmark (no root; `cargo xtask bench` runs it): what the daemon's
//! loop does per connection, without the kernel. Each synthetic connection is the two
//! kernel records a real one gives (`attempted` on the uplink, `reached` on the
//! bridge with the host side from conntrack), handled as the daemon's stage handles
//! them: decoded, tracked, correlated with a Docker inventory, stamped, encoded into
//! the JSON audit log (a real file, written by the real writer thread), counted in the
//! status state and seen by the alert stage.
//!
//! It prints the loop's CPU per connection and the writer thread's. On a noisy machine
//! a small change is best seen as instructions: run it under
//! `valgrind --tool=callgrind` (the figure is then slower but exact and repeatable).
//! `cargo bench --bench record_path -- --connections N`.

use std::{collections::HashMap, net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use dockexpose::{
    correlate,
    inventory::model::{Container, Inventory, Network, PublishedPort},
    kernel::event::{IfName, KernelClock, Observation, Proto, Stage},
    output::{
        alerts::Alert,
        audit::AuditLog,
        fanout::{AlertOut, AlertStage, Outputs},
    },
    verdict::AttemptTracker,
};
use dockexpose_common::{
    ConnEvent, FAMILY_IPV4, FLAG_BY_CONNTRACK, FLAG_HAS_ORIG_DST, PROTO_TCP, STAGE_ATTEMPTED, STAGE_REACHED,
};

const UPLINK: u32 = 2;
const BRIDGE: u32 = 3;
const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const CONTAINER: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
/// Records handled between two flushes of the audit log (the ring reader's batches).
const BATCH: usize = 64;

/// Alerts counted, not printed.
struct Count(u64);
impl AlertOut for Count {
    fn alert(&mut self, _: &Arc<Alert>) {
        self.0 += 1;
    }
}

fn inventory() -> Inventory {
    let any4 = "0.0.0.0".parse().expect("address");
    Inventory {
        networks: vec![Network {
            id: "n1".into(),
            name: "bridge".into(),
            bridge: "docker0".into(),
            subnets: vec!["172.17.0.0/16".parse().expect("prefix")],
        }],
        containers: vec![Container {
            id: "3f4e8a1c9b2d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f".into(),
            name: "shop-front-1".into(),
            image: "nginx:1.27".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("front".into()),
            addresses: vec![("n1".into(), CONTAINER.into())],
            ports: vec![PublishedPort { host_ip: any4, host_port: 8080, container_port: 80, proto: Proto::Tcp }],
            ..Default::default()
        }
        .with_identity()],
        ..Default::default()
    }
}

/// The two kernel records of connection `i` (a different source each time, as a
/// busy server sees).
fn connection(i: u32, now_ns: u64) -> [ConnEvent; 2] {
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i % 60_000));
    let sport = 20_000 + (i % 40_000) as u16;
    let mut attempt = ConnEvent::zeroed();
    attempt.ktime_ns = now_ns;
    (attempt.family, attempt.proto, attempt.stage) = (FAMILY_IPV4, PROTO_TCP, STAGE_ATTEMPTED);
    attempt.src_addr[..4].copy_from_slice(&src.octets());
    attempt.dst_addr[..4].copy_from_slice(&HOST.octets());
    (attempt.src_port, attempt.dst_port, attempt.ifindex) = (sport, 8080, UPLINK);
    (attempt.seq, attempt.cpu, attempt.rec_seq) = (i.wrapping_mul(2_654_435_761), 0, 2 * u64::from(i));
    let mut reached = attempt;
    reached.ktime_ns = now_ns + 20_000;
    reached.stage = STAGE_REACHED;
    reached.dst_addr[..4].copy_from_slice(&CONTAINER.octets());
    reached.orig_dst_addr[..4].copy_from_slice(&HOST.octets());
    (reached.dst_port, reached.orig_dst_port, reached.ifindex) = (80, 8080, BRIDGE);
    reached.flags = FLAG_HAS_ORIG_DST | FLAG_BY_CONNTRACK;
    reached.rec_seq += 1;
    [attempt, reached]
}

/// CPU time of the calling thread, and of the whole process.
fn cpu_times() -> (Duration, Duration) {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    (read(libc::CLOCK_THREAD_CPUTIME_ID), read(libc::CLOCK_PROCESS_CPUTIME_ID))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut connections, mut rounds): (u32, usize) = (100_000, 5);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--connections" => {
                connections = args.next().context("--connections N")?.parse().context("--connections N")?;
            }
            "--rounds" => rounds = args.next().context("--rounds N")?.parse().context("--rounds N")?,
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other:?}; try --connections N --rounds N"),
        }
    }
    anyhow::ensure!(connections > 0 && rounds > 0, "--connections and --rounds must be at least 1");
    let mut results = Vec::new();
    for r in 1..=rounds {
        let round = replay(connections)?;
        println!(
            "record path: round {r}: {connections} connections, {:.0} bytes a record: loop {:.2} µs CPU/conn, the writer thread {:.2}",
            round.bytes_per_record, round.loop_us, round.writer_us
        );
        results.push(round);
    }
    let median = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (loop_us, lo, hi) = median(|r| r.loop_us);
    let (writer_us, wlo, whi) = median(|r| r.writer_us);
    println!(
        "RECORD PATH: the loop {loop_us:.2} µs CPU per connection (2 records; median of {rounds}, {lo:.2}..{hi:.2}), \
         the audit writer {writer_us:.2} ({wlo:.2}..{whi:.2}); no kernel, no wakeups, warm caches: a floor for the daemon's \
         own CPU per connection in the saturation table"
    );
    Ok(())
}

struct Round {
    loop_us: f64,
    writer_us: f64,
    bytes_per_record: f64,
}

/// One round: `connections` connections through a fresh pipeline and audit log.
fn replay(connections: u32) -> Result<Round> {
    let path = std::env::temp_dir().join(format!("dockexpose-record-path-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let stage = AlertStage::new(Duration::from_secs(60), vec![Box::new(Count(0))]);
    let mut out = Outputs::new(AuditLog::open(Some(&path), None)?, true, stage, KernelClock::now());
    let mut reports = out.audit.take_reports().context("the audit log's reports")?;
    let inventory = inventory();
    out.exposures.sync(&inventory);
    let mut tracker = AttemptTracker::new(Duration::from_secs(2).as_nanos() as u64);
    let ifnames: HashMap<u32, IfName> = [(UPLINK, "eth0".into()), (BRIDGE, "docker0".into())].into();
    let clock = KernelClock::now();
    let now_ns = clock.ktime_now();

    let (loop_before, process_before) = cpu_times();
    let mut handled = 0usize;
    for i in 0..connections {
        for ev in connection(i, now_ns + u64::from(i) * 100_000) {
            let mut obs = Observation::from_event(&ev).map_err(|e| anyhow::anyhow!(e.0))?;
            let iface: IfName =
                ifnames.get(&obs.ifindex).cloned().unwrap_or_else(|| format!("if{}", obs.ifindex).into());
            match obs.stage {
                Stage::Attempted => tracker.attempted(&obs, iface.clone()),
                Stage::Reached => {
                    if let Some(host_side) = tracker.reached(&obs) {
                        obs.orig_dst = Some(host_side);
                    }
                }
                _ => {}
            }
            let rec = correlate::record(&obs, obs.stage, clock.wall(obs.ktime_ns), iface, Some(&inventory));
            out.connection(rec, Some(&obs));
            handled += 1;
            if handled.is_multiple_of(BATCH) {
                out.flush();
                while let Ok(r) = reports.try_recv() {
                    out.audit_report(r);
                }
            }
        }
    }
    out.flush();
    let (loop_after, _) = cpu_times();
    // Until the writer wrote everything handed to it.
    loop {
        out.audit.wake_on_write();
        if out.audit.written() >= out.audit.handed() {
            break;
        }
        let r = reports.blocking_recv().context("the audit writer stopped")?;
        out.audit_report(r);
    }
    let (_, process_after) = cpu_times();
    let bytes = std::fs::metadata(&path)?.len();
    let lines = std::fs::read_to_string(&path)?.lines().count();
    std::fs::remove_file(&path)?;
    anyhow::ensure!(lines == 2 * connections as usize, "{lines} lines for {connections} connections");
    let per = |d: Duration| d.as_nanos() as f64 / 1000.0 / f64::from(connections);
    let (loop_us, process_us) = (per(loop_after - loop_before), per(process_after - process_before));
    Ok(Round { loop_us, writer_us: process_us - loop_us, bytes_per_record: bytes as f64 / lines as f64 })
}
