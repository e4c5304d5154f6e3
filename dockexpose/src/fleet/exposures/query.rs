//! The SQL of `fleet exposures`, built from validated parts only: the table's
//! identifiers come from the parsed store URL (letters, digits, `_`), `--since` is a
//! number of seconds, and `--host` is a string literal escaped here (18.16 has no
//! query parameters).
//!
//! Which records: `stage = 'reached'`, whatever their `exposure` (published,
//! direct, loopback_only, unpublished, unknown): each is a connection from outside
//! that got to a container; trusted sources never make one. `attempted` and
//! `blocked` records did not get through, and `verified` ones are dockexpose's own
//! probes.
//!
//! Counted once: the inner GROUP BY (host, record_id) folds every copy of a record,
//! on one table as on a Distributed one (each shard aggregates, the initiator
//! merges), whatever the engine and wherever the copies landed. FINAL would depend
//! on ReplacingMergeTree and on all copies sharing a shard.

use super::super::target::ClickHouseTarget;

/// What to ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records of the last this many seconds.
    pub since_secs: Option<u64>,
    /// Only this host's records (the record's `host`).
    pub host: Option<String>,
}

/// `s` as a ClickHouse string literal, quotes included. Everything outside printable
/// ASCII, the quote and the backslash goes as `\xHH` (byte by byte, so UTF-8 comes
/// back whole): the SQL stays plain ASCII whatever the input.
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out.push('\'');
    out
}

/// The query: one JSON row per host, protocol, port and container. `port` is the
/// host port, or the port the connection reached (`dst_port`) where the record has
/// none (direct routing, no conntrack entry); `host_port` tells which.
pub fn sql(target: &ClickHouseTarget, filter: &Filter) -> String {
    let mut conditions = vec!["stage = 'reached'".to_string()];
    if let Some(secs) = filter.since_secs {
        conditions.push(format!("ts >= now() - INTERVAL {secs} SECOND"));
    }
    if let Some(host) = &filter.host {
        conditions.push(format!("host = {}", string_literal(host)));
    }
    format!(
        "SELECT
    host,
    proto,
    port,
    host_port,
    container_id,
    container_name,
    groupUniqArray(exp) AS exposure,
    toUnixTimestamp(min(t)) AS first_seen,
    toUnixTimestamp(max(t)) AS last_seen,
    count() AS connections,
    uniqExact(src) AS sources,
    max(contra) AS contradiction
FROM
(
    SELECT
        host,
        record_id,
        any(ts) AS t,
        any(proto) AS proto,
        any(src_ip) AS src,
        any(host_port) AS host_port,
        ifNull(host_port, any(dst_port)) AS port,
        any(`container.id`) AS container_id,
        any(`container.name`) AS container_name,
        any(exposure) AS exp,
        max(contradiction) AS contra
    FROM {}.{}
    WHERE {}
    GROUP BY host, record_id
)
GROUP BY host, proto, port, host_port, container_id, container_name
ORDER BY host, proto, port, container_name, container_id
FORMAT JSONEachRow",
        target.database,
        target.table,
        conditions.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ClickHouseTarget {
        ClickHouseTarget {
            https: false,
            host: "127.0.0.1".into(),
            port: 8123,
            database: "dockexpose".into(),
            table: "records".into(),
        }
    }

    fn where_clause(filter: &Filter) -> String {
        let sql = sql(&target(), filter);
        let start = sql.find("WHERE ").unwrap() + 6;
        let end = sql[start..].find('\n').unwrap() + start;
        sql[start..end].to_string()
    }

    #[test]
    fn every_combination_of_options() {
        assert_eq!(where_clause(&Filter::default()), "stage = 'reached'");
        assert_eq!(
            where_clause(&Filter { since_secs: Some(3600), host: None }),
            "stage = 'reached' AND ts >= now() - INTERVAL 3600 SECOND"
        );
        assert_eq!(
            where_clause(&Filter { since_secs: None, host: Some("web-01".into()) }),
            "stage = 'reached' AND host = 'web-01'"
        );
        assert_eq!(
            where_clause(&Filter { since_secs: Some(60), host: Some("web-01".into()) }),
            "stage = 'reached' AND ts >= now() - INTERVAL 60 SECOND AND host = 'web-01'"
        );
        let sql = sql(&target(), &Filter::default());
        assert!(sql.contains("FROM dockexpose.records\n"));
        assert!(sql.contains("GROUP BY host, record_id\n"), "each record once");
        assert!(sql.ends_with("FORMAT JSONEachRow"));
    }

    #[test]
    fn hostile_host_names_stay_inside_the_literal() {
        assert_eq!(string_literal("a'b"), r"'a\'b'");
        assert_eq!(string_literal(r"a\'b"), r"'a\\\'b'");
        assert_eq!(string_literal(r"x\"), r"'x\\'");
        assert_eq!(string_literal("' OR 1=1 --"), r"'\' OR 1=1 --'");
        assert_eq!(string_literal("nul\0\n\x1b[31m"), r"'nul\x00\x0A\x1B[31m'");
        assert_eq!(string_literal("hôte"), r"'h\xC3\xB4te'");
        // Whatever comes in, the literal ends at its last byte only: every quote
        // inside is escaped, and no backslash escapes the closing one.
        for hostile in ["'", "\\", "\\'", "'\\", "''--", "\\\\'", "a\u{202e}b"] {
            let lit = string_literal(hostile);
            assert!(lit.is_ascii());
            let inner = &lit[1..lit.len() - 1];
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                assert_ne!(c, '\'', "unescaped quote in {lit}");
                if c == '\\' {
                    assert!(chars.next().is_some(), "dangling backslash in {lit}");
                }
            }
        }
    }
}
