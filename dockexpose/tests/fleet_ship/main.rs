//! `watch --ship`'s shipper against two real ClickHouse shards (Debian's
//! clickhouse-server on 127.0.0.1; no root): records written to an audit log while it
//! ships, the store killed for 30 s and back (every record once, none lost), a
//! restart that sends a batch again (duplicates collapse under FINAL), rotation while
//! the store is away (what is lost is counted exactly), and a store that refuses
//! (wrong password, a column that cannot take a record): stopped, said, data kept.
//!
//! The shipper runs in this process through the library (`fleet::ship::Shipper`),
//! exactly as `watch --ship` starts it; the log is written as the audit log writes
//! and rotates it.

#[path = "../support/clickhouse.rs"]
mod clickhouse;
mod log;
#[path = "../support/nats.rs"]
mod nats;

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use clickhouse::{ClickHouse, SHIPPER_PASSWORD, SHIPPER_USER};
use dockexpose::fleet::{
    ship::{checkpoint, ShipSettings, ShipState, ShipStatus, Shipper},
    target::{self, Credentials},
};
use log::{Log, Writer};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");
const TABLE: &str = "dockexpose.records";

fn settings(ch: &ClickHouse, table: &str, log: &Path, password: &str) -> ShipSettings {
    ShipSettings {
        target: target::parse(&ch.url(0, table)).unwrap(),
        credentials: Some(Credentials { user: SHIPPER_USER.into(), password: password.into() }),
        ca_file: None,
        batch_records: 50,
        every: Duration::from_secs(1),
        lag_degraded_seconds: 300,
        log: log.to_path_buf(),
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The record ids of `host` in the store, each once under FINAL; and the row count.
fn stored(ch: &ClickHouse, host: &str) -> (BTreeSet<String>, usize) {
    let ids = ch.query(0, &format!("SELECT record_id FROM {TABLE} FINAL WHERE host = '{host}' FORMAT TSV"));
    let ids: Vec<String> = ids.lines().map(str::to_string).collect();
    let n = ids.len();
    (ids.into_iter().collect(), n)
}

fn caught_up(s: &ShipStatus) -> bool {
    s.lag_records == 0 && s.state == ShipState::Shipping
}

#[test]
fn ships_through_an_outage_a_restart_rotation_and_refusals() {
    let mut ch = ClickHouse::start("ship", 2);
    ch.create_schema(Path::new(BIN), TABLE);

    // Live, then the store away for 30 s while records keep coming, then back.
    let log = Log::new("live");
    let writer = Writer::start(log.path(), "host-live", 20, Duration::from_millis(100));
    let shipper = Shipper::start(settings(&ch, TABLE, log.path(), SHIPPER_PASSWORD)).unwrap();
    wait_for("first records shipped", 20, || shipper.stats.snapshot().records_shipped > 0);
    let t = Instant::now();
    ch.stop_shard(0);
    std::thread::sleep(Duration::from_secs(30));
    let away = shipper.stats.snapshot();
    println!("store away {:?}: {away:?}", t.elapsed());
    assert!(away.retries > 0 && away.last_error.is_some() && away.lag_records > 0, "{away:?}");
    assert!(away.lag_seconds >= 20, "the lag in seconds grows: {away:?}");
    ch.start_shard(0);
    let written = writer.stop();
    wait_for("caught up after the outage", 60, || caught_up(&shipper.stats.snapshot()));
    let want = log.record_ids();
    assert_eq!(want.len(), written);
    wait_for("every record in the store", 30, || stored(&ch, "host-live").0 == want);
    let (ids, rows) = stored(&ch, "host-live");
    assert_eq!((ids.len(), rows), (written, written), "every record once, none lost");
    let done = shipper.stats.snapshot();
    println!("after the outage: {written} records written, {} in the store; {done:?}", ids.len());
    shipper.stop();

    // A restart that sends again what the store had (a kill -9 between the store's
    // answer and the checkpoint): the checkpoint moved back to the start.
    let cp_path = checkpoint::path_for(log.path());
    let mut cp = checkpoint::load(&cp_path).unwrap().unwrap();
    cp.offset = 0;
    checkpoint::save(&cp_path, &cp).unwrap();
    let shipper = Shipper::start(settings(&ch, TABLE, log.path(), SHIPPER_PASSWORD)).unwrap();
    wait_for("sent again", 30, || caught_up(&shipper.stats.snapshot()) && shipper.stats.snapshot().batches > 0);
    let raw: usize =
        ch.query(0, &format!("SELECT count() FROM {TABLE} WHERE host = 'host-live'")).trim().parse().unwrap();
    assert_eq!(stored(&ch, "host-live"), (want.clone(), written), "duplicates collapse under FINAL, no gaps");
    println!("restart: {raw} rows before merging, {written} under FINAL");
    shipper.stop();

    // Rotation while the store is away (max_files 1): the file being read is deleted.
    let log = Log::new("rotate");
    let shipper = Shipper::start(settings(&ch, TABLE, log.path(), SHIPPER_PASSWORD)).unwrap();
    ch.stop_shard(0);
    log.append("host-rot", 0, 120);
    wait_for("a batch in flight", 20, || shipper.stats.snapshot().retries > 0);
    log.rotate();
    log.append("host-rot", 120, 100);
    std::thread::sleep(Duration::from_secs(2));
    log.rotate();
    log.append("host-rot", 220, 30);
    wait_for("the loss counted", 10, || shipper.stats.snapshot().lost_records > 0);
    ch.start_shard(0);
    wait_for("caught up after rotation", 60, || caught_up(&shipper.stats.snapshot()));
    let s = shipper.stats.snapshot();
    wait_for("the rest in the store", 30, || stored(&ch, "host-rot").0.len() as u64 + s.lost_records == 250);
    println!(
        "rotation: 250 written, {} in the store, {} counted lost; {s:?}",
        stored(&ch, "host-rot").1,
        s.lost_records
    );
    assert!(s.degraded().is_none());
    shipper.stop();

    // Wrong password: refused, stopped, said; nothing moved.
    let log = Log::new("password");
    log.append("host-pw", 0, 10);
    let before = std::fs::read(log.path()).unwrap();
    let shipper = Shipper::start(settings(&ch, TABLE, log.path(), "wrong")).unwrap();
    wait_for("stopped on a wrong password", 20, || shipper.stats.snapshot().state == ShipState::Stopped);
    let s = shipper.stats.snapshot();
    println!("wrong password: {s:?}");
    assert!(s.last_error.as_deref().unwrap_or("").contains("assword"), "{s:?}");
    assert!(s.degraded().unwrap().contains("stopped") && s.lag_records == 10, "{s:?}");
    assert!(!checkpoint::path_for(log.path()).exists(), "the checkpoint did not move");
    assert_eq!(std::fs::read(log.path()).unwrap(), before, "the log is untouched");
    shipper.stop();

    // A column that cannot take a record (a Date for `stage`): refused for its content.
    ch.query(0, "CREATE TABLE dockexpose.strict (record_id String, stage Date) ENGINE = Log");
    let shipper = Shipper::start(settings(&ch, "dockexpose.strict", log.path(), SHIPPER_PASSWORD)).unwrap();
    wait_for("stopped on a schema error", 20, || shipper.stats.snapshot().state == ShipState::Stopped);
    let s = shipper.stats.snapshot();
    println!("schema error: {s:?}");
    assert!(s.last_error.as_deref().unwrap_or("").contains("Code:"), "{s:?}");
    assert!(!checkpoint::path_for(log.path()).exists());
    shipper.stop();
}

/// A child process killed on drop (also when the test fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `watch --ship nats://...`: the shipper publishes the log's records to JetStream, a
/// `dockexpose fleet bridge` moves them into ClickHouse: every record once.
#[test]
fn ships_through_nats_and_the_bridge() {
    let ch = ClickHouse::start("ship-nats", 2);
    ch.create_schema(Path::new(BIN), TABLE);
    let nats = nats::Nats::start("ship");
    // The bridge makes the stream and its consumer.
    let _bridge = Child(
        std::process::Command::new(BIN)
            .args(["fleet", "bridge", "--from", &nats.url("dockexpose.records"), "--to", &ch.url(0, TABLE)])
            .args(["--max-wait", "300ms"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the bridge"),
    );
    let log = Log::new("nats");
    log.append("host-nats", 0, 500);
    let mut s = settings(&ch, TABLE, log.path(), "");
    s.target = target::parse(&nats.url("dockexpose.records")).unwrap();
    s.credentials = None;
    // Until the bridge has made the stream, a shipper is refused ("no stream"), and says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shipper = loop {
        let shipper = Shipper::start(s.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let st = shipper.stats.snapshot();
        if st.state != ShipState::Stopped {
            break shipper;
        }
        assert!(Instant::now() < deadline, "the stream never came: {st:?}");
        assert!(st.last_error.as_deref().unwrap_or("").contains("stream"), "{st:?}");
        shipper.stop();
    };
    log.append("host-nats", 500, 250);
    let want = log.record_ids();
    wait_for("every record through NATS and the bridge", 60, || stored(&ch, "host-nats").0 == want);
    wait_for("the shipper caught up", 20, || caught_up(&shipper.stats.snapshot()));
    let (ids, rows) = stored(&ch, "host-nats");
    assert_eq!((ids.len(), rows), (750, 750), "every record once");
    println!("through NATS: {} records in the store; {:?}", ids.len(), shipper.stats.snapshot());
    shipper.stop();
}
