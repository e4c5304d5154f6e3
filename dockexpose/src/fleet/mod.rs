//! The fleet: every host's records in one store. `target` parses where they go,
//! `schema` is the store's DDL, `clickhouse` talks to ClickHouse over HTTP, `store`
//! is what every store (ClickHouse, NATS) takes from a shipper, `exposures` asks the
//! store what the fleet exposes; `nats` publishes to JetStream and `bridge` moves
//! JetStream's records into ClickHouse in large batches (`rows` picks and shapes the
//! rows ClickHouse takes, for the store and the bridge alike; `backoff` paces retries).

pub mod backoff;
pub mod bridge;
pub mod clickhouse;
pub mod exposures;
pub mod nats;
pub mod rows;
pub mod schema;
pub mod ship;
pub mod store;
pub mod target;
