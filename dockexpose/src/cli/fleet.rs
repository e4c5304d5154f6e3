//! The fleet's command line: `fleet schema | exposures | bridge`, and `watch --ship`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand, Clone)]
pub enum FleetCommand {
    /// Print the store's DDL: a ReplacingMergeTree keyed by (host, record_id), so a
    /// record delivered twice counts once; with --shards, a local table per shard and
    /// a Distributed table over them sharded by host (run it on every shard).
    Schema {
        /// The ClickHouse cluster (remote_servers) whose shards hold the records.
        #[arg(long, value_name = "CLUSTER")]
        shards: Option<String>,
        /// The table, as DATABASE.TABLE.
        #[arg(long, value_name = "DB.TABLE", default_value = "dockexpose.records")]
        table: String,
    },
    /// What the fleet exposes: one row per host, protocol, port and container that a
    /// connection from outside reached (`reached` records), each record counted once
    /// however often it was delivered. Credentials: DOCKEXPOSE_STORE_USER and
    /// DOCKEXPOSE_STORE_PASSWORD. Exit 0: none; 1: some; 2: error.
    Exposures {
        /// The store: clickhouse+http(s)://HOST:PORT/DATABASE.TABLE (the Distributed
        /// table, or the only one).
        #[arg(long, value_name = "URL")]
        store: String,
        /// Only records of the last DURATION, such as 24h or 7d.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only this host's records (the records' `host`).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// A private CA for clickhouse+https, trusted besides the public roots.
        #[arg(long, value_name = "PATH")]
        ca_file: Option<PathBuf>,
    },
    /// Move records from NATS JetStream into ClickHouse: a durable pull consumer that
    /// inserts batches of --batch records and acknowledges them only once ClickHouse
    /// answered 2xx. Several bridges with one --durable share the work. Credentials
    /// from the environment only: DOCKEXPOSE_NATS_USER/PASSWORD for NATS,
    /// DOCKEXPOSE_STORE_USER/PASSWORD for ClickHouse. Exit code 0: stopped by
    /// SIGTERM/SIGINT; 1: bad arguments; 2: refused by NATS or ClickHouse.
    Bridge(BridgeArgs),
}

#[derive(Debug, Args, Clone)]
pub struct BridgeArgs {
    /// The JetStream subject the shippers publish to: nats://HOST:PORT/SUBJECT.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The ClickHouse table: clickhouse+http(s)://HOST:PORT/DB.TABLE (the Distributed
    /// one when sharded).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Most records per insert (ClickHouse wants few, large inserts).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Insert what came within this long when fewer than --batch records wait.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_wait: std::time::Duration,
    /// The durable consumer's name: bridges with the same name share the records.
    #[arg(long, value_name = "NAME", default_value = "dockexpose-bridge")]
    pub durable: String,
    /// The stream created when no stream takes the subject yet (work-queue retention,
    /// file storage, 2 min duplicate window).
    #[arg(long, value_name = "NAME", default_value = "DOCKEXPOSE")]
    pub stream: String,
    /// How long a batch a bridge took stays its own before the server hands it to
    /// another (set when the consumer is created; longer than an insert takes).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ack_wait: std::time::Duration,
    /// CA certificates (PEM) for clickhouse+https, instead of the built-in roots.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

/// `watch --ship`: the audit log shipped to a fleet store. Credentials never come
/// from the command line: the config file's `[ship]` (mode 0600) or
/// DOCKEXPOSE_STORE_USER / DOCKEXPOSE_STORE_PASSWORD.
#[derive(Debug, Args, Clone, Default)]
pub struct ShipArgs {
    /// Ship every record of the audit log (--json PATH) to this store:
    /// clickhouse+http(s)://HOST:PORT/DB.TABLE, or nats://HOST:PORT/SUBJECT (JetStream,
    /// with `dockexpose fleet bridge` into ClickHouse). The log is the spool: nothing
    /// is lost while the store is away.
    #[arg(long = "ship", value_name = "URL", env = "DOCKEXPOSE_SHIP")]
    pub url: Option<String>,

    /// Send a batch once this many records wait.
    #[arg(
        long = "ship-batch-records",
        value_name = "N",
        default_value_t = 5000,
        env = "DOCKEXPOSE_SHIP_BATCH_RECORDS"
    )]
    pub batch_records: usize,

    /// Send what waits at least this often (seconds).
    #[arg(long = "ship-every", value_name = "SECONDS", default_value_t = 5, env = "DOCKEXPOSE_SHIP_EVERY")]
    pub every: u64,

    /// Trust this CA (PEM) for clickhouse+https:// instead of the built-in roots.
    #[arg(long = "ship-ca-file", value_name = "PATH", env = "DOCKEXPOSE_SHIP_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Health turns degraded when the oldest record not shipped is older than this.
    #[arg(
        long = "ship-lag-degraded",
        value_name = "SECONDS",
        default_value_t = 300,
        env = "DOCKEXPOSE_SHIP_LAG_DEGRADED"
    )]
    pub lag_degraded_seconds: u64,

    /// From the config file's [ship] user and password (never argv).
    #[arg(skip)]
    pub credentials: Option<crate::fleet::target::Credentials>,
}
