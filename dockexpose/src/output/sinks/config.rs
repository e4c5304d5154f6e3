//! The `[sinks]` section of the config file, and its checks: every bad key is named,
//! with the fix.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{journald, DEFAULT_QUEUE, MAX_QUEUE};
use crate::output::alerts::AlertKind;

/// The `[sinks]` section of the config file. Every part is optional; no sink is
/// configured by default (the daemon may add journald when stderr is the journal).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// `[sinks.journald]`: the native journal protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journald: Option<JournaldConfig>,
    /// `[[sinks.syslog]]`: RFC 5424 over a unix socket, UDP or TCP.
    pub syslog: Vec<SyslogConfig>,
    /// `[[sinks.webhook]]`: an HTTP(S) POST per alert.
    pub webhook: Vec<WebhookConfig>,
}

/// `[sinks.journald]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournaldConfig {
    /// The journal's native socket.
    pub socket: PathBuf,
    /// Most alerts waiting for this sink; past that they are dropped and counted.
    pub queue: usize,
    /// Alert kinds sent (names of [`AlertKind::as_str`]); None: every kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

impl Default for JournaldConfig {
    fn default() -> Self {
        Self { socket: PathBuf::from(journald::DEFAULT_SOCKET), queue: DEFAULT_QUEUE, kinds: None }
    }
}

/// `[[sinks.syslog]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogConfig {
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` (octet-counted frames, RFC 6587) or
    /// `unix:///PATH` (a datagram socket such as /dev/log).
    pub address: String,
    /// Syslog facility name: `daemon`, `auth`, `local0` .. `local7`, ...
    pub facility: String,
    /// HOSTNAME of the messages; None: this host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub queue: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self { address: String::new(), facility: "daemon".into(), hostname: None, queue: DEFAULT_QUEUE, kinds: None }
    }
}

/// `[[sinks.webhook]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://...` (certificate verified against Mozilla's roots) or `http://...`.
    pub url: String,
    /// The body: `json` (kind, text, host and the JSON record) or `slack` (`{"text": ...}`).
    pub format: WebhookFormat,
    /// Extra request headers, e.g. `{ "Authorization" = "Bearer ..." }`.
    pub headers: BTreeMap<String, String>,
    /// A PEM file of CA certificates trusted for https besides Mozilla's roots (a
    /// private CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub queue: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            format: WebhookFormat::Json,
            headers: BTreeMap::new(),
            ca_file: None,
            queue: DEFAULT_QUEUE,
            kinds: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// Why the sinks could not start: the message names the config key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid setting {key} = {value:?}: {reason}.\n  Fix: {fix}")]
    Config { key: String, value: String, reason: String, fix: String },
    #[error("alert sinks need a tokio runtime to run in (start was called outside one)")]
    NoRuntime,
}

impl SinkError {
    pub(super) fn config(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        SinkError::Config { key: key.into(), value: value.into(), reason: reason.into(), fix: fix.into() }
    }
}

/// The kinds a sink takes, as a bit set over [`AlertKind::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KindSet(u16);

impl KindSet {
    pub(super) const ALL: KindSet = KindSet((1 << AlertKind::ALL.len()) - 1);

    fn bit(kind: AlertKind) -> u16 {
        1 << AlertKind::ALL.iter().position(|&k| k == kind).expect("in ALL")
    }

    pub(super) fn contains(self, kind: AlertKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub(super) fn parse(key: &str, kinds: Option<&[String]>) -> Result<Self, SinkError> {
        let Some(kinds) = kinds else { return Ok(KindSet::ALL) };
        let names = || AlertKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
        if kinds.is_empty() {
            return Err(SinkError::config(
                key,
                "[]",
                "an empty list sends nothing",
                format!("list some of: {}, or remove the sink", names()),
            ));
        }
        let mut set = 0;
        for name in kinds {
            match AlertKind::ALL.iter().find(|k| k.as_str() == name) {
                Some(&k) => set |= Self::bit(k),
                None => {
                    return Err(SinkError::config(
                        key,
                        name.as_str(),
                        "no such alert kind",
                        format!("use one of: {}", names()),
                    ));
                }
            }
        }
        Ok(KindSet(set))
    }
}

pub(super) fn check_queue(key: &str, queue: usize) -> Result<(), SinkError> {
    if (1..=MAX_QUEUE).contains(&queue) {
        return Ok(());
    }
    Err(SinkError::config(
        key,
        queue.to_string(),
        format!("a queue holds 1 to {MAX_QUEUE} alerts"),
        format!("set it between 1 and {MAX_QUEUE}, or leave it out for {DEFAULT_QUEUE}"),
    ))
}
