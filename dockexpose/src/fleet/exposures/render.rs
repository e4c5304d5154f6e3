//! The rows for people (an aligned table) and for programs (`--json`: one object
//! per line). Host and container names come from the world: in the table every
//! control character, bidi override and backslash is escaped (as everywhere else), so a name cannot move
//! the cursor, recolour the terminal or pose as another row; JSON escapes them
//! itself.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::rows::Exposure;

/// `s` safe for a terminal (the house escaper, cut at 96 characters); `""` for an
/// empty name, which would otherwise leave a hole in its column.
pub fn printable(s: &str) -> String {
    if s.is_empty() {
        return "\"\"".into();
    }
    crate::output::human::escape_untrusted(s)
}

fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The PORT cell: the host port, or `dst:PORT` where the host side is unknown.
fn port_cell(row: &Exposure) -> String {
    match row.host_port {
        Some(p) => p.to_string(),
        None => format!("dst:{}", row.port),
    }
}

fn container_cell(row: &Exposure) -> String {
    match (&row.container_name, &row.container_id) {
        (Some(name), _) => printable(name),
        (None, Some(id)) => printable(&id.chars().take(12).collect::<String>()),
        (None, None) => "-".into(),
    }
}

/// The table, header first; columns padded to their widest cell.
pub fn table(rows: &[Exposure]) -> String {
    let header = [
        "HOST",
        "PROTO",
        "PORT",
        "CONTAINER",
        "EXPOSURE",
        "FIRST SEEN",
        "LAST SEEN",
        "CONNECTIONS",
        "SOURCES",
        "CONTRADICTION",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        cells.push(vec![
            printable(&row.host),
            printable(&row.proto),
            port_cell(row),
            container_cell(row),
            printable(&row.exposure.join(",")),
            time(row.first_seen),
            time(row.last_seen),
            row.connections.to_string(),
            row.sources.to_string(),
            match row.contradiction {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
            .into(),
        ]);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct JsonContainer<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
}

/// One `--json` line: the row with times in RFC 3339 and the container as an
/// object (null where the records named none).
#[derive(Serialize)]
struct JsonRow<'a> {
    host: &'a str,
    proto: &'a str,
    port: u16,
    host_port: Option<u16>,
    container: Option<JsonContainer<'a>>,
    exposure: &'a [String],
    first_seen: String,
    last_seen: String,
    connections: u64,
    sources: u64,
    contradiction: Option<bool>,
}

/// One JSON object per line.
pub fn json_lines(rows: &[Exposure]) -> String {
    let mut out = String::new();
    for row in rows {
        let container = (row.container_id.is_some() || row.container_name.is_some())
            .then_some(JsonContainer { id: row.container_id.as_deref(), name: row.container_name.as_deref() });
        let line = JsonRow {
            host: &row.host,
            proto: &row.proto,
            port: row.port,
            host_port: row.host_port,
            container,
            exposure: &row.exposure,
            first_seen: time(row.first_seen),
            last_seen: time(row.last_seen),
            connections: row.connections,
            sources: row.sources,
            contradiction: row.contradiction,
        };
        // A struct of strings and numbers always serializes.
        out += &serde_json::to_string(&line).unwrap_or_default();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, name: Option<&str>, host_port: Option<u16>) -> Exposure {
        Exposure {
            host: host.into(),
            proto: "tcp".into(),
            port: host_port.unwrap_or(80),
            host_port,
            container_id: name.map(|_| "4f1e0123456789abcdef".into()),
            container_name: name.map(str::to_string),
            exposure: vec![if host_port.is_some() { "published" } else { "direct" }.into()],
            first_seen: 1_796_637_634,
            last_seen: 1_796_637_700,
            connections: 12,
            sources: 3,
            contradiction: host_port.map(|_| true),
        }
    }

    #[test]
    fn an_aligned_table() {
        let text = table(&[row("web-01", Some("web"), Some(8080)), row("db-02", None, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("HOST    PROTO  PORT    CONTAINER  EXPOSURE   FIRST SEEN"), "{text}");
        assert!(lines[1].starts_with("web-01  tcp    8080    web        published  2026-12-07T10:00:34Z"), "{text}");
        assert!(lines[1].ends_with("12           3        yes"), "{text}");
        assert!(lines[2].starts_with("db-02   tcp    dst:80  -          direct"), "{text}");
        assert!(lines[2].ends_with("-"), "{text}");
        let col = lines[0].find("LAST SEEN").unwrap();
        assert_eq!(&lines[1][col..col + 20], "2026-12-07T10:01:40Z");
    }

    #[test]
    fn names_from_the_world_cannot_drive_the_terminal() {
        let text = table(&[row("evil\u{1b}[2J\r\nfake-host", Some("a\u{202e}b\\c\u{7}"), Some(1))]);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "one line per row: {text:?}");
        assert!(text.contains(r"evil\u{1b}[2J\u{d}\u{a}fake-host"), "{text}");
        assert!(text.contains(r"a\u{202e}b\\c\u{7}"), "{text}");
        assert_eq!(printable(""), "\"\"");
        let json = json_lines(&[row("evil\u{1b}[2J\nx", Some("n\"\u{202e}"), Some(1))]);
        assert_eq!(json.lines().count(), 1);
        assert!(!json.trim_end().chars().any(char::is_control), "{json:?}");
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["host"], "evil\u{1b}[2J\nx");
        assert_eq!(v["container"]["name"], "n\"\u{202e}");
    }

    #[test]
    fn json_one_object_per_row() {
        let json = json_lines(&[row("web-01", Some("web"), Some(8080)), row("db-02", None, None)]);
        let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"host":"web-01","proto":"tcp","port":8080,"host_port":8080,
                "container":{"id":"4f1e0123456789abcdef","name":"web"},"exposure":["published"],
                "first_seen":"2026-12-07T10:00:34Z","last_seen":"2026-12-07T10:01:40Z",
                "connections":12,"sources":3,"contradiction":true})
        );
        assert_eq!(lines[1]["container"], serde_json::Value::Null);
        assert_eq!(lines[1]["host_port"], serde_json::Value::Null);
        assert_eq!(lines[1]["port"], 80);
        assert_eq!(lines[1]["contradiction"], serde_json::Value::Null);
    }
}
