//! The shipped Prometheus rules and Grafana dashboard (packaging/prometheus, packaging/grafana):
//! promtool checks and unit-tests the rules; every metric and label they name is one the
//! daemon exports, read from the metrics module's own output (so the list cannot drift);
//! every dashboard query parses in a real Prometheus. No root needed.

// Only the skip log of `support` (the rest of it is for the root tests).
#[path = "support/skip.rs"]
mod skip;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dockexpose::{
    output::{exposures::ExposureRow, fanout::AlertCounts, sinks::SinkStats},
    status::{
        metrics::encode_report,
        report::{Attachment, Health, MapFill, SinkHealth, StatusReport, VerifyHealth},
    },
};
use serde_json::Value;

const PROMETHEUS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/dockexpose.rules.yml");
const RULES_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/dockexpose.rules.test.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/dockexpose.json");

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Labels whose values come from the host (Docker, sinks, interfaces), not from the
/// daemon's code: any value may be matched. The others (kind, stage, reason, exposure,
/// feature...) must be matched with a value the daemon produces.
const HOST_VALUED_LABELS: [&str; 8] = ["container", "host_port", "proto", "sink", "map", "iface", "kernel", "version"];

/// Metric name -> label name -> the values seen.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// True when `bin` is on PATH. Otherwise the test is recorded as skipped, or fails when
/// the run demands every test (DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS, as in CI).
fn have(test: &str, bin: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let why = format!("{bin} is not installed: run `cargo xtask setup` (Debian's prometheus package)");
    assert!(std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_none(), "{test}: {why}");
    skip::skip(test, &why)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The metrics the daemon serves, rendered by its own encoder from a report with one of
/// everything (an exposure of each kind, a sink, a map, an attachment).
fn exported() -> Exported {
    let row = |container: &str, exposure: &str| ExposureRow {
        container: container.into(),
        container_id: "c1".into(),
        image: "nginx:1.27".into(),
        compose_project: None,
        compose_service: None,
        host_ip: None,
        host_port: Some(8080),
        container_port: 80,
        proto: "tcp".into(),
        exposure: exposure.into(),
        first_seen: None,
        last_seen: None,
        attempts: 1,
        reached: 1,
        blocked: 0,
        distinct_sources: 1,
        distinct_sources_exact: true,
        top_sources: vec![],
        verified: None,
    };
    let mut report = StatusReport {
        version: "0.0.0".into(),
        health: Health { state: "healthy".into(), ..Health::default() },
        ..StatusReport::default()
    };
    for (i, exposure) in ["published", "loopback_only", "unpublished", "direct"].into_iter().enumerate() {
        report.exposures.push(row(&format!("c{i}"), exposure));
    }
    // verify's verdicts and runs (watch --verify-every): every verdict a probe gives.
    for (i, verdict) in ["EXPOSED", "PROXY", "HELD"].into_iter().enumerate() {
        report.exposures[i].verified = Some(verdict.into());
    }
    report.health.verify = Some(VerifyHealth { every_s: 3600, last_success_age_s: 10, runs_ok: 1, runs_failed: 0 });
    report.health.sinks.push(SinkHealth { name: "webhook".into(), stats: SinkStats::default() });
    report.health.maps.push(MapFill { map: "ATTEMPTS".into(), entries: 1, capacity: 2 });
    report.health.attachments.push(Attachment { iface: "eth0".into(), role: "uplink".into(), mode: "tcx".into() });
    parse_exposition(&encode_report(&report, &AlertCounts::default()))
}

/// Sample lines of a text exposition: `name{a="x",b="y"} value`.
fn parse_exposition(text: &str) -> Exported {
    let mut out = Exported::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            for (label, _, value) in matchers(&line[name_end + 1..]).0 {
                labels.entry(label).or_default().insert(value);
            }
        }
    }
    out
}

/// The matchers of a selector from just after its `{`: (label, operator, value), and the
/// rest of the text after the closing `}`.
fn matchers(text: &str) -> (Vec<(String, String, String)>, &str) {
    let mut found = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',', '\n']);
        if let Some(after) = rest.strip_prefix('}') {
            return (found, after);
        }
        let label_end = rest.find(['=', '!']).unwrap_or_else(|| panic!("no operator in {text:?}"));
        let label = rest[..label_end].trim().to_string();
        let op_end = label_end + rest[label_end..].find('"').unwrap_or_else(|| panic!("no value in {text:?}"));
        let op = rest[label_end..op_end].trim().to_string();
        let value_start = op_end + 1;
        let value_len = rest[value_start..].find('"').unwrap_or_else(|| panic!("unterminated value in {text:?}"));
        found.push((label, op, rest[value_start..value_start + value_len].to_string()));
        rest = &rest[value_start + value_len + 1..];
    }
}

/// What an expression (or a series in a promtool test) says that the daemon does not
/// export: unknown `dockexpose_*` names, label names, `=` values, and labels in
/// `by (...)` or a `{{label}}` legend that none of its metrics carries.
fn unknown_in(expr: &str, legend: &str, exported: &Exported) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut labels_here: BTreeSet<&str> = TARGET_LABELS.into();
    let mut rest = expr;
    while let Some(start) = rest.find("dockexpose_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        rest = &tail[end..];
        let Some(labels) = exported.get(name) else {
            unknown.push(format!("metric {name}"));
            continue;
        };
        labels_here.extend(labels.keys().map(String::as_str));
        let Some(inside) = rest.trim_start().strip_prefix('{') else { continue };
        let (found, after) = matchers(inside);
        rest = after;
        for (label, op, value) in found {
            match labels.get(&label) {
                _ if TARGET_LABELS.contains(&label.as_str()) => {}
                None => unknown.push(format!("label {label} of {name}")),
                Some(values)
                    if op == "=" && !HOST_VALUED_LABELS.contains(&label.as_str()) && !values.contains(&value) =>
                {
                    unknown.push(format!("value {label}=\"{value}\" of {name}"))
                }
                Some(_) => {}
            }
        }
    }
    for clause in ["by (", "without ("] {
        for part in expr.split(clause).skip(1) {
            for label in part.split(')').next().unwrap_or_default().split(',').map(str::trim) {
                if !labels_here.contains(label) {
                    unknown.push(format!("label {label} in {clause}...)"));
                }
            }
        }
    }
    for part in legend.split("{{").skip(1) {
        let label = part.split("}}").next().unwrap_or_default().trim();
        if !labels_here.contains(label) {
            unknown.push(format!("label {label} in the legend"));
        }
    }
    unknown
}

/// The `expr:` of each rule in a rules file, inline or as a `|` block.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else { continue };
        let indent = line.len() - line.trim_start().len();
        if value.trim() != "|" {
            exprs.push(value.trim().to_string());
            continue;
        }
        let block =
            lines[i + 1..].iter().take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent);
        exprs.push(block.map(|l| l.trim()).collect::<Vec<_>>().join("\n"));
    }
    exprs
}

/// The series of a promtool test file (`- series: '...'`).
fn test_series(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- series:"))
        .map(|s| s.trim().trim_matches('\'').to_string())
        .collect()
}

/// Every query of the dashboard with its legend: the panels' targets and the variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                target["expr"].as_str().unwrap_or_default().to_string(),
                target["legendFormat"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        queries.push((var["query"]["query"].as_str().unwrap_or_default().to_string(), String::new()));
    }
    queries
}

/// The dashboard's panels, those inside collapsed rows included, rows themselves not.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let top = dashboard["panels"].as_array().expect("a panels array");
    top.iter()
        .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()))
        .filter(|p| p["type"] != "row")
        .collect()
}

/// A Grafana query as Prometheus can run it: the dashboard's variables filled in, and
/// Grafana's `label_values(metric, label)` as the PromQL it stands for.
fn as_promql(query: &str) -> String {
    if let Some(args) = query.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')')) {
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        return format!("group by ({}) ({})", label.trim(), metric.trim());
    }
    query
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
}

#[test]
fn promtool_checks_and_unit_tests_the_shipped_rules() {
    let test = "promtool_checks_and_unit_tests_the_shipped_rules";
    if !have(test, "promtool") {
        return;
    }
    let check = Command::new("promtool").args(["check", "rules", RULES]).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "promtool check rules: {said}");
    let alerts = read(RULES).lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert!(said.contains(&format!("SUCCESS: {alerts} rules found")), "{said}");
    // Rule files are named relative to the test file: run from its directory.
    let unit =
        Command::new("promtool").args(["test", "rules", RULES_TEST]).current_dir(PROMETHEUS_DIR).output().unwrap();
    let said = String::from_utf8_lossy(&unit.stdout).into_owned() + &String::from_utf8_lossy(&unit.stderr);
    assert!(unit.status.success() && said.contains("SUCCESS"), "promtool test rules: {said}");
    // Every alert of the rules is tested firing.
    let tests = read(RULES_TEST);
    for name in read(RULES).lines().filter_map(|l| l.trim_start().strip_prefix("- alert:")).map(str::trim) {
        let fires = tests.split("alertname: ").skip(1).any(|t| {
            t.starts_with(&format!("{name}\n")) && t.lines().nth(1).is_some_and(|l| !l.contains("exp_alerts: []"))
        });
        assert!(fires, "{name} is never tested firing in {RULES_TEST}");
    }
}

#[test]
fn the_rules_and_the_dashboard_use_only_metrics_the_daemon_exports() {
    let exported = exported();
    assert!(
        exported.contains_key("dockexpose_exposure_reached_total") && exported.contains_key("dockexpose_build_info"),
        "{exported:?}"
    );
    // The checker itself catches a wrong name, label, value and grouping.
    let wrong = unknown_in(
        r#"sum by (nope) (dockexpose_nope_total) + dockexpose_alerts_total{knd="x"} + dockexpose_alerts_total{kind="nope"}"#,
        "{{what}}",
        &exported,
    );
    assert_eq!(wrong.len(), 5, "{wrong:?}");

    let rules = read(RULES);
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), rules.matches("- alert:").count(), "one expr per rule: {exprs:#?}");
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    let series = test_series(&read(RULES_TEST));
    assert!(!series.is_empty());
    let mut unknown = Vec::new();
    let all = exprs
        .iter()
        .map(|e| (e, ""))
        .chain(series.iter().map(|s| (s, "")))
        .chain(queries.iter().map(|(q, l)| (q, l.as_str())));
    let mut names = BTreeSet::new();
    for (expr, legend) in all {
        names.extend(
            expr.match_indices("dockexpose_")
                .map(|(i, _)| expr[i..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap()),
        );
        unknown.extend(unknown_in(expr, legend, &exported).into_iter().map(|u| format!("{u} in {expr}")));
    }
    assert!(unknown.is_empty(), "not exported by the daemon:\n{}", unknown.join("\n"));
    eprintln!("{} metric names used by the rules, their tests and the dashboard, all exported", names.len());
}

/// A real Prometheus on loopback, scraping nothing; killed and its files removed on drop.
struct Prometheus {
    child: Child,
    api: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("dockexpose-packaging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\nscrape_configs: []\n").unwrap();
        let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let mut p = Self { child, api, dir };
        let start = Instant::now();
        while http_get(p.api, "/-/ready").map(|(code, _)| code) != Some(200) {
            assert!(p.child.try_wait().unwrap().is_none(), "prometheus exited at start");
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus not ready on {} after 30 s", p.api);
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query: HTTP status and the JSON answer.
    fn query(&self, q: &str) -> (u16, Value) {
        let encoded: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (code, body) = http_get(self.api, &format!("/api/v1/query?query={encoded}")).expect("prometheus answers");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET over plain HTTP/1.0: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

#[test]
fn the_dashboard_is_importable_and_every_query_parses_in_a_real_prometheus() {
    let test = "the_dashboard_is_importable_and_every_query_parses_in_a_real_prometheus";
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "an input to choose the data source at import");
    let vars: Vec<&Value> = dashboard["templating"]["list"].as_array().unwrap().iter().collect();
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "a data source variable, for provisioning"
    );
    assert!(vars.iter().any(|v| v["name"] == "instance" && v["type"] == "query"));
    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel id {} twice", p["id"]);
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("panel {:?} has no target", p["title"]));
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {:?}: a target without PromQL",
                p["title"]
            );
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {:?}", p["title"]);
        }
        let (x, w) = (p["gridPos"]["x"].as_u64().unwrap(), p["gridPos"]["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {:?} is wider than the grid", p["title"]);
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > panels.len(), "{} queries for {} panels", queries.len(), panels.len());

    if !have(test, "prometheus") {
        return;
    }
    let prometheus = Prometheus::start();
    // A parse error is HTTP 400, bad_data: the check below can fail.
    let (code, answer) = prometheus.query("sum by (kind (dockexpose_alerts_total)");
    assert_eq!((code, answer["errorType"].as_str()), (400, Some("bad_data")), "{answer}");
    let rules = rule_exprs(&read(RULES));
    let mut refused = Vec::new();
    for q in queries.iter().map(|(q, _)| as_promql(q)).chain(rules) {
        assert!(!q.contains('$'), "a Grafana variable left in {q}");
        let (code, answer) = prometheus.query(&q);
        if code != 200 || answer["status"] != "success" {
            refused.push(format!("{q}: HTTP {code} {answer}"));
        }
    }
    assert!(refused.is_empty(), "Prometheus refused:\n{}", refused.join("\n"));
}
