//! `watch --ship` on the real daemon (root, the real engine): connections from an
//! outside host to a published container reach two real ClickHouse shards while
//! they happen; a `kill -9` of the daemon amid traffic and shipping, then a restart
//! on the same audit log, leaves no gap in the store (every record of the log, by
//! its `record_id`) and no double count under FINAL, whatever was sent twice.

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::{clickhouse::ClickHouse, docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");
const TABLE: &str = "dockexpose.records";

/// The record_ids of the connection records in the audit log (whole lines only).
fn log_ids(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("stage").is_some())
        .map(|r| r["record_id"].as_str().expect("every record has a record_id").to_string())
        .collect()
}

fn store_ids(ch: &ClickHouse) -> BTreeSet<String> {
    ch.query(0, &format!("SELECT DISTINCT record_id FROM {TABLE}")).lines().map(str::to_string).collect()
}

/// Waits until the store holds every record of the log; panics with the difference.
fn wait_shipped(ch: &ClickHouse, log: &Path, within: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + within;
    loop {
        let (want, have) = (log_ids(log), store_ids(ch));
        if !want.is_empty() && want.is_subset(&have) {
            return want;
        }
        assert!(
            Instant::now() < deadline,
            "{} records of the log not in the store after {within:?}",
            want.difference(&have).count()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn records_ship_live_and_a_kill_9_leaves_no_gap() {
    let test = "records_ship_live_and_a_kill_9_leaves_no_gap";
    if !docker::ready(test) {
        return;
    }
    let ch = ClickHouse::start("ship-daemon", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let image = docker::echo_image();
    let outside = OutsideHost::new("sd");
    let port = free_ports(25000 + (outside.n % 500) as u16, 1);
    let _web = docker::Container::run(&format!("dx-sd-{}", outside.n), &["-p", &format!("{port}:80")], &image, &["80"]);
    let path = json_path("sd");
    let checkpoint = path.with_file_name(format!("{}.ship-checkpoint", path.file_name().unwrap().to_string_lossy()));
    let url = ch.url(0, TABLE);
    let args = ["--uplink", &outside.uplink, "--stats-interval", "0", "--ship", &url, "--ship-every", "1"];
    let mut ship_args = args.to_vec();
    // Small batches: many inserts, so that the kill lands amid them.
    ship_args.extend(["--ship-batch-records", "4"]);
    let src = outside.v4(2).parse().unwrap();
    let dst = outside.host4(port);

    // Live: the records reach the store while the daemon runs.
    let w = Watcher::start(&ship_args, path.clone());
    for _ in 0..12 {
        tcp_connect(&outside.ns, Some(src), dst).expect("the outside host reaches the published port");
    }
    let t = Instant::now();
    let live = wait_shipped(&ch, &path, Duration::from_secs(20));
    eprintln!(
        "{test}: live: {} records in the store {} ms after the last connection",
        live.len(),
        t.elapsed().as_millis()
    );

    // kill -9 amid traffic, then a restart on the same log and checkpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (ns, stop) = (outside.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut made = 0;
            while !stop.load(Ordering::Relaxed) {
                if tcp_connect(&ns, Some(src), dst).is_ok() {
                    made += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            made
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let _ = w.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let w = Watcher::restart(&ship_args, path.clone());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let made = traffic.join().unwrap();
    let all = wait_shipped(&ch, &path, Duration::from_secs(30));
    let (_, status, stderr) = w.stop();
    assert!(status.success(), "{stderr:#?}");

    let have = store_ids(&ch);
    assert_eq!(have, all, "the store holds exactly the log's records: no gap, nothing foreign");
    let raw: usize = ch.query(0, &format!("SELECT count() FROM {TABLE}")).trim().parse().unwrap();
    let once: usize = ch.query(0, &format!("SELECT count() FROM {TABLE} FINAL")).trim().parse().unwrap();
    assert_eq!(once, all.len(), "FINAL counts each record once");
    eprintln!(
        "{test}: {made} connections during the kill; log {} records, store {raw} rows, {once} under FINAL ({} sent twice)",
        all.len(),
        raw - once
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&checkpoint);
}
