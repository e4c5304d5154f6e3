//! What dockexpose says: the JSON-lines audit log (a contract) and human lines.

pub mod alerts;
pub mod human;
pub mod record;
pub mod sink;
pub mod sinks;
