//! How shipping goes, shared between the shipper's thread (writes) and the daemon's
//! loop (status, metrics, health alerts).

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipState {
    #[default]
    Shipping,
    /// The store did not take the last batch; it is sent again after a pause.
    Retrying,
    /// The store refused a batch for what it is: shipping stopped until a restart.
    Stopped,
}

/// The `ship` object of `dockexpose status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShipStatus {
    /// Where records go (no credentials).
    pub target: String,
    pub state: ShipState,
    /// Records the store took (since the checkpoint was first written).
    pub records_shipped: u64,
    /// Batches the store took, this run.
    pub batches: u64,
    /// Sends tried again, this run.
    pub retries: u64,
    /// Records in the log not yet taken by the store.
    pub lag_records: u64,
    /// Age of the oldest record not yet taken (0 when none).
    pub lag_seconds: u64,
    /// Records that rotated out of the log before they were shipped.
    pub lost_records: u64,
    pub last_error: Option<String>,
    /// Seconds since the store last took a batch (null: not yet this run).
    pub last_success_age_s: Option<u64>,
    /// `lag_degraded_seconds`: health is degraded past this lag.
    pub lag_degraded_seconds: u64,
    /// Something the operator should know that is not an error (a checkpoint's file gone).
    #[serde(default)]
    pub warning: Option<String>,
}

/// The shipper's figures, shared.
#[derive(Clone, Default)]
pub struct ShipStats(Arc<Mutex<(ShipStatus, Option<SystemTime>)>>);

impl ShipStats {
    pub fn new(target: String, lag_degraded_seconds: u64) -> Self {
        Self(Arc::new(Mutex::new((ShipStatus { target, lag_degraded_seconds, ..ShipStatus::default() }, None))))
    }

    pub fn update(&self, f: impl FnOnce(&mut ShipStatus)) {
        if let Ok(mut g) = self.0.lock() {
            f(&mut g.0);
        }
    }

    pub fn succeeded(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.1 = Some(SystemTime::now());
        }
    }

    /// A copy, with the ages as of now.
    pub fn snapshot(&self) -> ShipStatus {
        let Ok(g) = self.0.lock() else { return ShipStatus::default() };
        let mut s = g.0.clone();
        s.last_success_age_s = g.1.map(|t| t.elapsed().map_or(0, |d| d.as_secs()));
        s
    }
}

impl ShipStatus {
    /// Why health is degraded by shipping, if it is.
    pub fn degraded(&self) -> Option<String> {
        if self.state == ShipState::Stopped {
            return Some(format!(
                "shipping to {} stopped: {} ({} records kept in the audit log)",
                self.target,
                self.last_error.as_deref().unwrap_or("refused"),
                self.lag_records
            ));
        }
        (self.lag_seconds > self.lag_degraded_seconds).then(|| {
            format!(
                "shipping to {} lags {} s ({} records){}",
                self.target,
                self.lag_seconds,
                self.lag_records,
                self.last_error.as_deref().map_or(String::new(), |e| format!(": {e}"))
            )
        })
    }
}
