//! journald's native protocol: one datagram per alert on the journal's socket, made of
//! `FIELD=value\n` lines, or `FIELD\n<u64 LE length><value>\n` for a value holding a
//! newline (the binary form). See systemd's "Native Journal Protocol".
//!
//! Fields: MESSAGE (the alert line), PRIORITY, SYSLOG_IDENTIFIER=dockexpose,
//! MESSAGE_ID (one per alert kind, [`message_id`]) and DOCKEXPOSE_* fields from the record.

use std::{io, os::linux::fs::MetadataExt, path::PathBuf};

use tokio::net::UnixDatagram;

use super::{Deliver, Failure, JournaldConfig, SinkError};
use crate::output::alerts::{Alert, AlertKind};

pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// The MESSAGE_ID of each alert kind: fixed forever, so that `journalctl
/// MESSAGE_ID=...` finds them across versions.
pub fn message_id(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Reached => "adfde84b95c049e2b83e88d2e792e4c3",
        AlertKind::LoopbackOnly => "553e603912cd4238ac0a4fa2bd985c1d",
        AlertKind::Unpublished => "1955fbd72eae4242965284d51ad80d7e",
        AlertKind::Blocked => "51a942b0b8a14d6b9e3b445c73d2f366",
        AlertKind::Verified => "ee3661ff1cd741a49b79ace19a36eee4",
        AlertKind::Repeated => "c08d0e1bc2a14121aca15df302bda156",
        AlertKind::Suppressed => "5e2b348ac71f40d0bcc04218d73832ba",
        AlertKind::Health => "d3cc52919325452797d871dc87601cea",
        AlertKind::Contradiction => "e1a5c0b45f47456189264f0adc811e90",
        AlertKind::ExposureChanged => "ebedb7025f8540739c6d236bf5cf3f2a",
    }
}

/// True when stderr is connected to the journal: JOURNAL_STREAM ("DEV:INODE", set by
/// systemd for services whose output goes to the journal) names stderr's file.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    // /proc/self/fd/2 resolves to stderr itself (a socket, for the journal).
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    journal_stream_is(&stream.to_string_lossy(), meta.st_dev(), meta.st_ino())
}

/// Whether a JOURNAL_STREAM value names the file (dev, inode).
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else { return false };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Appends one field in the native format.
fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The datagram of an alert.
pub fn encode(alert: &Alert) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    push_field(&mut out, "MESSAGE", alert.text.as_bytes());
    push_field(&mut out, "PRIORITY", alert.severity().to_string().as_bytes());
    push_field(&mut out, "SYSLOG_IDENTIFIER", b"dockexpose");
    push_field(&mut out, "MESSAGE_ID", message_id(alert.kind).as_bytes());
    push_field(&mut out, "DOCKEXPOSE_KIND", alert.kind.as_str().as_bytes());
    if let Some(h) = &alert.health {
        push_field(&mut out, "DOCKEXPOSE_HEALTH", h.condition.as_str().as_bytes());
        push_field(&mut out, "DOCKEXPOSE_HEALTH_STATE", h.state.as_str().as_bytes());
        push_field(&mut out, "DOCKEXPOSE_HEALTH_COUNT", h.count.to_string().as_bytes());
        if let Some(subject) = &h.subject {
            push_field(&mut out, "DOCKEXPOSE_HEALTH_SUBJECT", subject.as_bytes());
        }
    }
    let Some(rec) = &alert.record else { return out };
    if let Some(c) = &rec.container {
        push_field(&mut out, "DOCKEXPOSE_CONTAINER", c.name.as_bytes());
        push_field(&mut out, "DOCKEXPOSE_CONTAINER_ID", c.id.as_bytes());
        push_field(&mut out, "DOCKEXPOSE_IMAGE", c.image.as_bytes());
        if let Some(p) = &c.compose_project {
            push_field(&mut out, "DOCKEXPOSE_COMPOSE_PROJECT", p.as_bytes());
        }
        if let Some(s) = &c.compose_service {
            push_field(&mut out, "DOCKEXPOSE_COMPOSE_SERVICE", s.as_bytes());
        }
    }
    if let Some(ip) = rec.host_ip {
        push_field(&mut out, "DOCKEXPOSE_HOST_IP", ip.to_string().as_bytes());
    }
    if let Some(port) = rec.host_port {
        push_field(&mut out, "DOCKEXPOSE_HOST_PORT", port.to_string().as_bytes());
    }
    push_field(&mut out, "DOCKEXPOSE_PROTO", rec.proto.as_bytes());
    push_field(&mut out, "DOCKEXPOSE_SRC_IP", rec.src_ip.to_string().as_bytes());
    push_field(&mut out, "DOCKEXPOSE_STAGE", rec.stage.as_bytes());
    out
}

pub struct Journald {
    socket: PathBuf,
    conn: Option<UnixDatagram>,
}

impl Journald {
    pub fn new(config: &JournaldConfig) -> Result<Self, SinkError> {
        if !config.socket.is_absolute() {
            return Err(SinkError::config(
                "sinks.journald.socket",
                config.socket.display().to_string(),
                "not an absolute path",
                format!("leave it out for {DEFAULT_SOCKET}, or give the full path of the journal's socket"),
            ));
        }
        Ok(Self { socket: config.socket.clone(), conn: None })
    }
}

impl Deliver for Journald {
    async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
        let datagram = encode(alert);
        let retry = |what: &str, e: io::Error| Failure::Retry {
            after: None,
            reason: format!("{what} {}: {e}", self.socket.display()),
        };
        let sock = match &mut self.conn {
            Some(s) => s,
            None => {
                let s = UnixDatagram::unbound().map_err(|e| retry("socket for", e))?;
                s.connect(&self.socket).map_err(|e| retry("connect", e))?;
                self.conn.insert(s)
            }
        };
        match sock.send(&datagram).await {
            Ok(_) => Ok(()),
            // Too large for a datagram (journald's limit is far above any alert).
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                Err(Failure::GiveUp(format!("send to {}: {e} ({} bytes)", self.socket.display(), datagram.len())))
            }
            Err(e) => Err(retry("send to", e)),
        }
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::output::{
        alerts::{HealthCondition, HealthLimiter},
        record::ContainerRef,
    };

    /// Parses a native datagram back into (name, value) pairs.
    pub fn parse(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n' || b == b'=').expect("a field name ends");
            let name = String::from_utf8(data[..end].to_vec()).unwrap();
            if data[end] == b'=' {
                let nl = data[end..].iter().position(|&b| b == b'\n').unwrap() + end;
                fields.push((name, data[end + 1..nl].to_vec()));
                data = &data[nl + 1..];
            } else {
                let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &data[end + 9..end + 9 + len];
                assert_eq!(data[end + 9 + len], b'\n');
                fields.push((name, value.to_vec()));
                data = &data[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let ids: std::collections::HashSet<_> = AlertKind::ALL.iter().map(|&k| message_id(k)).collect();
        assert_eq!(ids.len(), AlertKind::ALL.len());
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
    }

    #[test]
    fn fields_are_encoded_plain_or_binary() {
        let mut out = Vec::new();
        push_field(&mut out, "A", b"plain");
        push_field(&mut out, "B", b"two\nlines");
        assert_eq!(out, b"A=plain\nB\n\x09\0\0\0\0\0\0\0two\nlines\n");
    }

    #[test]
    fn an_alert_becomes_its_fields() {
        let mut rec = super::super::test_record();
        rec.container = Some(Arc::new(ContainerRef {
            id: "c0ffee".into(),
            name: "web\nFAKE=1".into(),
            image: "nginx:1.27".into(),
            compose_project: Some("shop".into()),
            ..ContainerRef::default()
        }));
        let alert = Alert::new(AlertKind::Blocked, "BLOCKED web".into(), Some(Arc::new(rec)));
        let fields = parse(&encode(&alert));
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(get("MESSAGE").as_deref(), Some("BLOCKED web"));
        assert_eq!(get("PRIORITY").as_deref(), Some("5"));
        assert_eq!(get("SYSLOG_IDENTIFIER").as_deref(), Some("dockexpose"));
        assert_eq!(get("MESSAGE_ID").as_deref(), Some(message_id(AlertKind::Blocked)));
        assert_eq!(get("DOCKEXPOSE_KIND").as_deref(), Some("blocked"));
        assert_eq!(get("DOCKEXPOSE_CONTAINER").as_deref(), Some("web\nFAKE=1"), "a newline cannot forge a field");
        assert_eq!(get("FAKE"), None);
        assert_eq!(get("DOCKEXPOSE_IMAGE").as_deref(), Some("nginx:1.27"));
        assert_eq!(get("DOCKEXPOSE_COMPOSE_PROJECT").as_deref(), Some("shop"));
        assert_eq!(get("DOCKEXPOSE_HOST_PORT").as_deref(), Some("8080"));
        assert_eq!(get("DOCKEXPOSE_PROTO").as_deref(), Some("tcp"));
        assert_eq!(get("DOCKEXPOSE_SRC_IP").as_deref(), Some("198.18.3.2"));
        assert_eq!(get("DOCKEXPOSE_STAGE").as_deref(), Some("reached"));
        let summary = Alert::new(AlertKind::Suppressed, "WARNING: 3 more".into(), None);
        assert_eq!(parse(&encode(&summary)).len(), 5, "no record, no record fields");
    }

    #[test]
    fn a_health_alert_has_its_priority_and_condition() {
        let mut h = HealthLimiter::new(std::time::Duration::from_secs(60));
        let now = std::time::Instant::now();
        let alert = h
            .failing(HealthCondition::Detached, Some("br-x"), "dockexpose: bridge br-x disappeared".into(), now)
            .unwrap();
        let fields = parse(&encode(&alert));
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(get("PRIORITY").as_deref(), Some("4"));
        assert_eq!(get("MESSAGE_ID").as_deref(), Some(message_id(AlertKind::Health)));
        assert_eq!(get("DOCKEXPOSE_KIND").as_deref(), Some("health"));
        assert_eq!(get("DOCKEXPOSE_HEALTH").as_deref(), Some("detached"));
        assert_eq!(get("DOCKEXPOSE_HEALTH_STATE").as_deref(), Some("failing"));
        assert_eq!(get("DOCKEXPOSE_HEALTH_SUBJECT").as_deref(), Some("br-x"));
        let back = h
            .recovered(HealthCondition::Detached, Some("br-x"), "dockexpose: bridge br-x watched".into(), now)
            .unwrap();
        let fields = parse(&encode(&back));
        assert!(fields.contains(&("PRIORITY".to_string(), b"5".to_vec())), "recovered: notice");
    }

    #[test]
    fn journal_stream_matches_dev_and_inode() {
        assert!(journal_stream_is("8:123456", 8, 123456));
        assert!(!journal_stream_is("8:123456", 8, 123457));
        assert!(!journal_stream_is("garbage", 8, 123456));
        assert!(!journal_stream_is("", 0, 0));
    }

    #[test]
    fn stderr_of_a_test_is_not_the_journal() {
        if std::env::var_os("JOURNAL_STREAM").is_none() {
            assert!(!stderr_is_journal());
        }
    }
}
