//! The fleet: every host's records in one store. `target` parses where they go,
//! `schema` is the store's DDL, `clickhouse` talks to ClickHouse over HTTP, `store`
//! is what every store (ClickHouse, NATS) takes from a shipper.

pub mod clickhouse;
pub mod schema;
pub mod ship;
pub mod store;
pub mod target;
