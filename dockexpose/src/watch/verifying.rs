//! `watch --verify-every`: verify runs from the daemon, off its loop.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tokio::sync::mpsc;

use super::{settings::VerifySettings, Watcher};
use crate::{
    error::Result,
    inventory::model::Inventory,
    output::human,
    verify::{
        self,
        daemon::{self as verifyd, ProbeSources, RunKind, Schedule},
        drift::{Cause, Debounce, VerdictKey},
        Outcome,
    },
};

/// A verify run's result, from its blocking thread.
pub(super) type VerifyResult = std::result::Result<Outcome, String>;

/// Verifying from the daemon: the schedule, the run in progress, its probe sources.
pub(super) struct VerifyState {
    pub(super) settings: VerifySettings,
    pub(super) schedule: Schedule,
    pub(super) probes: ProbeSources,
    pub(super) tx: mpsc::UnboundedSender<VerifyResult>,
    /// The run in progress, and the inventory it probes (its records are named from it).
    pub(super) running: Option<(RunKind, Inventory)>,
    /// Drift: what moved since the last run, the causes of the run in progress, and
    /// the last verdict of each port, family and uplink.
    pub(super) debounce: Debounce,
    pub(super) run_causes: Vec<Cause>,
    pub(super) verdicts: BTreeMap<VerdictKey, &'static str>,
    /// When the last run completed (None: none yet), and the runs so far, for `status`
    /// and the metrics (a stale verify is alerted on).
    pub(super) last_success: Option<Instant>,
    pub(super) runs_ok: u64,
    pub(super) runs_failed: u64,
}

/// The next verify result, or never when verify is off.
pub(super) async fn next_verify_result(rx: &mut Option<mpsc::UnboundedReceiver<VerifyResult>>) -> Option<VerifyResult> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Watcher {
    pub(super) fn verify_running(&self) -> bool {
        self.verify.as_ref().is_some_and(|v| v.running.is_some())
    }

    /// Starts the verify run that is due, on a blocking thread (it sleeps between
    /// probes); its result comes back over the channel. One run at a time.
    pub(super) fn start_verify(&mut self) {
        if self.inventory.is_none() {
            return;
        }
        let drift = self.take_drift_run();
        let Some(v) = self.verify.as_mut() else { return };
        let Some(inventory) = self.inventory.clone() else { return };
        let Some(kind) = drift.or_else(|| v.schedule.start(Instant::now())) else { return };
        // Ports gone again since they were queued are not probed.
        let kind = kind.published_now(&verifyd::published_ports(&inventory));
        if kind == RunKind::NewPorts(BTreeSet::new()) {
            v.schedule.finished();
            return;
        }
        let (uplinks, sources, ports, tx) =
            (v.settings.uplinks.clone(), v.settings.sources.clone(), kind.ports(), v.tx.clone());
        let probed = inventory.clone();
        v.probes.begin();
        let noted = v.probes.noted();
        v.running = Some((kind, inventory));
        tokio::task::spawn_blocking(move || {
            // A panic ends the run like an error: its result still comes back, so the
            // schedule goes on and the probes stop being recognised after the grace.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                verify::prepare(&uplinks, &probed, &ports, &sources)
                    .and_then(|prepared| {
                        prepared.execute_noting(verifyd::RATE, verifyd::WINDOW, |src, sport, proto| {
                            if let Ok(mut n) = noted.lock() {
                                n.insert((src, sport, proto));
                            }
                        })
                    })
                    .map_err(|e| format!("{e:#}"))
            }));
            let result = run.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned());
                Err(format!("the verify run panicked ({})", what.unwrap_or_default()))
            });
            let _ = tx.send(result);
        });
    }

    /// A verify run ended: one `verified` record per probe, alerts for ports found
    /// reachable, a summary line.
    pub(super) fn verify_done(&mut self, result: VerifyResult) -> Result<()> {
        let Some(v) = self.verify.as_mut() else { return Ok(()) };
        let Some((kind, inventory)) = v.running.take() else { return Ok(()) };
        v.schedule.finished();
        v.probes.end(Instant::now());
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                v.runs_failed += 1;
                crate::say!(
                    "warning: verify ({}) failed: {}; trying again at the next run",
                    kind.describe(),
                    human::escape_untrusted(&e)
                );
                return Ok(());
            }
        };
        (v.last_success, v.runs_ok) = (Some(Instant::now()), v.runs_ok + 1);
        for warning in &outcome.warnings {
            crate::say!("{warning}");
        }
        for r in &outcome.probes {
            let rec = verifyd::verified_record(r, Some(&inventory));
            self.outputs.verified(rec, Some(r.target.port.container_port));
        }
        crate::say!("{}", verifyd::summary_line(&kind, &outcome));
        self.report_drift(&kind, &outcome);
        Ok(())
    }
}
