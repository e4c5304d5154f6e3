//! The ECS and OCSF events checked against references, on records of every stage
//! (attempted, reached with and without a host side, blocked, verified; IPv6, UDP,
//! SCTP), alerts (a connection's, a health alert, a summary) and each daemon line.
//!
//! - ECS: every field name written (outside the custom `dockexpose` object and
//!   `container.labels`) must be in ECS 8.11.0's field reference
//!   (tests/data/ecs-8.11.0-fields.csv) with the JSON type its ECS type takes, arrays
//!   only where ECS normalizes to an array; `event.kind`, `event.category`,
//!   `event.type` and `event.outcome` take ECS's allowed values, and each type is one
//!   its categories expect (tests/data/ecs-8.11.0-event.yml). No root, no network.
//! - OCSF: each event is validated by a python3 subprocess (tests/formats_ocsf.py)
//!   against the JSON Schema that PyPI's `ocsf-json-schema` builds from the OCSF schema
//!   it ships, for the event's class, version and profiles (with `jsonschema`), plus
//!   OCSF's rules a JSON Schema cannot say (type_uid, captions). Without the packages
//!   (`python3 -m pip install ocsf-json-schema jsonschema`) the test is a recorded
//!   skip, and fails under CI.
//!
//! Both checks are shown able to fail: a broken event is rejected by each.

#[path = "support/skip.rs"]
mod skip;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use dockexpose::{
    kernel::event::{Observation, Proto, Stage},
    output::{
        alerts::{Alert, AlertKind, HealthCondition, HealthLimiter},
        formats::{Formatter, JsonFormat, Observer},
        record::{ContainerRef, HostSide, Record},
    },
};
use serde_json::{json, Value};

fn observer() -> Observer {
    Observer { hostname: "web-01".into(), host_id: Some("0123456789abcdef0123456789abcdef".into()), version: "0.1.0" }
}

/// A record of `stage`: 198.18.3.2 to container web (compose shop/web) at `dst`,
/// through the host side `host` when given.
fn record(stage: Stage, proto: Proto, src: &str, dst: (&str, u16), host: Option<(&str, u16)>) -> Record {
    let obs = Observation {
        ktime_ns: 0,
        stage,
        proto,
        src: src.parse().unwrap(),
        src_port: 40112,
        dst: dst.0.parse().unwrap(),
        dst_port: dst.1,
        orig_dst: host.map(|(ip, port)| (ip.parse().unwrap(), port)),
        ifindex: 3,
        seq: 0,
        flags: 0,
        cpu: 1,
        rec_seq: 9,
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_936_834_123_456);
    let mut rec = Record::from_observation(&obs, stage, at, if stage == Stage::Reached { "docker0" } else { "eth0" });
    rec.community_id = Some("1:q56dCzNiETsI+i/gyEbUFrETGt0=".into());
    rec.container = Some(Arc::new(ContainerRef {
        id: "4f1e2d3c4b5a".into(),
        name: "web".into(),
        image: "nginx:1.27".into(),
        compose_project: Some("shop".into()),
        compose_service: Some("web".into()),
        swarm_service: None,
        swarm_task: None,
    }));
    rec.exposure = "published";
    let host_ip: IpAddr = if src.contains(':') { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() };
    rec.published = vec![HostSide { host_ip, host_port: 8080 }];
    (rec.boot_id, rec.cpu, rec.kseq) = (Some("cc02aa2a-5c1e-4b7e-9d1a-2f0e6c9b8a71"), Some(1), Some(9));
    rec
}

/// Every kind of event the formats write, by name: records, alerts, daemon lines.
enum Input {
    Record(Box<Record>),
    Alert(Alert),
    Daemon(Value),
}

fn inputs() -> Vec<(&'static str, Input)> {
    let reached = record(Stage::Reached, Proto::Tcp, "198.18.3.2", ("172.17.0.2", 80), Some(("198.18.3.1", 8080)));
    let mut blocked = record(Stage::Attempted, Proto::Tcp, "198.18.3.2", ("198.18.3.1", 8080), None);
    blocked.stage = "blocked";
    let mut verified = record(Stage::Reached, Proto::Tcp, "198.18.9.77", ("198.18.3.1", 8080), None);
    (verified.stage, verified.path, verified.verdict) = ("verified", None, Some("HELD"));
    verified.why = Some("dropped by ip filter DOCKER-USER: iifname \"eth0\" drop".into());
    let mut contradicted = reached.clone();
    contradicted.contradiction = Some(true);
    contradicted.ban_bypassed = Some("ipset blocklist".into());
    let mut health = HealthLimiter::new(Duration::from_secs(60));
    let failing = health
        .failing(HealthCondition::AuditLog, None, "WARNING: writing the audit log failed".into(), Instant::now())
        .unwrap();
    let mut detached = HealthLimiter::new(Duration::from_secs(60));
    let detached = detached
        .failing(HealthCondition::Detached, Some("br-x"), "bridge br-x disappeared".into(), Instant::now())
        .unwrap();
    let lifecycle = |event: &str, extra: Value| {
        let mut line = json!({"schema": 1, "ts": "2026-11-29T15:52:05.254839Z", "event": event,
                              "boot_id": "cc02aa2a-5c1e-4b7e-9d1a-2f0e6c9b8a71", "pid": 27299, "version": "0.1.0",
                              "pin_dir": "/sys/fs/bpf/dockexpose/v6b4362601c85"});
        line.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        line
    };
    vec![
        (
            "attempted",
            Input::Record(Box::new(record(
                Stage::Attempted,
                Proto::Tcp,
                "198.18.3.2",
                ("198.18.3.1", 8080),
                Some(("198.18.3.1", 8080)),
            ))),
        ),
        ("reached", Input::Record(Box::new(reached.clone()))),
        (
            "reached without host side",
            Input::Record(Box::new(record(Stage::Reached, Proto::Tcp, "198.18.3.2", ("172.17.0.2", 80), None))),
        ),
        ("blocked", Input::Record(Box::new(blocked))),
        ("verified", Input::Record(Box::new(verified))),
        (
            "reached ipv6",
            Input::Record(Box::new(record(
                Stage::Reached,
                Proto::Tcp,
                "fd42:198::2",
                ("fd42:198:1::2", 80),
                Some(("fd42:198::1", 8080)),
            ))),
        ),
        (
            "reached udp",
            Input::Record(Box::new(record(
                Stage::Reached,
                Proto::Udp,
                "198.18.3.2",
                ("172.17.0.2", 53),
                Some(("198.18.3.1", 5353)),
            ))),
        ),
        (
            "reached sctp",
            Input::Record(Box::new(record(
                Stage::Reached,
                Proto::Sctp,
                "198.18.3.2",
                ("172.17.0.2", 9899),
                Some(("198.18.3.1", 9899)),
            ))),
        ),
        (
            "alert",
            Input::Alert(Alert::new(
                AlertKind::Reached,
                "EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp".into(),
                Some(Arc::new(reached)),
            )),
        ),
        (
            "contradiction alert",
            Input::Alert(Alert::new(
                AlertKind::Contradiction,
                "CONTRADICTION: ipset blocklist".into(),
                Some(Arc::new(contradicted)),
            )),
        ),
        ("health alert", Input::Alert(failing)),
        ("detached alert", Input::Alert(detached)),
        (
            "summary alert",
            Input::Alert(Alert::new(AlertKind::Suppressed, "WARNING: 12 more alerts not shown".into(), None)),
        ),
        (
            "daemon_start",
            Input::Daemon(lifecycle(
                "daemon_start",
                json!({"kernel_state": "resumed", "previous_stop": "crash",
            "backlog_records": 412, "backlog_bytes": 39552, "ring_bytes": 4194304, "lost_since_last_stop": 0,
            "kernel_state_since": "2026-11-29T15:51:58.000000Z"}),
            )),
        ),
        (
            "daemon_stop",
            Input::Daemon(lifecycle(
                "daemon_stop",
                json!({"reason": "SIGTERM", "kernel_side": "kept", "left_in_ring": 0}),
            )),
        ),
        (
            "kernel_state_reset",
            Input::Daemon(lifecycle("kernel_state_reset", json!({"reason": "layout changed", "lost": null}))),
        ),
        (
            "exposure_changed",
            Input::Daemon(json!({"event": "exposure_changed", "ts": "2026-12-07T07:00:00Z", "host_port": 8080,
            "proto": "tcp", "family": "ipv4", "uplink": "eth0", "from": "HELD", "to": "EXPOSED",
            "cause": {"kind": "ruleset", "process": "iptables", "pid": 1234, "detail": null}})),
        ),
    ]
}

fn render(format: JsonFormat) -> Vec<(&'static str, Value)> {
    let f = Formatter::new(format, observer());
    inputs()
        .into_iter()
        .map(|(name, input)| {
            let event = match input {
                Input::Record(rec) => f.record(&rec),
                Input::Alert(alert) => serde_json::from_slice(&f.alert_json(&alert, SystemTime::now())).unwrap(),
                Input::Daemon(line) => f.daemon_line(line),
            };
            (name, event)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// ECS
// ---------------------------------------------------------------------------------

/// The rows of a CSV text (RFC 4180: quoted fields may hold commas, quotes, newlines).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// ECS's fields: name to (type, whether it is an array).
fn ecs_fields() -> BTreeMap<String, (String, bool)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ecs-8.11.0-fields.csv");
    let rows = parse_csv(&std::fs::read_to_string(path).expect("the ECS reference is in tests/data"));
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    let (field, kind, norm) = (col("Field"), col("Type"), col("Normalization"));
    let fields: BTreeMap<_, _> = rows[1..]
        .iter()
        .map(|r| (r[field].clone(), (r[kind].clone(), r[norm].split(',').any(|n| n.trim() == "array"))))
        .collect();
    assert!(fields.len() > 1500, "the whole reference was read: {} fields", fields.len());
    fields
}

/// ECS's `allowed_values` of the event fields, and the types each category expects,
/// from event.yml (four-space fields, eight-space values, twelve-space expected types).
struct Allowed {
    values: BTreeMap<String, BTreeSet<String>>,
    expected: BTreeMap<String, BTreeSet<String>>,
}

fn ecs_allowed() -> Allowed {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ecs-8.11.0-event.yml");
    let text = std::fs::read_to_string(path).expect("the ECS reference is in tests/data");
    let (mut values, mut expected) =
        (BTreeMap::<String, BTreeSet<String>>::new(), BTreeMap::<String, BTreeSet<String>>::new());
    let (mut field, mut value) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("    - name: ") {
            field = name.trim().to_string();
        } else if let Some(name) = line.strip_prefix("        - name: ") {
            value = name.trim().to_string();
            values.entry(field.clone()).or_default().insert(value.clone());
        } else if let Some(kind) = line.strip_prefix("            - ").filter(|_| field == "category") {
            expected.entry(value.clone()).or_default().insert(kind.trim().to_string());
        }
    }
    for f in ["kind", "category", "type", "outcome"] {
        assert!(values.get(f).is_some_and(|v| v.len() >= 3), "allowed values of event.{f} read: {values:?}");
    }
    Allowed { values, expected }
}

/// Whether a JSON value fits an ECS type.
fn fits(ecs_type: &str, v: &Value) -> bool {
    match ecs_type {
        "keyword" | "constant_keyword" | "wildcard" | "text" | "match_only_text" => v.is_string(),
        "ip" => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
        "long" | "integer" | "short" | "byte" | "unsigned_long" => v.is_u64() || v.is_i64(),
        "float" | "half_float" | "scaled_float" | "double" => v.is_number(),
        "boolean" => v.is_boolean(),
        "date" => v.as_str().is_some_and(|s| humantime::parse_rfc3339(s).is_ok()),
        "object" | "flattened" | "nested" => v.is_object(),
        _ => false,
    }
}

/// The problems of one ECS event: names not in ECS, types that do not fit, arrays
/// where ECS has none, values ECS does not allow.
fn ecs_problems(event: &Value, fields: &BTreeMap<String, (String, bool)>, allowed: &Allowed) -> Vec<String> {
    fn walk(prefix: &str, v: &Value, fields: &BTreeMap<String, (String, bool)>, out: &mut Vec<String>) {
        let Some((ecs_type, array)) = fields.get(prefix) else {
            match v {
                Value::Object(map)
                    if !prefix.is_empty() && fields.keys().any(|f| f.starts_with(&format!("{prefix}."))) =>
                {
                    for (k, child) in map {
                        walk(&format!("{prefix}.{k}"), child, fields, out);
                    }
                }
                Value::Object(map) if prefix.is_empty() => {
                    for (k, child) in map {
                        // ECS's guidance: custom fields under the product's own name.
                        if k != "dockexpose" {
                            walk(k, child, fields, out);
                        }
                    }
                }
                _ => out.push(format!("{prefix}: not an ECS field")),
            }
            return;
        };
        let items: Vec<&Value> = match v {
            Value::Array(items) if *array => items.iter().collect(),
            Value::Array(_) => return out.push(format!("{prefix}: an array, but ECS has one value")),
            one => vec![one],
        };
        for item in items {
            if !fits(ecs_type, item) {
                out.push(format!("{prefix}: {item} is not of ECS type {ecs_type}"));
            }
        }
        // container.labels holds Docker's label names: keyword values.
        if prefix == "container.labels" {
            for (k, label) in v.as_object().into_iter().flatten() {
                if !label.is_string() || k.contains('.') {
                    out.push(format!("container.labels.{k}: labels are dedotted names with keyword values"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk("", event, fields, &mut out);
    let e = &event["event"];
    let as_list = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(items) => items.iter().map(|i| i.as_str().unwrap_or("?").to_string()).collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    for (field, required) in [("kind", true), ("category", true), ("type", true), ("outcome", false)] {
        let got = as_list(&e[field]);
        if required && got.is_empty() {
            out.push(format!("event.{field} missing"));
        }
        for value in got.iter().filter(|g| !allowed.values[field].contains(*g)) {
            out.push(format!("event.{field}: {value} is not an allowed value"));
        }
    }
    for category in as_list(&e["category"]) {
        for kind in as_list(&e["type"]) {
            if !allowed.expected.get(&category).is_some_and(|x| x.contains(&kind)) {
                out.push(format!("event.type {kind} is not expected for event.category {category}"));
            }
        }
    }
    for required in ["@timestamp", "ecs"] {
        if event.get(required).is_none() {
            out.push(format!("{required} missing"));
        }
    }
    out
}

#[test]
fn ecs_events_use_ecs_field_names_types_and_values() {
    let (fields, allowed) = (ecs_fields(), ecs_allowed());
    let events = render(JsonFormat::Ecs);
    for (name, event) in &events {
        let problems = ecs_problems(event, &fields, &allowed);
        assert!(problems.is_empty(), "{name}: {problems:#?}\n{event:#}");
    }
    // The check can fail: an unknown name, a wrong type, an array where ECS has one
    // value, a category's unexpected type.
    let mut broken = events[1].1.clone();
    broken["destination"]["nat"]["address"] = "x".into();
    broken["source"]["port"] = "40112".into();
    broken["event"]["kind"] = json!(["event"]);
    broken["event"]["type"] = json!(["creation"]);
    let problems = ecs_problems(&broken, &fields, &allowed);
    for expected in ["destination.nat.address", "source.port", "event.kind", "event.type creation"] {
        assert!(problems.iter().any(|p| p.starts_with(expected)), "{expected} not caught: {problems:#?}");
    }
    println!("{} ECS events match ECS 8.11.0; the reached one:\n{}", events.len(), events[1].1);
}

// ---------------------------------------------------------------------------------
// OCSF
// ---------------------------------------------------------------------------------

#[test]
fn ocsf_events_validate_against_the_ocsf_schema() {
    const TEST: &str = "ocsf_events_validate_against_the_ocsf_schema";
    let missing = |why: String| {
        if std::env::var_os("CI").is_some() {
            panic!("the OCSF validator is needed in CI: {why}");
        }
        skip::skip(TEST, &format!("{why} (python3 -m pip install ocsf-json-schema jsonschema)"));
    };
    let probe =
        Command::new("python3").args(["-c", "import ocsf_json_schema, jsonschema"]).stderr(Stdio::null()).status();
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => return missing("python3 cannot import ocsf_json_schema and jsonschema".into()),
        Err(e) => return missing(format!("no python3: {e}")),
    }

    let mut events = render(JsonFormat::Ocsf);
    // The validator can fail: an attribute OCSF does not have, a type_uid that is not
    // class * 100 + activity, a caption that is not the id's.
    let mut broken = events[1].1.clone();
    broken["dst_endpoint"]["container_side"] = json!({"ip": "172.17.0.2"});
    let mut bad_uid = events[1].1.clone();
    bad_uid["type_uid"] = 400105.into();
    let mut bad_caption = events[3].1.clone();
    bad_caption["disposition"] = "Allowed".into();
    let controls =
        [("broken: unknown attribute", broken), ("broken: type_uid", bad_uid), ("broken: caption", bad_caption)];
    let control_names: Vec<&str> = controls.iter().map(|(n, _)| *n).collect();
    events.extend(controls);

    let input = serde_json::to_vec(&events.iter().map(|(n, e)| json!([n, e])).collect::<Vec<_>>()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/formats_ocsf.py");
    let mut child =
        Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3 runs");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the validator failed to run: {out:?}");
    let verdicts: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    let mut wrong = Vec::new();
    for (name, event) in &events {
        let verdict = verdicts.get(name).unwrap_or_else(|| panic!("no verdict on {name}: {text}"));
        if control_names.contains(name) {
            assert!(verdict.starts_with("invalid"), "{name} was not caught: {verdict}");
        } else if *verdict != "valid" {
            wrong.push(format!("{name}: {verdict}\n{event}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!(
        "{} OCSF events valid, {} broken ones caught; the reached one:\n{}",
        events.len() - control_names.len(),
        control_names.len(),
        events[1].1
    );
}
