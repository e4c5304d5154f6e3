//! The webhook sink: a stalled webhook never holds back the audit log; a full disk
//! raises a health alert there.

use super::*;

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
    std::fs::write(
        &config,
        format!("[alerts]\nwindow = 1\n\n[[sinks.webhook]]\nurl = \"http://{hook}/hook\"\nqueue = 1\n"),
    )
    .unwrap();
    let socket = dir.join("s.sock");
    let log = dir.join("audit.jsonl");
    let w = Watcher::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--bridge",
            &bed.bridge,
            "--no-uplinks",
            "--stats-interval",
            "0",
            "--status-socket",
            socket.to_str().unwrap(),
        ],
        log.clone(),
    );
    assert!(w.lines().iter().any(|l| l.contains("alerts also go to webhook http://")), "{:?}", w.lines());
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        for host in [2, 3] {
            let port = tcp_connect(&bed.outside.ns, Some(bed.outside.v4(host).parse().unwrap()), bed.host_tcp_v4())
                .expect("connect");
            let t = Instant::now();
            assert!(
                within(Duration::from_secs(2), || has_port(&log, port).then_some(())).is_some(),
                "record of {port} written"
            );
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
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
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
    let args = [
        "--bridge",
        &bed.bridge,
        "--no-uplinks",
        "--stats-interval",
        "0",
        "--quiet",
        "--status-socket",
        socket.to_str().unwrap(),
    ];
    let w = Watcher::start(&[&args[..], &["--webhook", &url]].concat(), log.clone());
    let src = Some(bed.outside.v4(2).parse().unwrap());
    let connect = || tcp_connect(&bed.outside.ns, src, bed.host_tcp_v4()).expect("outside reaches the container");
    let first = connect();
    assert!(within(Duration::from_secs(5), || has_port(&log, first).then_some(())).is_some(), "first record written");
    let health = |state: &str| {
        bodies
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["kind"] == "health" && b["health"]["condition"] == "audit_log" && b["health"]["state"] == state)
            .cloned()
    };

    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
        .stderr(Stdio::null())
        .status();
    let t0 = Instant::now();
    let failing = within(Duration::from_secs(30), || {
        connect();
        health("failing")
    });
    let took = t0.elapsed();
    let kinds: Vec<Value> = bodies.lock().unwrap().iter().map(|b| b["kind"].clone()).collect();
    let failing = failing.unwrap_or_else(|| {
        panic!("no health alert at the webhook within 30 s; it got {kinds:?}; stderr: {:?}", w.lines())
    });
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
