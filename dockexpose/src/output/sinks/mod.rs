//! Alert sinks (journald, syslog, webhook). Stand-in until the sinks land: the
//! configuration shape only, no delivery.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::alerts::Alert;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    #[serde(default)]
    pub journald: Option<JournaldConfig>,
    #[serde(default)]
    pub syslog: Vec<SyslogConfig>,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournaldConfig {}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub queued: usize,
    pub capacity: usize,
    pub delivered: u64,
    pub dropped_full: u64,
    pub dropped_failed: u64,
    pub retries: u64,
    pub last_error: Option<String>,
}

pub struct SinkHandle;

impl SinkHandle {
    pub fn offer(&self, _alert: &Arc<Alert>) {}
    pub fn name(&self) -> &str {
        ""
    }
    pub fn stats(&self) -> SinkStats {
        SinkStats::default()
    }
}

#[derive(Debug)]
pub struct SinkError(pub String);

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn start(_config: &SinksConfig) -> Result<Vec<SinkHandle>, SinkError> {
    Ok(Vec::new())
}

impl SinkHandle {
    pub async fn stop(self) {}
}

pub mod journald {
    pub fn stderr_is_journal() -> bool {
        false
    }
}
