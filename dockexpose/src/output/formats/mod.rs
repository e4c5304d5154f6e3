//! The audit log's and the sinks' JSON in the format a security team ingests:
//! `native` (the contract, README "The JSON record"), `ecs` (Elastic Common Schema)
//! or `ocsf` (Open Cybersecurity Schema Framework, Network Activity).
//!
//! Pure: a record, an alert or a daemon line in, one JSON object out.

mod ecs;
mod ocsf;
#[cfg(test)]
pub(crate) mod samples;

use serde_json::{Map, Value};

pub use ecs::ECS_VERSION;
pub use ocsf::OCSF_VERSION;

use super::{alerts::Alert, record::Record};

/// `--json-format`: the shape of every JSON object dockexpose writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonFormat {
    /// dockexpose's own record: the documented contract.
    #[default]
    Native,
    /// Elastic Common Schema.
    Ecs,
    /// OCSF Network Activity (class 4001).
    Ocsf,
}

impl JsonFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            JsonFormat::Native => "native",
            JsonFormat::Ecs => "ecs",
            JsonFormat::Ocsf => "ocsf",
        }
    }
}

/// Who observed: the host written into every ECS and OCSF event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observer {
    /// The host's name (`gethostname`).
    pub hostname: String,
    /// `/etc/machine-id`, when readable.
    pub host_id: Option<String>,
    /// dockexpose's version.
    pub version: &'static str,
}

impl Observer {
    /// This host.
    pub fn this_host() -> Self {
        let host_id =
            std::fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Self { hostname: super::sinks::hostname(), host_id, version: env!("CARGO_PKG_VERSION") }
    }
}

/// A format and the observer its events name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Formatter {
    pub format: JsonFormat,
    pub observer: Observer,
}

impl Formatter {
    pub fn new(format: JsonFormat, observer: Observer) -> Self {
        Self { format, observer }
    }

    /// A connection record (any stage, `verified` included) as one JSON object.
    pub fn record(&self, rec: &Record) -> Value {
        match self.format {
            JsonFormat::Native => serde_json::to_value(rec).expect("a Record always serializes"),
            JsonFormat::Ecs => ecs::record(rec, &self.observer),
            JsonFormat::Ocsf => ocsf::record(rec, &self.observer),
        }
    }

    /// An alert as the webhook's JSON body and the syslog message carry it, `now`
    /// standing for its time when it has no record (a health alert, a rate-limit
    /// summary). Native: `{kind, text, host, record, health}`, in that order.
    pub fn alert_json(&self, alert: &Alert, now: std::time::SystemTime) -> Vec<u8> {
        match self.format {
            JsonFormat::Native => serde_json::to_vec(&NativeAlert {
                kind: alert.kind.as_str(),
                text: &alert.text,
                host: &self.observer.hostname,
                record: alert.record.as_deref(),
                health: alert.health.as_ref(),
            }),
            JsonFormat::Ecs => serde_json::to_vec(&ecs::alert_at(alert, &self.observer, now)),
            JsonFormat::Ocsf => serde_json::to_vec(&ocsf::alert_at(alert, &self.observer, now)),
        }
        .expect("serializing to memory cannot fail")
    }

    /// A line about the daemon itself (`daemon_start`, `daemon_stop`,
    /// `kernel_state_reset`, `exposure_changed`), given in its native form.
    pub fn daemon_line(&self, native: Value) -> Value {
        match self.format {
            JsonFormat::Native => native,
            JsonFormat::Ecs => ecs::daemon_line(native, &self.observer),
            JsonFormat::Ocsf => ocsf::daemon_line(native, &self.observer),
        }
    }
}

/// The record's native JSON as an object, for the formats to take keys from.
fn native_map(rec: &Record) -> Map<String, Value> {
    match serde_json::to_value(rec).expect("a Record always serializes") {
        Value::Object(map) => map,
        _ => unreachable!("a Record serializes as an object"),
    }
}

/// IANA's protocol number of a record's `proto`.
fn iana_number(proto: &str) -> Option<u8> {
    match proto {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

/// The native alert body: a struct, so that its keys keep the contract's order.
#[derive(serde::Serialize)]
struct NativeAlert<'a> {
    kind: &'a str,
    text: &'a str,
    host: &'a str,
    record: Option<&'a Record>,
    /// Only on `health` alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'a crate::output::alerts::HealthInfo>,
}
