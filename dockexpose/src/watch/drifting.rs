//! Drift, noticed as it happens (`watch --verify-every`): when the ground moves (a
//! ruleset change and the process that made it, a firewalld reload, a link or
//! address change; `ground`), the firewall's word is read again and, after a
//! debounce, every published port is verified again. Each port whose verdict changed
//! gets one `exposure_changed` line in the audit log and an alert, naming the cause.

use std::{collections::BTreeMap, time::Instant};

use super::Watcher;
use crate::{
    output::{
        alerts::{Alert, AlertKind},
        record::Timestamp,
    },
    verify::{
        daemon::RunKind,
        drift::{self, Cause, VerdictKey},
        Outcome,
    },
};

/// The verdict per port, protocol, family and uplink.
pub(super) fn verdicts(outcome: &Outcome) -> BTreeMap<VerdictKey, &'static str> {
    outcome
        .most_open()
        .into_iter()
        .map(|((proto, host_port, v6, uplink), r)| {
            let family = if v6 { "ipv6" } else { "ipv4" };
            (VerdictKey { host_port, proto: proto.as_str(), family, uplink }, r.verdict.as_str())
        })
        .collect()
}

impl Watcher {
    /// The ground moved: read the firewall's word again, and verify again once the
    /// burst is over.
    pub(super) fn ground_moved(&mut self, cause: Cause) {
        self.intent.read();
        if let Some(v) = self.verify.as_mut() {
            v.debounce.push(cause, Instant::now());
        }
    }

    /// When the drift run is due (None: nothing moved, or verify is off).
    pub(super) fn drift_due(&self) -> Option<Instant> {
        self.verify.as_ref().and_then(|v| v.debounce.due())
    }

    /// The drift run to start now, if one is due and none runs.
    pub(super) fn take_drift_run(&mut self) -> Option<RunKind> {
        let v = self.verify.as_mut()?;
        if v.debounce.due().is_none_or(|t| t > Instant::now()) {
            return None;
        }
        let new_ports = v.schedule.start_unscheduled()?;
        v.run_causes = v.debounce.take();
        let first = v.run_causes.first().map(drift::describe).unwrap_or_else(|| "a change".into());
        let more = v.run_causes.len().saturating_sub(1);
        let why = if more > 0 { format!("{first} and {more} more") } else { first };
        Some(RunKind::Drift { why, new_ports })
    }

    /// A run ended: verdicts that changed since the last run that probed the same
    /// port, protocol, family and uplink are written and alerted, with the cause.
    pub(super) fn report_drift(&mut self, kind: &RunKind, outcome: &Outcome) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        let now = verdicts(outcome);
        let changed = drift::changes(&v.verdicts, &now);
        let causes = std::mem::take(&mut v.run_causes);
        v.verdicts.extend(now);
        let cause = causes.into_iter().next().unwrap_or_else(|| Cause {
            kind: "poll",
            process: None,
            pid: None,
            detail: Some(kind.describe()),
        });
        for (key, from, to) in changed {
            let ts = Timestamp(std::time::SystemTime::now()).format();
            let ts = std::str::from_utf8(&ts).unwrap_or_default().to_string();
            self.outputs.notice(&drift::exposure_changed(&ts, &key, from, to, &cause));
            let text = format!("EXPOSURE CHANGED: {}", drift::exposure_changed_text(&key, from, to, &cause));
            let mut alert = Alert::new(AlertKind::ExposureChanged, crate::output::human::escape_untrusted(&text), None);
            alert.priority = true;
            self.outputs.alerts.raise(alert);
        }
    }
}
