//! OCSF 1.7: connection records and their alerts as Network Activity (4001); the
//! daemon's own life and health as Application Lifecycle (6002), about dockexpose
//! itself; `exposure_changed` as Network Activity "Other" on the host port.
//!
//! `dst_endpoint` is the host side the outsider used, with the container in
//! `dst_endpoint.container` (uid and name: OCSF's image needs the image ID, which the
//! record lacks); the container side's address, where the host side was translated to
//! it, is `dst_endpoint.proxy_endpoint` (OCSF's place for NAT). The rest of the record
//! is in `unmapped`, under its native keys (health alerts and summaries without a
//! record are Application Lifecycle "Other", about dockexpose itself).

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::{iana_number, native_map, Observer};
use crate::output::{
    alerts::{Alert, AlertKind, HealthState},
    record::Record,
};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.7.0";

/// Record keys placed in OCSF attributes; every other key goes to `unmapped`.
const MAPPED: [&str; 10] = [
    "proto",
    "family",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "host_ip",
    "host_port",
    "community_id",
    "container",
];

/// One OCSF class: its uid, its name, and its category's.
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    /// The profiles whose attributes its events use (`metadata.profiles`).
    profiles: &'static [&'static str],
}

const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
    profiles: &["host", "container", "security_control"],
};

const APPLICATION_LIFECYCLE: Class = Class {
    uid: 6002,
    name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
    profiles: &["host"],
};

/// `activity_id` and `activity_name` of a connection record's stage. `blocked` means
/// neither reached nor answered in time: a connection that failed (a timeout), not
/// one refused by an answer. An attempt is a first packet seen before any firewall:
/// traffic whose outcome is not known yet.
fn activity(stage: &str) -> (u32, &'static str) {
    match stage {
        "reached" => (1, "Open"),
        "blocked" => (4, "Fail"),
        "attempted" => (6, "Traffic"),
        "verified" => (99, "Verify"),
        _ => (0, "Unknown"),
    }
}

/// `disposition_id` and `disposition`: what the host's firewall did.
fn disposition(rec: &Record) -> (u32, &'static str) {
    match (rec.stage, rec.verdict) {
        ("reached", _) | (_, Some("EXPOSED" | "PROXY")) => (1, "Allowed"),
        ("blocked", _) | (_, Some("HELD")) => (2, "Blocked"),
        _ => (0, "Unknown"),
    }
}

/// OCSF's `severity` caption of a `severity_id`.
fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        99 => "Other",
        _ => "Unknown",
    }
}

/// OCSF's `severity_id` of a syslog severity (`Alert::severity`).
pub fn severity_of_syslog(severity: u8) -> u32 {
    match severity {
        0 => 6,
        1 | 2 => 5,
        3 => 4,
        4 => 3,
        5 => 2,
        _ => 1,
    }
}

/// Milliseconds since the epoch.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The attributes every event has.
fn base(
    class: &Class,
    (activity_id, activity_name): (u32, &str),
    time: SystemTime,
    severity_id: u32,
    observer: &Observer,
) -> Map<String, Value> {
    let mut device = json!({ "hostname": observer.hostname, "type_id": 0, "type": "Unknown" });
    if let Some(id) = &observer.host_id {
        device["uid"] = id.as_str().into();
    }
    let event = json!({
        "class_uid": class.uid,
        "class_name": class.name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class.uid * 100 + activity_id,
        "type_name": format!("{}: {activity_name}", class.name),
        "time": epoch_ms(time),
        "severity_id": severity_id,
        "severity": severity_name(severity_id),
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "dockexpose", "vendor_name": "dockexpose", "version": observer.version },
            "profiles": class.profiles,
        },
        "device": device,
    });
    match event {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `connection_info` of a protocol and family, inbound.
fn connection_info(proto: &str, family: &str) -> Value {
    let mut info = json!({ "protocol_name": proto, "direction_id": 1, "direction": "Inbound" });
    if let Some(n) = iana_number(proto) {
        info["protocol_num"] = n.into();
    }
    let (ver_id, ver) = match family {
        "ipv4" => (4, "Internet Protocol version 4 (IPv4)"),
        "ipv6" => (6, "Internet Protocol version 6 (IPv6)"),
        _ => (0, "Unknown"),
    };
    info["protocol_ver_id"] = ver_id.into();
    info["protocol_ver"] = ver.into();
    info
}

pub fn record(rec: &Record, observer: &Observer) -> Value {
    Value::Object(network_activity(rec, observer, 1))
}

fn network_activity(rec: &Record, observer: &Observer, severity_id: u32) -> Map<String, Value> {
    let mut event = base(&NETWORK_ACTIVITY, activity(rec.stage), rec.ts.0, severity_id, observer);
    let (disposition_id, disposition) = disposition(rec);
    event.insert("disposition_id".into(), disposition_id.into());
    event.insert("disposition".into(), disposition.into());
    let status = match rec.stage {
        "reached" => Some((1, "Success")),
        "blocked" => Some((2, "Failure")),
        _ => None,
    };
    if let Some((id, name)) = status {
        event.insert("status_id".into(), id.into());
        event.insert("status".into(), name.into());
    }
    event.insert("src_endpoint".into(), json!({ "ip": rec.src_ip, "port": rec.src_port }));

    let observed = (rec.dst_ip, rec.dst_port);
    let host_side = rec.host_ip.zip(rec.host_port);
    let (ip, port) = host_side.unwrap_or(observed);
    let mut dst = json!({ "ip": ip, "port": port });
    if host_side.is_some_and(|h| h != observed) {
        dst["proxy_endpoint"] = json!({ "ip": rec.dst_ip, "port": rec.dst_port });
    }
    let mut rest = native_map(rec);
    if let Some(c) = &rec.container {
        // OCSF's image requires its uid (the image ID), which the record does not
        // have: the image's name stays in unmapped, with compose and swarm.
        dst["container"] = json!({ "uid": c.id, "name": c.name });
        let mut labels = Map::new();
        for (key, value) in [
            ("image", Some(&c.image)),
            ("compose_project", c.compose_project.as_ref()),
            ("compose_service", c.compose_service.as_ref()),
            ("swarm_service", c.swarm_service.as_ref()),
            ("swarm_task", c.swarm_task.as_ref()),
        ] {
            labels.insert(key.into(), value.map(String::as_str).into());
        }
        rest.insert("container".into(), Value::Object(labels));
    } else {
        rest.remove("container");
    }
    event.insert("dst_endpoint".into(), dst);

    let mut info = connection_info(rec.proto, rec.family);
    if let Some(id) = &rec.community_id {
        info["community_uid"] = (**id).into();
    }
    event.insert("connection_info".into(), info);

    // The record's own name: what a store deduplicates on. host and host_id are the
    // observer's, in device.
    if let Some(id) = &rec.record_id {
        event["metadata"]["uid"] = id.to_string().into();
    }
    for key in MAPPED.iter().filter(|&&k| k != "container").chain(&["record_id", "host", "host_id"]) {
        rest.remove(*key);
    }
    rest.insert("host_side_known".into(), host_side.is_some().into());
    event.insert("unmapped".into(), Value::Object(rest));
    event
}

/// An alert; `now` is its time when no record gives one. Health alerts and summaries
/// without a record are about dockexpose itself: Application Lifecycle, "Other".
pub fn alert_at(alert: &Alert, observer: &Observer, now: SystemTime) -> Value {
    let severity_id = severity_of_syslog(alert.severity());
    let mut event = match &alert.record {
        Some(rec) => network_activity(rec, observer, severity_id),
        None => {
            let name = if alert.kind == AlertKind::Health { "Health" } else { "Alert" };
            let mut event = base(&APPLICATION_LIFECYCLE, (99, name), now, severity_id, observer);
            event.insert("app".into(), product(observer));
            if let Some(h) = &alert.health {
                let (id, status) = if h.state == HealthState::Recovered { (1, "Success") } else { (2, "Failure") };
                event.insert("status_id".into(), id.into());
                event.insert("status".into(), status.into());
                event.insert("status_detail".into(), h.condition.as_str().into());
            }
            event
        }
    };
    if alert.record.is_some() {
        event.insert("is_alert".into(), true.into());
    }
    event.insert("message".into(), alert.text.clone().into());
    let mut info = json!({ "kind": alert.kind.as_str() });
    if let Some(h) = &alert.health {
        info["health"] = serde_json::to_value(h).expect("HealthInfo always serializes");
    }
    let unmapped = event.entry("unmapped").or_insert_with(|| Value::Object(Map::new()));
    unmapped["alert"] = info;
    Value::Object(event)
}

/// dockexpose as an OCSF product.
fn product(observer: &Observer) -> Value {
    json!({ "name": "dockexpose", "vendor_name": "dockexpose", "version": observer.version })
}

/// The daemon's own lines: its start, stop and kernel-state reset as Application
/// Lifecycle; `exposure_changed` as Network Activity "Other" on the host port. The
/// native line is kept whole in `unmapped`.
pub fn daemon_line(native: Value, observer: &Observer) -> Value {
    let name = native.get("event").and_then(Value::as_str).unwrap_or("daemon").to_owned();
    let time = native
        .get("ts")
        .and_then(Value::as_str)
        .and_then(|ts| humantime::parse_rfc3339(ts).ok())
        .unwrap_or_else(SystemTime::now);
    let mut event = if name == "exposure_changed" {
        let to = native.get("to").and_then(Value::as_str);
        let severity_id = if matches!(to, Some("EXPOSED" | "PROXY")) { 3 } else { 1 };
        let mut event = base(&NETWORK_ACTIVITY, (99, "Exposure Changed"), time, severity_id, observer);
        // The destination is this host's port, on the uplink the probe came in by.
        let mut dst = json!({ "hostname": observer.hostname });
        if let Some(uplink) = native.get("uplink").and_then(Value::as_str) {
            dst["interface_name"] = uplink.into();
        }
        if let Some(port) = native.get("host_port").filter(|p| p.is_u64()) {
            dst["port"] = port.clone();
        }
        event.insert("dst_endpoint".into(), dst);
        let text = |key: &str| native.get(key).and_then(Value::as_str).unwrap_or_default();
        event.insert("connection_info".into(), connection_info(text("proto"), text("family")));
        event
    } else {
        let (activity, severity_id) = match name.as_str() {
            "daemon_start" => ((3, "Start"), 1),
            "daemon_stop" => ((4, "Stop"), 1),
            // What the old ring held is lost.
            "kernel_state_reset" => ((99, "Kernel State Reset"), 3),
            _ => ((99, "Other"), 1),
        };
        let mut event = base(&APPLICATION_LIFECYCLE, activity, time, severity_id, observer);
        event.insert("app".into(), product(observer));
        event
    };
    event.insert("unmapped".into(), native);
    Value::Object(event)
}

#[cfg(test)]
#[path = "ocsf_tests.rs"]
mod tests;
