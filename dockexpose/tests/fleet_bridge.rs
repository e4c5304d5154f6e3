//! NATS JetStream in front of ClickHouse, for real (no root): Debian's nats-server 2.9
//! and two clickhouse-server 18.16 shards behind a Distributed table, all on
//! 127.0.0.1 under temp dirs, stopped by PID. Records go in through the NATS store
//! (the `Store` trait a shipper calls, async-nats underneath) and out through
//! `dockexpose fleet bridge` (the binary): each counted once under FINAL, whether
//! a shipper sends a batch twice, a bridge dies between the insert and the ack, or
//! two bridges share the stream.

#[path = "support/clickhouse.rs"]
mod clickhouse;
#[path = "support/nats.rs"]
mod nats;

use std::{
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use clickhouse::ClickHouse;
use dockexpose::fleet::{
    nats::{connect, NatsStore},
    store::{ShipRecord, Store, StoreError},
    target::{parse, StoreTarget},
};
use nats::Nats;

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");
const SUBJECT: &str = "dockexpose.records";
const TABLE: &str = "dockexpose.records";

/// A native record as the daemon writes it; every fifth has no container (an
/// attempt on an uplink), which 18.16 would refuse as `null`.
fn record(host: usize, n: usize) -> ShipRecord {
    let record_id = format!("{host:016x}{n:016x}");
    let container = if n.is_multiple_of(5) {
        "null".to_string()
    } else {
        format!(
            r#"{{"id":"c{host}","name":"web","image":"nginx:1.27","compose_project":null,"compose_service":null,"swarm_service":null,"swarm_task":null}}"#
        )
    };
    let stage = if n.is_multiple_of(5) { "attempted" } else { "reached" };
    let line = format!(
        r#"{{"schema":1,"ts":"2026-12-07T10:{:02}:{:02}.123456Z","stage":"{stage}","proto":"tcp","family":"ipv4","src_ip":"198.18.7.{}","src_port":{},"dst_ip":"172.17.0.2","dst_port":80,"host_ip":"198.18.7.1","host_port":8080,"community_id":"1:x","iface":"docker0","container":{container},"exposure":"published","published":[{{"host_ip":"0.0.0.0","host_port":8080}}],"path":"bridge","spoofed_local":false,"spoofed_trusted":false,"shape":[],"boot_id":"b{host}","cpu":0,"kseq":{n},"record_id":"{record_id}","host":"host-{host}","host_id":"m{host}"}}"#,
        n / 60 % 60,
        n % 60,
        n % 250 + 2,
        40000 + n % 20000,
    );
    ShipRecord { record_id, line: Bytes::from(line) }
}

fn records(hosts: usize, per_host: usize) -> Vec<ShipRecord> {
    (0..hosts).flat_map(|h| (0..per_host).map(move |n| record(h, n))).collect()
}

async fn store(nats: &Nats) -> NatsStore {
    let Ok(StoreTarget::Nats(target)) = parse(&nats.url(SUBJECT)) else { panic!("a NATS URL") };
    connect(&target, None).await.expect("connect to nats-server")
}

/// Sends `batch` until the store takes it (the stream may not exist yet).
async fn send(store: &mut NatsStore, batch: &[ShipRecord]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.send(batch).await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "the NATS store never took the batch: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `dockexpose fleet bridge` process, killed on drop.
struct Bridge {
    child: Option<Child>,
}

impl Bridge {
    fn start(nats: &Nats, ch: &ClickHouse, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(BIN)
            .args(["fleet", "bridge", "--from", &nats.url(SUBJECT), "--to", &ch.url(0, TABLE), "--max-wait", "300ms"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dockexpose fleet bridge");
        Self { child: Some(child) }
    }

    /// Waits for it to exit by itself: its exit code and stderr.
    fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
        (status.code(), stderr)
    }

    /// SIGTERM, then its exit code and stderr.
    fn stop(self) -> (Option<i32>, String) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.query(0, sql).trim().parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` (a count) gives `want` on shard 0 (Distributed inserts travel
/// to the other shard in the background).
fn wait_count(ch: &ClickHouse, sql: &str, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = count(ch, sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got}, not {want}, after {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Messages still in the stream (work-queue retention: acknowledged ones leave).
async fn in_stream(store: &NatsStore) -> u64 {
    let mut stream = store.jetstream().get_stream("DOCKEXPOSE").await.expect("stream DOCKEXPOSE");
    stream.info().await.expect("stream info").state.messages
}

async fn wait_stream_empty(store: &NatsStore, within: Duration) {
    let deadline = Instant::now() + within;
    while in_stream(store).await != 0 {
        assert!(Instant::now() < deadline, "{} messages never acknowledged", in_stream(store).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const ALL: &str = "SELECT count() FROM dockexpose.records";
const ONCE: &str = "SELECT count() FROM dockexpose.records FINAL";

#[tokio::test]
async fn bridged_records_count_once_though_a_batch_is_published_twice() {
    let nats = Nats::start("once");
    let ch = ClickHouse::start("bridge-once", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let mut store = store(&nats).await;
    let all = records(10, 300);

    // No stream yet: refused, with how to create one.
    match store.send(&all[..10]).await {
        Err(StoreError::Refused(why)) => assert!(why.contains("nats stream add DOCKEXPOSE"), "{why}"),
        other => panic!("publishing without a stream: {other:?}"),
    }
    let bridge = Bridge::start(&nats, &ch, &[], &[]);
    for batch in all.chunks(500) {
        send(&mut store, batch).await;
    }
    // A shipper that got no answer sends its batch again: the stream drops it.
    send(&mut store, &all[..500]).await;
    assert_eq!(store.duplicates(), 500, "the second copy dropped by Nats-Msg-Id");

    wait_count(&ch, ONCE, 3000, Duration::from_secs(60));
    wait_count(&ch, ALL, 3000, Duration::from_secs(30));
    wait_stream_empty(&store, Duration::from_secs(30)).await;
    let without = count(&ch, "SELECT count() FROM dockexpose.records WHERE isNull(container.id)");
    assert_eq!(without, 600, "records without a container inserted (sent as {{}})");
    assert_eq!(count(&ch, "SELECT uniqExact(host) FROM dockexpose.records"), 10);

    let (code, stderr) = bridge.stop();
    assert_eq!(code, Some(0), "SIGTERM: exit 0; stderr: {stderr}");
    assert!(stderr.contains("created stream DOCKEXPOSE"), "{stderr}");
    assert!(stderr.contains("3000 records inserted"), "{stderr}");
    println!("{stderr}");
}

#[tokio::test]
async fn a_bridge_that_dies_before_its_ack_leaves_the_batch_to_the_next() {
    let nats = Nats::start("dies");
    let ch = ClickHouse::start("bridge-dies", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let mut store = store(&nats).await;
    let all = records(8, 250);

    // The first bridge creates the stream, takes everything, inserts it and exits
    // before acknowledging (the test hook stands for a kill -9 in that window).
    let first = Bridge::start(&nats, &ch, &["--ack-wait", "3s"], &[("DOCKEXPOSE_FAULT_BRIDGE_EXIT_BEFORE_ACK", "1")]);
    for batch in all.chunks(1000) {
        send(&mut store, batch).await;
    }
    let (code, stderr) = first.wait(Duration::from_secs(60));
    assert_eq!(code, Some(3), "the hook's exit; stderr: {stderr}");
    assert!(stderr.contains("exiting before the ack"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&ch, ALL) == 0 {
        assert!(Instant::now() < deadline, "the first bridge inserted nothing before dying");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(in_stream(&store).await, 2000, "nothing acknowledged: all still in the stream");

    // The next bridge gets the unacknowledged batch again once --ack-wait passed.
    let started = Instant::now();
    let second = Bridge::start(&nats, &ch, &[], &[]);
    wait_stream_empty(&store, Duration::from_secs(60)).await;
    println!("redelivered and acknowledged {:.1} s after the second bridge started", started.elapsed().as_secs_f64());
    wait_count(&ch, ONCE, 2000, Duration::from_secs(30));
    assert_eq!(count(&ch, "SELECT uniqExact(host, record_id) FROM dockexpose.records"), 2000, "none missing");
    // Rows before merging: the batch inserted twice (merges may already have folded some).
    println!("{} rows in the table, {} under FINAL", count(&ch, ALL), count(&ch, ONCE));
    let (code, stderr) = second.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn two_bridges_share_the_stream() {
    let nats = Nats::start("two");
    let ch = ClickHouse::start("bridge-two", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let mut store = store(&nats).await;
    let all = records(40, 500);

    let batch = ["--batch", "2000"];
    let first = Bridge::start(&nats, &ch, &batch, &[]);
    send(&mut store, &all[..100]).await;
    let second = Bridge::start(&nats, &ch, &batch, &[]);
    for chunk in all[100..].chunks(1000) {
        send(&mut store, chunk).await;
    }
    wait_count(&ch, ONCE, 20_000, Duration::from_secs(120));
    wait_stream_empty(&store, Duration::from_secs(30)).await;
    assert_eq!(count(&ch, "SELECT uniqExact(host, record_id) FROM dockexpose.records"), 20_000);
    let inserted = |stderr: &str| -> u64 {
        let line = stderr.lines().rev().find(|l| l.contains("records inserted")).expect("a report line");
        line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).expect("a count")
    };
    let (c1, e1) = first.stop();
    let (c2, e2) = second.stop();
    assert_eq!((c1, c2), (Some(0), Some(0)), "{e1}\n{e2}");
    let (n1, n2) = (inserted(&e1), inserted(&e2));
    println!("bridge 1 inserted {n1}, bridge 2 inserted {n2}; {} rows in the table", count(&ch, ALL));
    assert!(n1 > 0 && n2 > 0, "both bridges took a share: {n1} and {n2}");
    assert_eq!(n1 + n2, 20_000, "none inserted twice while neither died");
}

#[tokio::test]
async fn credentials_come_from_the_environment_and_a_wrong_password_is_refused() {
    let nats = Nats::start_with("auth", Some(("shipper", "nats-s3cret")));
    let Ok(StoreTarget::Nats(target)) = parse(&nats.url(SUBJECT)) else { panic!() };
    let wrong = dockexpose::fleet::target::Credentials { user: "shipper".into(), password: "nope".into() };
    let err = connect(&target, Some(&wrong)).await.err().expect("a wrong password refused");
    assert!(err.contains("refused the credentials") && err.contains("DOCKEXPOSE_NATS_USER"), "{err}");
    assert!(!err.contains("nope"), "the password is never printed: {err}");
    let right = dockexpose::fleet::target::Credentials { user: "shipper".into(), password: "nats-s3cret".into() };
    let mut store = connect(&target, Some(&right)).await.expect("the right password");
    match store.send(&records(1, 3)).await {
        Err(StoreError::Refused(why)) => assert!(why.contains("no JetStream stream"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The bridge reads them from the environment, never argv.
    let out = Command::new(BIN)
        .args(["fleet", "bridge", "--from", &nats.url(SUBJECT), "--to", "clickhouse+http://127.0.0.1:1/d.t"])
        .env("DOCKEXPOSE_NATS_USER", "shipper")
        .env("DOCKEXPOSE_NATS_PASSWORD", "nope")
        .output()
        .expect("run the bridge");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the credentials"));
}
