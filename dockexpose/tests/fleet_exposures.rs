//! `dockexpose fleet exposures` against two real ClickHouse shards (Debian's
//! clickhouse-server on 127.0.0.1). Without root: records from hosts with hostile
//! names, each inserted twice, give one row per host, protocol, port and container,
//! counted once, through the Distributed table and a single table alike; exit 1 /
//! 0 / 2. With root and the real engine: the rows equal, key for key, the same
//! aggregation computed here from the daemon's own JSON log.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Output},
    time::{Duration, UNIX_EPOCH},
};

use serde_json::{json, Value};
use support::{clickhouse::ClickHouse, docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

/// Inserts `records` twice, through either shard's Distributed table (a shipper's
/// re-send), and waits until both copies are in.
fn insert_twice(ch: &ClickHouse, records: &[Value]) {
    let rows: String = records.iter().map(|r| for_store(r) + "\n").collect();
    ch.insert_rows(0, "dockexpose.records", &rows);
    ch.insert_rows(1, "dockexpose.records", &rows);
    ch.wait_rows("dockexpose.records", 2 * records.len());
}

/// A record as a shipper inserts it: `"container": null` becomes `{}` (a nested
/// column takes no null).
fn for_store(record: &Value) -> String {
    let mut r = record.clone();
    if r["container"].is_null() {
        r["container"] = json!({});
    }
    r.to_string()
}

fn exposures(args: &[&str]) -> Output {
    exposures_as(None, args)
}

/// As `exposures`, with credentials in the environment (the only place they are read).
fn exposures_as(user: Option<(&str, &str)>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["fleet", "exposures"]).args(args);
    cmd.env_remove("DOCKEXPOSE_STORE_USER").env_remove("DOCKEXPOSE_STORE_PASSWORD");
    if let Some((user, password)) = user {
        cmd.env("DOCKEXPOSE_STORE_USER", user).env("DOCKEXPOSE_STORE_PASSWORD", password);
    }
    cmd.output().unwrap()
}

fn json_rows(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The same aggregation as the store's, from records: one row per host, protocol,
/// port (host port, else the port reached) and container; each (host, record_id)
/// once; times cut to the second.
fn aggregate(records: &[Value]) -> Vec<Value> {
    type Key = (String, String, u64, Option<u64>, Option<String>, Option<String>);
    let mut seen = BTreeSet::new();
    let mut groups: BTreeMap<Key, Vec<&Value>> = BTreeMap::new();
    for r in records.iter().filter(|r| r["stage"] == "reached") {
        if !seen.insert((r["host"].to_string(), r["record_id"].to_string())) {
            continue;
        }
        let s = |v: &Value| v.as_str().map(str::to_string);
        let host_port = r["host_port"].as_u64();
        let key = (
            s(&r["host"]).unwrap(),
            s(&r["proto"]).unwrap(),
            host_port.or(r["dst_port"].as_u64()).unwrap(),
            host_port,
            s(&r["container"]["id"]),
            s(&r["container"]["name"]),
        );
        groups.entry(key).or_default().push(r);
    }
    let second = |r: &&Value| {
        let t = humantime::parse_rfc3339(r["ts"].as_str().unwrap()).unwrap();
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    };
    let rfc = |secs: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    groups
        .into_iter()
        .map(|((host, proto, port, host_port, id, name), rs)| {
            let exposure: BTreeSet<&str> = rs.iter().map(|r| r["exposure"].as_str().unwrap()).collect();
            let sources: BTreeSet<&str> = rs.iter().map(|r| r["src_ip"].as_str().unwrap()).collect();
            let contradiction = rs.iter().filter_map(|r| r["contradiction"].as_bool()).max();
            let container = (id.is_some() || name.is_some()).then(|| json!({"id": id, "name": name}));
            json!({
                "host": host, "proto": proto, "port": port, "host_port": host_port, "container": container,
                "exposure": exposure, "first_seen": rfc(rs.iter().map(second).min().unwrap()),
                "last_seen": rfc(rs.iter().map(second).max().unwrap()), "connections": rs.len(),
                "sources": sources.len(), "contradiction": contradiction,
            })
        })
        .collect()
}

/// Sorted as the command sorts: host, protocol, port, container name.
fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    let key = |v: &Value| {
        (v["host"].to_string(), v["proto"].to_string(), v["port"].as_u64(), v["container"]["name"].to_string())
    };
    rows.sort_by_key(key);
    rows
}

const EVIL_HOST: &str = "evil'\\host\u{1b}[2J\r\nFAKE";
const EVIL_NAME: &str = "c\u{202e}gpj.exe'\\\n";

#[allow(clippy::too_many_arguments, reason = "a record is many fields")]
fn record(
    host: &str,
    n: u32,
    stage: &str,
    src: &str,
    host_port: Option<u16>,
    name: Option<&str>,
    contradiction: Option<bool>,
    sec: f64,
) -> Value {
    let mut r = json!({
        "schema": 1, "ts": format!("2026-12-07T10:00:{sec:09.6}Z"), "stage": stage, "proto": "tcp",
        "family": "ipv4", "src_ip": src, "src_port": 40000 + n, "dst_ip": "172.17.0.2", "dst_port": 80,
        "host_ip": host_port.map(|_| "198.18.7.1"), "host_port": host_port, "community_id": "1:x",
        "iface": "docker0",
        "container": name.map(|n| json!({"id": format!("id-{n}"), "name": n, "image": "img",
            "compose_project": null, "compose_service": null, "swarm_service": null, "swarm_task": null})),
        "exposure": if host_port.is_some() { "published" } else { "direct" }, "published": [], "path": "bridge",
        "spoofed_local": false, "shape": [], "record_id": format!("{n:032x}"), "host": host,
    });
    if let Some(c) = contradiction {
        r["contradiction"] = json!(c);
    }
    r
}

/// Records of three hosts, `reached` and otherwise.
fn records() -> Vec<Value> {
    vec![
        record("alpha", 1, "reached", "198.18.7.2", Some(8080), Some("web"), Some(false), 1.25),
        record("alpha", 2, "reached", "198.18.7.3", Some(8080), Some("web"), Some(true), 5.0),
        record("alpha", 3, "reached", "198.18.7.2", Some(8080), Some("web"), None, 9.999999),
        record("alpha", 4, "reached", "198.18.7.4", None, Some("web"), None, 20.5),
        record("alpha", 5, "attempted", "198.18.7.5", Some(8080), None, None, 30.0),
        record("alpha", 6, "blocked", "198.18.7.5", Some(9999), None, None, 31.0),
        record(EVIL_HOST, 7, "reached", "198.18.8.2", Some(9090), Some(EVIL_NAME), None, 40.0),
        record(EVIL_HOST, 8, "reached", "198.18.8.2", Some(9090), None, None, 41.0),
        record("quiet", 9, "attempted", "198.18.9.2", Some(22), None, None, 50.0),
    ]
}

#[test]
fn rows_count_each_record_once_across_shards_and_exit_codes_tell() {
    let ch = ClickHouse::start("exposures", 2);
    ch.create_schema(Path::new(BIN), "dockexpose.records");
    let records = records();
    insert_twice(&ch, &records);
    let url = ch.url(0, "dockexpose.records");

    let out = exposures(&["--store", &url, "--json"]);
    assert_eq!(out.status.code(), Some(1), "exposures found: {out:?}");
    let got = json_rows(&out);
    let want = aggregate(&records);
    assert_eq!(sorted(got.clone()), sorted(want.clone()), "{}", String::from_utf8_lossy(&out.stdout));
    // The store's own order is host, protocol, port, container name.
    assert_eq!(got, sorted(want));
    assert_eq!(got.len(), 4);
    let web = &got[1];
    assert_eq!(
        (&web["port"], &web["connections"], &web["sources"], &web["contradiction"]),
        (&json!(8080), &json!(3), &json!(2), &json!(true))
    );
    assert_eq!(
        (&web["first_seen"], &web["last_seen"]),
        (&json!("2026-12-07T10:00:01Z"), &json!("2026-12-07T10:00:09Z"))
    );
    assert_eq!(
        (&got[0]["port"], &got[0]["host_port"], &got[0]["exposure"]),
        (&json!(80), &Value::Null, &json!(["direct"]))
    );

    // The table: aligned, and nothing a name carries reaches the terminal raw.
    let out = exposures(&["--store", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("fleet exposures:\n{text}");
    assert_eq!(text.lines().count(), 5, "a header and four rows: {text}");
    assert!(!text.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'), "{text:?}");
    assert!(text.contains(r"evil'\\host\u{1b}[2J\u{d}\u{a}FAKE"), "{text}");
    assert!(text.contains("dst:80"), "{text}");

    // --host, hostile names included, passes through the SQL intact.
    let out = exposures(&["--store", &url, "--json", "--host", EVIL_HOST]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let evil = json_rows(&out);
    assert_eq!(evil.len(), 2);
    assert!(evil.iter().all(|r| r["host"] == EVIL_HOST));
    // A row without a container sorts last (ClickHouse puts NULL last).
    assert_eq!(evil[0]["container"]["name"], EVIL_NAME);
    assert_eq!(evil[1]["container"], Value::Null);
    // No exposure: a host with only attempts, one nobody knows, an injection try, old records.
    for args in [
        vec!["--host", "quiet"],
        vec!["--host", "nobody"],
        vec!["--host", "alpha' OR 1=1 OR host='"],
        vec!["--since", "1s"],
    ] {
        let out = exposures(&[&["--store", url.as_str()], args.as_slice()].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "the header alone: {out:?}");
    }
    let out = exposures(&["--store", &url, "--since", "3650d", "--host", "alpha", "--json"]);
    assert_eq!((out.status.code(), json_rows(&out).len()), (Some(1), 2));

    // A single (not Distributed) table answers the same.
    let ddl = Command::new(BIN).args(["fleet", "schema", "--table", "dockexpose.single"]).output().unwrap();
    for statement in dockexpose::fleet::schema::statements(&String::from_utf8_lossy(&ddl.stdout)) {
        ch.query(0, &statement);
    }
    let rows: String = records.iter().map(|r| for_store(r) + "\n").collect();
    ch.insert_rows(0, "dockexpose.single", &rows);
    ch.insert_rows(0, "dockexpose.single", &rows);
    let out = exposures(&["--store", &ch.url(0, "dockexpose.single"), "--json"]);
    assert_eq!((out.status.code(), json_rows(&out)), (Some(1), got.clone()));

    // Credentials from the environment: the right ones read, wrong ones are an error.
    let shipper = support::clickhouse::SHIPPER_USER;
    let out = exposures_as(Some((shipper, support::clickhouse::SHIPPER_PASSWORD)), &["--store", &url, "--json"]);
    assert_eq!((out.status.code(), json_rows(&out)), (Some(1), got.clone()), "{out:?}");
    let out = exposures_as(Some((shipper, "not-the-pass-4711")), &["--store", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused the credentials") && stderr.contains("DOCKEXPOSE_STORE_PASSWORD"), "{stderr}");
    assert!(!stderr.contains("not-the-pass-4711"), "the password is never shown: {stderr}");

    // Errors: exit 2, with the fix.
    let out = exposures(&["--store", &ch.url(0, "dockexpose.nope")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("dockexpose fleet schema"), "{stderr}");
    let down = free_ports(30000, 1);
    let out = exposures(&["--store", &format!("clickhouse+http://127.0.0.1:{down}/dockexpose.records")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    let out = exposures(&["--store", "clickhouse+http://127.0.0.1:8123/d.t;DROP"]);
    assert_eq!(out.status.code(), Some(2));
    let out = exposures(&["--store", "nats://127.0.0.1:4222/dockexpose.records"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot answer queries"), "{out:?}");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn exposures_match_the_json_log_exactly() {
    let test = "exposures_match_the_json_log_exactly";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("fq");
    let port = free_ports(24000 + (outside.n % 500) as u16 * 2, 2);
    let web = docker::Container::run(
        &format!("dx-fq-{}", outside.n),
        &["-p", &format!("{port}:80"), "-p", &format!("{}:80", port + 1)],
        &image,
        &["80", "5300"],
    );
    // A host name that needs escaping in SQL: `--host` must find it all the same.
    let host_name = format!("fq'\\{}", outside.n);
    let path = json_path("fq");
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--stats-interval", "0", "--host-name", &host_name],
        path.clone(),
    );
    let (a, b) = (outside.v4(2).parse().unwrap(), outside.v4(3).parse().unwrap());
    // Two sources on the first port, one on the second, over more than a second.
    let plan = [(a, port), (b, port), (a, port), (a, port + 1), (b, port), (a, port)];
    for (i, (src, p)) in plan.iter().enumerate() {
        tcp_connect(&outside.ns, Some(*src), outside.host4(*p)).expect("the outside host reaches the published port");
        if i == 2 {
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let (records, status, stderr) = w.stop();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "{stderr:#?}");
    let web_name = web.name.clone();
    drop(web);
    let records: Vec<Value> = records.into_iter().filter(|r| r.get("stage").is_some()).collect();

    let ch = ClickHouse::start("exposures-log", 2);
    ch.create_schema(Path::new(BIN), "dockexpose.records");
    insert_twice(&ch, &records);

    let url = ch.url(0, "dockexpose.records");
    let out = exposures(&["--store", &url, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let want = sorted(aggregate(&records));
    assert_eq!(sorted(json_rows(&out)), want, "the store's rows against the JSON log's");
    let out = exposures(&["--store", &url, "--json", "--host", &host_name]);
    let mine = sorted(json_rows(&out));
    let want_mine: Vec<Value> = want.into_iter().filter(|r| r["host"] == host_name.as_str()).collect();
    assert_eq!(mine, want_mine);
    // What this test did: 5 connections from 2 sources to the first port, 1 to the second.
    let counts: Vec<(u64, u64, u64)> = mine
        .iter()
        .filter(|r| r["container"]["name"] == web_name.as_str())
        .map(|r| (r["port"].as_u64().unwrap(), r["connections"].as_u64().unwrap(), r["sources"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [(u64::from(port), 5, 2), (u64::from(port) + 1, 1, 1)], "{mine:#?}");
    let table = exposures(&["--store", &url, "--host", &host_name]);
    eprintln!("{test}:\n{}{}", String::from_utf8_lossy(&table.stdout), String::from_utf8_lossy(&out.stdout));
}
