//! `dockexpose status` and a real Prometheus scraping the daemon, with the tested rules.

use super::*;

/// The shipped alerting rules (packaging/prometheus), loaded by the real Prometheus.
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/dockexpose.rules.yml");

/// A real Prometheus server scraping `target` every second and evaluating the shipped
/// rules every second; killed on drop.
struct Prometheus {
    child: Child,
    pub api: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr, dir: &Path) -> Self {
        let require = std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some();
        let bin = Command::new("sh")
            .args(["-c", "command -v prometheus"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(bin || !require, "prometheus is not installed: run `cargo xtask setup` (Debian's prometheus package)");
        assert!(bin, "prometheus is not installed: run `cargo xtask setup` (Debian's prometheus package)");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {RULES}\nscrape_configs:\n  - job_name: dockexpose\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self { child, api }
    }

    /// The rules of group `dockexpose` as Prometheus loaded them (/api/v1/rules).
    fn rules(&self) -> Vec<Value> {
        let Some((200, body)) = http_get(self.api, "/api/v1/rules") else { return Vec::new() };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let groups = v["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups
            .into_iter()
            .filter(|g| g["name"] == "dockexpose")
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The value of an instant query's first sample.
    fn query(&self, q: &str) -> Option<f64> {
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
        let (code, body) = http_get(self.api, &format!("/api/v1/query?query={encoded}"))?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn status_and_a_real_prometheus_show_the_bypass_story() {
    if !docker::ready("status_and_a_real_prometheus_show_the_bypass_story") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("ops");
    let n = outside.n;
    let web_port = 21000 + n as u16;
    let name = format!("dx-ops-web-{n}");
    let _web = docker::Container::run(&name, &["-p", &format!("{web_port}:80")], &image, &["80", "5300"]);
    let dir = temp_dir("status");
    let socket = dir.join("dockexpose.sock");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let w = Watcher::start(
        &[
            "--stats-interval",
            "0",
            "--uplink",
            &outside.uplink,
            "--status-socket",
            socket.to_str().unwrap(),
            "--metrics",
            &metrics.to_string(),
        ],
        dir.join("audit.jsonl"),
    );
    assert!(w.lines().iter().any(|l| l.contains("Prometheus metrics on http://")), "{:?}", w.lines());
    let mode =
        std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
    assert_eq!(mode, 0o600, "the status socket is root's alone");
    let prometheus = Prometheus::start(metrics, &dir);

    // Two connections from one source, one from another.
    let dst = outside.host4(web_port);
    for src in [outside.v4(2), outside.v4(2), outside.v4(3)] {
        tcp_connect(&outside.ns, Some(src.parse().unwrap()), dst).expect("outside reaches the published port");
    }

    let row = within(Duration::from_secs(10), || {
        let (code, out, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
        let report: Value = serde_json::from_str(&out).ok()?;
        let row = report["exposures"]
            .as_array()?
            .iter()
            .find(|r| r["container"] == name.as_str() && r["host_port"] == web_port)?
            .clone();
        (row["reached"].as_u64()? >= 3).then_some((code, report, row))
    });
    let (code, report, row) = row.expect("status shows the three reaches");
    assert_eq!(code, Some(0), "healthy: {:#}", report["health"]);
    assert_eq!(report["health"]["state"], "healthy");
    assert_eq!((row["reached"].as_u64(), row["distinct_sources"].as_u64()), (Some(3), Some(2)), "{row:#}");
    assert_eq!(row["top_sources"][0]["ip"], outside.v4(2).as_str(), "{row:#}");
    assert_eq!(row["top_sources"][0]["connections"], 2);
    assert_eq!(row["container_port"], 80);
    assert!(row["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')), "{row:#}");
    let attachments = report["health"]["attachments"].as_array().unwrap();
    assert!(
        attachments
            .iter()
            .any(|a| a["iface"] == outside.uplink.as_str() && a["role"] == "uplink" && a["mode"] == "tcx"),
        "{attachments:?}"
    );
    assert!(attachments.iter().any(|a| a["iface"] == "docker0" && a["role"] == "bridge"), "{attachments:?}");
    let (code, table, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains(&name) && table.contains(&format!(":{web_port} -> 80/tcp")) && table.contains("HEALTHY"),
        "{table}"
    );

    // Prometheus scraped the daemon: its own API gives the figures back.
    let selector = format!("dockexpose_exposure_reached_total{{container=\"{name}\",host_port=\"{web_port}\"}}");
    let reached = within(Duration::from_secs(30), || prometheus.query(&selector).filter(|v| *v >= 3.0));
    assert_eq!(reached, Some(3.0), "Prometheus has the reaches of {name}");
    assert_eq!(prometheus.query("up{job=\"dockexpose\"}"), Some(1.0));
    assert_eq!(prometheus.query("dockexpose_build_info"), Some(1.0));
    assert_eq!(prometheus.query("dockexpose_records_lost_total{stage=\"kernel_ring\"}"), Some(0.0));
    assert!(prometheus.query("dockexpose_map_capacity_entries{map=\"ATTEMPTS\"}").is_some_and(|v| v > 0.0));
    // The shipped rules, evaluated every second: the port's exposure fires, every rule
    // evaluates without error on the real figures, and nothing was lost.
    let firing = format!("ALERTS{{alertname=\"DockexposePortExposed\",alertstate=\"firing\",container=\"{name}\",host_port=\"{web_port}\"}}");
    let t = Instant::now();
    assert_eq!(
        within(Duration::from_secs(20), || prometheus.query(&firing)),
        Some(1.0),
        "DockexposePortExposed fires for {name}"
    );
    eprintln!("DockexposePortExposed firing in Prometheus {:?} after the reaches were scraped", t.elapsed());
    let rules = within(Duration::from_secs(5), || {
        let rules = prometheus.rules();
        rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001"))).then_some(rules)
    })
    .expect("every rule evaluated");
    let alerts = std::fs::read_to_string(RULES).unwrap().matches("- alert:").count();
    assert_eq!(rules.len(), alerts, "every shipped rule loaded: {rules:#?}");
    assert!(rules.iter().all(|r| r["health"] == "ok"), "a rule fails to evaluate: {rules:#?}");
    assert_eq!(prometheus.query("ALERTS{alertname=\"DockexposeRecordsLost\"}"), None, "no loss alert");
    let (code, body) = http_get(metrics, "/healthz").unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, _) = http_get(metrics, "/readyz").unwrap();
    assert_eq!(code, 200);
    let (_, text) = http_get(metrics, "/metrics").unwrap();
    assert!(!text.contains(&outside.v4(2)), "no source address in any label");

    let (records, status, _) = w.stop();
    assert!(status.success());
    assert!(records.iter().filter(|r| r["stage"] == "reached" && r["host_port"] == web_port).count() >= 3);
    // Stopped: the socket is gone, and status says how to start the daemon.
    let (code, _, err) = dockexpose(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not running"), "{err}");
}
