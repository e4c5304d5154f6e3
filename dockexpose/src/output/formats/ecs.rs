//! Elastic Common Schema (8.x): one ECS event per record, alert and daemon line.
//!
//! `destination.*` is the host side the outsider used and `destination.nat.*` the
//! container side (ECS's own model of DNAT). Compose and swarm labels go under
//! `container.labels`, named as Docker names them with dots turned into underscores
//! (what Filebeat's `add_docker_metadata` writes: `com_docker_compose_project`).
//! Whatever of the record ECS has no field for is kept in the custom `dockexpose`
//! object, so nothing of the record is lost.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::{iana_number, native_map, Observer};
use crate::output::{
    alerts::{Alert, AlertKind, HealthState},
    record::{Record, Timestamp},
};

/// The ECS release whose field reference the events follow (tests/data holds it).
pub const ECS_VERSION: &str = "8.11.0";

/// Record keys placed in ECS fields; every other key goes to `dockexpose`.
const MAPPED: [&str; 13] = [
    "ts",
    "stage",
    "proto",
    "family",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "host_ip",
    "host_port",
    "community_id",
    "iface",
    "container",
];

/// Docker's label names for the container's compose and swarm fields, dedotted.
const LABELS: [(&str, &str); 4] = [
    ("compose_project", "com_docker_compose_project"),
    ("compose_service", "com_docker_compose_service"),
    ("swarm_service", "com_docker_swarm_service_name"),
    ("swarm_task", "com_docker_swarm_task_name"),
];

pub fn record(rec: &Record, observer: &Observer) -> Value {
    Value::Object(connection(rec, observer))
}

/// An alert; `now` is its time when no record gives one.
pub fn alert_at(alert: &Alert, observer: &Observer, now: SystemTime) -> Value {
    let mut event = match &alert.record {
        Some(rec) => connection(rec, observer),
        None => {
            let (category, kind) = match alert.kind {
                // The daemon's own state, failing or recovered.
                AlertKind::Health => ("process", "change"),
                AlertKind::ExposureChanged => ("configuration", "change"),
                // A rate-limit summary: a note about connections not shown one by one.
                _ => ("network", "info"),
            };
            let ts = Timestamp(now).format();
            base(std::str::from_utf8(&ts).expect("ASCII"), category, kind, observer)
        }
    };
    event["event"]["kind"] = "alert".into();
    event["event"]["dataset"] = "dockexpose.alert".into();
    event["event"]["severity"] = alert.severity().into();
    if let Some(h) = &alert.health {
        event["event"]["outcome"] = if h.state == HealthState::Recovered { "success" } else { "failure" }.into();
    }
    event.insert("message".into(), alert.text.clone().into());
    let mut info = json!({ "kind": alert.kind.as_str() });
    if let Some(h) = &alert.health {
        info["health"] = serde_json::to_value(h).expect("HealthInfo always serializes");
    }
    custom(&mut event).insert("alert".into(), info);
    Value::Object(event)
}

/// `daemon_start`, `daemon_stop`, `kernel_state_reset` (the process's life) and
/// `exposure_changed` (a port's exposure after the ground moved), the native line
/// kept whole under `dockexpose`.
pub fn daemon_line(native: Value, observer: &Observer) -> Value {
    let name = native.get("event").and_then(Value::as_str).unwrap_or("daemon").to_owned();
    let (category, kind) = match name.as_str() {
        "daemon_start" => ("process", "start"),
        "daemon_stop" => ("process", "end"),
        "kernel_state_reset" => ("process", "change"),
        "exposure_changed" => ("configuration", "change"),
        _ => ("process", "info"),
    };
    let ts = native.get("ts").and_then(Value::as_str).unwrap_or_default();
    let mut event = base(ts, category, kind, observer);
    event["event"]["action"] = name.as_str().into();
    event["event"]["dataset"] = "dockexpose.daemon".into();
    if let Some(pid) = native.get("pid").filter(|p| p.is_u64()) {
        event.insert("process".into(), json!({ "pid": pid }));
    }
    if name == "exposure_changed" {
        let mut destination = Map::new();
        if let Some(port) = native.get("host_port").filter(|p| p.is_u64()) {
            destination.insert("port".into(), port.clone());
        }
        event.insert("destination".into(), Value::Object(destination));
        let mut network = Map::new();
        if let Some(proto) = native.get("proto").and_then(Value::as_str) {
            network.insert("transport".into(), proto.into());
            if let Some(n) = iana_number(proto) {
                network.insert("iana_number".into(), n.to_string().into());
            }
        }
        if let Some(family) = native.get("family").and_then(Value::as_str) {
            network.insert("type".into(), family.into());
        }
        event.insert("network".into(), Value::Object(network));
    }
    event.insert("dockexpose".into(), native);
    Value::Object(event)
}

/// The fields every event has: time, ECS version, categorization, who observed.
fn base(ts: &str, category: &str, kind: &str, observer: &Observer) -> Map<String, Value> {
    let mut host = json!({ "hostname": observer.hostname, "name": observer.hostname });
    if let Some(id) = &observer.host_id {
        host["id"] = id.as_str().into();
    }
    let event = json!({
        "@timestamp": ts,
        "ecs": { "version": ECS_VERSION },
        "event": {
            "kind": "event",
            "category": [category],
            "type": [kind],
            "module": "dockexpose",
        },
        "observer": {
            "hostname": observer.hostname,
            "product": "dockexpose",
            "vendor": "dockexpose",
            "version": observer.version,
            "type": "sensor",
        },
        "host": host,
    });
    match event {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The custom `dockexpose` object of an event (made when missing).
fn custom(event: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let slot = event.entry("dockexpose").or_insert_with(|| Value::Object(Map::new()));
    slot.as_object_mut().expect("dockexpose is an object")
}

/// `event.type` and `event.outcome` of a stage.
fn categorization(stage: &str) -> (&'static [&'static str], &'static str) {
    match stage {
        "attempted" => (&["connection", "start"], "unknown"),
        "reached" => (&["connection", "start", "allowed"], "success"),
        "blocked" => (&["connection", "denied"], "failure"),
        "verified" => (&["connection", "info"], "unknown"),
        _ => (&["connection"], "unknown"),
    }
}

/// The event of a connection record.
fn connection(rec: &Record, observer: &Observer) -> Map<String, Value> {
    let ts = rec.ts.format();
    let mut event = base(std::str::from_utf8(&ts).expect("ASCII"), "network", "connection", observer);
    let (types, outcome) = categorization(rec.stage);
    event["event"]["type"] = json!(types);
    event["event"]["action"] = rec.stage.into();
    event["event"]["outcome"] = outcome.into();
    event["event"]["dataset"] = "dockexpose.connection".into();

    event.insert("source".into(), json!({ "ip": rec.src_ip, "port": rec.src_port }));
    let observed = (rec.dst_ip, rec.dst_port);
    let host_side = rec.host_ip.zip(rec.host_port);
    let (ip, port) = host_side.unwrap_or(observed);
    let mut destination = json!({ "ip": ip, "port": port });
    // The container side, when the outsider's address was translated to reach it.
    if host_side.is_some_and(|h| h != observed) {
        destination["nat"] = json!({ "ip": rec.dst_ip, "port": rec.dst_port });
    }
    event.insert("destination".into(), destination);
    let mut related: Vec<_> = vec![rec.src_ip, ip, rec.dst_ip];
    related.dedup();
    event.insert("related".into(), json!({ "ip": related }));

    let mut network = json!({ "transport": rec.proto, "type": rec.family, "direction": "inbound" });
    if let Some(n) = iana_number(rec.proto) {
        network["iana_number"] = n.to_string().into();
    }
    if let Some(id) = &rec.community_id {
        network["community_id"] = (**id).into();
    }
    event.insert("network".into(), network);
    event["observer"]["ingress"] = json!({ "interface": { "name": rec.iface } });

    if let Some(c) = &rec.container {
        let mut labels = Map::new();
        for (field, label) in LABELS {
            let value = match field {
                "compose_project" => &c.compose_project,
                "compose_service" => &c.compose_service,
                "swarm_service" => &c.swarm_service,
                _ => &c.swarm_task,
            };
            if let Some(v) = value {
                labels.insert(label.into(), v.as_str().into());
            }
        }
        let mut container = json!({ "id": c.id, "name": c.name, "image": { "name": c.image } });
        if !labels.is_empty() {
            container["labels"] = Value::Object(labels);
        }
        event.insert("container".into(), container);
    }

    // A verdict that names its reason: the probe's why, or the firewall rule the
    // host's intent comes from.
    let rule = match (&rec.intent, &rec.why) {
        (Some(intent), _) => Some(json!({ "name": intent.rule, "ruleset": intent.source.as_str() })),
        (None, Some(why)) => Some(json!({ "name": why })),
        _ => None,
    };
    if let Some(rule) = rule {
        event.insert("rule".into(), rule);
    }

    // The record's own name: what a store deduplicates on.
    if let Some(id) = &rec.record_id {
        event["event"]["id"] = id.to_string().into();
    }
    let mut rest = native_map(rec);
    // host and host_id are the observer's, in host.*.
    for key in MAPPED.iter().chain(&["record_id", "host", "host_id"]) {
        rest.remove(*key);
    }
    rest.insert("host_side_known".into(), host_side.is_some().into());
    event.insert("dockexpose".into(), Value::Object(rest));
    event
}

#[cfg(test)]
#[path = "ecs_tests.rs"]
mod tests;
