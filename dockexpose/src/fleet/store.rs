//! What a shipper hands a store: batches of records as the audit log holds them
//! (native JSON lines), each with its `record_id`. A store takes a batch whole or
//! not at all (as far as the shipper knows): the checkpoint moves only past a batch
//! the store took.

use bytes::Bytes;

pub use super::clickhouse::StoreError;

/// One record to ship: its line (no newline) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipRecord {
    pub record_id: String,
    pub line: Bytes,
}

/// Where batches go: ClickHouse, NATS JetStream.
#[allow(async_fn_in_trait, reason = "used in one task of the shipper's own runtime, never across threads")]
pub trait Store {
    /// One attempt to deliver `batch`. Ok only when the store has all of it.
    /// `StoreError::Retry`: try again later (the shipper backs off);
    /// `StoreError::Refused`: again would fail the same way: shipping stops, says why,
    /// and keeps the data.
    async fn send(&mut self, batch: &[ShipRecord]) -> Result<(), StoreError>;

    /// Where it goes, for status and errors (no credentials).
    fn describe(&self) -> String;
}

impl Store for super::clickhouse::ClickHouse {
    async fn send(&mut self, batch: &[ShipRecord]) -> Result<(), StoreError> {
        // 18.16 refuses a whole batch for one `"container":null`: `rows` shapes each line.
        let mut body = Vec::with_capacity(batch.iter().map(|r| r.line.len() + 4).sum());
        for record in batch {
            super::rows::push_row(&mut body, &record.line);
        }
        self.insert(Bytes::from(body)).await
    }

    fn describe(&self) -> String {
        self.target().to_string()
    }
}
