//! The OCSF mapping's decisions: activities and type_uid, milliseconds, host side and
//! container side, unmapped, alerts and daemon lines.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::output::{
    alerts::{AlertKind, HealthLimiter},
    formats::samples::{at, observer, reached, verified, without_host_side},
};

fn ocsf(rec: &Record) -> Value {
    record(rec, &observer())
}

#[test]
fn activities_dispositions_and_type_uid() {
    for (stage, activity, name, disposition) in [
        ("attempted", 6, "Traffic", 0),
        ("reached", 1, "Open", 1),
        ("blocked", 4, "Fail", 2),
        ("verified", 99, "Verify", 0),
    ] {
        let e = ocsf(&without_host_side(stage));
        assert_eq!((e["class_uid"].as_u64(), e["category_uid"].as_u64()), (Some(4001), Some(4)));
        assert_eq!((e["activity_id"].as_u64(), e["activity_name"].as_str()), (Some(activity), Some(name)), "{stage}");
        assert_eq!(e["type_uid"].as_u64(), Some(400_100 + activity), "{stage}");
        assert_eq!(e["type_name"], format!("Network Activity: {name}"));
        assert_eq!(e["disposition_id"].as_u64(), Some(disposition), "{stage}");
        assert_eq!(e["unmapped"]["stage"], stage);
    }
    // A probe's verdict says what the firewall did.
    assert_eq!((ocsf(&verified("EXPOSED"))["disposition"].as_str()), Some("Allowed"));
    assert_eq!((ocsf(&verified("HELD"))["disposition"].as_str()), Some("Blocked"));
    assert_eq!(ocsf(&reached())["status_id"], 1);
    assert_eq!(ocsf(&without_host_side("blocked"))["status"], "Failure");
}

#[test]
fn time_is_integer_milliseconds_and_the_microseconds_stay() {
    let e = ocsf(&reached());
    assert_eq!(e["time"], json!(1_795_936_834_123u64));
    assert!(e["time"].is_u64());
    assert_eq!(e["unmapped"]["ts"], "2026-11-29T07:20:34.123456Z");
    assert_eq!(epoch_ms(at()), 1_795_936_834_123);
}

#[test]
fn dst_endpoint_is_the_host_side_with_the_container() {
    let e = ocsf(&reached());
    assert_eq!(e["src_endpoint"], json!({"ip": "198.18.3.2", "port": 40112}));
    assert_eq!(
        e["dst_endpoint"],
        json!({"ip": "198.18.3.1", "port": 8080, "proxy_endpoint": {"ip": "172.17.0.2", "port": 80},
               "container": {"uid": "4f1e2d3c4b5a", "name": "web"}})
    );
    let e = ocsf(&without_host_side("reached"));
    assert_eq!((e["dst_endpoint"]["ip"].as_str(), e["dst_endpoint"]["port"].as_u64()), (Some("172.17.0.2"), Some(80)));
    assert!(e["dst_endpoint"].get("proxy_endpoint").is_none());
    assert_eq!(
        e["connection_info"],
        json!({"protocol_name": "tcp", "protocol_num": 6, "protocol_ver_id": 4,
               "protocol_ver": "Internet Protocol version 4 (IPv4)", "direction_id": 1, "direction": "Inbound",
               "community_uid": "1:q56dCzNiETsI+i/gyEbUFrETGt0="})
    );
    assert_eq!(e["metadata"]["version"], OCSF_VERSION);
    assert_eq!(e["metadata"]["product"]["name"], "dockexpose");
    assert_eq!(e["device"], json!({"hostname": "web-01", "uid": "0123abcd", "type_id": 0, "type": "Unknown"}));
}

/// Every key of the native record is in the event: mapped, or unchanged in `unmapped`.
#[test]
fn nothing_of_the_record_is_lost() {
    for rec in [reached(), without_host_side("attempted"), verified("PROXY")] {
        let native = serde_json::to_value(&rec).unwrap();
        let e = ocsf(&rec);
        let (dst, c) = (&e["dst_endpoint"], &native["container"]);
        for (key, value) in native.as_object().unwrap() {
            let found = match key.as_str() {
                "proto" => e["connection_info"]["protocol_name"] == *value,
                "family" => e["connection_info"]["protocol_ver_id"] == if value == "ipv4" { 4 } else { 6 },
                "src_ip" => e["src_endpoint"]["ip"] == *value,
                "src_port" => e["src_endpoint"]["port"] == *value,
                "dst_ip" | "dst_port" => {
                    let field = &key[4..];
                    let nat = &dst["proxy_endpoint"][field];
                    if nat.is_null() {
                        dst[field] == *value
                    } else {
                        nat == value
                    }
                }
                "host_ip" | "host_port" if value.is_null() => e["unmapped"]["host_side_known"] == false,
                "host_ip" | "host_port" => dst[&key[5..]] == *value,
                "community_id" => e["connection_info"]["community_uid"] == *value,
                "record_id" => e["metadata"]["uid"] == *value,
                "host" => e["device"]["hostname"] == *value,
                "host_id" => e["device"]["uid"] == *value,
                "container" => {
                    let (oc, un) = (&dst["container"], &e["unmapped"]["container"]);
                    oc["uid"] == c["id"]
                        && oc["name"] == c["name"]
                        && ["image", "compose_project", "compose_service", "swarm_service", "swarm_task"]
                            .iter()
                            .all(|k| un[k] == c[k])
                }
                _ => e["unmapped"][key] == *value,
            };
            assert!(found, "{key} = {value} is not in the OCSF event {e:#}");
        }
    }
}

#[test]
fn alerts_carry_message_and_severity() {
    for (syslog, ocsf) in [(0, 6), (2, 5), (3, 4), (4, 3), (5, 2), (6, 1), (7, 1)] {
        assert_eq!(severity_of_syslog(syslog), ocsf, "syslog {syslog}");
    }
    let alert = Alert::new(AlertKind::Reached, "EXPOSED web".into(), Some(Arc::new(reached())));
    let e = alert_at(&alert, &observer(), at());
    assert_eq!(
        (e["class_uid"].as_u64(), e["severity_id"].as_u64(), e["severity"].as_str()),
        (Some(4001), Some(3), Some("Medium"))
    );
    assert_eq!((e["message"].as_str(), e["is_alert"].as_bool()), (Some("EXPOSED web"), Some(true)));
    assert_eq!(e["unmapped"]["alert"], json!({"kind": "reached"}));
    assert_eq!(e["unmapped"]["exposure"], "published");

    let now = std::time::Instant::now();
    let mut limiter = HealthLimiter::new(std::time::Duration::from_secs(60));
    let cond = crate::output::alerts::HealthCondition::Docker;
    limiter.failing(cond, None, "warning: Docker".into(), now).unwrap();
    let recovered = limiter.recovered(cond, None, "dockexpose: Docker inventory".into(), now).unwrap();
    let e = alert_at(&recovered, &observer(), at());
    assert_eq!(
        (e["class_uid"].as_u64(), e["type_uid"].as_u64(), e["activity_name"].as_str()),
        (Some(6002), Some(600_299), Some("Health"))
    );
    assert_eq!(
        (e["status_id"].as_u64(), e["status_detail"].as_str(), e["severity_id"].as_u64()),
        (Some(1), Some("docker"), Some(2))
    );
    assert_eq!(e["time"], 1_795_936_834_123u64);
    assert_eq!(e["app"]["name"], "dockexpose");
}

#[test]
fn daemon_lines_are_application_lifecycle() {
    for (name, activity) in [("daemon_start", 3), ("daemon_stop", 4), ("kernel_state_reset", 99)] {
        let native = json!({"schema": 1, "ts": "2026-11-29T15:52:05.254839Z", "event": name, "pid": 7});
        let e = daemon_line(native.clone(), &observer());
        assert_eq!((e["class_uid"].as_u64(), e["category_uid"].as_u64()), (Some(6002), Some(6)), "{name}");
        assert_eq!(
            (e["activity_id"].as_u64(), e["type_uid"].as_u64()),
            (Some(activity), Some(600_200 + activity)),
            "{name}"
        );
        assert_eq!(e["time"], 1_795_967_525_254u64);
        assert_eq!(e["unmapped"], native);
    }
    let changed = json!({"event": "exposure_changed", "ts": "2026-12-07T07:00:00Z", "host_port": 8080, "proto": "udp",
                         "family": "ipv6", "from": "HELD", "to": "EXPOSED"});
    let e = daemon_line(changed.clone(), &observer());
    assert_eq!(
        (e["class_uid"].as_u64(), e["type_uid"].as_u64(), e["severity_id"].as_u64()),
        (Some(4001), Some(400_199), Some(3))
    );
    assert_eq!(e["dst_endpoint"], json!({"hostname": "web-01", "port": 8080}));
    assert_eq!(
        (e["connection_info"]["protocol_num"].as_u64(), e["connection_info"]["protocol_ver_id"].as_u64()),
        (Some(17), Some(6))
    );
    assert_eq!(e["unmapped"], changed);
}
