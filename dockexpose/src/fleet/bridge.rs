//! `dockexpose fleet bridge --from nats://... --to clickhouse+http://...`: a durable
//! pull consumer on the shippers' JetStream subject that turns many small publishes
//! into few large inserts (ClickHouse's limit is the number of inserts, not rows).
//!
//! At least once, never lost: a batch is acknowledged only after ClickHouse answered
//! 2xx; a bridge that dies before that leaves its batch unacknowledged, and the
//! server hands it out again after --ack-wait. A batch inserted twice that way counts
//! once: the table is keyed by (host, record_id). Acks are plain (+ACK, then a flush),
//! not double acks: an ack lost on the way costs one duplicate insert, which the key
//! absorbs, while waiting for 10 000 confirmations per batch would not be free.
//! Several bridges with one --durable pull from the same consumer and share the work.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, PullConsumer},
    stream::{self, RetentionPolicy, StorageType},
    AckKind, Message,
};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{
    backoff::Backoff,
    clickhouse::{ClickHouse, StoreError},
    nats::{self, DUPLICATE_WINDOW},
    rows,
    target::{self, Credentials, NatsTarget, StoreTarget},
};
use crate::{cli::BridgeArgs, say};

/// Test hook (tests/fleet_bridge.rs): exit right after ClickHouse took a batch,
/// before acknowledging it, as a bridge killed in that window would.
const FAULT_EXIT_BEFORE_ACK: &str = "DOCKEXPOSE_FAULT_BRIDGE_EXIT_BEFORE_ACK";

/// Unacknowledged records the consumer hands out at most, over all bridges.
const MAX_ACK_PENDING: i64 = 1_000_000;
/// The longest pause after a failed insert or pull.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the bridge says what it did.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Why the bridge stopped, other than a signal.
#[derive(Debug)]
pub enum BridgeError {
    /// Bad arguments (exit 1).
    Usage(String),
    /// NATS or ClickHouse refused (exit 2): the records stay in the stream.
    Refused(String),
}

impl BridgeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BridgeError::Usage(_) => 1,
            BridgeError::Refused(_) => 2,
        }
    }
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Usage(s) | BridgeError::Refused(s) => f.write_str(s),
        }
    }
}

/// SIGINT and SIGTERM.
struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    fn new() -> Result<Self, BridgeError> {
        let listen = |kind| signal(kind).map_err(|e| BridgeError::Usage(format!("listening for signals: {e}")));
        Ok(Self { interrupt: listen(SignalKind::interrupt())?, terminate: listen(SignalKind::terminate())? })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// What the bridge did, for its report lines.
#[derive(Default)]
struct Counts {
    inserted: u64,
    batches: u64,
    skipped: u64,
    failures: u64,
}

pub async fn run(args: BridgeArgs) -> Result<(), BridgeError> {
    let from = match target::parse(&args.from).map_err(BridgeError::Usage)? {
        StoreTarget::Nats(t) => t,
        StoreTarget::ClickHouse(_) => {
            return Err(BridgeError::Usage(format!("--from {}: give nats://HOST:PORT/SUBJECT", args.from)))
        }
    };
    let to = match target::parse(&args.to).map_err(BridgeError::Usage)? {
        StoreTarget::ClickHouse(t) => t,
        StoreTarget::Nats(_) => {
            return Err(BridgeError::Usage(format!("--to {}: give clickhouse+http(s)://HOST:PORT/DB.TABLE", args.to)))
        }
    };
    if !to.https && !to.is_loopback() {
        say!("warning: {to}: plain HTTP to another host sends records and credentials in clear; use clickhouse+https");
    }
    let mut stop = Stop::new()?;
    // An insert must end well within the time the batch stays ours.
    let insert_timeout = (args.ack_wait / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut store = ClickHouse::new(&to, Credentials::from_env().as_ref(), args.ca_file.as_deref(), insert_timeout)
        .map_err(BridgeError::Usage)?;
    let nats = nats::connect(&from, nats::credentials_from_env().as_ref()).await.map_err(BridgeError::Refused)?;
    let js = nats.jetstream().clone();

    let mut backoff = Backoff::new(MAX_BACKOFF);
    let consumer = loop {
        let attempt = tokio::select! {
            c = consumer(&js, &from, &args) => c,
            _ = stop.wait() => return Ok(()),
        };
        match attempt {
            Ok(c) => break c,
            Err(StoreError::Refused(why)) => return Err(BridgeError::Refused(why)),
            Err(StoreError::Retry(why)) => {
                let wait = backoff.next_delay();
                say!("dockexpose fleet bridge: {why}; trying again in {} s", wait.as_secs_f32().round());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => return Ok(()),
                }
            }
        }
    };
    say!(
        "dockexpose fleet bridge: {from} (stream {}, durable consumer {}) -> {to}; inserts of up to {} records, or what came within {}",
        consumer.cached_info().stream_name,
        args.durable,
        args.batch,
        humantime::format_duration(args.max_wait)
    );

    let fault_exit_before_ack = std::env::var_os(FAULT_EXIT_BEFORE_ACK).is_some_and(|v| v == "1");
    let mut counts = Counts::default();
    let mut last_report = Instant::now();
    loop {
        if last_report.elapsed() >= REPORT_EVERY {
            report(&counts);
            last_report = Instant::now();
        }
        let pulled = tokio::select! {
            p = pull(&consumer, args.batch as usize, args.max_wait) => p,
            _ = stop.wait() => break,
        };
        let messages = match pulled {
            Ok(m) => m,
            Err(why) => {
                let wait = backoff.next_delay();
                say!(
                    "dockexpose fleet bridge: pulling from {from} failed: {why}; trying again in {} s",
                    wait.as_secs_f32().round()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.wait() => break,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        let (body, skipped) = rows::body(messages.iter().map(|m| m.payload.as_ref()));
        counts.skipped += skipped as u64;
        let rows = messages.len() - skipped;
        let inserted = if rows == 0 {
            Ok(())
        } else {
            tokio::select! {
                r = store.insert(Bytes::from(body)) => r,
                // Abandoned: handed back now (a half-done insert that landed counts once).
                _ = stop.wait() => {
                    settle(&js, &messages, AckKind::Nak(None)).await;
                    break;
                }
            }
        };
        match inserted {
            Ok(()) => {
                if fault_exit_before_ack {
                    say!("dockexpose fleet bridge: {FAULT_EXIT_BEFORE_ACK}: exiting before the ack");
                    std::process::exit(3);
                }
                settle(&js, &messages, AckKind::Ack).await;
                counts.inserted += rows as u64;
                counts.batches += 1;
                backoff.reset();
            }
            Err(StoreError::Refused(why)) => {
                report(&counts);
                return Err(BridgeError::Refused(format!(
                    "{why}; the {} records stay in the stream, unacknowledged",
                    messages.len()
                )));
            }
            Err(StoreError::Retry(why)) => {
                counts.failures += 1;
                let wait = backoff.next_delay();
                say!(
                    "dockexpose fleet bridge: inserting {rows} records failed: {why}; trying again in {} s",
                    wait.as_secs()
                );
                // Handed back with the same delay, so any bridge may take them then.
                settle(&js, &messages, AckKind::Nak(Some(wait))).await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => break,
                }
            }
        }
    }
    report(&counts);
    Ok(())
}

fn report(c: &Counts) {
    say!(
        "dockexpose fleet bridge: {} records inserted in {} batches, {} messages left out (not records), {} failed inserts",
        c.inserted,
        c.batches,
        c.skipped,
        c.failures
    );
}

/// The stream that takes the subject (created when there is none: work-queue
/// retention, so what is acknowledged leaves the disk), and the durable consumer.
async fn consumer(js: &jetstream::Context, from: &NatsTarget, args: &BridgeArgs) -> Result<PullConsumer, StoreError> {
    let retry = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Retry(format!("{from}: {what}: {e} (is JetStream enabled: nats-server -js?)"))
    };
    let refused = |what: &str, e: &dyn std::fmt::Display| StoreError::Refused(format!("{from}: {what}: {e}"));
    let name = match js.stream_by_subject(from.subject.as_str()).await {
        Ok(name) => name,
        Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
            let config = stream::Config {
                name: args.stream.clone(),
                subjects: vec![from.subject.clone()],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => say!("dockexpose fleet bridge: created stream {} for subject {}", args.stream, from.subject),
                Err(e) if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(_)) => {
                    return Err(refused(&format!("creating stream {}", args.stream), &e))
                }
                Err(e) => return Err(retry(&format!("creating stream {}", args.stream), &e)),
            }
            args.stream.clone()
        }
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamByNameErrorKind::JetStream(_)) => {
            return Err(refused("finding the stream", &e))
        }
        Err(e) => return Err(retry("finding the stream", &e)),
    };
    let stream = js.get_stream(&name).await.map_err(|e| retry(&format!("stream {name}"), &e))?;
    let config = pull::Config {
        durable_name: Some(args.durable.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: args.ack_wait,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: from.subject.clone(),
        ..Default::default()
    };
    stream.get_or_create_consumer(&args.durable, config).await.map_err(|e| {
        let what = format!("consumer {} on stream {name}", args.durable);
        match e.kind() {
            jetstream::stream::ConsumerErrorKind::JetStream(_) | jetstream::stream::ConsumerErrorKind::InvalidName => {
                refused(&what, &e)
            }
            _ => retry(&what, &e),
        }
    })
}

/// Up to `batch` messages: as many as came within `max_wait`.
async fn pull(consumer: &PullConsumer, batch: usize, max_wait: Duration) -> Result<Vec<Message>, String> {
    let mut messages = Vec::new();
    let mut incoming =
        consumer.batch().max_messages(batch).expires(max_wait).messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = incoming.next().await {
        match message {
            Ok(m) => messages.push(m),
            // What came before the error is kept: it is ours until acknowledged.
            Err(e) if !messages.is_empty() => {
                say!("dockexpose fleet bridge: the pull ended early: {e}");
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(messages)
}

/// Acknowledges (or hands back) every message, then flushes, so the server has it
/// before the next pull. A failure is only said: the server redelivers what it did
/// not hear about, and the table's key absorbs the duplicate insert.
async fn settle(js: &jetstream::Context, messages: &[Message], kind: AckKind) {
    let mut failed = 0usize;
    for m in messages {
        if m.ack_with(kind).await.is_err() {
            failed += 1;
        }
    }
    if js.client().flush().await.is_err() {
        failed = messages.len();
    }
    if failed > 0 {
        say!("dockexpose fleet bridge: {failed} of {} acknowledgements not sent; the server will hand those records out again", messages.len());
    }
}
