//! Alert sinks: journald, syslog and webhooks, each fed through its own bounded queue.
//!
//! The daemon hands every alert to [`SinkHandle::offer`], which never waits: a full
//! queue drops the alert and counts it. The queue has two lanes (`queue`): the alerts a
//! flood must not push out (a container's first, health) have one of their own. One tokio task per sink takes alerts from its
//! queue and delivers them with the retry policy of [`RetryPolicy`] (each attempt under a
//! 2 s timeout; retries with a doubling backoff on connect errors, 5xx and 429, which
//! may say how long to wait with Retry-After). What a sink did is in [`SinkStats`].
//!
//! Adding a sink is a file here that implements [`Deliver`], a config struct, and one
//! line in [`start`].

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use self::queue::Queue;
use super::{alerts::Alert, formats::Formatter};

mod config;
pub mod journald;
mod queue;
pub mod syslog;
pub mod webhook;

use config::{check_queue, KindSet};
pub use config::{JournaldConfig, SinkError, SinksConfig, SyslogConfig, WebhookConfig, WebhookFormat};
pub use journald::stderr_is_journal;

/// Queue length of a sink when the config does not say.
pub const DEFAULT_QUEUE: usize = 1024;
/// Longest queue a config may ask for (alerts are small, but a queue is memory).
pub const MAX_QUEUE: usize = 1_000_000;
/// How long [`SinkHandle::stop`] (or dropping a handle) lets a worker deliver what is
/// queued, one attempt each, before it is ended.
pub const DRAIN: Duration = Duration::from_secs(2);

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
    queue: Arc<Queue>,
    capacity: usize,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl SinkHandle {
    /// Spawns the worker of `sink` with a queue of `capacity` in each lane.
    fn spawn<S: Deliver + 'static>(name: String, kinds: KindSet, capacity: usize, sink: S) -> Self {
        let queue = Queue::new(capacity);
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(sink, queue.clone(), shared.clone(), RetryPolicy::default()));
        Self { name, kinds, queue, capacity, shared, task: Some(task) }
    }

    /// Queues `alert` if the sink takes its kind, in the priority lane when it is a
    /// priority alert. Never waits: when its lane is full the alert is dropped and
    /// counted in `dropped_full`.
    pub fn offer(&self, alert: &Arc<Alert>) {
        if !self.kinds.contains(alert.kind) {
            return;
        }
        if !self.queue.offer(alert.clone()) {
            // Full, or the sink stopped: the alert is lost.
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
            queued: self.queue.len(),
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
        self.queue.close();
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
        self.queue.close();
        // Ends the worker after DRAIN if it is still busy (no waiting here).
        if let (Some(task), Ok(rt)) = (self.task.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                tokio::time::sleep(DRAIN).await;
                task.abort();
            });
        }
    }
}

/// Validates `config` and starts one worker task per sink; the webhook's `json` body
/// and the syslog message take `formatter`'s JSON format.
///
/// # Errors
/// [`SinkError::Config`] names the first bad key (a URL, a header, an address, a
/// kind, a queue length) and says how to fix it; [`SinkError::NoRuntime`] outside tokio.
pub fn start(config: &SinksConfig, formatter: &Formatter) -> Result<Vec<SinkHandle>, SinkError> {
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
        let sink = syslog::Syslog::new(&key, s, formatter)?;
        let (name, queue) = (format!("syslog {}", s.address), s.queue);
        ready.push(Box::new(move || SinkHandle::spawn(name, kinds, queue, sink)));
    }
    for (i, w) in config.webhook.iter().enumerate() {
        let key = format!("sinks.webhook[{i}]");
        check_queue(&format!("{key}.queue"), w.queue)?;
        let kinds = KindSet::parse(&format!("{key}.kinds"), w.kinds.as_deref())?;
        let sink = webhook::Webhook::new(&key, w, formatter)?;
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

/// The worker of one sink: takes alerts from `queue` (priority lane first) until it
/// closes, and delivers each under `policy`, counting in `stats`.
async fn run<S: Deliver>(mut sink: S, queue: Arc<Queue>, stats: Arc<Shared>, policy: RetryPolicy) {
    while let Some(alert) = queue.next().await {
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
                Err(Failure::Retry {
                    after: None,
                    reason: format!("no answer within {} s", policy.timeout.as_secs_f32()),
                })
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
mod tests;
