//! `watch --json-format ecs` and `ocsf` on the real engine: an outside host reaches a
//! published container once per format; each audit log describes that connection as
//! the native record does (the host side the outsider used, the container side behind
//! it, the container, the Community ID), and every line of it, the daemon's own lines
//! included, is in the format asked for. The field-by-field check against ECS's field
//! reference and OCSF's schema is tests/formats_reference.rs's; here the lines are the
//! daemon's own.

mod support;

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use dockexpose::output::community_id::community_id_v1;
use serde_json::Value;
use support::{docker, *};

/// Every line of an audit log, parsed (a line that is not JSON fails the test).
fn lines_of(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// What OCSF's schema says of each event (tests/formats_ocsf.py, PyPI's
/// ocsf-json-schema and jsonschema): the invalid ones, with the validator's reasons.
/// None when the validator cannot run here (reported as a skip; a failure in CI).
fn ocsf_invalid(test: &str, events: &[Value]) -> Option<Vec<String>> {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let probe =
        Command::new("python3").args(["-c", "import ocsf_json_schema, jsonschema"]).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("CI").is_none(), "the OCSF validator is needed in CI: run cargo xtask setup");
        skip::skip(test, "python3 cannot import ocsf_json_schema and jsonschema: the daemon's OCSF lines were not validated (cargo xtask setup installs them)");
        return None;
    }
    let named: Vec<Value> =
        events.iter().enumerate().map(|(i, e)| serde_json::json!([format!("line {i}"), e])).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/formats_ocsf.py");
    let mut child =
        Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3 runs");
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(&named).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the validator failed to run: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), events.len(), "one verdict per line: {text}");
    Some(text.lines().filter(|l| !l.ends_with("\tvalid")).map(str::to_string).collect())
}

/// The value at a dotted path ("destination.nat.port").
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| &v[key])
}

#[test]
fn ecs_and_ocsf_audit_logs_describe_the_connection_the_native_record_does() {
    let test = "ecs_and_ocsf_audit_logs_describe_the_connection_the_native_record_does";
    if !docker::ready(test) {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("jf");
    let port = 23000 + outside.n as u16;
    let web = docker::Container::run(
        &format!("dx-jf-{}", outside.n),
        &["-p", &format!("{port}:80")],
        &image,
        &["80", "5300"],
    );
    let container_ip: IpAddr = web.ip("bridge").parse().unwrap();
    let host = outside.host4(port);
    let src: IpAddr = outside.src4();

    let mut logs: BTreeMap<&str, (u16, Vec<Value>)> = BTreeMap::new();
    for format in ["native", "ecs", "ocsf"] {
        let path = json_path(&format!("jf-{format}"));
        let w = Watcher::start(
            &["--uplink", &outside.uplink, "--stats-interval", "0", "--json-format", format],
            path.clone(),
        );
        let sport = tcp_connect(&outside.ns, Some(src), host).expect("the outside host reaches the published port");
        std::thread::sleep(Duration::from_millis(500));
        let (_, status, stderr) = w.stop();
        assert!(status.success(), "{format}: {stderr:#?}");
        logs.insert(format, (sport, lines_of(&path)));
        let _ = std::fs::remove_file(&path);
    }

    // The native record: the reference.
    let (sport, native) = &logs["native"];
    let reached =
        native.iter().find(|r| r["stage"] == "reached" && r["src_port"] == *sport).expect("a native reached record");
    assert_eq!((reached["host_port"].as_u64(), reached["dst_port"].as_u64()), (Some(u64::from(port)), Some(80)));
    let is_id = |v: &Value| v.as_str().is_some_and(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(is_id(&reached["record_id"]) && reached["host"].as_str().is_some_and(|h| !h.is_empty()), "{reached:#}");

    // ECS: one event per line; the reach is the host side, its NAT the container side.
    let (sport, ecs) = &logs["ecs"];
    for line in ecs {
        assert!(
            line["ecs"]["version"].as_str().is_some_and(|v| v.starts_with("8.")),
            "every ECS line says its version: {line}"
        );
        assert!(line["@timestamp"].is_string(), "{line}");
    }
    let ecs_event = ecs
        .iter()
        .find(|e| e["event"]["action"] == "reached" && at(e, "source.port") == *sport)
        .unwrap_or_else(|| panic!("an ECS reached event from port {sport}: {ecs:#?}"));
    let event = ecs_event;
    let expected = [
        ("source.ip", Value::from(src.to_string())),
        ("destination.ip", Value::from(host.ip().to_string())),
        ("destination.port", Value::from(port)),
        ("destination.nat.ip", Value::from(container_ip.to_string())),
        ("destination.nat.port", Value::from(80)),
        ("network.transport", Value::from("tcp")),
        ("network.direction", Value::from("inbound")),
        ("container.name", Value::from(web.name.as_str())),
        ("event.outcome", Value::from("success")),
        ("network.community_id", Value::from(community_id_v1(6, src, *sport, host.ip(), port))),
    ];
    for (path, value) in &expected {
        assert_eq!(at(event, path), value, "ECS {path}: {event:#}");
    }
    assert!(is_id(at(event, "event.id")), "ECS event.id is the record_id: {event:#}");
    assert_eq!(at(event, "host.name"), &reached["host"], "the same host names both");
    assert!(
        ecs.iter().any(|e| at(e, "event.action") == "daemon_start"),
        "the daemon's own start line is ECS too: {ecs:#?}"
    );

    // OCSF Network Activity: the reach is Open, Allowed, the host side its destination
    // (the attempt before it is Traffic).
    let (sport, ocsf) = &logs["ocsf"];
    for line in ocsf {
        assert!(
            line["metadata"]["version"].as_str().is_some_and(|v| v.starts_with("1.")),
            "every OCSF line says its version: {line}"
        );
        assert!(line["time"].is_u64(), "{line}");
    }
    let event = ocsf
        .iter()
        .find(|e| {
            e["class_uid"] == 4001 && at(e, "unmapped.stage") == "reached" && at(e, "src_endpoint.port") == *sport
        })
        .unwrap_or_else(|| panic!("an OCSF Network Activity (the reach) from port {sport}: {ocsf:#?}"));
    let expected = [
        ("activity_id", Value::from(1)),
        ("type_uid", Value::from(400101)),
        ("category_uid", Value::from(4)),
        ("disposition_id", Value::from(1)),
        ("src_endpoint.ip", Value::from(src.to_string())),
        ("dst_endpoint.ip", Value::from(host.ip().to_string())),
        ("dst_endpoint.port", Value::from(port)),
        ("dst_endpoint.container.name", Value::from(web.name.as_str())),
        ("connection_info.direction_id", Value::from(1)),
        ("connection_info.community_uid", Value::from(community_id_v1(6, src, *sport, host.ip(), port))),
    ];
    for (path, value) in &expected {
        assert_eq!(at(event, path), value, "OCSF {path}: {event:#}");
    }
    assert!(is_id(at(event, "metadata.uid")), "OCSF metadata.uid is the record_id: {event:#}");
    eprintln!(
        "{test}: the reach, as the daemon wrote it:\nnative {reached}\necs {}\nocsf {event}",
        serde_json::to_string(ecs_event).unwrap()
    );
    // Every line the daemon wrote, its own lines included, is valid OCSF.
    if let Some(invalid) = ocsf_invalid(test, ocsf) {
        assert!(invalid.is_empty(), "the daemon wrote invalid OCSF: {invalid:#?}\n{ocsf:#?}");
    }
}
