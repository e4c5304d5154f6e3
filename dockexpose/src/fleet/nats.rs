//! NATS JetStream as the store in front (`--ship nats://HOST:PORT/SUBJECT`): every
//! record is one message with `Nats-Msg-Id` = its `record_id`, so a batch sent again
//! (the shipper retries it whole) is dropped by the stream inside its duplicate
//! window; outside it, the table's (host, record_id) key still counts it once.
//! `fleet bridge` moves the messages on to ClickHouse.
//!
//! Client: async-nats (rustls, JetStream only), checked against Debian 12's
//! nats-server 2.9 by tests/fleet_bridge.rs.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        message::PublishMessage,
    },
    ConnectErrorKind, ConnectOptions, Event, ServerError,
};

use super::{
    store::{ShipRecord, Store, StoreError},
    target::{Credentials, NatsTarget},
};

/// The stream `fleet bridge` creates when none takes the subject.
pub const DEFAULT_STREAM: &str = "DOCKEXPOSE";
/// How long the stream remembers a `Nats-Msg-Id` (a shipper's retry comes sooner).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The environment's NATS credentials (never argv): both the shipper and the bridge.
pub const ENV_USER: &str = "DOCKEXPOSE_NATS_USER";
pub const ENV_PASSWORD: &str = "DOCKEXPOSE_NATS_PASSWORD";

/// DOCKEXPOSE_NATS_USER and DOCKEXPOSE_NATS_PASSWORD (a user alone: no password).
pub fn credentials_from_env() -> Option<Credentials> {
    let user = std::env::var(ENV_USER).ok().filter(|u| !u.is_empty())?;
    Some(Credentials { user, password: std::env::var(ENV_PASSWORD).unwrap_or_default() })
}

/// Publishes in flight before the oldest ack is awaited: enough to keep the
/// connection busy, under the context's own limit (which would otherwise wait for
/// acks nobody awaits yet).
const WINDOW: usize = 4096;
/// How long a publish waits for its ack, and a whole batch for all of them.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server said about our rights, outside any request's answer: a
/// permission violation comes as an asynchronous -ERR and the publish's ack never.
type Refusal = Arc<Mutex<Option<String>>>;

/// A JetStream connection publishing to one subject.
pub struct NatsStore {
    target: NatsTarget,
    subject: async_nats::Subject,
    js: jetstream::Context,
    refusal: Refusal,
    duplicates: u64,
}

/// Connects to `target`'s server. A server that does not answer yet is not an
/// error (the client keeps trying; sends fail with Retry meanwhile); one that
/// refuses the credentials is. Err: what failed and the fix.
pub async fn connect(target: &NatsTarget, credentials: Option<&Credentials>) -> Result<NatsStore, String> {
    let refusal: Refusal = Arc::default();
    let client = client(target, credentials, &refusal).await?;
    let js = jetstream::ContextBuilder::new().timeout(ACK_TIMEOUT).max_ack_inflight(2 * WINDOW).build(client);
    Ok(NatsStore { target: target.clone(), subject: target.subject.as_str().into(), js, refusal, duplicates: 0 })
}

async fn client(
    target: &NatsTarget,
    credentials: Option<&Credentials>,
    refusal: &Refusal,
) -> Result<async_nats::Client, String> {
    let address = format!("nats://{}:{}", target.host, target.port);
    let options = || {
        let options = match credentials {
            Some(c) => ConnectOptions::with_user_and_password(c.user.clone(), c.password.clone()),
            None => ConnectOptions::new(),
        };
        let slot = refusal.clone();
        options
            .name(concat!("dockexpose/", env!("CARGO_PKG_VERSION")))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let slot = slot.clone();
                async move { note_event(&slot, &event) }
            })
    };
    match options().connect(&address).await {
        Ok(client) => Ok(client),
        Err(e) if matches!(e.kind(), ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication) => {
            Err(format!(
                "{target}: the NATS server refused the credentials ({e}); Fix: set {ENV_USER} and {ENV_PASSWORD} \
                 to a user the server's authorization block knows"
            ))
        }
        Err(e) if matches!(e.kind(), ConnectErrorKind::Tls | ConnectErrorKind::ServerParse) => {
            Err(format!("{target}: {e}; Fix: point it at a NATS server's client port (4222)"))
        }
        // Not there yet: keep trying in the background.
        Err(_) => options().retry_on_initial_connect().connect(&address).await.map_err(|e| format!("{target}: {e}")),
    }
}

/// Remembers an authorization or permission error the server sent on its own.
fn note_event(slot: &Refusal, event: &Event) {
    let said = match event {
        Event::ServerError(ServerError::AuthorizationViolation) => "authorization violation".to_string(),
        Event::ServerError(ServerError::Other(text)) if text.to_ascii_lowercase().contains("permission") => {
            text.clone()
        }
        _ => return,
    };
    if let Ok(mut slot) = slot.lock() {
        *slot = Some(said);
    }
}

/// How to create the stream by hand, for messages.
pub fn create_stream_hint(subject: &str) -> String {
    format!(
        "start `dockexpose fleet bridge --from nats://HOST:PORT/{subject} --to ...` once (it creates stream \
         {DEFAULT_STREAM}), or create it: nats stream add {DEFAULT_STREAM} --subjects {subject} --retention work \
         --storage file --dupe-window 2m"
    )
}

/// A failed publish or ack: worth another try, or refused? `server_said`: a
/// permission or authorization error the server reported meanwhile.
pub fn classify(target: &NatsTarget, kind: PublishErrorKind, error: &str, server_said: Option<&str>) -> StoreError {
    if let Some(said) = server_said {
        return StoreError::Refused(format!(
            "{target}: the NATS server refused: {said}; Fix: allow this user to publish to {} ({ENV_USER})",
            target.subject
        ));
    }
    match kind {
        PublishErrorKind::StreamNotFound => StoreError::Refused(format!(
            "{target}: no JetStream stream takes subject {}; Fix: {}",
            target.subject,
            create_stream_hint(&target.subject)
        )),
        PublishErrorKind::MaxPayloadExceeded => {
            StoreError::Refused(format!("{target}: a record is larger than the server's max_payload: {error}"))
        }
        _ => StoreError::Retry(format!("{target}: publishing failed: {error}")),
    }
}

impl NatsStore {
    /// The JetStream context (the bridge pulls through it).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Records the stream dropped as already held (a batch sent again).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn error(&self, e: &PublishError) -> StoreError {
        let said = self.refusal.lock().ok().and_then(|s| s.clone());
        classify(&self.target, e.kind(), &e.to_string(), said.as_deref())
    }

    async fn await_ack(&mut self, ack: PublishAckFuture) -> Result<(), StoreError> {
        let ack = ack.await.map_err(|e| self.error(&e))?;
        self.duplicates += u64::from(ack.duplicate);
        Ok(())
    }

    /// Publishes the whole batch, then awaits what is still in flight.
    async fn publish_all(&mut self, batch: &[ShipRecord]) -> Result<(), StoreError> {
        let mut pending = VecDeque::with_capacity(WINDOW.min(batch.len()));
        for record in batch {
            if pending.len() == WINDOW {
                if let Some(ack) = pending.pop_front() {
                    self.await_ack(ack).await?;
                }
            }
            let message = PublishMessage::build().payload(record.line.clone()).message_id(&record.record_id);
            let ack = self.js.send_publish(self.subject.clone(), message).await.map_err(|e| self.error(&e))?;
            pending.push_back(ack);
        }
        while let Some(ack) = pending.pop_front() {
            self.await_ack(ack).await?;
        }
        Ok(())
    }
}

impl Store for NatsStore {
    async fn send(&mut self, batch: &[ShipRecord]) -> Result<(), StoreError> {
        let result = match tokio::time::timeout(BATCH_TIMEOUT, self.publish_all(batch)).await {
            Ok(result) => result,
            // A server away: publishes queue in the client until it is back.
            Err(_) => Err(StoreError::Retry(format!(
                "{}: the NATS server did not take {} records within {} s",
                self.target,
                batch.len(),
                BATCH_TIMEOUT.as_secs()
            ))),
        };
        if result.is_ok() {
            if let Ok(mut slot) = self.refusal.lock() {
                *slot = None;
            }
        }
        result
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> NatsTarget {
        NatsTarget { host: "127.0.0.1".into(), port: 4222, subject: "dockexpose.records".into() }
    }

    #[test]
    fn no_stream_is_refused_with_how_to_create_one() {
        let e = classify(&target(), PublishErrorKind::StreamNotFound, "no stream", None);
        let StoreError::Refused(text) = e else { panic!("{e:?}") };
        assert!(text.contains("no JetStream stream takes subject dockexpose.records"), "{text}");
        assert!(text.contains("nats stream add DOCKEXPOSE --subjects dockexpose.records"), "{text}");
    }

    #[test]
    fn a_server_away_is_tried_again_a_permission_error_is_not() {
        assert!(matches!(classify(&target(), PublishErrorKind::TimedOut, "timed out", None), StoreError::Retry(_)));
        assert!(matches!(classify(&target(), PublishErrorKind::BrokenPipe, "", None), StoreError::Retry(_)));
        assert!(matches!(
            classify(&target(), PublishErrorKind::Other, "maximum messages exceeded", None),
            StoreError::Retry(_)
        ));
        let said = "Permissions Violation for Publish to \"dockexpose.records\"";
        let e = classify(&target(), PublishErrorKind::TimedOut, "timed out", Some(said));
        assert!(matches!(e, StoreError::Refused(ref t) if t.contains("Permissions Violation")), "{e:?}");
    }

    #[test]
    fn permission_errors_are_remembered_others_not() {
        let slot = Refusal::default();
        note_event(&slot, &Event::ServerError(ServerError::Other("Slow Consumer".into())));
        assert!(slot.lock().unwrap().is_none());
        note_event(&slot, &Event::ServerError(ServerError::Other("Permissions Violation for Publish".into())));
        assert!(slot.lock().unwrap().is_some());
    }
}
