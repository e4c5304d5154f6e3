//! The daemon's figures: counters on stderr, loss warnings, and the status report
//! that `dockexpose status` and the metrics read.

use std::time::{Duration, Instant};

use super::Watcher;
use crate::{
    error::Result,
    output::human,
    stats::PipelineCounters,
    status::{
        metrics,
        report::{Attachment, AuditHealth, Health, InventoryHealth, Losses, MapFill, SinkHealth, VerifyHealth},
        Query, StatusReport,
    },
};
use crate::{fleet::ship::ShipState, output::alerts::HealthCondition};
use dockexpose_common::Counter;

/// A loss keeps the status degraded this long after it was noticed.
const DEGRADED_AFTER_LOSS: Duration = Duration::from_secs(300);
/// An inventory older than this, while Docker is unreachable, degrades the status.
const STALE_INVENTORY: Duration = Duration::from_secs(30);

impl Watcher {
    pub(super) fn counters(&self) -> Result<PipelineCounters> {
        let (record_latency, alert_latency) = self.outputs.latencies();
        Ok(PipelineCounters {
            kernel: self.kernel.counters()?,
            reader_lost: self.reader.lost(),
            reader_wakeups: self.reader.wakeups(),
            records_read: self.reader.records(),
            stderr_lines_dropped: crate::output::console::stderr_lines_dropped(),
            record_latency,
            alert_latency,
            unbound_attempts: self.unbound_attempts,
            answers_received: self.answers_received,
            attempts_untracked: self.attempts_untracked,
            probe_records: self.probe_records,
        })
    }

    pub(super) fn warn_about_loss(&mut self) -> Result<()> {
        let now = self.counters()?;
        let warnings = self.losses.warnings(&now);
        if !warnings.is_empty() {
            self.last_loss = Some(Instant::now());
        }
        for (condition, w) in warnings {
            self.outputs.alerts.health_failing(condition, None, w);
        }
        Ok(())
    }

    /// Every --stats-interval: a short line for people on what happened since the
    /// last one (every counter is in `dockexpose status`).
    pub(super) fn report_counters(&mut self) -> Result<()> {
        let now = self.counters()?;
        crate::say!(
            "dockexpose: since the last summary: {}. Every counter: dockexpose status",
            now.summary(&self.counters_said)
        );
        self.counters_said = now;
        self.warn_about_loss()
    }

    /// At exit: the run's summary, then every counter on one line, the run's record.
    pub(super) fn report_final_counters(&mut self) -> Result<()> {
        let now = self.counters()?;
        crate::say!("dockexpose: this run: {}", now.summary(&PipelineCounters::default()));
        crate::say!("dockexpose: final counters: {}", now.format());
        self.warn_about_loss()
    }

    /// `--ship`'s troubles as health alerts: stopped, records lost to rotation, lagging.
    pub(super) fn ship_alerts(&mut self) {
        let Some(s) = self.ship.as_ref().map(|s| s.stats.snapshot()) else { return };
        let alerts = &mut self.outputs.alerts;
        let cond = HealthCondition::Ship;
        if s.state == ShipState::Stopped {
            alerts.health_failing(cond, None, s.degraded().unwrap_or_default());
        }
        if s.lost_records > 0 {
            alerts.health_failing(
                cond,
                Some("lost"),
                format!(
                    "{} records rotated out of the audit log before {} had them: lost to the store (the rotation keeps too little while the store is away; raise --max-files or --rotate-size-mb)",
                    s.lost_records, s.target
                ),
            );
        }
        match s.degraded().filter(|_| s.state != ShipState::Stopped) {
            Some(why) => alerts.health_failing(cond, Some("lag"), why),
            None if alerts.health_is_failing(cond, Some("lag")) => {
                alerts.health_recovered(cond, Some("lag"), format!("shipping to {} caught up", s.target));
            }
            None => {}
        }
    }

    /// A question from the status socket or the metrics server.
    pub(super) fn answer(&mut self, query: Query) {
        let report = self.status_report();
        match query {
            Query::Status(tx) => {
                let _ = tx.send(report);
            }
            Query::Metrics(tx) => {
                let _ = tx.send(metrics::encode_report(&report, &self.outputs.alert_counts()));
            }
        }
    }

    pub(super) fn status_report(&self) -> StatusReport {
        let counters = self.counters().unwrap_or_default();
        let audit = self.outputs.audit_stats();
        let sinks: Vec<SinkHealth> =
            self.sinks.iter().map(|s| SinkHealth { name: s.name().to_string(), stats: s.stats() }).collect();
        let losses = Losses {
            kernel_ring_full: counters.kernel.get(Counter::RingbufFull),
            reader_lost: counters.reader_lost,
            audit_lines_lost: audit.lines_lost,
            sink_alerts_dropped: sinks.iter().map(|s| s.stats.dropped_full + s.stats.dropped_failed).sum(),
            bridge_uninspected: counters.kernel.get(Counter::BridgeUninspected),
            attempts_untracked: self.attempts_untracked,
            stderr_lines_lost: crate::output::console::stderr_lines_lost(),
        };
        // "tcx" or "cls_bpf": how each bridge's programs were attached.
        let mut attachments: Vec<Attachment> = self
            .kernel
            .bridge_mechanisms()
            .map(|(b, how)| Attachment { iface: b.to_string(), role: "bridge".into(), mode: how.name().into() })
            .collect();
        // An uplink without a recorded mode: what the kernel has, not what was asked for.
        let tc_mode = self.kernel.features().tc_mechanism().name();
        attachments.extend(self.kernel.uplinks().map(|u| Attachment {
            iface: u.to_string(),
            role: "uplink".into(),
            mode: self.uplink_modes.get(u).copied().unwrap_or(tc_mode).to_string(),
        }));
        let inventory = InventoryHealth {
            source: if self.settings.docker_endpoint.is_some() { "docker".into() } else { "off".into() },
            connected: self.docker_connected,
            age_s: self.inventory_at.map(|t| t.elapsed().as_secs()),
            containers: self.inventory.as_ref().map_or(0, |i| i.containers.len()),
            networks: self.inventory.as_ref().map_or(0, |i| i.networks.len()),
            last_error: self.docker_problem.clone(),
        };
        let mut reasons = Vec::new();
        if self.settings.docker_endpoint.is_some() && !self.docker_connected {
            let stale = self.inventory_at.is_none_or(|t| t.elapsed() > STALE_INVENTORY);
            if stale {
                reasons.push(format!(
                    "Docker does not answer{}: records lack container identity",
                    self.docker_problem
                        .as_deref()
                        .map_or(String::new(), |p| format!(" ({})", human::escape_untrusted(p)))
                ));
            }
        }
        if audit.failing {
            reasons.push(format!(
                "the audit log cannot be written: {} records held until it can be (the ring is not released past them)",
                audit.lines_held
            ));
        }
        if attachments.iter().all(|a| a.role != "bridge") {
            reasons.push("no container bridge is watched".into());
        }
        if self.last_loss.is_some_and(|t| t.elapsed() < DEGRADED_AFTER_LOSS) {
            reasons.push("records were lost in the last 5 minutes (see losses)".into());
        }
        if self.prefixes_left_out > 0 {
            reasons.push(format!(
                "{} local and trusted prefixes are over the kernel's bound and left out",
                self.prefixes_left_out
            ));
        }
        for s in &sinks {
            if s.stats.last_error.is_some() && s.stats.queued >= s.stats.capacity {
                reasons
                    .push(format!("alert sink {} is failing and its queue is full", human::escape_untrusted(&s.name)));
            }
        }
        let ship = self.ship.as_ref().map(|s| s.stats.snapshot());
        if let Some(why) = ship.as_ref().and_then(crate::fleet::ship::ShipStatus::degraded) {
            reasons.push(human::escape_untrusted(&why));
        }
        if let Some(s) = ship.as_ref().filter(|s| s.lost_records > 0) {
            reasons.push(format!("{} records rotated out of the audit log before they were shipped", s.lost_records));
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            health: Health {
                state: if reasons.is_empty() { "healthy".into() } else { "degraded".into() },
                reasons,
                uptime_s: self.started.elapsed().as_secs(),
                attachments,
                inventory,
                losses,
                audit: AuditHealth {
                    path: self.outputs.audit.path().map(|p| p.display().to_string()),
                    lines_written: audit.lines_written,
                    lines_lost: audit.lines_lost,
                    failing: audit.failing,
                    lines_held: audit.lines_held,
                    bytes_held: audit.bytes_held,
                    ring_bytes_unreleased: self.ring_unreleased,
                    reopens: audit.reopens,
                    rotations: audit.rotations,
                },
                sinks,
                maps: self
                    .kernel
                    .map_fill()
                    .into_iter()
                    .map(|(m, e, c)| MapFill { map: m.into(), entries: e, capacity: c })
                    .collect(),
                records: self.outputs.records(),
                kernel: self.kernel.features().clone(),
                verify: self.verify.as_ref().map(|v| VerifyHealth {
                    every_s: v.settings.every.as_secs(),
                    last_success_age_s: v.last_success.unwrap_or(self.started).elapsed().as_secs(),
                    runs_ok: v.runs_ok,
                    runs_failed: v.runs_failed,
                }),
                ship,
            },
            exposures: self.outputs.exposures.rows(),
            counters: counters.named().into_iter().map(|(name, value)| (name.to_string(), value)).collect(),
        }
    }
}
