//! The journald sink against the real systemd-journald, run in a private mount
//! namespace (tmpfs on /run and /var/log there) so that the host's journal and /run
//! are untouched; its socket is reached through /proc/PID/root, and what it stored
//! is read back with `journalctl --directory -o json`. Needs root (unshare -m).

mod sinks_support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dockexpose::output::{
    alerts::{AlertKind, HealthCondition},
    formats::{Formatter, JsonFormat, Observer},
    sinks::{self, journald::message_id, JournaldConfig, SinksConfig},
};
use serde_json::Value;
use sinks_support::{alert, have_tool, health_alert, root, wait_for};

/// The sinks' payloads as today: native JSON.
fn native() -> Formatter {
    Formatter::new(JsonFormat::Native, Observer::this_host())
}

const JOURNALD: &str = "/lib/systemd/systemd-journald";

struct Journald {
    child: Child,
    /// Its root, seen from here: /proc/PID/root.
    root: PathBuf,
}

impl Journald {
    async fn start() -> Journald {
        let script = format!(
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/log && mkdir -p /run/systemd/journal && exec {JOURNALD}"
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let root = PathBuf::from(format!("/proc/{}/root", child.id()));
        let server = Journald { child, root };
        let t0 = Instant::now();
        while !server.socket().exists() || !server.journal_dir().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "systemd-journald did not open {} within 10 s",
                server.socket().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/systemd/journal/socket")
    }

    /// Volatile storage: /var/log/journal does not exist in its namespace.
    fn journal_dir(&self) -> PathBuf {
        self.root.join("run/log/journal")
    }

    /// The entries of dockexpose in its journal, once there are `n`.
    async fn entries(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let entries = read_journal(&self.journal_dir());
            if entries.len() >= n {
                return entries;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the journal holds {entries:?}, not {n} entries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_journal(dir: &Path) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("--directory")
        .arg(dir)
        .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=dockexpose"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A journal field as text: journalctl writes a string, or an array of bytes for a
/// value it deems not printable.
fn field(entry: &Value, name: &str) -> String {
    match &entry[name] {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => String::from_utf8(bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect()).unwrap(),
        other => panic!("{name}: {other} in {entry}"),
    }
}

#[tokio::test]
async fn alerts_reach_the_real_journald_with_their_fields() {
    let test = "alerts_reach_the_real_journald_with_their_fields";
    if !root(test) || !have_tool(test, JOURNALD, "systemd") || !have_tool(test, "journalctl", "systemd") {
        return;
    }
    let server = Journald::start().await;
    let config = SinksConfig {
        journald: Some(JournaldConfig { socket: server.socket(), ..Default::default() }),
        ..Default::default()
    };
    let sink = sinks::start(&config, &native()).unwrap().pop().unwrap();
    // A newline in a container name takes the binary form and forges no field.
    sink.offer(&alert(
        AlertKind::Reached,
        "web\nDOCKEXPOSE_STAGE=forged",
        8080,
        "EXPOSED web 198.18.3.1:8080 -> 80/tcp",
    ));
    sink.offer(&alert(AlertKind::Blocked, "db", 5432, "BLOCKED db 198.18.3.1:5432"));
    let stats = wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 2).await;
    assert_eq!((stats.retries, stats.dropped_failed), (0, 0), "{stats:?}");

    let entries = server.entries(2).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (exposed, blocked) = (&entries[0], &entries[1]);
    assert_eq!(field(exposed, "MESSAGE"), "EXPOSED web 198.18.3.1:8080 -> 80/tcp");
    assert_eq!(field(exposed, "PRIORITY"), "4");
    assert_eq!(field(exposed, "MESSAGE_ID"), message_id(AlertKind::Reached));
    assert_eq!(field(exposed, "DOCKEXPOSE_KIND"), "reached");
    assert_eq!(field(exposed, "DOCKEXPOSE_CONTAINER"), "web\nDOCKEXPOSE_STAGE=forged");
    assert_eq!(field(exposed, "DOCKEXPOSE_STAGE"), "reached");
    assert_eq!(field(exposed, "DOCKEXPOSE_IMAGE"), "nginx:1.27");
    assert_eq!(field(exposed, "DOCKEXPOSE_HOST_PORT"), "8080");
    assert_eq!(field(exposed, "DOCKEXPOSE_PROTO"), "tcp");
    assert_eq!(field(exposed, "DOCKEXPOSE_SRC_IP"), "198.18.3.2");
    assert_eq!(field(exposed, "_TRANSPORT"), "journal");
    assert_eq!(field(blocked, "MESSAGE"), "BLOCKED db 198.18.3.1:5432");
    assert_eq!(field(blocked, "PRIORITY"), "5");
    assert_eq!(field(blocked, "MESSAGE_ID"), message_id(AlertKind::Blocked));
    assert_eq!(field(blocked, "DOCKEXPOSE_CONTAINER"), "db");

    // journald gone: retries, then drops, counted.
    drop(server);
    sink.offer(&alert(AlertKind::Reached, "web", 8080, "EXPOSED web"));
    let stats = wait_for(&sink, Duration::from_secs(8), |s| s.dropped_failed == 1).await;
    assert_eq!((stats.retries, stats.delivered), (4, 2), "{stats:?}");
}

/// A health alert is an entry with its priority (err for the audit log failing, notice
/// once it recovered) and its condition.
#[tokio::test]
async fn health_alerts_reach_the_real_journald() {
    let test = "health_alerts_reach_the_real_journald";
    if !root(test) || !have_tool(test, JOURNALD, "systemd") || !have_tool(test, "journalctl", "systemd") {
        return;
    }
    let server = Journald::start().await;
    let config = SinksConfig {
        journald: Some(JournaldConfig { socket: server.socket(), ..Default::default() }),
        ..Default::default()
    };
    let sink = sinks::start(&config, &native()).unwrap().pop().unwrap();
    sink.offer(&health_alert(HealthCondition::AuditLog, None, "WARNING: writing the audit log /x failed", false));
    sink.offer(&health_alert(HealthCondition::AuditLog, None, "dockexpose: the audit log /x is written again", true));
    wait_for(&sink, Duration::from_secs(5), |s| s.delivered == 2).await;
    let entries = server.entries(2).await;
    let got: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            ["PRIORITY", "MESSAGE_ID", "DOCKEXPOSE_KIND", "DOCKEXPOSE_HEALTH", "DOCKEXPOSE_HEALTH_STATE"]
                .map(|n| field(e, n))
        })
        .collect();
    let id = message_id(AlertKind::Health).to_string();
    assert_eq!(
        got,
        [
            ["3".into(), id.clone(), "health".into(), "audit_log".into(), "failing".into()],
            ["5".into(), id, "health".into(), "audit_log".into(), "recovered".into()],
        ]
    );
}
