//! What dockexpose says: the JSON-lines audit log (a contract) and human lines.

pub mod alerts;
pub mod audit;
pub mod exposures;
pub mod fanout;
pub mod human;
pub mod record;
pub mod sinks;
