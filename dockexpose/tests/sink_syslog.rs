//! The syslog sink against a real rsyslogd started here (its own config: imudp and
//! imtcp on 127.0.0.1 high ports, imuxsock on a socket in a temp dir, the system
//! socket left alone), which writes what it parsed with a template that keeps the
//! structured data. And dead servers: counted retries and drops, never a hang.

mod sinks_support;

use std::{
    io::ErrorKind,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use dockexpose::output::{
    alerts::{Alert, AlertKind, HealthCondition},
    formats::{Formatter, JsonFormat, Observer},
    sinks::{self, SinkHandle, SinksConfig, SyslogConfig},
};
use sinks_support::{alert, free_port, have_tool, health_alert, wait_for, TempDir};

/// The sinks' payloads as today: native JSON.
fn native() -> Formatter {
    Formatter::new(JsonFormat::Native, Observer::this_host())
}

struct Rsyslog {
    child: Child,
    udp: u16,
    tcp: u16,
    socket: PathBuf,
    out: PathBuf,
    dir: TempDir,
}

impl Rsyslog {
    /// Starts rsyslogd in the foreground and waits until its inputs are up.
    async fn start() -> Rsyslog {
        Self::start_on(free_port(), free_port()).await
    }

    async fn start_on(udp: u16, tcp: u16) -> Rsyslog {
        let dir = TempDir::new("rsyslog");
        let (socket, out) = (dir.0.join("log.sock"), dir.0.join("out.log"));
        let conf = format!(
            r#"global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
template(name="dx" type="string" string="%inputname%|%msgid%|%app-name%|%hostname%|%procid%|%syslogfacility-text%|%syslogseverity-text%|%structured-data%|%msg%\n")
input(type="imuxsock" Socket="{socket}" UseSpecialParser="off" ParseHostname="on")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
if $app-name == "dockexpose" then action(type="omfile" file="{out}" template="dx")
"#,
            dir = dir.0.display(),
            socket = socket.display(),
            out = out.display(),
        );
        let conf_path = dir.0.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.0.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = Rsyslog { child, udp, tcp, socket, out, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", tcp)).is_err() || !server.socket.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "rsyslogd did not open its inputs within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // imudp starts with imtcp; give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server
    }

    /// The lines rsyslogd wrote, once there are `n`.
    async fn lines(&self, n: usize) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let text = match std::fs::read_to_string(&self.out) {
                Ok(text) => text,
                Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
                Err(e) => panic!("{}: {e}", self.out.display()),
            };
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "rsyslogd wrote {lines:?}, not {n} lines");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn syslog(address: String) -> SyslogConfig {
    SyslogConfig { address, ..Default::default() }
}

fn start(configs: Vec<SyslogConfig>) -> Vec<SinkHandle> {
    sinks::start(&SinksConfig { syslog: configs, ..Default::default() }, &native()).unwrap()
}

const EVIL: &str = "we\"b]\\";

fn exposed(via: &str) -> Arc<Alert> {
    alert(AlertKind::Reached, EVIL, 8080, &format!("EXPOSED {EVIL} (nginx:1.27) 198.18.3.1:8080 -> 80/tcp via {via}"))
}

#[tokio::test]
async fn syslog_over_udp_tcp_and_unix_reaches_rsyslogd() {
    if !have_tool("syslog_over_udp_tcp_and_unix_reaches_rsyslogd", "rsyslogd", "rsyslog") {
        return;
    }
    let server = Rsyslog::start().await;
    let configs = [
        format!("udp://127.0.0.1:{}", server.udp),
        format!("tcp://127.0.0.1:{}", server.tcp),
        format!("unix://{}", server.socket.display()),
    ]
    .into_iter()
    .map(|address| SyslogConfig { facility: "local3".into(), hostname: Some("dx-test".into()), ..syslog(address) })
    .collect();
    let sinks = start(configs);
    assert_eq!(sinks[0].name(), format!("syslog udp://127.0.0.1:{}", server.udp));
    for (sink, via) in sinks.iter().zip(["udp", "tcp", "unix"]) {
        sink.offer(&exposed(via));
    }
    // Two more on the TCP stream: the frames must stay apart.
    sinks[1].offer(&alert(
        AlertKind::Blocked,
        "db",
        5432,
        "BLOCKED db (postgres) 198.18.3.1:5432 attempted from 198.18.3.2",
    ));
    sinks[1].offer(&exposed("tcp again"));
    for (sink, n) in sinks.iter().zip([1, 3, 1]) {
        let stats = wait_for(sink, Duration::from_secs(5), |s| s.delivered == n).await;
        assert_eq!((stats.retries, stats.dropped_failed, stats.dropped_full), (0, 0, 0), "{stats:?}");
    }
    let mut lines = server.lines(5).await;
    lines.sort();
    let pid = std::process::id();
    let sd = |kind: &str, name: &str, port: u16| {
        format!(
            "[dockexpose@32473 kind=\"{kind}\" container=\"{name}\" image=\"nginx:1.27\" host_port=\"{port}\" proto=\"tcp\" src_ip=\"198.18.3.2\" stage=\"reached\"]"
        )
    };
    let evil_sd = sd("reached", r#"we\"b\]\\"#, 8080);
    let line = |input: &str, kind: &str, severity: &str, sd: &str, text: &str| {
        format!("{input}|{kind}|dockexpose|dx-test|{pid}|local3|{severity}|{sd}|{text}")
    };
    let text = |via: &str| format!("EXPOSED {EVIL} (nginx:1.27) 198.18.3.1:8080 -> 80/tcp via {via}");
    let expected = [
        line(
            "imtcp",
            "blocked",
            "notice",
            &sd("blocked", "db", 5432),
            "BLOCKED db (postgres) 198.18.3.1:5432 attempted from 198.18.3.2",
        ),
        line("imtcp", "reached", "warning", &evil_sd, &text("tcp")),
        line("imtcp", "reached", "warning", &evil_sd, &text("tcp again")),
        line("imudp", "reached", "warning", &evil_sd, &text("udp")),
        line("imuxsock", "reached", "warning", &evil_sd, &text("unix")),
    ];
    assert_eq!(lines, expected);
}

/// Nothing listens: TCP and the unix socket fail at once and are retried with the
/// backoff, then dropped; UDP cannot know until the refusal (ICMP) comes back, which
/// the next send reports.
#[tokio::test]
async fn dead_syslog_servers_count_retries_and_drops() {
    let dir = TempDir::new("dead-syslog");
    let sinks = start(vec![
        syslog(format!("tcp://127.0.0.1:{}", free_port())),
        syslog(format!("unix://{}", dir.0.join("nobody.sock").display())),
        syslog(format!("udp://127.0.0.1:{}", free_port())),
    ]);
    let t0 = Instant::now();
    for sink in &sinks {
        sink.offer(&exposed("nowhere"));
    }
    for sink in &sinks[..2] {
        let stats = wait_for(sink, Duration::from_secs(8), |s| s.dropped_failed == 1).await;
        assert_eq!((stats.retries, stats.delivered), (4, 0), "{}: {stats:?}", sink.name());
        let error = stats.last_error.unwrap_or_default();
        assert!(error.contains("refused") || error.contains("No such file"), "{}: {error}", sink.name());
    }
    // 250 + 500 + 1000 + 2000 ms of backoff, the two sinks at the same time.
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sinks[2].offer(&exposed("nowhere"));
    }
    let stats = wait_for(&sinks[2], Duration::from_secs(10), |s| s.delivered + s.dropped_failed == 4).await;
    assert!(stats.retries >= 1, "{stats:?}");
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("refused")), "{stats:?}");
}

/// rsyslogd stops, then comes back on the same port: the TCP sink notices the closed
/// connection, retries while nothing listens, and delivers to the new server.
#[tokio::test]
async fn syslog_tcp_reconnects_when_rsyslogd_comes_back() {
    if !have_tool("syslog_tcp_reconnects_when_rsyslogd_comes_back", "rsyslogd", "rsyslog") {
        return;
    }
    let first = Rsyslog::start().await;
    let (udp, tcp) = (first.udp, first.tcp);
    let sink = start(vec![syslog(format!("tcp://127.0.0.1:{tcp}"))]).pop().unwrap();
    sink.offer(&exposed("the first server"));
    wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 1).await;
    assert_eq!(first.lines(1).await.len(), 1);

    drop(first);
    sink.offer(&exposed("the second server"));
    let stats = wait_for(&sink, Duration::from_secs(5), |s| s.retries >= 1).await;
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("refused")), "{stats:?}");
    let second = Rsyslog::start_on(udp, tcp).await;
    let stats = wait_for(&sink, Duration::from_secs(8), |s| s.delivered == 2 || s.dropped_failed > 0).await;
    assert_eq!((stats.delivered, stats.dropped_failed), (2, 0), "{stats:?}");
    let lines = second.lines(1).await;
    assert!(lines[0].ends_with("via the second server"), "{lines:?}");
}

/// Health alerts reach rsyslogd with their severity (err for records lost, warning
/// for a detached bridge, notice when it is back) and their condition as structured data.
#[tokio::test]
async fn health_alerts_reach_rsyslogd_with_their_severity() {
    if !have_tool("health_alerts_reach_rsyslogd_with_their_severity", "rsyslogd", "rsyslog") {
        return;
    }
    let server = Rsyslog::start().await;
    let config = SyslogConfig { hostname: Some("dx-test".into()), ..syslog(format!("tcp://127.0.0.1:{}", server.tcp)) };
    let sink = start(vec![config]).pop().unwrap();
    let lost = "WARNING: 12 connection records lost (12 in total: ring buffer full 12, reader overrun 0); the audit log is incomplete";
    sink.offer(&health_alert(HealthCondition::RecordsLost, None, lost, false));
    sink.offer(&health_alert(HealthCondition::Detached, Some("br-x"), "dockexpose: bridge br-x disappeared", false));
    sink.offer(&health_alert(HealthCondition::Detached, Some("br-x"), "dockexpose: bridge br-x watched", true));
    wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 3).await;
    let pid = std::process::id();
    let line = |severity: &str, sd: &str, text: &str| {
        format!(
            "imtcp|health|dockexpose|dx-test|{pid}|daemon|{severity}|[dockexpose@32473 kind=\"health\" {sd}]|{text}"
        )
    };
    assert_eq!(
        server.lines(3).await,
        [
            line("err", r#"condition="records_lost" state="failing" count="1""#, lost),
            line(
                "warning",
                r#"condition="detached" state="failing" count="1" subject="br-x""#,
                "dockexpose: bridge br-x disappeared"
            ),
            line(
                "notice",
                r#"condition="detached" state="recovered" count="1" subject="br-x""#,
                "dockexpose: bridge br-x watched"
            ),
        ]
    );
}
