//! The store's tables, as DDL (`dockexpose fleet schema`): a ReplacingMergeTree keyed
//! by (host, record_id), so a record delivered twice (a restart re-sends what was
//! not yet acknowledged) counts once under FINAL or GROUP BY; with `--shards`, one
//! such table per shard and a Distributed table over them sharded by
//! cityHash64(host), so all of a host's copies of a record land on one shard (with
//! rand() each shard would only remove its own duplicates).
//!
//! Written for ClickHouse 18.16 (Debian 12's) and later: DateTime, not DateTime64
//! (`ts` keeps whole seconds; the audit log keeps the microseconds); no ON CLUSTER,
//! which needs ZooKeeper: the sharded DDL is run on every shard.

use super::target::valid_identifier;

/// The columns: the record's keys (JSONEachRow matches them by name; nested objects
/// such as `container` arrive as `container.id` with input_format_import_nested_json).
/// No `received DEFAULT now()`: 18.16's JSONEachRow fills an omitted column with its
/// type's zero, not its DEFAULT, and a Distributed insert refuses MATERIALIZED ones.
const COLUMNS: &str = "\
    record_id String,
    host String,
    host_id Nullable(String),
    ts DateTime,
    schema UInt8,
    stage String,
    proto String,
    family String,
    src_ip String,
    src_port UInt16,
    dst_ip String,
    dst_port UInt16,
    host_ip Nullable(String),
    host_port Nullable(UInt16),
    community_id String,
    iface String,
    `container.id` Nullable(String),
    `container.name` Nullable(String),
    `container.image` Nullable(String),
    `container.compose_project` Nullable(String),
    `container.compose_service` Nullable(String),
    `container.swarm_service` Nullable(String),
    exposure String,
    path Nullable(String),
    verdict Nullable(String),
    why Nullable(String),
    spoofed_local Nullable(UInt8),
    spoofed_trusted Nullable(UInt8),
    contradiction Nullable(UInt8),
    ban_bypassed Nullable(String),
    `intent.source` Nullable(String),
    `intent.action` Nullable(String),
    `intent.rule` Nullable(String),
    boot_id Nullable(String),
    cpu Nullable(UInt32),
    kseq Nullable(UInt64)";

/// The settings every insert of records sends (they make JSONEachRow take a record
/// as it is: keys the table lacks skipped, nested objects flattened, RFC 3339 times).
pub const INSERT_SETTINGS: &[(&str, &str)] = &[
    ("input_format_skip_unknown_fields", "1"),
    ("input_format_import_nested_json", "1"),
    ("date_time_input_format", "best_effort"),
];

/// The local table's name behind a Distributed one.
pub fn local_table(table: &str) -> String {
    format!("{table}_local")
}

/// The DDL for `database.table`: one table, or (with `cluster`) a local table and a
/// Distributed table over the cluster's shards, to run on every shard. Err: a name
/// that is not a plain identifier.
pub fn ddl(database: &str, table: &str, cluster: Option<&str>) -> Result<String, String> {
    for (what, name) in [("database", database), ("table", table)].into_iter().chain(cluster.map(|c| ("cluster", c))) {
        if !valid_identifier(name) {
            return Err(format!(
                "{what} {name:?}: names are letters, digits and _ (not starting with a digit); Fix: choose such a name"
            ));
        }
    }
    let engine = "ENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMM(ts)\nORDER BY (host, record_id)";
    let mut out = format!("CREATE DATABASE IF NOT EXISTS {database};\n\n");
    match cluster {
        None => {
            out += &format!("CREATE TABLE IF NOT EXISTS {database}.{table} (\n    {COLUMNS}\n)\n{engine};\n");
        }
        Some(cluster) => {
            let local = local_table(table);
            out += &format!(
                "-- Run on every shard of cluster {cluster} (ON CLUSTER would need ZooKeeper).\n\
                 CREATE TABLE IF NOT EXISTS {database}.{local} (\n    {COLUMNS}\n)\n{engine};\n\n\
                 CREATE TABLE IF NOT EXISTS {database}.{table} AS {database}.{local}\n\
                 ENGINE = Distributed({cluster}, {database}, {local}, cityHash64(host));\n"
            );
        }
    }
    Ok(out)
}

/// `dockexpose fleet schema`: the DDL for `table` (DATABASE.TABLE) on stdout.
pub fn print(table: &str, cluster: Option<&str>) -> Result<(), String> {
    let Some((database, table)) = table.split_once('.') else {
        return Err(format!("--table {table:?}: give it as DATABASE.TABLE, such as dockexpose.records"));
    };
    crate::say_out!("{}", ddl(database, table, cluster)?);
    Ok(())
}

/// The DDL as separate statements (the HTTP interface takes one per request).
pub fn statements(ddl: &str) -> Vec<String> {
    ddl.split(";\n")
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().trim_end_matches(';').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_keyed_by_host_and_record_id() {
        let ddl = ddl("dockexpose", "records", None).unwrap();
        assert!(ddl.contains("CREATE TABLE IF NOT EXISTS dockexpose.records ("));
        assert!(ddl.contains("ReplacingMergeTree()") && ddl.contains("ORDER BY (host, record_id)"));
        assert!(!ddl.contains("Distributed"));
        assert_eq!(statements(&ddl).len(), 2);
    }

    #[test]
    fn sharded_by_the_host_behind_a_distributed_table() {
        let ddl = ddl("dockexpose", "records", Some("fleet")).unwrap();
        assert!(ddl.contains("dockexpose.records_local ("));
        assert!(ddl.contains("Distributed(fleet, dockexpose, records_local, cityHash64(host))"));
        let stmts = statements(&ddl);
        assert_eq!(stmts.len(), 3);
        assert!(stmts.iter().all(|s| !s.contains("--") && !s.ends_with(';')));
    }

    #[test]
    fn names_outside_the_grammar_are_refused() {
        assert!(ddl("d", "t; DROP TABLE x", None).unwrap_err().contains("letters, digits"));
        assert!(ddl("d", "t", Some("c-1")).unwrap_err().contains("cluster"));
    }
}
