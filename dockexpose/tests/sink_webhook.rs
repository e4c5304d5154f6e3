//! The webhook sink against a real HTTP server started here (hyper, in process, on
//! 127.0.0.1) that fails, stalls and recovers; and against a TLS server whose
//! certificate is, or is not, trusted. No root needed.

mod sinks_support;

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use dockexpose::output::{
    alerts::{AlertKind, HealthCondition},
    formats::{Formatter, JsonFormat, Observer},
    sinks::{self, SinksConfig, WebhookConfig, WebhookFormat},
};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header::HeaderMap, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use sinks_support::{alert, have_tool, health_alert, wait_for, TempDir};
use tokio::net::TcpListener;

/// The sinks' payloads as today: native JSON.
fn native() -> Formatter {
    Formatter::new(JsonFormat::Native, Observer::this_host())
}

/// How the server answers one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Status(u16),
    /// 429 with `Retry-After: N`.
    TooMany(u64),
    /// Never answers.
    Stall,
}

struct Seen {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
    answer: Answer,
}

#[derive(Default)]
struct Server {
    /// Answers for the next requests, then `then`.
    script: VecDeque<Answer>,
    then: Option<Answer>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Server>>;

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = {
        let mut s = state.lock().unwrap();
        let answer = s.script.pop_front().or(s.then).unwrap_or(Answer::Status(200));
        s.seen.push(Seen { at: Instant::now(), headers, body, answer });
        answer
    };
    let response = |code: u16, text: &'static str| {
        Response::builder().status(code).body(Full::new(Bytes::from_static(text.as_bytes())))
    };
    Ok(match answer {
        Answer::Status(code) => response(code, "answer of the test server").unwrap(),
        Answer::TooMany(secs) => {
            let mut r = response(429, "slow down").unwrap();
            r.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
            r
        }
        Answer::Stall => std::future::pending().await,
    })
}

/// Serves HTTP/1.1 on 127.0.0.1 (with TLS when `tls` is given); returns the port.
async fn serve(state: Shared, tls: Option<tokio_rustls::TlsAcceptor>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (state, tls) = (state.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(state.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => drop(http.serve_connection(TokioIo::new(stream), service).await),
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            drop(http.serve_connection(TokioIo::new(stream), service).await);
                        }
                    }
                }
            });
        }
    });
    port
}

fn webhook(url: String) -> WebhookConfig {
    WebhookConfig { url, ..Default::default() }
}

fn start_one(config: WebhookConfig) -> sinks::SinkHandle {
    sinks::start(&SinksConfig { webhook: vec![config], ..Default::default() }, &native()).unwrap().pop().unwrap()
}

/// 500, then 429 with Retry-After: 1, then no answer at all (the 2 s timeout), then
/// 200: one alert, delivered on the fourth attempt, with the waits of the policy.
#[tokio::test]
async fn webhook_fails_stalls_and_recovers() {
    let state = Shared::default();
    state.lock().unwrap().script = [Answer::Status(500), Answer::TooMany(1), Answer::Stall].into();
    let port = serve(state.clone(), None).await;
    let mut config = webhook(format!("http://127.0.0.1:{port}/hooks/T000/SECRET?x=1"));
    config.headers.insert("Authorization".into(), "Bearer s3cret".into());
    let sink = start_one(config);
    assert_eq!(sink.name(), format!("webhook http://127.0.0.1:{port}"), "the path (a secret) is not shown");

    let t0 = Instant::now();
    sink.offer(&alert(
        AlertKind::Reached,
        "web",
        8080,
        "EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reached from 198.18.3.2",
    ));
    let stats = wait_for(&sink, Duration::from_secs(10), |s| s.delivered == 1).await;
    let took = t0.elapsed();
    assert_eq!((stats.retries, stats.timeouts, stats.dropped_failed, stats.dropped_full), (3, 1, 0, 0), "{stats:?}");
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("no answer within 2 s")), "{stats:?}");

    let seen = &state.lock().unwrap().seen;
    let answers: Vec<Answer> = seen.iter().map(|s| s.answer).collect();
    assert_eq!(answers, [Answer::Status(500), Answer::TooMany(1), Answer::Stall, Answer::Status(200)]);
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    // 250 ms backoff; Retry-After: 1 (longer than the 500 ms backoff); the 2 s timeout
    // plus the 1 s backoff.
    assert!(gaps[0] >= Duration::from_millis(250) && gaps[0] < Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(1) && gaps[1] < Duration::from_millis(1700), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_secs(3) && gaps[2] < Duration::from_millis(3700), "{gaps:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");

    // What the server got: the JSON body and the headers.
    let last = seen.last().unwrap();
    assert_eq!(last.headers["authorization"], "Bearer s3cret");
    assert_eq!(last.headers["content-type"], "application/json");
    assert_eq!(last.headers["host"], format!("127.0.0.1:{port}"));
    let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["kind"], "reached");
    assert!(body["text"].as_str().unwrap().starts_with("EXPOSED web"), "{body}");
    assert_eq!(body["record"]["container"]["name"], "web");
    assert_eq!(body["record"]["host_port"], 8080);
    assert_eq!(body["record"]["stage"], "reached");
}

/// A server that never answers: offering 10 000 alerts returns at once, the queue
/// holds 1 024 and the rest is counted; the single-threaded runtime keeps running
/// other tasks (the audit log's) all along; stopping is bounded.
#[tokio::test]
async fn offer_never_blocks_on_a_stalled_sink() {
    let state = Shared::default();
    state.lock().unwrap().then = Some(Answer::Stall);
    let port = serve(state.clone(), None).await;
    let sink = start_one(webhook(format!("http://127.0.0.1:{port}/")));
    let alert = alert(AlertKind::Reached, "web", 8080, "EXPOSED web");

    let t0 = Instant::now();
    for _ in 0..10_000 {
        sink.offer(&alert);
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(200), "offering 10 000 alerts took {took:?}");
    let stats = sink.stats();
    assert_eq!((stats.queued, stats.capacity, stats.dropped_full), (1024, 1024, 10_000 - 1024), "{stats:?}");

    // Another task (the daemon loop, writing the audit log) ticks every 10 ms meanwhile.
    let ticker = tokio::spawn(async {
        let mut ticks = 0u32;
        let mut every = tokio::time::interval(Duration::from_millis(10));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(4500) {
            every.tick().await;
            ticks += 1;
        }
        ticks
    });
    let ticks = ticker.await.unwrap();
    assert!(ticks >= 400, "the loop ran only {ticks} times in 4.5 s");
    let stats = sink.stats();
    assert!(stats.timeouts >= 2 && stats.retries >= 2, "{stats:?}");
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.queued, 1023, "the worker holds one alert: {stats:?}");

    let t0 = Instant::now();
    sink.stop().await;
    assert!(t0.elapsed() < Duration::from_millis(2300), "stop took {:?}", t0.elapsed());
}

/// 4xx is not retried; a closed port is, with the backoff, then dropped.
#[tokio::test]
async fn client_errors_give_up_and_a_dead_server_is_retried() {
    let state = Shared::default();
    state.lock().unwrap().then = Some(Answer::Status(404));
    let port = serve(state.clone(), None).await;
    let sink = start_one(webhook(format!("http://127.0.0.1:{port}/nope")));
    sink.offer(&alert(AlertKind::Blocked, "web", 8080, "BLOCKED web"));
    let stats = wait_for(&sink, Duration::from_secs(5), |s| s.dropped_failed == 1).await;
    assert_eq!((stats.retries, stats.delivered), (0, 0), "{stats:?}");
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("404")), "{stats:?}");

    let dead = sinks_support::free_port();
    let sink = start_one(webhook(format!("http://127.0.0.1:{dead}/")));
    let t0 = Instant::now();
    sink.offer(&alert(AlertKind::Reached, "web", 8080, "EXPOSED web"));
    let stats = wait_for(&sink, Duration::from_secs(10), |s| s.dropped_failed == 1).await;
    assert_eq!((stats.retries, stats.delivered), (4, 0), "{stats:?}");
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("refused")), "{stats:?}");
    // 250 + 500 + 1000 + 2000 ms of backoff.
    assert!(t0.elapsed() >= Duration::from_millis(3750) && t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
}

/// `format = "slack"` posts `{"text": ...}`.
#[tokio::test]
async fn slack_format_posts_text() {
    let state = Shared::default();
    let port = serve(state.clone(), None).await;
    let mut config = webhook(format!("http://127.0.0.1:{port}/services/T/B/X"));
    config.format = WebhookFormat::Slack;
    let sink = start_one(config);
    sink.offer(&alert(AlertKind::Reached, "web", 8080, "EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp"));
    wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 1).await;
    let body: serde_json::Value = serde_json::from_slice(&state.lock().unwrap().seen[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("dockexpose on ") && text.ends_with(": EXPOSED web (nginx:1.27) 198.18.3.1:8080 -&gt; 80/tcp"),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

/// A test CA and a server certificate for localhost and 127.0.0.1 it signed (openssl).
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dockexpose test CA"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

/// https: a certificate no root vouches for is refused at once (no retries); with
/// its CA in `ca_file` the alert goes through.
#[tokio::test]
async fn https_certificates_are_verified() {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    };
    if !have_tool("https_certificates_are_verified", "openssl", "openssl") {
        return;
    }
    let dir = TempDir::new("webhook-tls");
    make_certs(&dir.0);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.0.join("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.0.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let state = Shared::default();
    let port = serve(state.clone(), Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;

    let untrusted = start_one(webhook(format!("https://localhost:{port}/hook")));
    untrusted.offer(&alert(AlertKind::Reached, "web", 8080, "EXPOSED web"));
    let stats = wait_for(&untrusted, Duration::from_secs(5), |s| s.dropped_failed == 1).await;
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("certificate is not trusted")), "{stats:?}");
    assert!(state.lock().unwrap().seen.is_empty());

    for host in ["localhost", "127.0.0.1"] {
        let mut config = webhook(format!("https://{host}:{port}/hook"));
        config.ca_file = Some(dir.0.join("ca.pem"));
        let trusted = start_one(config);
        trusted.offer(&alert(AlertKind::Reached, "web", 8080, "EXPOSED web"));
        let stats = wait_for(&trusted, Duration::from_secs(5), |s| s.delivered == 1).await;
        assert_eq!(stats.retries, 0, "{host}: {stats:?}");
    }
    assert_eq!(state.lock().unwrap().seen.len(), 2);
}

/// A server that closes a kept-alive connection while it is idle (as servers do)
/// just before the next alert: the alert is delivered on a new connection and no
/// retry is counted.
#[tokio::test]
async fn a_closed_kept_connection_is_not_a_failure() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Connections answered once and kept open, for the test to close.
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (served, kept_by_server) = (Arc::new(Mutex::new(0u32)), kept.clone());
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body of the length they give.
            let complete = |r: &[u8]| {
                let text = String::from_utf8_lossy(r);
                let Some(end) = text.find("\r\n\r\n") else { return false };
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                r.len() >= end + 4 + length
            };
            while !complete(&request) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if complete(&request) {
                *count.lock().unwrap() += 1;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                kept_by_server.lock().unwrap().push(stream);
            }
        }
    });
    let sink = start_one(webhook(format!("http://127.0.0.1:{port}/")));
    for i in 0..3 {
        sink.offer(&alert(AlertKind::Reached, "web", 8080, &format!("EXPOSED web {i}")));
        wait_for(&sink, Duration::from_secs(5), |s| s.delivered == i + 1).await;
        // Closed by the server now, and the next alert follows at once: the worker
        // runs before the runtime has polled for the close.
        kept.lock().unwrap().clear();
    }
    let stats = sink.stats();
    assert_eq!((stats.delivered, stats.retries, stats.dropped_failed), (3, 0, 0), "{stats:?}");
    assert_eq!(*served.lock().unwrap(), 3);
}

/// A health alert reaches the webhook with its condition and state; offered after a
/// flood of other alerts into a queue of 4, it is neither dropped nor kept waiting
/// behind them: the priority lane goes first.
#[tokio::test]
async fn a_health_alert_reaches_the_webhook_ahead_of_a_flood() {
    let state = Shared::default();
    let port = serve(state.clone(), None).await;
    let sink = start_one(WebhookConfig { queue: 4, ..webhook(format!("http://127.0.0.1:{port}/hook")) });
    for i in 0..100 {
        sink.offer(&alert(AlertKind::Reached, "web", 8080, &format!("EXPOSED web {i}")));
    }
    let text = "WARNING: 12 connection records lost (12 in total: ring buffer full 12, reader overrun 0); the audit log is incomplete";
    sink.offer(&health_alert(HealthCondition::RecordsLost, None, text, false));
    sink.offer(&health_alert(HealthCondition::Detached, Some("br-x"), "dockexpose: bridge br-x watched", true));
    let stats = wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 6).await;
    assert_eq!(stats.dropped_full, 96, "the flood beyond the queue is counted: {stats:?}");
    let bodies: Vec<serde_json::Value> =
        state.lock().unwrap().seen.iter().map(|s| serde_json::from_slice(&s.body).unwrap()).collect();
    assert_eq!(bodies[0]["kind"], "health", "the priority lane first: {bodies:?}");
    assert_eq!(bodies[0]["text"], text);
    assert_eq!(bodies[0]["health"], serde_json::json!({"condition": "records_lost", "state": "failing", "count": 1}));
    assert!(bodies[0]["record"].is_null());
    assert_eq!(
        bodies[1]["health"],
        serde_json::json!({"condition": "detached", "state": "recovered", "count": 1, "subject": "br-x"})
    );
    let rest: Vec<&str> = bodies[2..].iter().map(|b| b["text"].as_str().unwrap()).collect();
    assert_eq!(rest, ["EXPOSED web 0", "EXPOSED web 1", "EXPOSED web 2", "EXPOSED web 3"]);
    assert!(bodies[2].get("health").is_none(), "only health alerts carry it");
}
