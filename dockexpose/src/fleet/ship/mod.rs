//! `watch --ship`: the audit log shipped to a store, the log itself being the spool.
//! `spool` follows the log across rotation, `checkpoint` says how far the store has
//! it, `shipper` is the loop on its own thread, `stats` what status and metrics show.

pub mod checkpoint;
pub mod shipper;
pub mod spool;
pub mod stats;

pub use shipper::{ShipSettings, Shipper};
pub use stats::{ShipState, ShipStats, ShipStatus};
