//! The store's answer (JSONEachRow, one row per line) as `Exposure`s. ClickHouse
//! quotes 64-bit integers in JSON (`"connections":"3"`), so counts are taken as a
//! number or a string of one.

use serde::{Deserialize, Deserializer};

/// One host, protocol, port and container, as the store counted it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Exposure {
    pub host: String,
    pub proto: String,
    /// The host port, or the port reached where `host_port` is unknown.
    pub port: u16,
    pub host_port: Option<u16>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    /// The records' `exposure` values (published, direct, ...), sorted.
    pub exposure: Vec<String>,
    /// Unix seconds.
    #[serde(deserialize_with = "count")]
    pub first_seen: u64,
    #[serde(deserialize_with = "count")]
    pub last_seen: u64,
    #[serde(deserialize_with = "count")]
    pub connections: u64,
    /// Distinct source addresses.
    #[serde(deserialize_with = "count")]
    pub sources: u64,
    /// Any record a contradiction; None where no record carried the key.
    #[serde(deserialize_with = "flag")]
    pub contradiction: Option<bool>,
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(u64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Option::<u8>::deserialize(d)?.map(|v| v != 0))
}

/// Parses the answer. Err: the line that did not parse, and why.
pub fn parse(body: &[u8]) -> Result<Vec<Exposure>, String> {
    // Lossy: a name ClickHouse holds as bytes that are not UTF-8 still shows.
    let text = String::from_utf8_lossy(body);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut row: Exposure =
            serde_json::from_str(line).map_err(|e| format!("the store's answer, line {}: {e}", i + 1))?;
        row.exposure.sort();
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_as_clickhouse_18_16_writes_them() {
        let body = br#"{"host":"h\u001B[31m","proto":"tcp","port":8080,"host_port":8080,"container_id":null,"container_name":null,"exposure":["published"],"first_seen":1796637634,"last_seen":1796637640,"connections":"3","sources":"2","contradiction":1}
{"host":"h","proto":"tcp","port":80,"host_port":null,"container_id":"x","container_name":"n\"\\","exposure":["unknown","direct"],"first_seen":1796637635,"last_seen":1796637635,"connections":"1","sources":"1","contradiction":null}
"#;
        let rows = parse(body).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].host, "h\u{1b}[31m");
        assert_eq!((rows[0].connections, rows[0].sources, rows[0].contradiction), (3, 2, Some(true)));
        assert_eq!(rows[0].container_id, None);
        assert_eq!(rows[1].host_port, None);
        assert_eq!(rows[1].port, 80);
        assert_eq!(rows[1].container_name.as_deref(), Some("n\"\\"));
        assert_eq!(rows[1].exposure, ["direct", "unknown"]);
        assert_eq!(rows[1].contradiction, None);
    }

    #[test]
    fn an_empty_answer_is_no_rows_and_garbage_is_an_error() {
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(b"\n").unwrap().is_empty());
        assert!(parse(b"Code: 60, e.displayText()").unwrap_err().contains("line 1"));
    }
}
