//! One line of the audit log, as the shipper sees it: a record (it has a `stage`;
//! the daemon's own lines have an `event` instead), its time, and what the store
//! takes. ClickHouse 18.16 refuses a whole batch for one `"container":null`, so a
//! record without a container is sent without the key.

use std::{borrow::Cow, time::SystemTime};

use bytes::Bytes;
use serde::Deserialize;

use crate::fleet::store::ShipRecord;

/// A record line (native JSON, written by serde: no spaces). The key is searched as
/// bytes: inside a JSON string its quotes would be escaped.
pub fn is_record(line: &[u8]) -> bool {
    contains(line, b"\"stage\":")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    record_id: Option<Cow<'a, str>>,
}

/// The record's `ts`.
pub fn ts(line: &[u8]) -> Option<SystemTime> {
    let head: Head = serde_json::from_slice(line).ok()?;
    humantime::parse_rfc3339(&head.ts?).ok()
}

/// What the store gets for a record line.
pub fn ship_record(line: Bytes) -> ShipRecord {
    let record_id = serde_json::from_slice::<Head>(&line)
        .ok()
        .and_then(|h| h.record_id.map(|r| r.into_owned()))
        .unwrap_or_default();
    let line = if contains(&line, b"\"container\":null") { without_null_container(line) } else { line };
    ShipRecord { record_id, line }
}

fn without_null_container(line: Bytes) -> Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&line) {
        Ok(mut map) if map.get("container").is_some_and(serde_json::Value::is_null) => {
            map.remove("container");
            serde_json::to_vec(&map).map(Bytes::from).unwrap_or(line)
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_a_stage_and_a_null_container_is_left_out() {
        assert!(is_record(br#"{"ts":"x","stage":"reached"}"#));
        assert!(!is_record(br#"{"event":"start","note":"a \"stage\": here"}"#));
        let r = ship_record(Bytes::from_static(
            br#"{"ts":"2026-12-07T10:00:00.5Z","stage":"blocked","container":null,"record_id":"ab12"}"#,
        ));
        assert_eq!(r.record_id, "ab12");
        let v: serde_json::Value = serde_json::from_slice(&r.line).unwrap();
        assert!(v.get("container").is_none() && v["stage"] == "blocked", "{v}");
        let kept = Bytes::from_static(br#"{"stage":"reached","container":{"id":"c"},"record_id":"cd"}"#);
        assert_eq!(ship_record(kept.clone()).line, kept);
        assert!(ts(br#"{"ts":"2026-12-07T10:00:00.123456Z","stage":"reached"}"#).is_some());
    }
}
