//! The status report as Prometheus metrics (text exposition, prometheus-client).
//!
//! Built at scrape time from the daemon's own figures: nothing is counted twice, and
//! the per-record path carries no metric cost. Labels come from the inventory
//! (container, host_port, proto), never from sources: their number is bounded by what
//! Docker publishes.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::report::StatusReport;
use crate::output::fanout::AlertCounts;

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

pub fn encode_report(report: &StatusReport, alerts: &AlertCounts) -> String {
    let mut r = Registry::with_prefix("dockexpose");
    r.register("build", "Build of the running daemon", Info::new(vec![("version", report.version.clone())]));

    let attempts = counter_family(
        &mut r,
        "exposure_attempts",
        "Connections from outside attempted at a published port (seen on an uplink)",
    );
    let reached = counter_family(&mut r, "exposure_reached", "Connections from outside that reached the container");
    let blocked = counter_family(&mut r, "exposure_blocked", "Attempts the firewall held");
    let sources = gauge_family(&mut r, "exposure_distinct_sources", "Distinct sources seen (exact up to 10 000)");
    for e in &report.exposures {
        let labels: Labels = vec![
            ("container", e.container.clone()),
            ("host_port", e.host_port.map_or_else(|| "none".to_string(), |p| p.to_string())),
            ("proto", e.proto.clone()),
            ("exposure", e.exposure.clone()),
        ];
        // Two bindings of one port (0.0.0.0 and ::) share labels: their figures add up.
        attempts.get_or_create(&labels).inc_by(e.attempts);
        reached.get_or_create(&labels).inc_by(e.reached);
        blocked.get_or_create(&labels).inc_by(e.blocked);
        sources.get_or_create(&labels).inc_by(e.distinct_sources as i64);
    }

    let verified =
        gauge_family(&mut r, "port_verified", "The last verify probe's verdict of a published port (1, by verdict)");
    for e in report.exposures.iter().filter(|e| e.verified.is_some()) {
        let verdict = e.verified.clone().unwrap_or_default();
        let labels: Labels = vec![
            ("container", e.container.clone()),
            ("host_port", e.host_port.map_or_else(|| "none".to_string(), |p| p.to_string())),
            ("proto", e.proto.clone()),
            ("verdict", verdict),
        ];
        verified.get_or_create(&labels).set(1);
    }

    let h = &report.health;
    if let Some(v) = &h.verify {
        gauge(&mut r, "verify_interval_seconds", "watch --verify-every, in seconds", v.every_s as i64);
        gauge(
            &mut r,
            "verify_last_success_age_seconds",
            "Seconds since the last verify run that completed (since the start when none did yet)",
            v.last_success_age_s as i64,
        );
        let runs = counter_family(&mut r, "verify_runs", "Verify runs, by result");
        runs.get_or_create(&vec![("result", "ok".into())]).inc_by(v.runs_ok);
        runs.get_or_create(&vec![("result", "failed".into())]).inc_by(v.runs_failed);
    }
    if let Some(s) = &h.ship {
        counter(&mut r, "ship_records", "Records the store took (watch --ship)", s.records_shipped);
        counter(&mut r, "ship_batches", "Batches the store took, this run", s.batches);
        counter(&mut r, "ship_retries", "Batches sent again after an error or a timeout, this run", s.retries);
        counter(
            &mut r,
            "ship_lost_records",
            "Records rotated out of the audit log before they were shipped",
            s.lost_records,
        );
        gauge(&mut r, "ship_lag_records", "Records in the audit log the store does not have yet", s.lag_records as i64);
        gauge(&mut r, "ship_lag_seconds", "Age of the oldest record the store does not have yet", s.lag_seconds as i64);
        let stopped = s.state == crate::fleet::ship::ShipState::Stopped;
        gauge(&mut r, "ship_stopped", "1 when the store refused a batch and shipping stopped", i64::from(stopped));
    }
    counter(&mut r, "records", "Connection records made", h.records);
    let alerts_family = counter_family(&mut r, "alerts", "Alerts raised, by kind");
    for (kind, n) in alerts.iter() {
        alerts_family.get_or_create(&vec![("kind", kind.as_str().to_string())]).inc_by(n);
    }
    let lost = counter_family(
        &mut r,
        "records_lost",
        "Records lost, by where (kernel ring buffer full, reader overrun, audit log write failure)",
    );
    lost.get_or_create(&vec![("stage", "kernel_ring".into())]).inc_by(h.losses.kernel_ring_full);
    lost.get_or_create(&vec![("stage", "reader".into())]).inc_by(h.losses.reader_lost);
    lost.get_or_create(&vec![("stage", "audit_log".into())]).inc_by(h.losses.audit_lines_lost);
    counter(
        &mut r,
        "bridge_uninspected_packets",
        "Packets from outside a bridge program could not inspect",
        h.losses.bridge_uninspected,
    );
    counter(&mut r, "attempts_untracked", "Attempts that got no verdict (tracker full)", h.losses.attempts_untracked);
    counter(&mut r, "audit_lines_written", "Lines written to the audit log", h.audit.lines_written);
    gauge(&mut r, "audit_failing", "1 while writing the audit log fails", i64::from(h.audit.failing));

    let delivered = counter_family(&mut r, "sink_alerts_delivered", "Alerts a sink delivered");
    let dropped = counter_family(
        &mut r,
        "sink_alerts_dropped",
        "Alerts a sink dropped: queue full, or delivery given up after retries",
    );
    let retries = counter_family(&mut r, "sink_retries", "Delivery attempts retried");
    let timeouts = counter_family(&mut r, "sink_timeouts", "Delivery attempts that took longer than 2 s");
    let depth = gauge_family(&mut r, "sink_queue_depth", "Alerts waiting in a sink's queue");
    let capacity = gauge_family(&mut r, "sink_queue_capacity", "Size of a sink's queue");
    for sink in &h.sinks {
        let (l, s): (Labels, _) = (vec![("sink", sink.name.clone())], &sink.stats);
        delivered.get_or_create(&l).inc_by(s.delivered);
        retries.get_or_create(&l).inc_by(s.retries);
        timeouts.get_or_create(&l).inc_by(s.timeouts);
        depth.get_or_create(&l).set(s.queued as i64);
        capacity.get_or_create(&l).set(s.capacity as i64);
        let mut full = l.clone();
        full.push(("reason", "queue_full".into()));
        dropped.get_or_create(&full).inc_by(s.dropped_full);
        let mut failed = l;
        failed.push(("reason", "delivery_failed".into()));
        dropped.get_or_create(&failed).inc_by(s.dropped_failed);
    }

    let entries = gauge_family(&mut r, "map_entries", "Entries in a kernel map that outsiders fill");
    let cap = gauge_family(&mut r, "map_capacity_entries", "Capacity of that kernel map");
    for m in &h.maps {
        let l: Labels = vec![("map", m.map.clone())];
        entries.get_or_create(&l).set(m.entries as i64);
        cap.get_or_create(&l).set(m.capacity as i64);
    }
    let attached = gauge_family(&mut r, "attached", "Interfaces the kernel programs are attached to (1 each)");
    for a in &h.attachments {
        attached
            .get_or_create(&vec![("iface", a.iface.clone()), ("role", a.role.clone()), ("mode", a.mode.clone())])
            .set(1);
    }
    let k = &h.kernel;
    let info =
        gauge_family(&mut r, "kernel_info", "The running kernel, its tier and how the tc programs are attached (1)");
    info.get_or_create(&vec![
        ("kernel", k.kernel.clone()),
        ("tier", k.tier().into()),
        ("tc_hooks", k.tc_mechanism().name().into()),
    ])
    .set(1);
    let feature = gauge_family(&mut r, "kernel_feature", "What the kernel offers: 1 present, 0 missing");
    for (name, present) in [
        ("tcx", k.tcx),
        ("conntrack_kfuncs", k.conntrack_kfuncs),
        ("ring_buffer", k.ring_buffer),
        ("btf", k.btf),
        ("xdp_live_frames", k.xdp_live_frames),
    ] {
        feature.get_or_create(&vec![("feature", name.to_string())]).set(i64::from(present));
    }
    gauge(&mut r, "docker_connected", "1 while the Docker API answers", i64::from(h.inventory.connected));
    gauge(
        &mut r,
        "inventory_age_seconds",
        "Seconds since Docker's inventory was last received (-1: never)",
        h.inventory.age_s.map_or(-1, |a| a as i64),
    );
    gauge(&mut r, "healthy", "1 when healthy, 0 when degraded", i64::from(h.state == "healthy"));
    gauge(&mut r, "uptime_seconds", "Seconds since the daemon started", h.uptime_s as i64);

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::{Health, SinkHealth};

    #[test]
    fn names_follow_the_conventions_and_labels_come_from_the_inventory() {
        let mut report = StatusReport {
            version: "0.1.0".into(),
            health: Health { state: "healthy".into(), ..Health::default() },
            exposures: vec![],
            counters: Default::default(),
        };
        let mut web = crate::output::exposures::ExposureRow::sample("web");
        (web.attempts, web.reached, web.blocked, web.distinct_sources) = (7, 5, 2, 3);
        report.exposures.push(web);
        report.health.sinks.push(SinkHealth {
            name: "webhook http://127.0.0.1:1/x".into(),
            stats: crate::output::sinks::SinkStats { dropped_full: 4, ..Default::default() },
        });
        report.health.losses.kernel_ring_full = 9;
        report.health.kernel = crate::kernel::features::Features {
            kernel: "6.1.0-57-amd64".into(),
            conntrack_kfuncs: true,
            ..Default::default()
        };
        let text = encode_report(&report, &AlertCounts::default());
        assert!(text.contains("dockexpose_build_info{version=\"0.1.0\"} 1"), "{text}");
        assert!(
            text.contains("dockexpose_kernel_info{kernel=\"6.1.0-57-amd64\",tier=\"no-tcx\",tc_hooks=\"cls_bpf\"} 1"),
            "{text}"
        );
        assert!(text.contains("dockexpose_kernel_feature{feature=\"tcx\"} 0"), "{text}");
        assert!(text.contains("dockexpose_kernel_feature{feature=\"conntrack_kfuncs\"} 1"), "{text}");
        assert!(text.contains("dockexpose_exposure_reached_total{container=\"web\",host_port=\"8080\",proto=\"tcp\",exposure=\"published\"} 5"), "{text}");
        assert!(text.contains("dockexpose_exposure_blocked_total{container=\"web\",host_port=\"8080\",proto=\"tcp\",exposure=\"published\"} 2"), "{text}");
        assert!(text.contains("dockexpose_records_lost_total{stage=\"kernel_ring\"} 9"), "{text}");
        assert!(text.contains("reason=\"queue_full\"} 4"), "{text}");
        assert!(text.contains("dockexpose_healthy 1"), "{text}");
        assert!(!text.contains("198.18."), "no source address is ever a label");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
