//! The fan-out: every connection record the daemon's stage makes goes to each
//! consumer, in this order:
//! 1. the audit log, the system of record: written in order, never waiting on anything
//!    else (its buffer goes to its writer thread after each batch; the loop never
//!    waits on the disk);
//! 2. the status state (`ExposureTable`), read by `dockexpose status` and the metrics;
//! 3. human lines on stderr (unless `--quiet`);
//! 4. the alert stage, whose alerts go to stderr and to every alert sink. Each sink has
//!    a bounded queue of its own: when it is full the alert is dropped and counted,
//!    so that a slow or dead sink never holds back the others or the audit log.
//!
//! The daemon's health (records lost, the audit log failing, Docker unreachable, an
//! interface detached) goes through the same alert stage as `health` alerts.
//!
//! Every consumer of records sits behind `Consumer`, every consumer of alerts behind
//! `AlertOut`.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    alerts::{Alert, AlertKind, Alerter, HealthCondition, HealthLimiter},
    audit::{AuditLog, AuditStats, Report},
    community_id,
    contradictions::Contradictions,
    exposures::ExposureTable,
    formats::Observer,
    human,
    record::Record,
    record_id,
};
use crate::{
    kernel::event::{KernelClock, Observation},
    state::continuity::boot_id,
    stats::{LatencyHistogram, LatencySummary},
};

/// A consumer of connection records.
pub trait Consumer {
    /// One record, in the order the stage made them.
    fn record(&mut self, rec: &Arc<Record>);
}

/// A consumer of alerts: stderr, or an alert sink's queue.
pub trait AlertOut {
    /// Never waits: a sink that cannot take the alert now drops it and counts it.
    fn alert(&mut self, alert: &Arc<Alert>);
}

impl Consumer for AuditLog {
    fn record(&mut self, rec: &Arc<Record>) {
        self.write_connection(rec);
    }
}

impl Consumer for ExposureTable {
    fn record(&mut self, rec: &Arc<Record>) {
        ExposureTable::record(self, rec);
    }
}

/// One line per connection on stderr.
pub struct HumanLines;

impl Consumer for HumanLines {
    fn record(&mut self, rec: &Arc<Record>) {
        crate::say!("{}", human::connection_line(rec));
    }
}

/// Alerts on stderr, for the operator watching the terminal (or the journal).
pub struct StderrAlerts;

impl AlertOut for StderrAlerts {
    fn alert(&mut self, alert: &Arc<Alert>) {
        crate::say!("{alert}");
    }
}

/// Alerts raised, by kind (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertCounts(pub [u64; AlertKind::ALL.len()]);

impl AlertCounts {
    fn add(&mut self, kind: AlertKind) {
        if let Some(i) = AlertKind::ALL.iter().position(|k| *k == kind) {
            self.0[i] += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (AlertKind, u64)> + '_ {
        AlertKind::ALL.iter().copied().zip(self.0.iter().copied())
    }
}

/// The alert stage: the Alerter (connections) and the HealthLimiter (the daemon's
/// health) decide, every `AlertOut` gets what they decided.
pub struct AlertStage {
    alerter: Alerter,
    health: HealthLimiter,
    outs: Vec<Box<dyn AlertOut>>,
    counts: AlertCounts,
}

impl AlertStage {
    pub fn new(window: Duration, outs: Vec<Box<dyn AlertOut>>) -> Self {
        Self { alerter: Alerter::new(window), health: HealthLimiter::new(window), outs, counts: AlertCounts::default() }
    }

    /// A health condition noticed (`text`: the line for people); `subject`: the
    /// interface it is about. Limited per condition and subject.
    pub fn health_failing(&mut self, condition: HealthCondition, subject: Option<&str>, text: String) {
        if let Some(a) = self.health.failing(condition, subject, text, Instant::now()) {
            self.send(a);
        }
    }

    pub fn health_is_failing(&self, condition: HealthCondition, subject: Option<&str>) -> bool {
        self.health.is_failing(condition, subject)
    }

    /// A health condition cleared: said when its failure was. True when an alert
    /// went out (the caller need not say it again).
    pub fn health_recovered(&mut self, condition: HealthCondition, subject: Option<&str>, text: String) -> bool {
        match self.health.recovered(condition, subject, text, Instant::now()) {
            Some(a) => {
                self.send(a);
                true
            }
            None => false,
        }
    }

    /// An alert made elsewhere (a contradiction, a verdict that changed): to every
    /// output, through the priority lane when it says so.
    pub fn raise(&mut self, alert: Alert) {
        self.send(alert);
    }

    fn send(&mut self, alert: Alert) {
        self.counts.add(alert.kind);
        let alert = Arc::new(alert);
        for out in &mut self.outs {
            out.alert(&alert);
        }
    }

    /// The alert for a record, if it deserves one now. True when one went out.
    fn observe(&mut self, rec: &Arc<Record>, now: Instant) -> bool {
        match self.alerter.observe(rec, now) {
            Some(a) => {
                self.send(a);
                true
            }
            None => false,
        }
    }

    fn verified(&mut self, rec: &Arc<Record>, container_port: Option<u16>, now: Instant) {
        if let Some(a) = self.alerter.verified(rec, container_port, now) {
            self.send(a);
        }
    }

    /// Closes alert windows that are over (count lines, rate-limit summaries, health
    /// conditions noticed again).
    fn flush(&mut self, now: Instant) {
        let health = self.health.flush(now);
        for a in self.alerter.flush(now).into_iter().chain(health) {
            self.send(a);
        }
    }

    /// New alert outputs (a config reload); the Alerter's windows are kept.
    pub fn set_outs(&mut self, outs: Vec<Box<dyn AlertOut>>) {
        self.outs = outs;
    }

    /// A new window (a config reload): the limits start afresh, the outputs and the
    /// counts stay.
    pub fn set_window(&mut self, window: Duration) {
        (self.alerter, self.health) = (Alerter::new(window), HealthLimiter::new(window));
    }
}

/// Every output of the daemon, fed by the connection stage.
pub struct Outputs {
    pub audit: AuditLog,
    pub exposures: ExposureTable,
    human: Option<HumanLines>,
    pub alerts: AlertStage,
    /// The firewall's word, set against each `reached` record.
    pub contradictions: Contradictions,
    clock: KernelClock,
    /// Kernel timestamps of the records encoded since the last flush.
    unflushed: Vec<u64>,
    /// Those of each chunk handed to the audit log's writer and not yet written: the
    /// latency is measured once the writer says they are in the file.
    unwritten: VecDeque<(u64, Vec<u64>)>,
    record_latency: LatencyHistogram,
    alert_latency: LatencyHistogram,
    records: u64,
    /// Community IDs made lately (a reach names its attempt's tuple).
    community_ids: community_id::Recent,
    /// The `host` and `host_id` of every record.
    host: Arc<str>,
    host_id: Option<Arc<str>>,
}

impl Outputs {
    pub fn new(audit: AuditLog, quiet: bool, alerts: AlertStage, clock: KernelClock) -> Self {
        Self {
            audit,
            exposures: ExposureTable::default(),
            human: (!quiet).then_some(HumanLines),
            alerts,
            contradictions: Contradictions::default(),
            clock,
            unflushed: Vec::new(),
            unwritten: VecDeque::new(),
            record_latency: LatencyHistogram::default(),
            alert_latency: LatencyHistogram::default(),
            records: 0,
            community_ids: community_id::Recent::default(),
            host: "-".into(),
            host_id: None,
        }
        .named_by(&Observer::this_host())
    }

    /// The host every record names (the observer the formats name too).
    pub fn named_by(mut self, observer: &Observer) -> Self {
        self.host = observer.hostname.as_str().into();
        self.host_id = observer.host_id.as_deref().map(Into::into);
        self
    }

    /// What every record written carries: its host, and its Community ID.
    fn stamp(&mut self, rec: &mut Record) {
        rec.community_id = Some(self.community_ids.of_record(rec));
        (rec.host, rec.host_id) = (Some(self.host.clone()), self.host_id.clone());
    }

    /// A verdict on an attempt (blocked, or reached through a proxy): named by the
    /// attempt it judges, so that a verdict made again from the same attempt after a
    /// restart is the same record.
    pub fn verdict(&mut self, mut rec: Record, attempt: &Observation) {
        rec.record_id = Some(record_id::of_kernel(boot_id(), attempt.cpu, attempt.rec_seq, rec.stage));
        self.connection(rec, None);
    }

    pub fn set_quiet(&mut self, quiet: bool) {
        self.human = (!quiet).then_some(HumanLines);
    }

    /// One connection record to every consumer. `kernel`: the kernel record it comes
    /// from: its timestamp gives the latency figures, and its (boot id, cpu, sequence
    /// number) goes into the audit log so that a duplicate after a crash is told (None
    /// for verdicts, which userspace makes, after a wait by design).
    pub fn connection(&mut self, mut rec: Record, kernel: Option<&Observation>) {
        if let Some(obs) = kernel {
            (rec.boot_id, rec.cpu, rec.kseq) = (Some(boot_id()), Some(obs.cpu), Some(obs.rec_seq));
            rec.record_id = Some(record_id::of_kernel(boot_id(), obs.cpu, obs.rec_seq, rec.stage));
        }
        let contradiction = self.contradictions.annotate(&mut rec);
        self.stamp(&mut rec);
        let rec = Arc::new(rec);
        self.records += 1;
        self.audit.record(&rec);
        let seen_ns = kernel.map(|o| o.ktime_ns);
        if let Some(t) = seen_ns {
            // Measured once the line reaches the file (`audit_report`).
            self.unflushed.push(t);
        }
        self.exposures.record(&rec);
        if let Some(h) = &mut self.human {
            h.record(&rec);
        }
        if let Some(a) = contradiction {
            self.alerts.raise(a);
        }
        if self.alerts.observe(&rec, Instant::now()) {
            if let Some(t) = seen_ns {
                self.alert_latency.record(self.clock.ktime_now().saturating_sub(t) / 1000);
            }
        }
    }

    /// A `verified` record (a probe of `--verify-every`).
    pub fn verified(&mut self, mut rec: Record, container_port: Option<u16>) {
        self.stamp(&mut rec);
        rec.record_id = Some(record_id::of_content(&rec));
        let rec = Arc::new(rec);
        self.records += 1;
        self.audit.record(&rec);
        self.exposures.record(&rec);
        if let Some(h) = &mut self.human {
            h.record(&rec);
        }
        self.alerts.verified(&rec, container_port, Instant::now());
    }

    /// A record about the daemon itself (daemon_start, kernel_state_reset): the audit
    /// log only.
    pub fn notice<T: serde::Serialize>(&mut self, rec: &T) {
        self.audit.write_record(rec);
    }

    /// The batch is over: the audit log's buffer goes to its writer (never waiting).
    pub fn flush(&mut self) {
        let said = self.audit.flush();
        if !self.unflushed.is_empty() {
            self.unwritten.push_back((self.audit.handed(), std::mem::take(&mut self.unflushed)));
        }
        // No log (nothing is ever acknowledged): measured at once, never kept.
        self.measure_written();
        self.audit_health(said.map(|line| (line, Some(true))));
    }

    /// The latency of the records the writer has written by now.
    fn measure_written(&mut self) {
        // The times first: every write they name is within `written`, read after.
        let times = self.audit.write_times();
        let written = self.audit.written();
        let (now, now_instant) = (self.clock.ktime_now(), Instant::now());
        while self.unwritten.front().is_some_and(|(seq, _)| *seq <= written) {
            let Some((seq, stamps)) = self.unwritten.pop_front() else { break };
            // When the write that took chunk `seq` finished (now, if its time gave way
            // or there is no log), on the kernel's clock.
            let at = times
                .iter()
                .find(|(s, _)| *s >= seq)
                .map_or(now, |(_, t)| now.saturating_sub(now_instant.saturating_duration_since(*t).as_nanos() as u64));
            for t in stamps {
                self.record_latency.record(at.saturating_sub(t) / 1000);
            }
        }
    }

    /// What the audit log's writer said: an acknowledgement (the latency of what it
    /// wrote), or a line for the operator.
    pub fn audit_report(&mut self, report: Report) {
        let said = self.audit.report(report);
        self.measure_written();
        self.audit_health(said);
    }

    /// A line about the audit log: a health alert when it says the log fails
    /// (`Some(true)`) or works again (`Some(false)`, if it was failing); any other
    /// notice (a reopen) goes to stderr.
    pub fn audit_health(&mut self, said: Option<(String, Option<bool>)>) {
        let Some((line, failing)) = said else { return };
        match failing {
            Some(true) => self.alerts.health_failing(HealthCondition::AuditLog, None, line),
            Some(false) if self.alerts.health_is_failing(HealthCondition::AuditLog, None) => {
                self.alerts.health_recovered(HealthCondition::AuditLog, None, line);
            }
            _ => crate::say!("{line}"),
        }
    }

    /// About once a second: alert windows that are over.
    pub fn tick(&mut self, now: Instant) {
        self.alerts.flush(now);
    }

    pub fn audit_stats(&self) -> AuditStats {
        self.audit.stats()
    }

    pub fn alert_counts(&self) -> AlertCounts {
        self.alerts.counts
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn latencies(&self) -> (LatencySummary, LatencySummary) {
        (self.record_latency.summary(), self.alert_latency.summary())
    }
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
