//! The operator's surfaces, against the real things: `dockexpose status` over the
//! unix socket and Prometheus metrics scraped by a real Prometheus server (on the real
//! Docker engine); the audit log through logrotate's rename and a tmpfs that fills
//! and frees; SIGHUP reloading the config file. Needs root (and Docker for the first).

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

/// Polls `f` until it returns Some or `limit` passes.
fn within<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// `dockexpose ARGS`: exit code, stdout, stderr.
fn dockexpose(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockexpose")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// GET over plain HTTP/1.0: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// A free loopback TCP port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dockexpose-ops-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
        let bin = Command::new("sh").args(["-c", "command -v prometheus"]).output().map(|o| o.status.success()).unwrap_or(false);
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
        groups.into_iter().filter(|g| g["name"] == "dockexpose").flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// The value of an instant query's first sample.
    fn query(&self, q: &str) -> Option<f64> {
        let encoded: String = q
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
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
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
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
        let row = report["exposures"].as_array()?.iter().find(|r| r["container"] == name.as_str() && r["host_port"] == web_port)?.clone();
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
    assert!(attachments.iter().any(|a| a["iface"] == outside.uplink.as_str() && a["role"] == "uplink" && a["mode"] == "tcx"), "{attachments:?}");
    assert!(attachments.iter().any(|a| a["iface"] == "docker0" && a["role"] == "bridge"), "{attachments:?}");
    let (code, table, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(table.contains(&name) && table.contains(&format!(":{web_port} -> 80/tcp")) && table.contains("HEALTHY"), "{table}");

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
    assert_eq!(within(Duration::from_secs(20), || prometheus.query(&firing)), Some(1.0), "DockexposePortExposed fires for {name}");
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

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        sh(&["mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs", dir.to_str().unwrap()]);
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        sh_quiet(&["umount", "-l", self.0.to_str().unwrap()]);
    }
}

/// Records in `path` (one JSON object a line).
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).expect("whole JSON lines")).collect()
}

fn has_port(path: &Path, src_port: u16) -> bool {
    records(path).iter().any(|r| r["stage"] == "reached" && r["src_port"] == src_port)
}

#[test]
fn the_audit_log_follows_logrotate_and_survives_a_full_disk() {
    if !privileged("the_audit_log_follows_logrotate_and_survives_a_full_disk") {
        return;
    }
    let bed = Bed::new("lg");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("tmpfs");
    let fs = Tmpfs::mount(&dir.join("fs"), "256k");
    let log = fs.0.join("audit.jsonl");
    let socket = dir.join("dockexpose.sock");
    let mut w = Watcher::start(
        &["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0", "--quiet", "--status-socket", socket.to_str().unwrap()],
        log.clone(),
    );
    let src = Some(bed.outside.v4(2).parse().unwrap());
    let connect = || tcp_connect(&bed.outside.ns, src, bed.host_tcp_v4()).expect("outside reaches the container");

    // The real logrotate with the shipped snippet (its path and its signal aimed at
    // this daemon): rename + create, then SIGUSR1; the next record goes to the new file.
    let first = connect();
    assert!(within(Duration::from_secs(5), || has_port(&log, first).then_some(())).is_some(), "first record written");
    let snippet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/logrotate/dockexpose"))
        .unwrap()
        .replace("/var/log/dockexpose/audit.jsonl", log.to_str().unwrap())
        .lines()
        .map(|l| if l.contains("systemctl kill") { format!("        kill -USR1 {}", w.pid()) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(snippet.contains("create 0640") && !snippet.lines().any(|l| l.trim() == "copytruncate"), "{snippet}");
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, format!("{snippet}\n")).unwrap();
    let require = std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some();
    let have = Command::new("sh").args(["-c", "command -v logrotate"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(have || !require, "logrotate is not installed: run `cargo xtask setup`");
    assert!(have, "logrotate is not installed: run `cargo xtask setup`");
    sh(&["logrotate", "-f", "-s", dir.join("logrotate.state").to_str().unwrap(), conf.to_str().unwrap()]);
    w.wait_for_line("SIGUSR1: audit log", Duration::from_secs(5));
    let rotated = fs.0.join("audit.jsonl.1");
    let second = connect();
    assert!(within(Duration::from_secs(5), || has_port(&log, second).then_some(())).is_some(), "the new file gets the next record");
    assert!(has_port(&rotated, first) && !has_port(&rotated, second), "the old file keeps only what came before");
    std::fs::remove_file(&rotated).unwrap();

    // The disk fills: detection goes on, the records are held (in memory and in the
    // ring, which is not released past them), and it is said.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]).stderr(Stdio::null()).status();
    // tmpfs fills page by page: connect until a write fails.
    let mut made = Vec::new();
    let failed = within(Duration::from_secs(30), || {
        made.push(connect());
        w.lines().iter().any(|l| l.contains("WARNING: writing the audit log")).then_some(())
    });
    assert!(failed.is_some(), "no write failure said after {} connections: {:?}", made.len(), w.lines());
    // 30 more while it is full.
    for _ in 0..30 {
        made.push(connect());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.is_running(), "a full disk does not stop the daemon");
    let (code, out, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, Some(1), "degraded while the log fails: {:#}", report["health"]);
    let audit = &report["health"]["audit"];
    assert_eq!(audit["failing"], true);
    assert!(audit["lines_held"].as_u64().unwrap() >= 30, "the held records are said: {audit:#}");
    assert!(audit["ring_bytes_unreleased"].as_u64().unwrap() > 0, "the ring is held: {audit:#}");
    assert_eq!(report["health"]["losses"]["audit_lines_lost"], 0, "{:#}", report["health"]);

    // Space returns: everything held is written, and it is said.
    std::fs::remove_file(&filler).unwrap();
    let after = connect();
    w.wait_for_line("is written again", Duration::from_secs(10));
    assert!(within(Duration::from_secs(5), || has_port(&log, after).then_some(())).is_some(), "writing resumed");
    let written = records(&log);
    assert!(written.iter().all(|r| r["schema"] == 1), "only whole lines in the file");
    let missing: Vec<u16> = made.iter().copied().filter(|p| !has_port(&log, *p)).collect();
    eprintln!("full disk: {} connections made while it filled and was full, {} missing from the log", made.len(), missing.len());
    assert!(missing.is_empty(), "every connection made while the disk was full is in the log: missing {missing:?}");
    let (records, status, _) = w.stop();
    assert!(status.success());
    assert!(records.iter().any(|r| r["src_port"] == after));
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_file_is_bad() {
    if !privileged("sighup_reloads_the_config_and_keeps_the_old_one_when_the_file_is_bad") {
        return;
    }
    let bed = Bed::new("hu");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("reload");
    let config = dir.join("dockexpose.toml");
    std::fs::write(&config, "[watch]\ntrusted = []\nstats_interval = 0\n").unwrap();
    let log = dir.join("audit.jsonl");
    let mut w = Watcher::start(
        &["--config", config.to_str().unwrap(), "--bridge", &bed.bridge, "--no-uplinks", "--status-socket", dir.join("s.sock").to_str().unwrap()],
        log.clone(),
    );
    assert!(w.lines().iter().any(|l| l.contains("configuration from") && l.contains("dockexpose.toml")), "{:?}", w.lines());
    let from = |host: u32| tcp_connect(&bed.outside.ns, Some(bed.outside.v4(host).parse().unwrap()), bed.host_tcp_v4()).expect("connect");

    let before = from(2);
    assert!(within(Duration::from_secs(5), || has_port(&log, before).then_some(())).is_some(), "reported before the reload");

    // The .2 source becomes trusted: not reported any more; .3 still is.
    std::fs::write(&config, format!("[watch]\ntrusted = [\"{}/32\"]\nstats_interval = 0\n[alerts]\nwindow = 30\n", bed.outside.v4(2))).unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    let said = w.wait_for_line("SIGHUP: configuration reloaded", Duration::from_secs(5));
    assert!(said.contains("1 trusted networks") && said.contains("alert window 30 s"), "{said}");
    let trusted = from(2);
    let other = from(3);
    assert!(within(Duration::from_secs(5), || has_port(&log, other).then_some(())).is_some(), "an untrusted source is still reported");
    assert!(!has_port(&log, trusted), "the newly trusted source is not reported");

    // A bad file: the running configuration stays, and the reason is given.
    std::fs::write(&config, "[watch]\ntrusted = []\nstats_intervall = 0\n").unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    w.wait_for_line("the configuration was not reloaded", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let said = w.lines().join("\n");
    assert!(said.contains("stats_intervall") && said.contains("line 3"), "{said}");
    assert!(w.is_running());
    let still_trusted = from(2);
    let still_reported = from(3);
    assert!(within(Duration::from_secs(5), || has_port(&log, still_reported).then_some(())).is_some(), "detection goes on");
    assert!(!has_port(&log, still_trusted), "the previous configuration still holds");

    // A change that needs a restart is said, not half-applied.
    std::fs::write(&config, format!("[watch]\ntrusted = [\"{}/32\"]\nstats_interval = 0\nudp_idle = 5\n", bed.outside.v4(2))).unwrap();
    unsafe { libc::kill(w.pid() as i32, libc::SIGHUP) };
    let said = w.wait_for_line("applied at the next restart", Duration::from_secs(5));
    assert!(said.contains("watch.udp_idle"), "{said}");
    let (_, status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn a_stalled_webhook_never_holds_back_the_audit_log() {
    if !privileged("a_stalled_webhook_never_holds_back_the_audit_log") {
        return;
    }
    // A webhook server that accepts and never answers: every delivery times out.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = stalled.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in stalled.incoming().flatten() {
            held.push(conn);
        }
    });
    let bed = Bed::new("wh");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("webhook");
    let config = dir.join("dockexpose.toml");
    // A one-alert queue and a one-second alert window: new alerts every second, which
    // the stalled sink cannot take.
    std::fs::write(&config, format!("[alerts]\nwindow = 1\n\n[[sinks.webhook]]\nurl = \"http://{hook}/hook\"\nqueue = 1\n")).unwrap();
    let socket = dir.join("s.sock");
    let log = dir.join("audit.jsonl");
    let w = Watcher::start(
        &["--config", config.to_str().unwrap(), "--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0", "--status-socket", socket.to_str().unwrap()],
        log.clone(),
    );
    assert!(w.lines().iter().any(|l| l.contains("alerts also go to webhook http://")), "{:?}", w.lines());
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        for host in [2, 3] {
            let port = tcp_connect(&bed.outside.ns, Some(bed.outside.v4(host).parse().unwrap()), bed.host_tcp_v4()).expect("connect");
            let t = Instant::now();
            assert!(within(Duration::from_secs(2), || has_port(&log, port).then_some(())).is_some(), "record of {port} written");
            slowest = slowest.max(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    eprintln!("slowest record with the webhook stalled: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "the audit log waited on the sink: {slowest:?}");
    let (code, out, _) = dockexpose(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let sink = &report["health"]["sinks"][0];
    assert!(sink["name"].as_str().unwrap().starts_with("webhook http://127.0.0.1"), "{sink:#}");
    assert!(sink["dropped_full"].as_u64().unwrap() >= 1, "a full queue drops and counts: {sink:#}");
    assert!(sink["timeouts"].as_u64().unwrap() >= 1, "each attempt is cut at 2 s: {sink:#}");
    assert_eq!(sink["delivered"], 0, "{sink:#}");
    assert!(report["health"]["losses"]["sink_alerts_dropped"].as_u64().unwrap() >= 1);
    assert!(code.is_some());
    let (records, status, _) = w.stop();
    assert!(status.success());
    assert_eq!(records.iter().filter(|r| r["stage"] == "reached").count(), 12, "every connection recorded");
}

/// A webhook server on 127.0.0.1 that answers 200 to every POST (connections kept)
/// and keeps the JSON bodies it got.
fn collecting_webhook() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let bodies = kept.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then the body of the length they give.
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
                            if let Ok(v) = serde_json::from_slice(&body) {
                                bodies.lock().unwrap().push(v);
                            }
                            if conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, bodies)
}

/// The audit log's disk fills while a webhook is configured: the webhook gets a
/// `health` alert (condition audit_log, failing) at once, and a recovered one when
/// space returns; the exposure alerts still arrive.
#[test]
fn a_full_disk_raises_a_health_alert_at_the_webhook() {
    if !privileged("a_full_disk_raises_a_health_alert_at_the_webhook") {
        return;
    }
    let (hook, bodies) = collecting_webhook();
    let bed = Bed::new("hw");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let dir = temp_dir("health");
    let fs = Tmpfs::mount(&dir.join("fs"), "256k");
    let log = fs.0.join("audit.jsonl");
    let (url, socket) = (format!("http://{hook}/hook"), dir.join("s.sock"));
    let args = ["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0", "--quiet", "--status-socket", socket.to_str().unwrap()];
    let w = Watcher::start(&[&args[..], &["--webhook", &url]].concat(), log.clone());
    let src = Some(bed.outside.v4(2).parse().unwrap());
    let connect = || tcp_connect(&bed.outside.ns, src, bed.host_tcp_v4()).expect("outside reaches the container");
    let first = connect();
    assert!(within(Duration::from_secs(5), || has_port(&log, first).then_some(())).is_some(), "first record written");
    let health = |state: &str| {
        bodies.lock().unwrap().iter().find(|b| b["kind"] == "health" && b["health"]["condition"] == "audit_log" && b["health"]["state"] == state).cloned()
    };

    let filler = fs.0.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]).stderr(Stdio::null()).status();
    let t0 = Instant::now();
    let failing = within(Duration::from_secs(30), || {
        connect();
        health("failing")
    });
    let took = t0.elapsed();
    let kinds: Vec<Value> = bodies.lock().unwrap().iter().map(|b| b["kind"].clone()).collect();
    let failing = failing.unwrap_or_else(|| panic!("no health alert at the webhook within 30 s; it got {kinds:?}; stderr: {:?}", w.lines()));
    eprintln!("health alert at the webhook {took:?} after the disk filled: {failing}");
    assert!(failing["text"].as_str().unwrap().contains("audit log"), "{failing}");
    assert!(failing["record"].is_null(), "{failing}");

    std::fs::remove_file(&filler).unwrap();
    connect();
    let recovered = within(Duration::from_secs(10), || health("recovered"));
    assert!(recovered.is_some(), "no recovered health alert: {:?}", bodies.lock().unwrap());
    assert!(bodies.lock().unwrap().iter().any(|b| b["kind"] == "reached"), "the exposure alert still arrives");
    let (_, status, _) = w.stop();
    assert!(status.success());
}
