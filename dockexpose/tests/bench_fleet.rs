//! A simulated fleet (`cargo xtask bench`; no root): 1 000 hosts writing 10 records/s
//! each, replayed for DOCKEXPOSE_BENCH_FLEET_SECS (default 20) seconds into two real
//! ClickHouse shards, directly (the ClickHouse store) and through NATS JetStream and
//! `dockexpose fleet bridge`. Ten shippers each hand the store one batch a second
//! (their 100 hosts' last second). Printed: records/s taken (the offered 10 000/s when
//! the store keeps up; not its ceiling), the p99 from a batch handed to
//! the store (`Store::send` called) to its first record being visible in the
//! Distributed table (polled every 100 ms), and the time `dockexpose fleet exposures`
//! takes over 1 M records.

#[path = "support/clickhouse.rs"]
mod clickhouse;
#[path = "support/nats.rs"]
mod nats;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use dockexpose::fleet::{
    clickhouse::ClickHouse as Client,
    nats::connect,
    store::{ShipRecord, Store},
    target::{parse, StoreTarget},
};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");
const TABLE: &str = "dockexpose.records";
const HOSTS: usize = 1000;
const PER_SECOND: usize = 10;
const SHIPPERS: usize = 10;
const GOAL_P99: Duration = Duration::from_secs(5);

fn record(tag: &str, host: usize, n: usize) -> ShipRecord {
    let record_id = format!("{tag}{host:06x}{n:010x}");
    let line = format!(
        r#"{{"schema":1,"ts":"2026-12-07T10:{:02}:{:02}.123456Z","stage":"reached","proto":"tcp","family":"ipv4","src_ip":"198.18.{}.{}","src_port":{},"dst_ip":"172.17.0.2","dst_port":80,"host_ip":"198.18.7.1","host_port":{},"community_id":"1:x","iface":"docker0","container":{{"id":"c{host}","name":"web{}","image":"nginx:1.27","compose_project":null,"compose_service":null,"swarm_service":null,"swarm_task":null}},"exposure":"published","published":[{{"host_ip":"0.0.0.0","host_port":8080}}],"path":"bridge","spoofed_local":false,"spoofed_trusted":false,"shape":[],"boot_id":"b{host}","cpu":0,"kseq":{n},"record_id":"{record_id}","host":"host-{host}","host_id":"m{host}"}}"#,
        n / 60 % 60,
        n % 60,
        n % 200,
        n % 250 + 2,
        40000 + n % 20000,
        8000 + n % 4,
        n % 3,
    );
    ShipRecord { record_id, line: Bytes::from(line) }
}

fn client(url: &str) -> Client {
    let Ok(StoreTarget::ClickHouse(t)) = parse(url) else { panic!("{url}") };
    Client::new(&t, None, None, Duration::from_secs(60)).expect("client")
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
}

/// Replays the fleet into `stores` (one per shipper) for `secs` seconds; returns
/// records/s and the visibility p99.
async fn replay<S: Store>(mut stores: Vec<S>, tag: &str, secs: usize, poll_url: &str) -> (f64, Duration, usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let poll_url = poll_url.to_string();
    let poller = tokio::spawn(async move {
        let mut ch = client(&poll_url);
        let mut pending: Vec<(String, Instant)> = Vec::new();
        let mut seen = Vec::new();
        let mut closed = false;
        loop {
            loop {
                match rx.try_recv() {
                    Ok(p) => pending.push(p),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed && pending.is_empty() {
                return seen;
            }
            if !pending.is_empty() {
                let ids: Vec<String> = pending.iter().map(|(id, _)| format!("'{id}'")).collect();
                let sql = format!("SELECT record_id FROM {TABLE} WHERE record_id IN ({}) FORMAT TSV", ids.join(","));
                if let Ok(body) = ch.query(&sql).await {
                    let now = Instant::now();
                    let found: std::collections::HashSet<&str> =
                        std::str::from_utf8(&body).unwrap_or("").lines().collect();
                    pending.retain(|(id, at)| {
                        let hit = found.contains(id.as_str());
                        if hit {
                            seen.push(now - *at);
                        }
                        !hit
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let mut sent = 0usize;
    for second in 0..secs {
        let tick = start + Duration::from_secs(second as u64);
        tokio::time::sleep_until(tick.into()).await;
        for (g, store) in stores.iter_mut().enumerate() {
            let hosts = g * HOSTS / SHIPPERS..(g + 1) * HOSTS / SHIPPERS;
            let batch: Vec<ShipRecord> =
                hosts.flat_map(|h| (0..PER_SECOND).map(move |i| record(tag, h, second * PER_SECOND + i))).collect();
            tx.send((batch[0].record_id.clone(), Instant::now())).expect("poller");
            while let Err(e) = store.send(&batch).await {
                eprintln!("{tag}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent += batch.len();
        }
    }
    // Over the whole replay (the last second's batches count for a full second).
    let rate = sent as f64 / start.elapsed().as_secs_f64().max(secs as f64);
    drop(tx);
    let seen = tokio::time::timeout(Duration::from_secs(120), poller).await.expect("every probe seen").expect("poller");
    let n = seen.len();
    (rate, p99(seen), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo xtask bench"]
async fn simulated_fleet() {
    let secs: usize = std::env::var("DOCKEXPOSE_BENCH_FLEET_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let nats = nats::Nats::start("bench");
    let ch = clickhouse::ClickHouse::start("bench-fleet", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let url = ch.url(0, TABLE);
    println!(
        "fleet: {HOSTS} hosts x {PER_SECOND} records/s ({} records/s offered), {SHIPPERS} shippers, {secs} s per path",
        HOSTS * PER_SECOND
    );

    let direct: Vec<Client> = (0..SHIPPERS).map(|i| client(&ch.url(i % 2, TABLE))).collect();
    let (rate, p, n) = replay(direct, "d", secs, &url).await;
    println!(
        "fleet direct: {rate:.0} records/s; visible p99 {:.2} s over {n} batches (goal < 5 s: {})",
        p.as_secs_f64(),
        met(p)
    );

    let mut bridge = Command::new(BIN)
        .args(["fleet", "bridge", "--from", &nats.url(TABLE), "--to", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("bridge");
    let Ok(StoreTarget::Nats(t)) = parse(&nats.url(TABLE)) else { panic!() };
    let mut stores = Vec::new();
    for _ in 0..SHIPPERS {
        stores.push(connect(&t, None).await.expect("nats"));
    }
    let (rate, p, n) = replay(stores, "n", secs, &url).await;
    let _ = bridge.kill();
    let _ = bridge.wait();
    println!(
        "fleet through NATS and the bridge: {rate:.0} records/s; visible p99 {:.2} s over {n} batches (goal < 5 s: {})",
        p.as_secs_f64(),
        met(p)
    );

    // 1 M records, then the exposures query over them.
    let mut bulk = client(&url);
    let have: usize = ch.query(0, "SELECT count() FROM dockexpose.records").trim().parse().expect("count");
    let want = 1_000_000usize.saturating_sub(have);
    let started = Instant::now();
    let mut n = 0;
    while n < want {
        let batch: Vec<ShipRecord> = (n..(n + 10_000).min(want)).map(|i| record("b", i % HOSTS, i)).collect();
        bulk.send(&batch).await.expect("bulk insert");
        n += batch.len();
    }
    println!(
        "fleet bulk: {want} records in batches of 10 000: {:.0} records/s",
        want as f64 / started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    // The real command, as an operator runs it, over the whole store.
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["fleet", "exposures", "--store", &url, "--json"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run dockexpose fleet exposures");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "exposures found: exit 1");
    let rows = String::from_utf8_lossy(&out.stdout).lines().count();
    let total = ch.query(0, "SELECT count() FROM dockexpose.records").trim().to_string();
    println!("fleet exposures over {total} records: {:.2} s ({rows} rows)", took.as_secs_f64());
}

fn met(p: Duration) -> &'static str {
    if p < GOAL_P99 {
        "met"
    } else {
        "NOT met"
    }
}
