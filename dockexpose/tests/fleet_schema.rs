//! `dockexpose fleet schema` against two real ClickHouse shards (Debian's
//! clickhouse-server, on 127.0.0.1; no root): the DDL creates, records from many
//! hosts spread over both shards by host, and a record delivered twice (even in two
//! inserts, as a restart re-sends) counts once under FINAL.

#[path = "support/clickhouse.rs"]
mod clickhouse;

use std::path::Path;

use clickhouse::{ClickHouse, CLUSTER};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

fn record(host: usize, n: usize) -> String {
    format!(
        r#"{{"schema":1,"ts":"2026-12-07T10:00:{:02}.123456Z","stage":"reached","proto":"tcp","family":"ipv4","src_ip":"198.18.7.{}","src_port":{},"dst_ip":"172.17.0.2","dst_port":80,"host_ip":"198.18.7.1","host_port":8080,"community_id":"1:x","iface":"docker0","container":{{"id":"c{host}","name":"web","image":"nginx","compose_project":null,"compose_service":null,"swarm_service":null,"swarm_task":null}},"exposure":"published","published":[{{"host_ip":"0.0.0.0","host_port":8080}}],"path":"bridge","spoofed_local":false,"shape":[],"boot_id":"b{host}","cpu":0,"kseq":{n},"record_id":"{host:016x}{n:016x}","host":"host-{host}","host_id":"m{host}"}}"#,
        n % 60,
        n % 250 + 2,
        40000 + n,
    )
}

#[test]
fn records_delivered_twice_count_once_across_two_shards() {
    let ch = ClickHouse::start("schema", 2);
    ch.create_schema(Path::new(BIN), "dockexpose.records");
    let batch: String = (0..20).flat_map(|h| (0..50).map(move |n| record(h, n) + "\n")).collect();
    // Through the Distributed table of shard 0, then again (a re-send after a
    // restart) through shard 1's: each copy goes to the shard its host hashes to.
    ch.insert_rows(0, "dockexpose.records", &batch);
    ch.insert_rows(1, "dockexpose.records", &batch);
    // Distributed inserts are forwarded in the background: wait for both copies.
    let all = "SELECT count() FROM dockexpose.records";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ch.query(0, all).trim() != "2000" {
        assert!(std::time::Instant::now() < deadline, "rows forwarded: {}", ch.query(0, all));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(ch.query(0, "SELECT count() FROM dockexpose.records FINAL").trim(), "1000");
    assert_eq!(ch.query(1, "SELECT uniqExact(host, record_id) FROM dockexpose.records").trim(), "1000");
    let per_shard: Vec<u64> =
        (0..2).map(|i| ch.query(i, "SELECT count() FROM dockexpose.records_local").trim().parse().unwrap()).collect();
    assert!(per_shard.iter().all(|&n| n > 0), "both shards hold hosts: {per_shard:?}");
    // All copies of a host's records sit on one shard.
    let hosts = |i| -> std::collections::BTreeSet<String> {
        ch.query(i, "SELECT DISTINCT host FROM dockexpose.records_local").lines().map(str::to_string).collect()
    };
    let (h0, h1) = (hosts(0), hosts(1));
    assert_eq!(h0.len() + h1.len(), 20);
    assert!(h0.is_disjoint(&h1), "a host's records never split over shards: {h0:?} {h1:?}");
    assert_eq!(CLUSTER, "fleet", "the cluster the DDL names");
}

#[test]
fn schema_refuses_names_outside_the_grammar() {
    let out = std::process::Command::new(BIN).args(["fleet", "schema", "--table", "d.t;DROP"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("letters, digits and _"));
    let out = std::process::Command::new(BIN).args(["fleet", "schema", "--table", "records"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE.TABLE"));
}
