//! Shared by the alert-sink tests (sink_webhook, sink_syslog, sink_journald): alerts
//! as the daemon makes them, waiting on a sink's counters, and tools that must exist.
#![allow(dead_code, reason = "each test binary uses a different part")]

// The same skip log as the other integration tests' `support`.
#[path = "../support/skip.rs"]
mod skip;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use dockexpose::{
    kernel::event::{Observation, Proto, Stage},
    output::{
        alerts::{Alert, AlertKind, HealthCondition, HealthLimiter},
        record::{ContainerRef, Record},
        sinks::{SinkHandle, SinkStats},
    },
};

/// An alert on a reached connection of container `name` (nginx:1.27) through
/// 198.18.3.1:`host_port`, from 198.18.3.2.
pub fn alert(kind: AlertKind, name: &str, host_port: u16, text: &str) -> Arc<Alert> {
    let obs = Observation {
        ktime_ns: 0,
        stage: Stage::Reached,
        proto: Proto::Tcp,
        src: "198.18.3.2".parse().unwrap(),
        src_port: 40000,
        dst: "10.251.0.2".parse().unwrap(),
        dst_port: 80,
        orig_dst: Some(("198.18.3.1".parse().unwrap(), host_port)),
        ifindex: 0,
        seq: 0,
        flags: 0,
        cpu: 0,
        rec_seq: 0,
    };
    let mut rec = Record::from_observation(&obs, Stage::Reached, SystemTime::now(), "br-test");
    rec.container = Some(Arc::new(ContainerRef {
        id: "0123456789ab".into(),
        name: name.into(),
        image: "nginx:1.27".into(),
        ..ContainerRef::default()
    }));
    Arc::new(Alert::new(kind, text.into(), Some(Arc::new(rec))))
}

/// A health alert as the daemon raises it: `condition` failing (`recovered`: then
/// cleared), about `subject`.
pub fn health_alert(condition: HealthCondition, subject: Option<&str>, text: &str, recovered: bool) -> Arc<Alert> {
    let mut limiter = HealthLimiter::new(Duration::from_secs(60));
    let now = Instant::now();
    let failing = limiter.failing(condition, subject, text.into(), now).unwrap();
    if !recovered {
        return Arc::new(failing);
    }
    Arc::new(limiter.recovered(condition, subject, text.into(), now).unwrap())
}

/// Waits (yielding to the runtime) until `done` holds for the sink's stats, or panics
/// after `limit` with them.
pub async fn wait_for(sink: &SinkHandle, limit: Duration, done: impl Fn(&SinkStats) -> bool) -> SinkStats {
    let t0 = Instant::now();
    loop {
        let stats = sink.stats();
        if done(&stats) {
            return stats;
        }
        assert!(t0.elapsed() < limit, "{}: still {stats:?} after {limit:?}", sink.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when the run demands every test (CI, or `cargo xtask test` under CI=true).
fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some()
}

/// Whether `program` can be run; otherwise records that the test is skipped, or panics when
/// the run demands every test.
pub fn have_tool(test: &str, program: &str, package: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let why = format!("{program} not found. Fix: apt-get install {package} (or `cargo xtask setup`)");
    assert!(!required(), "{test}: SKIPPED: {why}, and CI demands every test");
    skip::skip(test, &why)
}

/// Whether this runs as root; otherwise records that the test is skipped, or panics when the
/// run demands every test.
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = "needs root (a private mount namespace)";
    assert!(!required(), "{test}: SKIPPED: {why}, and CI demands every test");
    skip::skip(test, why)
}

/// A free port on 127.0.0.1 (of TCP and UDP alike, as far as can be told).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("dockexpose-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
