//! The ECS mapping's decisions: host side and container side, categorization, the
//! custom object, alerts and daemon lines.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::output::{
    alerts::{AlertKind, HealthLimiter},
    formats::samples::{at, observer, reached, verified, without_host_side},
};

fn ecs(rec: &Record) -> Value {
    record(rec, &observer())
}

#[test]
fn destination_is_the_host_side_and_nat_the_container_side() {
    let e = ecs(&reached());
    assert_eq!(e["@timestamp"], "2026-11-29T07:20:34.123456Z");
    assert_eq!(e["ecs"]["version"], ECS_VERSION);
    assert_eq!(e["source"], json!({"ip": "198.18.3.2", "port": 40112}));
    assert_eq!(e["destination"]["ip"], "198.18.3.1");
    assert_eq!(e["destination"]["port"], 8080);
    assert_eq!(e["destination"]["nat"], json!({"ip": "172.17.0.2", "port": 80}));
    assert_eq!(e["related"]["ip"], json!(["198.18.3.2", "198.18.3.1", "172.17.0.2"]));
    assert_eq!(e["dockexpose"]["host_side_known"], true);

    let e = ecs(&without_host_side("reached"));
    assert_eq!(e["destination"], json!({"ip": "172.17.0.2", "port": 80}), "the observed side, no nat");
    assert_eq!(e["dockexpose"]["host_side_known"], false);

    // An attempt sees the host side itself: nothing was translated yet.
    let mut attempt = reached();
    attempt.stage = "attempted";
    (attempt.dst_ip, attempt.dst_port) = ("198.18.3.1".parse().unwrap(), 8080);
    let e = ecs(&attempt);
    assert_eq!(e["destination"], json!({"ip": "198.18.3.1", "port": 8080}));
    assert_eq!(e["related"]["ip"], json!(["198.18.3.2", "198.18.3.1"]));
}

#[test]
fn each_stage_has_its_type_and_outcome() {
    for (stage, types, outcome) in [
        ("attempted", json!(["connection", "start"]), "unknown"),
        ("reached", json!(["connection", "start", "allowed"]), "success"),
        ("blocked", json!(["connection", "denied"]), "failure"),
    ] {
        let e = ecs(&without_host_side(stage));
        assert_eq!(e["event"]["type"], types, "{stage}");
        assert_eq!((e["event"]["action"].as_str(), e["event"]["outcome"].as_str()), (Some(stage), Some(outcome)));
        assert_eq!((e["event"]["kind"].as_str(), &e["event"]["category"]), (Some("event"), &json!(["network"])));
        assert_eq!(e["event"]["dataset"], "dockexpose.connection");
    }
    let e = ecs(&verified("HELD"));
    assert_eq!(e["event"]["type"], json!(["connection", "info"]));
    assert_eq!(e["rule"]["name"], "dropped by ip filter DOCKER-USER: iifname \"eth0\" drop");
    assert_eq!(e["dockexpose"]["verdict"], "HELD");
}

#[test]
fn network_container_observer_and_rule() {
    let e = ecs(&reached());
    assert_eq!(
        e["network"],
        json!({"transport": "tcp", "type": "ipv4", "direction": "inbound", "iana_number": "6",
               "community_id": "1:q56dCzNiETsI+i/gyEbUFrETGt0="})
    );
    assert_eq!(e["container"]["id"], "4f1e2d3c4b5a");
    assert_eq!(e["container"]["image"]["name"], "nginx:1.27");
    assert_eq!(
        e["container"]["labels"],
        json!({"com_docker_compose_project": "shop", "com_docker_compose_service": "web",
               "com_docker_swarm_service_name": "shop_web", "com_docker_swarm_task_name": "shop_web.1.abc"})
    );
    assert_eq!(e["observer"]["ingress"]["interface"]["name"], "docker0");
    assert_eq!(
        (e["observer"]["product"].as_str(), e["observer"]["version"].as_str()),
        (Some("dockexpose"), Some("0.1.0"))
    );
    assert_eq!(e["host"], json!({"hostname": "web-01", "name": "web-01", "id": "0123abcd"}));
    assert_eq!(e["rule"], json!({"name": "[ 3] 8080/tcp DENY IN Anywhere", "ruleset": "ufw"}));
    let mut no_container = reached();
    no_container.container = None;
    assert!(ecs(&no_container).get("container").is_none());
}

/// Every key of the native record is in the event: in its ECS field or, unchanged,
/// in `dockexpose`.
#[test]
fn nothing_of_the_record_is_lost() {
    for rec in [reached(), without_host_side("blocked"), verified("EXPOSED")] {
        let native = serde_json::to_value(&rec).unwrap();
        let e = ecs(&rec);
        let c = &native["container"];
        for (key, value) in native.as_object().unwrap() {
            let found = match key.as_str() {
                "ts" => e["@timestamp"] == *value,
                "stage" => e["event"]["action"] == *value,
                "proto" => e["network"]["transport"] == *value,
                "family" => e["network"]["type"] == *value,
                "src_ip" => e["source"]["ip"] == *value,
                "src_port" => e["source"]["port"] == *value,
                "dst_ip" | "dst_port" => {
                    let field = &key[4..];
                    let nat = &e["destination"]["nat"][field];
                    if nat.is_null() {
                        e["destination"][field] == *value
                    } else {
                        nat == value
                    }
                }
                "host_ip" | "host_port" if value.is_null() => e["dockexpose"]["host_side_known"] == false,
                "host_ip" | "host_port" => e["destination"][&key[5..]] == *value,
                "community_id" => e["network"]["community_id"] == *value,
                "iface" => e["observer"]["ingress"]["interface"]["name"] == *value,
                "record_id" => e["event"]["id"] == *value,
                "host" => e["host"]["name"] == *value,
                "host_id" => e["host"]["id"] == *value,
                "container" => {
                    let ec = &e["container"];
                    ec["id"] == c["id"]
                        && ec["name"] == c["name"]
                        && ec["image"]["name"] == c["image"]
                        && ec["labels"]["com_docker_compose_project"] == c["compose_project"]
                        && ec["labels"]["com_docker_compose_service"] == c["compose_service"]
                        && ec["labels"]["com_docker_swarm_service_name"] == c["swarm_service"]
                        && ec["labels"]["com_docker_swarm_task_name"] == c["swarm_task"]
                }
                _ => e["dockexpose"][key] == *value,
            };
            assert!(found, "{key} = {value} is not in the ECS event {e:#}");
        }
    }
}

#[test]
fn alerts_are_the_record_event_as_an_alert() {
    let alert =
        Alert::new(AlertKind::Contradiction, "CONTRADICTION: UFW denies 8080/tcp".into(), Some(Arc::new(reached())));
    let e = alert_at(&alert, &observer(), at());
    assert_eq!(e["event"]["kind"], "alert");
    assert_eq!(e["event"]["severity"], 3);
    assert_eq!(e["event"]["dataset"], "dockexpose.alert");
    assert_eq!(e["message"], "CONTRADICTION: UFW denies 8080/tcp");
    assert_eq!(e["dockexpose"]["alert"], json!({"kind": "contradiction"}));
    assert_eq!(e["destination"]["nat"]["port"], 80, "the record's fields are all there");

    let now = std::time::Instant::now();
    let health = HealthLimiter::new(std::time::Duration::from_secs(60))
        .failing(crate::output::alerts::HealthCondition::AuditLog, None, "WARNING: writing the audit log".into(), now)
        .unwrap();
    let e = alert_at(&health, &observer(), at());
    assert_eq!(e["@timestamp"], "2026-11-29T07:20:34.123456Z", "a health alert is of its time");
    assert_eq!((&e["event"]["category"], &e["event"]["type"]), (&json!(["process"]), &json!(["change"])));
    assert_eq!((e["event"]["outcome"].as_str(), e["event"]["severity"].as_u64()), (Some("failure"), Some(3)));
    assert_eq!(e["dockexpose"]["alert"]["health"]["condition"], "audit_log");
    assert!(e.get("source").is_none() && e.get("destination").is_none());

    let summary = Alert::new(AlertKind::Suppressed, "WARNING: 12 more alerts not shown".into(), None);
    let e = alert_at(&summary, &observer(), at());
    assert_eq!((&e["event"]["category"], &e["event"]["type"]), (&json!(["network"]), &json!(["info"])));
}

#[test]
fn daemon_lines_keep_the_native_line_whole() {
    let start = json!({"schema": 1, "ts": "2026-11-29T15:52:05.254839Z", "event": "daemon_start", "pid": 27299,
                       "kernel_state": "resumed"});
    let e = daemon_line(start.clone(), &observer());
    assert_eq!((&e["event"]["category"], &e["event"]["type"]), (&json!(["process"]), &json!(["start"])));
    assert_eq!((e["event"]["action"].as_str(), e["process"]["pid"].as_u64()), (Some("daemon_start"), Some(27299)));
    assert_eq!(e["@timestamp"], "2026-11-29T15:52:05.254839Z");
    assert_eq!(e["dockexpose"], start);
    for (name, kind) in [("daemon_stop", "end"), ("kernel_state_reset", "change")] {
        let e = daemon_line(json!({"ts": "2026-11-29T15:52:05.254839Z", "event": name, "pid": 1}), &observer());
        assert_eq!(e["event"]["type"], json!([kind]), "{name}");
    }
    let changed = json!({"event": "exposure_changed", "ts": "2026-12-07T07:00:00Z", "host_port": 8080, "proto": "tcp",
                         "family": "ipv4", "uplink": "eth0", "from": "HELD", "to": "EXPOSED"});
    let e = daemon_line(changed.clone(), &observer());
    assert_eq!((&e["event"]["category"], &e["event"]["type"]), (&json!(["configuration"]), &json!(["change"])));
    assert_eq!((e["destination"]["port"].as_u64(), e["network"]["iana_number"].as_str()), (Some(8080), Some("6")));
    assert_eq!(e["dockexpose"], changed);
}
