//! Alert sinks: journald, syslog and webhooks, each fed through its own bounded queue.
//!
//! The daemon hands every alert to [`SinkHandle::offer`], which never waits: a full
//! queue drops the alert and counts it. One tokio task per sink takes alerts from its
//! queue and delivers them with the retry policy of [`RetryPolicy`] (each attempt under a
//! 2 s timeout; retries with a doubling backoff on connect errors, 5xx and 429, which
//! may say how long to wait with Retry-After). What a sink did is in [`SinkStats`].
//!
//! Adding a sink is a file here that implements [`Deliver`], a config struct, and one
//! line in [`start`].

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use super::alerts::{Alert, AlertKind};

pub mod journald;
pub mod syslog;
pub mod webhook;

pub use journald::stderr_is_journal;

/// Queue length of a sink when the config does not say.
pub const DEFAULT_QUEUE: usize = 1024;
/// Longest queue a config may ask for (alerts are small, but a queue is memory).
pub const MAX_QUEUE: usize = 1_000_000;
/// How long [`SinkHandle::stop`] (or dropping a handle) lets a worker deliver what is
/// queued, one attempt each, before it is ended.
pub const DRAIN: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

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
        Self { url: String::new(), format: WebhookFormat::Json, headers: BTreeMap::new(), ca_file: None, queue: DEFAULT_QUEUE, kinds: None }
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
    fn config(key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        SinkError::Config { key: key.into(), value: value.into(), reason: reason.into(), fix: fix.into() }
    }
}

/// The kinds a sink takes, as a bit set over [`AlertKind::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KindSet(u16);

impl KindSet {
    const ALL: KindSet = KindSet((1 << AlertKind::ALL.len()) - 1);

    fn bit(kind: AlertKind) -> u16 {
        1 << AlertKind::ALL.iter().position(|&k| k == kind).expect("in ALL")
    }

    fn contains(self, kind: AlertKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    fn parse(key: &str, kinds: Option<&[String]>) -> Result<Self, SinkError> {
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
                    return Err(SinkError::config(key, name.as_str(), "no such alert kind", format!("use one of: {}", names())));
                }
            }
        }
        Ok(KindSet(set))
    }
}

fn check_queue(key: &str, queue: usize) -> Result<(), SinkError> {
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

/// Syslog-style severity of an alert (also journald's PRIORITY): warning (4) for an
/// exposure and for alerts held back in a flood, notice (5) for blocked attempts and
/// the count lines that close a window.
pub fn severity(kind: AlertKind) -> u8 {
    match kind {
        AlertKind::Reached | AlertKind::LoopbackOnly | AlertKind::Unpublished | AlertKind::Verified => 4,
        AlertKind::Suppressed => 4,
        AlertKind::Blocked | AlertKind::Repeated => 5,
    }
}

/// This host's name (for syslog's HOSTNAME and the webhook body); "-" when unknown.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".into();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

// ---------------------------------------------------------------------------------
// Handles and statistics
// ---------------------------------------------------------------------------------

/// What a sink did so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Alerts waiting in the queue now.
    pub queued: usize,
    /// Most alerts the queue holds.
    pub capacity: usize,
    pub delivered: u64,
    /// Dropped because the queue was full.
    pub dropped_full: u64,
    /// Dropped after the last attempt failed, or at once when retrying cannot help.
    pub dropped_failed: u64,
    /// Attempts repeated after a failure.
    pub retries: u64,
    /// Attempts that hit the 2 s timeout (each also counts as a retry or a drop).
    pub timeouts: u64,
    /// The last failure, e.g. "connect 127.0.0.1:5514: Connection refused".
    pub last_error: Option<String>,
}

/// Counters shared by a handle (the daemon's loop reads them) and its worker.
#[derive(Default)]
pub struct Shared {
    delivered: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Set by stop: deliver what is queued with one attempt each, no waiting.
    closing: AtomicBool,
}

impl Shared {
    fn set_error(&self, reason: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
    }
}

/// One running sink. Dropping it (or [`SinkHandle::stop`]) ends its worker after at
/// most [`DRAIN`].
pub struct SinkHandle {
    name: String,
    kinds: KindSet,
    tx: Option<mpsc::Sender<Arc<Alert>>>,
    capacity: usize,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl SinkHandle {
    /// Spawns the worker of `sink` with a queue of `capacity`.
    fn spawn<S: Deliver + 'static>(name: String, kinds: KindSet, capacity: usize, sink: S) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(sink, rx, shared.clone(), RetryPolicy::default()));
        Self { name, kinds, tx: Some(tx), capacity, shared, task: Some(task) }
    }

    /// Queues `alert` if the sink takes its kind. Never waits: when the queue is full
    /// the alert is dropped and counted in `dropped_full`.
    pub fn offer(&self, alert: &Arc<Alert>) {
        if !self.kinds.contains(alert.kind) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        if tx.try_send(alert.clone()).is_err() {
            // Full, or the worker ended (it only ends when stopped): the alert is lost.
            self.shared.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// "journald /run/systemd/journal/socket", "syslog udp://127.0.0.1:514",
    /// "webhook https://hooks.example.com" (a webhook's path is left out: it often
    /// holds a secret).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> SinkStats {
        let s = &self.shared;
        SinkStats {
            queued: self.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity()),
            capacity: self.capacity,
            delivered: s.delivered.load(Ordering::Relaxed),
            dropped_full: s.dropped_full.load(Ordering::Relaxed),
            dropped_failed: s.dropped_failed.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            timeouts: s.timeouts.load(Ordering::Relaxed),
            last_error: s.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Closes the queue and lets the worker deliver what it holds (one attempt each,
    /// no backoff) for at most [`DRAIN`]; then ends it. What was left is counted in
    /// `dropped_failed`.
    pub async fn stop(mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle").field("name", &self.name).field("stats", &self.stats()).finish()
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        // Ends the worker after DRAIN if it is still busy (no waiting here).
        if let (Some(task), Ok(rt)) = (self.task.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                tokio::time::sleep(DRAIN).await;
                task.abort();
            });
        }
    }
}

/// Validates `config` and starts one worker task per sink.
///
/// # Errors
/// [`SinkError::Config`] names the first bad key (a URL, a header, an address, a
/// kind, a queue length) and says how to fix it; [`SinkError::NoRuntime`] outside tokio.
pub fn start(config: &SinksConfig) -> Result<Vec<SinkHandle>, SinkError> {
    // Everything is checked before any worker starts.
    let mut ready: Vec<Box<dyn FnOnce() -> SinkHandle>> = Vec::new();
    if let Some(j) = &config.journald {
        check_queue("sinks.journald.queue", j.queue)?;
        let kinds = KindSet::parse("sinks.journald.kinds", j.kinds.as_deref())?;
        let sink = journald::Journald::new(j)?;
        let (name, queue) = (format!("journald {}", j.socket.display()), j.queue);
        ready.push(Box::new(move || SinkHandle::spawn(name, kinds, queue, sink)));
    }
    for (i, s) in config.syslog.iter().enumerate() {
        let key = format!("sinks.syslog[{i}]");
        check_queue(&format!("{key}.queue"), s.queue)?;
        let kinds = KindSet::parse(&format!("{key}.kinds"), s.kinds.as_deref())?;
        let sink = syslog::Syslog::new(&key, s)?;
        let (name, queue) = (format!("syslog {}", s.address), s.queue);
        ready.push(Box::new(move || SinkHandle::spawn(name, kinds, queue, sink)));
    }
    for (i, w) in config.webhook.iter().enumerate() {
        let key = format!("sinks.webhook[{i}]");
        check_queue(&format!("{key}.queue"), w.queue)?;
        let kinds = KindSet::parse(&format!("{key}.kinds"), w.kinds.as_deref())?;
        let sink = webhook::Webhook::new(&key, w)?;
        let (name, queue) = (format!("webhook {}", sink.origin()), w.queue);
        ready.push(Box::new(move || SinkHandle::spawn(name, kinds, queue, sink)));
    }
    if !ready.is_empty() && tokio::runtime::Handle::try_current().is_err() {
        return Err(SinkError::NoRuntime);
    }
    Ok(ready.into_iter().map(|spawn| spawn()).collect())
}

// ---------------------------------------------------------------------------------
// Delivery and the retry policy
// ---------------------------------------------------------------------------------

/// Why an attempt failed, and whether another may succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (connect error, 5xx, 429), after `after` if the other
    /// side said so (Retry-After), else after the backoff.
    Retry { after: Option<Duration>, reason: String },
    /// Another attempt would fail the same way (a 4xx, a bad certificate, a message
    /// too large): the alert is dropped.
    GiveUp(String),
}

/// One way out for alerts. Implementations keep their connection between alerts and
/// drop it in [`Deliver::reset`].
pub trait Deliver: Send {
    /// One attempt to deliver `alert`. The worker bounds it with the attempt timeout.
    fn deliver(&mut self, alert: &Alert) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Forgets any connection after a failure or a timeout (a half-written frame must
    /// not be followed by the next one).
    fn reset(&mut self) {}
}

/// Attempts, backoff and timeouts: one place for every sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per alert.
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Longest wait a Retry-After may ask for (more is cut to this).
    pub max_retry_after: Duration,
    /// Bound of one attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `failed` (1-based): the doubling backoff,
    /// or what Retry-After asked for (at most `max_retry_after`) when that is longer.
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = failed.saturating_sub(1).min(16);
        let backoff = self.backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        match retry_after {
            Some(after) => backoff.max(after.min(self.max_retry_after)),
            None => backoff,
        }
    }
}

/// The worker of one sink: takes alerts from `rx` until it closes, and delivers each
/// under `policy`, counting in `stats`.
pub async fn run<S: Deliver>(mut sink: S, mut rx: mpsc::Receiver<Arc<Alert>>, stats: Arc<Shared>, policy: RetryPolicy) {
    while let Some(alert) = rx.recv().await {
        deliver_one(&mut sink, &alert, &stats, &policy).await;
    }
}

async fn deliver_one<S: Deliver>(sink: &mut S, alert: &Alert, stats: &Shared, policy: &RetryPolicy) {
    let mut failed = 0;
    loop {
        let outcome = match tokio::time::timeout(policy.timeout, sink.deliver(alert)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Failure::Retry { after: None, reason: format!("no answer within {} s", policy.timeout.as_secs_f32()) })
            }
        };
        let (after, reason) = match outcome {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(Failure::GiveUp(reason)) => {
                sink.reset();
                stats.set_error(&reason);
                stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(Failure::Retry { after, reason }) => (after, reason),
        };
        sink.reset();
        stats.set_error(&reason);
        failed += 1;
        if failed >= policy.attempts || stats.closing.load(Ordering::Relaxed) {
            stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(policy.delay(failed, after)).await;
    }
}

/// Control characters of an untrusted string (a container name, an image) as
/// `\u{..}`: they must not start a new line in a log.
pub(crate) fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A reached record as the daemon builds it: web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp
/// from 198.18.3.2.
#[cfg(test)]
pub(crate) fn test_record() -> crate::output::record::Record {
    crate::output::alerts::tests::rec("198.18.3.2", "172.17.0.2", 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_250_ms_to_8_s() {
        let p = RetryPolicy::default();
        let waits: Vec<u128> = (1..=8).map(|n| p.delay(n, None).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(p.delay(u32::MAX, None), Duration::from_secs(8), "no overflow");
    }

    #[test]
    fn retry_after_is_honoured_up_to_60_s() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, Some(Duration::from_secs(1))), Duration::from_secs(1));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
        // Never shorter than the backoff: Retry-After: 0 does not mean hammering.
        assert_eq!(p.delay(3, Some(Duration::ZERO)), Duration::from_secs(1));
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: SinksConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, SinksConfig::default());
        let c: SinksConfig = serde_json::from_str(r#"{"journald": {}, "syslog": [{"address": "udp://127.0.0.1:514"}]}"#).unwrap();
        assert_eq!(c.journald, Some(JournaldConfig::default()));
        assert_eq!(c.syslog[0].queue, DEFAULT_QUEUE);
        assert_eq!(c.syslog[0].facility, "daemon");
        let err = serde_json::from_str::<SinksConfig>(r#"{"webhook": [{"url": "http://x", "header": {}}]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `header`"), "{err}");
        let err = serde_json::from_str::<SinksConfig>(r#"{"webhook": [{"url": "http://x", "format": "teams"}]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `teams`"), "{err}");
    }

    fn start_err(json: &str) -> String {
        let c: SinksConfig = serde_json::from_str(json).unwrap();
        match start(&c) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{json} started"),
        }
    }

    #[test]
    fn bad_settings_name_the_key_and_the_fix() {
        let e = start_err(r#"{"webhook": [{"url": "http://a.example/ok"}, {"url": "ftp://x/"}]}"#);
        assert!(e.starts_with("invalid setting sinks.webhook[1].url = \"ftp://x/\""), "{e}");
        assert!(e.contains("Fix: "), "{e}");
        let e = start_err(r#"{"webhook": [{"url": "https://"}]}"#);
        assert!(e.contains("sinks.webhook[0].url"), "{e}");
        let e = start_err(r#"{"webhook": [{"url": "http://x/", "headers": {"Bad Name": "v"}}]}"#);
        assert!(e.contains("sinks.webhook[0].headers") && e.contains("Bad Name"), "{e}");
        let e = start_err(r#"{"webhook": [{"url": "http://x/", "headers": {"X-A": "line\nbreak"}}]}"#);
        assert!(e.contains("sinks.webhook[0].headers.X-A"), "{e}");
        let e = start_err(r#"{"syslog": [{"address": "127.0.0.1:514"}]}"#);
        assert!(e.contains("sinks.syslog[0].address") && e.contains("udp://"), "{e}");
        let e = start_err(r#"{"syslog": [{"address": "udp://127.0.0.1"}]}"#);
        assert!(e.contains("sinks.syslog[0].address") && e.contains("port"), "{e}");
        let e = start_err(r#"{"syslog": [{"address": "udp://127.0.0.1:514", "facility": "kernel"}]}"#);
        assert!(e.contains("sinks.syslog[0].facility") && e.contains("local0"), "{e}");
        let e = start_err(r#"{"syslog": [{"address": "unix://relative/log"}]}"#);
        assert!(e.contains("sinks.syslog[0].address"), "{e}");
        let e = start_err(r#"{"journald": {"kinds": ["reached", "exposed"]}}"#);
        assert!(e.contains("sinks.journald.kinds = \"exposed\"") && e.contains("loopback_only"), "{e}");
        let e = start_err(r#"{"journald": {"queue": 0}}"#);
        assert!(e.contains("sinks.journald.queue = \"0\""), "{e}");
        let e = start_err(r#"{"journald": {"socket": "journal.sock"}}"#);
        assert!(e.contains("sinks.journald.socket"), "{e}");
    }

    #[test]
    fn kind_filters() {
        let only = KindSet::parse("k", Some(&["blocked".to_string(), "verified".to_string()])).unwrap();
        assert!(only.contains(AlertKind::Blocked) && only.contains(AlertKind::Verified));
        assert!(!only.contains(AlertKind::Reached) && !only.contains(AlertKind::Repeated));
        assert!(AlertKind::ALL.iter().all(|&k| KindSet::parse("k", None).unwrap().contains(k)));
        assert!(KindSet::parse("k", Some(&[])).is_err());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("web"), "web");
        assert_eq!(escape_controls("a\nb\u{1b}"), "a\\u{a}b\\u{1b}");
    }

    /// A sink that fails as told, to see the worker count.
    struct Scripted(Vec<Result<(), Failure>>, u32);

    impl Deliver for Scripted {
        async fn deliver(&mut self, _: &Alert) -> Result<(), Failure> {
            if self.0.is_empty() {
                return Ok(());
            }
            self.0.remove(0)
        }
        fn reset(&mut self) {
            self.1 += 1;
        }
    }

    fn alert() -> Arc<Alert> {
        Arc::new(Alert { kind: AlertKind::Reached, text: "EXPOSED x".into(), record: None })
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_retries_gives_up_and_counts() {
        let retry = || Err(Failure::Retry { after: None, reason: "refused".into() });
        let script = vec![retry(), retry(), Ok(()), retry(), retry(), retry(), retry(), retry(), Err(Failure::GiveUp("404".into()))];
        let (tx, rx) = mpsc::channel(8);
        let stats = Arc::new(Shared::default());
        for _ in 0..3 {
            tx.send(alert()).await.unwrap();
        }
        drop(tx);
        let t0 = tokio::time::Instant::now();
        run(Scripted(script, 0), rx, stats.clone(), RetryPolicy::default()).await;
        // Alert 1: two retries (250 + 500 ms) then delivered; alert 2: five attempts,
        // four waits (250 + 500 + 1000 + 2000 ms), dropped; alert 3: 404, dropped at once.
        assert_eq!(t0.elapsed(), Duration::from_millis(750 + 3750));
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2 + 4);
        assert_eq!(stats.dropped_failed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.last_error.lock().unwrap().as_deref(), Some("404"));
    }

    /// A sink that never answers.
    struct Stalled;

    impl Deliver for Stalled {
        async fn deliver(&mut self, _: &Alert) -> Result<(), Failure> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_times_out_after_2_s() {
        let (tx, rx) = mpsc::channel(8);
        let stats = Arc::new(Shared::default());
        tx.send(alert()).await.unwrap();
        drop(tx);
        let t0 = tokio::time::Instant::now();
        run(Stalled, rx, stats.clone(), RetryPolicy::default()).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(5 * 2000 + 3750));
        assert_eq!(stats.timeouts.load(Ordering::Relaxed), 5);
        assert_eq!(stats.dropped_failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_delivers_what_is_queued_with_one_attempt_each() {
        let h = SinkHandle::spawn("ok".into(), KindSet::ALL, 8, Scripted(vec![], 0));
        for _ in 0..5 {
            h.offer(&alert());
        }
        let shared = h.shared.clone();
        h.stop().await;
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 5);
        // Failing while stopping: no backoff, one attempt, then dropped.
        let retry = || Err(Failure::Retry { after: None, reason: "refused".into() });
        let h = SinkHandle::spawn("failing".into(), KindSet::ALL, 8, Scripted(vec![retry(), retry(), retry()], 0));
        for _ in 0..3 {
            h.offer(&alert());
        }
        let shared = h.shared.clone();
        let t0 = tokio::time::Instant::now();
        h.stop().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!((shared.dropped_failed.load(Ordering::Relaxed), shared.retries.load(Ordering::Relaxed)), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_handle_ends_its_worker_within_the_drain() {
        let h = SinkHandle::spawn("stalled".into(), KindSet::ALL, 4, Stalled);
        // Three attempts of 2 s each to drain, but the drain is cut at 2 s.
        for _ in 0..3 {
            h.offer(&alert());
        }
        tokio::task::yield_now().await;
        let shared = h.shared.clone();
        drop(h);
        tokio::time::sleep(DRAIN + Duration::from_millis(10)).await;
        assert_eq!(Arc::strong_count(&shared), 1, "the worker still runs");
    }

    /// A sink that keeps the text of what it delivered.
    struct Keep(Arc<Mutex<Vec<String>>>);

    impl Deliver for Keep {
        async fn deliver(&mut self, alert: &Alert) -> Result<(), Failure> {
            self.0.lock().unwrap().push(alert.text.clone());
            Ok(())
        }
    }

    /// A port scan of web (130 000 new exposures in one window) with db's first
    /// connection in the middle, offered to a sink whose queue holds 4 and whose worker
    /// has not run yet: the first alert of each container is delivered.
    #[tokio::test(start_paused = true)]
    async fn a_flood_never_pushes_the_first_alert_of_a_container_out_of_a_small_queue() {
        use crate::output::alerts::{tests::rec, Alerter};
        let kept = Arc::new(Mutex::new(Vec::new()));
        let h = SinkHandle::spawn("small".into(), KindSet::ALL, 4, Keep(kept.clone()));
        let window = Duration::from_secs(60);
        let mut alerter = Alerter::new(window);
        let t0 = std::time::Instant::now();
        let mut offered = 0u64;
        let mut offer = |a: Option<Alert>| {
            if let Some(a) = a {
                h.offer(&Arc::new(a));
                offered += 1;
            }
        };
        for i in 0..130_000u32 {
            let mut scan = rec("198.18.3.2", "172.17.0.2", (i % 65_000) as u16 + 1);
            (scan.host_ip, scan.host_port, scan.exposure) = (None, None, "unpublished");
            scan.proto = if i < 65_000 { "tcp" } else { "udp" };
            let at = t0 + Duration::from_micros(u64::from(i) * 300);
            offer(alerter.observe(&Arc::new(scan), at));
            if i == 65_000 {
                offer(alerter.observe(&Arc::new(rec("203.0.113.7", "172.17.0.3", 5432)), at));
            }
        }
        for a in alerter.flush(t0 + window + Duration::from_secs(1)) {
            offer(Some(a));
        }
        let stats = h.stats();
        let shared = h.shared.clone();
        h.stop().await;
        let kept = kept.lock().unwrap();
        let delivered = shared.delivered.load(Ordering::Relaxed);
        eprintln!("{offered} alerts offered, {delivered} delivered, {} dropped (queue full)", stats.dropped_full);
        assert_eq!(delivered + stats.dropped_full, offered, "every alert is delivered or counted");
        assert!(kept.iter().any(|t| t.starts_with("EXPOSED UNPUBLISHED PORT web (nginx:1.27) port 1/tcp")), "web's first: {kept:?}");
        assert!(kept.iter().any(|t| t.starts_with("EXPOSED UNPUBLISHED PORT db (postgres)")), "db's first: {kept:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn offer_drops_when_full_and_stop_is_bounded() {
        let h = SinkHandle::spawn("stalled".into(), KindSet::ALL, 4, Stalled);
        for _ in 0..10 {
            h.offer(&alert());
        }
        let s = h.stats();
        // The worker has not run yet (nothing awaited): the queue holds 4.
        assert_eq!((s.queued, s.capacity, s.dropped_full), (4, 4, 6));
        let filtered = SinkHandle::spawn("blocked only".into(), KindSet::parse("k", Some(&["blocked".into()])).unwrap(), 4, Stalled);
        filtered.offer(&alert());
        assert_eq!(filtered.stats().queued, 0, "a kind the sink does not take is not queued");
        let t0 = tokio::time::Instant::now();
        h.stop().await;
        assert!(t0.elapsed() <= DRAIN + Duration::from_millis(1), "{:?}", t0.elapsed());
    }
}
