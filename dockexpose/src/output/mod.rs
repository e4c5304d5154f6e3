//! What dockexpose says: the JSON-lines audit log (a contract), human lines, alerts
//! and their sinks, all fed by one fan-out (`fanout`).

pub mod alerts;
pub mod audit;
pub mod community_id;
pub mod console;
pub mod contradictions;
pub mod exposures;
pub mod fanout;
pub mod formats;
pub mod human;
pub mod record;
pub mod record_id;
pub mod record_json;
pub mod sinks;
