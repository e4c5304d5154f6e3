//! From audit-log lines to the body of one ClickHouse insert (JSONEachRow), for the
//! ClickHouse store and the bridge alike (a shipper to NATS sends lines as they are;
//! the bridge shapes them): only
//! native connection records go in (a top-level `stage` and `record_id`); the
//! daemon's own lines (`event`), ECS and OCSF lines and anything unreadable are left
//! out, so one stray message never gets a whole batch refused.
//!
//! ClickHouse 18.16 refuses a whole batch for one `"container": null` (it cannot put
//! null into the flattened `container.*` columns), so that is sent as `{}`, which
//! leaves them null.

use serde::Deserialize;

/// The keys that make a line a native record (borrowed: nothing is copied).
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    stage: Option<&'a str>,
    #[serde(borrow, default)]
    record_id: Option<&'a str>,
    #[serde(borrow, default)]
    ts: Option<&'a str>,
}

/// What a shipper needs of a native record: its name and its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub record_id: &'a str,
    pub ts: Option<&'a str>,
}

/// The head of a native connection record (a `stage` and a `record_id`); None for
/// the daemon's own lines, ECS or OCSF lines and anything unreadable. One parse.
pub fn head(line: &[u8]) -> Option<Head<'_>> {
    let p = serde_json::from_slice::<Probe<'_>>(line).ok()?;
    let record_id = p.record_id.filter(|s| !s.is_empty())?;
    p.stage.filter(|s| !s.is_empty())?;
    Some(Head { record_id, ts: p.ts })
}

/// Is `line` a native connection record?
pub fn is_record(line: &[u8]) -> bool {
    head(line).is_some()
}

const CONTAINER_NULL: &[u8] = br#""container":null"#;
const CONTAINER_EMPTY: &[u8] = br#""container":{}"#;

/// Appends `line` as a row to `body`, newline-terminated, `"container":null` made
/// `{}`. The pattern cannot occur inside a JSON string (its quotes would be escaped),
/// so a byte search is exact.
pub fn push_row(body: &mut Vec<u8>, line: &[u8]) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    match find(line, CONTAINER_NULL) {
        Some(at) => {
            body.extend_from_slice(&line[..at]);
            body.extend_from_slice(CONTAINER_EMPTY);
            body.extend_from_slice(&line[at + CONTAINER_NULL.len()..]);
        }
        None => body.extend_from_slice(line),
    }
    body.push(b'\n');
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One insert's body from `lines`, and how many were left out as not records.
pub fn body<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let mut skipped = 0;
    for line in lines {
        if is_record(line) {
            push_row(&mut body, line);
        } else {
            skipped += 1;
        }
    }
    (body, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"schema":1,"ts":"2026-12-07T10:00:00.123456Z","stage":"attempted","container":null,"why":"x \"container\":null","record_id":"00ff","host":"h1"}"#;

    #[test]
    fn a_record_without_a_container_goes_in_with_an_empty_object() {
        let (body, skipped) = body([RECORD.as_bytes()]);
        assert_eq!(skipped, 0);
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("\"host\":\"h1\"}\n"));
        assert!(text.contains(r#""container":{},"#), "{text}");
        assert!(text.contains(r#""why":"x \"container\":null""#), "a string's text is left alone: {text}");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["container"], serde_json::json!({}));
    }

    #[test]
    fn a_records_head_is_its_name_and_time() {
        let h = head(br#"{"ts":"2026-12-07T10:00:00.5Z","stage":"blocked","container":null,"record_id":"ab12"}"#);
        assert_eq!(h, Some(Head { record_id: "ab12", ts: Some("2026-12-07T10:00:00.5Z") }));
        assert_eq!(head(br#"{"event":"start","note":"a \"stage\": here","record_id":"x"}"#), None);
    }

    #[test]
    fn only_native_records_go_in() {
        let with_container = r#"{"stage":"reached","container":{"id":"c"},"record_id":"1"}"#;
        let lines = [
            RECORD,
            with_container,
            r#"{"schema":1,"ts":"t","event":"daemon_start","host":"h1"}"#,
            r#"{"@timestamp":"t","event":{"id":"ab","action":"reached"}}"#,
            r#"{"activity_id":1,"unmapped":{"stage":"reached"},"metadata":{"uid":"ab"}}"#,
            r#"{"stage":"reached"}"#,
            "not json",
            "",
        ];
        let (body, skipped) = body(lines.iter().map(|l| l.as_bytes()));
        assert_eq!(skipped, 6);
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with(&format!("{with_container}\n")));
    }
}
