//! The shipping loop, on a thread of its own with its own runtime: the daemon's loop
//! never waits on the store. It reads the audit log (never writes it): up to
//! `batch_records` records, or what is there once `every` has passed; a batch the
//! store took moves the checkpoint; one it did not is sent again after a backoff;
//! one it refused stops shipping, keeps the checkpoint and says why.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use super::{
    checkpoint::{self, Checkpoint},
    spool::{Batch, Spool},
    stats::{ShipState, ShipStats},
};
use crate::fleet::{
    backoff::Backoff,
    clickhouse::ClickHouse,
    nats::{self, NatsStore},
    store::{ShipRecord, Store, StoreError},
    target::{Credentials, StoreTarget},
};

/// How often the log is looked at while there is too little to send.
const POLL: Duration = Duration::from_millis(250);
/// The longest wait before sending a batch again.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// One request's limit (a batch of thousands of records to a busy server).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// `watch --ship`, validated.
#[derive(Clone, Debug)]
pub struct ShipSettings {
    pub target: StoreTarget,
    pub credentials: Option<Credentials>,
    pub ca_file: Option<PathBuf>,
    pub batch_records: usize,
    pub every: Duration,
    pub lag_degraded_seconds: u64,
    /// The audit log (a file).
    pub log: PathBuf,
}

/// Every store the shipper can send to. A new store is a variant here and a line in
/// `connect`.
#[allow(clippy::large_enum_variant, reason = "one per shipper, never moved in a loop")]
enum AnyStore {
    ClickHouse(ClickHouse),
    Nats(NatsStore),
}

impl AnyStore {
    async fn send(&mut self, batch: &[ShipRecord]) -> Result<(), StoreError> {
        match self {
            AnyStore::ClickHouse(s) => s.send(batch).await,
            AnyStore::Nats(s) => s.send(batch).await,
        }
    }
}

/// Whether this build ships to the target's kind of store.
pub fn available(target: &StoreTarget) -> Result<(), String> {
    match target {
        StoreTarget::ClickHouse(_) | StoreTarget::Nats(_) => Ok(()),
    }
}

/// The store for a target. Err: what is wrong, for the operator.
/// NATS credentials: the config file's or DOCKEXPOSE_STORE_*, else DOCKEXPOSE_NATS_*.
async fn connect(s: &ShipSettings) -> Result<AnyStore, String> {
    match &s.target {
        StoreTarget::ClickHouse(t) => {
            ClickHouse::new(t, s.credentials.as_ref(), s.ca_file.as_deref(), REQUEST_TIMEOUT).map(AnyStore::ClickHouse)
        }
        StoreTarget::Nats(t) => {
            let credentials = s.credentials.clone().or_else(nats::credentials_from_env);
            nats::connect(t, credentials.as_ref()).await.map(AnyStore::Nats)
        }
    }
}

/// The running shipper.
pub struct Shipper {
    pub stats: ShipStats,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Checks the target, the credentials and the checkpoint, then ships on a thread.
    pub fn start(settings: ShipSettings) -> Result<Self, String> {
        if let StoreTarget::ClickHouse(t) = &settings.target {
            if !t.https && !t.is_loopback() {
                crate::say!(
                    "warning: --ship {t}: plain HTTP to a host that is not loopback: records and the store's password cross the network readable.\n  Fix: use clickhouse+https://"
                );
            }
        }
        let cp_path = checkpoint::path_for(&settings.log);
        let cp = checkpoint::load(&cp_path)?;
        let stats = ShipStats::new(settings.target.to_string(), settings.lag_degraded_seconds);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("dockexpose-ship".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the shipper's runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let prepared = connect(&settings).await.and_then(|store| {
                        let (spool, warning) = Spool::open(&settings.log, cp.as_ref()).map_err(|e| {
                            format!("cannot read the audit log {} to ship it: {e}", settings.log.display())
                        })?;
                        Ok((store, spool, warning))
                    });
                    match prepared {
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                        Ok((store, spool, warning)) => {
                            if let Some(w) = &warning {
                                crate::say!("warning: {w}");
                            }
                            st.update(|s| s.warning = warning);
                            let _ = ready_tx.send(Ok(()));
                            Loop {
                                settings,
                                store,
                                spool,
                                cp: cp.unwrap_or_default(),
                                cp_path,
                                stats: st,
                                stop: sp,
                                lost_before: 0,
                            }
                            .run()
                            .await;
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the shipper's thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stats, stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the shipper's thread ended at start".into()),
        }
    }

    /// Asks the shipper to stop; waits a little for a send in progress. What it did not
    /// ship stays in the log for the next start.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(t) = self.thread.take().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
    }
}

struct Loop {
    settings: ShipSettings,
    store: AnyStore,
    spool: Spool,
    cp: Checkpoint,
    cp_path: PathBuf,
    stats: ShipStats,
    stop: Arc<AtomicBool>,
    /// Lost before this run (from the checkpoint).
    lost_before: u64,
}

impl Loop {
    async fn run(mut self) {
        self.lost_before = self.cp.lost;
        self.stats.update(|s| s.records_shipped = self.cp.shipped);
        let mut last_send = Instant::now();
        let mut in_flight: Option<Batch> = None;
        let mut backoff = Backoff::new(MAX_BACKOFF);
        let mut stopped = false;
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.spool.poll() {
                self.stats.update(|s| s.last_error = Some(format!("cannot read the audit log: {e}")));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.publish_lag(in_flight.as_ref());
            if stopped {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if in_flight.is_none() {
                let pending = self.spool.pending();
                let due = pending >= self.settings.batch_records as u64
                    || (pending > 0 && last_send.elapsed() >= self.settings.every);
                if !due {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                match self.spool.read(self.settings.batch_records) {
                    Ok(b) => in_flight = b,
                    Err(e) => {
                        self.stats.update(|s| s.last_error = Some(format!("cannot read the audit log: {e}")));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let Some(batch) = &in_flight else { continue };
            if batch.records.is_empty() {
                // Only moved to the next file.
                self.commit(0);
                in_flight = None;
                continue;
            }
            last_send = Instant::now();
            match self.store.send(&batch.records).await {
                Ok(()) => {
                    let n = batch.records.len() as u64;
                    in_flight = None;
                    backoff = Backoff::new(MAX_BACKOFF);
                    self.commit(n);
                }
                Err(StoreError::Retry(e)) => {
                    let wait = backoff.next_delay();
                    self.stats.update(|s| {
                        s.retries += 1;
                        s.state = ShipState::Retrying;
                        s.last_error = Some(e.clone());
                    });
                    self.pause(wait, in_flight.as_ref()).await;
                }
                Err(StoreError::Refused(e)) => {
                    crate::say!(
                        "dockexpose: shipping to {} stopped: {e}. The records stay in the audit log; fix the store or the table, then restart dockexpose",
                        self.store_name()
                    );
                    self.stats.update(|s| {
                        s.state = ShipState::Stopped;
                        s.last_error = Some(e.clone());
                    });
                    stopped = true;
                }
            }
        }
    }

    fn store_name(&self) -> String {
        self.settings.target.to_string()
    }

    /// The batch read last was taken: the checkpoint moves to where reading stands.
    fn commit(&mut self, records: u64) {
        if let Some((dev, ino, offset)) = self.spool.position() {
            (self.cp.dev, self.cp.ino, self.cp.offset) = (dev, ino, offset);
        }
        self.cp.shipped += records;
        let saved = checkpoint::save(&self.cp_path, &self.cp);
        let shipped = self.cp.shipped;
        self.stats.update(|s| {
            s.records_shipped = shipped;
            if records > 0 {
                s.batches += 1;
                s.state = ShipState::Shipping;
            }
            if let Err(e) = &saved {
                s.last_error = Some(format!("cannot write the checkpoint (a restart sends again, never loses): {e}"));
            }
        });
        if records > 0 {
            self.stats.succeeded();
        }
    }

    /// Waits before sending again, still following the log (lag, rotation).
    async fn pause(&mut self, wait: Duration, in_flight: Option<&Batch>) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now())).await;
            if self.spool.poll().is_ok() {
                self.publish_lag(in_flight);
            }
        }
    }

    fn publish_lag(&mut self, in_flight: Option<&Batch>) {
        self.cp.lost = self.lost_before + self.spool.lost();
        let records = self.spool.pending() + in_flight.map_or(0, |b| b.records.len() as u64);
        let oldest = in_flight.and_then(|b| b.oldest).or_else(|| self.spool.oldest_pending());
        let age = oldest.and_then(|t| SystemTime::now().duration_since(t).ok()).map_or(0, |d| d.as_secs());
        let lost = self.cp.lost;
        self.stats.update(|s| {
            s.lag_records = records;
            s.lag_seconds = if records == 0 { 0 } else { age };
            s.lost_records = lost;
        });
    }
}
