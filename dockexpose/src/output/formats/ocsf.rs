//! ocsf: to be written (issue 21).

use serde_json::Value;

use super::Observer;
use crate::output::{alerts::Alert, record::Record};

pub fn record(_rec: &Record, _observer: &Observer) -> Value {
    todo!("ocsf record")
}

pub fn alert(_alert: &Alert, _observer: &Observer) -> Value {
    todo!("ocsf alert")
}

pub fn daemon_line(native: Value, _observer: &Observer) -> Value {
    native
}
