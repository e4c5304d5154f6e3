//! Health alerts: what makes the record incomplete or the detector blind (records lost,
//! packets not inspected, the audit log failing, Docker unreachable, a watched
//! interface gone) reaches every sink as a `health` alert, not stderr alone.
//!
//! Limited per condition (and per subject, an interface): the first at once, then at
//! most one a window, which says how many more there were; a condition that clears
//! (the audit log written again, Docker answering, a bridge back) gives a `recovered`
//! alert when its failing one went out. Health alerts take the sinks' priority lane.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Alert, AlertKind};

/// What went wrong. The names are part of the alert contract (`health.condition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCondition {
    /// Connection records lost: the ring buffer was full, or the reader overran.
    RecordsLost,
    /// Packets from outside reached a container bridge and could not be inspected.
    Uninspected,
    /// Kernel flow-table updates failed (a flow may be reported twice).
    FlowTable,
    /// Attempts that got no verdict (too many awaited one).
    AttemptsUntracked,
    /// The audit log cannot be written.
    AuditLog,
    /// Docker does not answer: records lack container identity.
    Docker,
    /// A watched interface was detached (it disappeared) or could not be attached.
    Detached,
    /// The kernel lacks a feature a defence needs (subject: `tcx`, `conntrack_kfuncs`):
    /// said once at start, see kernel/features.rs.
    KernelLimits,
    /// `watch --ship`: the store refused a batch (shipping stopped), records rotated
    /// away unshipped (subject `lost`), or shipping lags (subject `lag`).
    Ship,
}

impl HealthCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCondition::RecordsLost => "records_lost",
            HealthCondition::Uninspected => "uninspected",
            HealthCondition::FlowTable => "flow_table",
            HealthCondition::AttemptsUntracked => "attempts_untracked",
            HealthCondition::AuditLog => "audit_log",
            HealthCondition::Docker => "docker",
            HealthCondition::Detached => "detached",
            HealthCondition::KernelLimits => "kernel_limits",
            HealthCondition::Ship => "ship",
        }
    }

    /// Syslog severity while failing: err (3) when records are gone, warning (4) when
    /// the detector sees less than it should.
    pub fn severity(self) -> u8 {
        match self {
            HealthCondition::RecordsLost | HealthCondition::AuditLog => 3,
            _ => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Failing,
    Recovered,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Failing => "failing",
            HealthState::Recovered => "recovered",
        }
    }
}

/// What a `health` alert is about (the webhook's `health` object, journald's and
/// syslog's DOCKEXPOSE_HEALTH* fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthInfo {
    pub condition: HealthCondition,
    pub state: HealthState,
    /// Times the condition was noticed since the last alert about it (1 at once; more
    /// in the line that closes a window).
    pub count: u64,
    /// The interface it is about, for `detached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Most (condition, subject) pairs remembered; past that, new subjects share one entry.
const MAX_SUBJECTS: usize = 256;

#[derive(Default)]
struct Cond {
    failing: bool,
    /// A failing alert went out since the last recovery.
    told: bool,
    last_sent: Option<Instant>,
    /// Times noticed since the last alert, and the latest line.
    held: u64,
    held_text: Option<String>,
}

pub struct HealthLimiter {
    window: Duration,
    conds: BTreeMap<(HealthCondition, Option<String>), Cond>,
}

fn alert(condition: HealthCondition, state: HealthState, count: u64, subject: Option<String>, text: String) -> Alert {
    let mut a = Alert::new(AlertKind::Health, text, None);
    a.priority = true;
    a.health = Some(HealthInfo { condition, state, count, subject });
    a
}

impl HealthLimiter {
    pub fn new(window: Duration) -> Self {
        Self { window, conds: BTreeMap::new() }
    }

    fn entry(&mut self, condition: HealthCondition, subject: Option<&str>) -> (Option<String>, &mut Cond) {
        let mut key = (condition, subject.map(str::to_string));
        if self.conds.len() >= MAX_SUBJECTS && !self.conds.contains_key(&key) {
            key.1 = None;
        }
        let subject = key.1.clone();
        (subject, self.conds.entry(key).or_default())
    }

    /// Whether the condition is failing now (as last said).
    pub fn is_failing(&self, condition: HealthCondition, subject: Option<&str>) -> bool {
        self.conds.get(&(condition, subject.map(str::to_string))).is_some_and(|c| c.failing)
    }

    /// The condition was noticed (`text`: the line for people). Returns the alert to
    /// send now: the first at once, then at most one a window (`flush` says the rest).
    pub fn failing(
        &mut self,
        condition: HealthCondition,
        subject: Option<&str>,
        text: String,
        now: Instant,
    ) -> Option<Alert> {
        let window = self.window;
        let (subject, c) = self.entry(condition, subject);
        c.failing = true;
        if c.last_sent.is_some_and(|t| now.duration_since(t) < window) {
            c.held += 1;
            c.held_text = Some(text);
            return None;
        }
        let count = c.held + 1;
        (c.last_sent, c.held, c.held_text, c.told) = (Some(now), 0, None, true);
        Some(alert(condition, HealthState::Failing, count, subject, text))
    }

    /// The condition cleared. A `recovered` alert when a failing one went out;
    /// otherwise (it was held back) the next flush says it.
    pub fn recovered(
        &mut self,
        condition: HealthCondition,
        subject: Option<&str>,
        text: String,
        now: Instant,
    ) -> Option<Alert> {
        let (subject, c) = self.entry(condition, subject);
        if !c.failing {
            return None;
        }
        c.failing = false;
        if !c.told {
            c.held_text = Some(text);
            return None;
        }
        let count = c.held + 1;
        (c.last_sent, c.held, c.held_text, c.told) = (Some(now), 0, None, false);
        Some(alert(condition, HealthState::Recovered, count, subject, text))
    }

    /// Windows that are over: one line per condition noticed again meanwhile, with
    /// the count. Forgets conditions that are clear and quiet.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        let window = self.window;
        let mut out = Vec::new();
        for ((condition, subject), c) in &mut self.conds {
            if c.held_text.is_none() || c.last_sent.is_some_and(|t| now.duration_since(t) < window) {
                continue;
            }
            let text = c.held_text.take().unwrap_or_default();
            let state = if c.failing { HealthState::Failing } else { HealthState::Recovered };
            let count = c.held.max(1);
            let text = format!("{text} ({count} times in the last {} s)", window.as_secs());
            out.push(alert(*condition, state, count, subject.clone(), text));
            (c.last_sent, c.held, c.told) = (Some(now), 0, c.failing);
        }
        self.conds.retain(|_, c| {
            c.failing || c.held_text.is_some() || c.last_sent.is_some_and(|t| now.duration_since(t) < window)
        });
        out
    }
}
