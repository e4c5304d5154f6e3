//! The status report: what is exposed, and how healthy the daemon is. Serialized as
//! JSON between the daemon and `dockexpose status`, and shown as tables for people.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::output::{exposures::ExposureRow, human::escape_untrusted, sinks::SinkStats};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub health: Health,
    pub exposures: Vec<ExposureRow>,
    /// Every pipeline counter by name (the periodic line on stderr is a summary).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// "healthy" or "degraded".
    pub state: String,
    /// Why it is degraded (empty when healthy).
    pub reasons: Vec<String>,
    pub uptime_s: u64,
    pub attachments: Vec<Attachment>,
    pub inventory: InventoryHealth,
    pub losses: Losses,
    pub audit: AuditHealth,
    pub sinks: Vec<SinkHealth>,
    pub maps: Vec<MapFill>,
    /// Records made since start (audit log, or not).
    pub records: u64,
    /// What the kernel offers and the tier that follows (kernel/features.rs).
    #[serde(default)]
    pub kernel: crate::kernel::features::Features,
    /// `watch --verify-every`: its runs (null when off).
    #[serde(default)]
    pub verify: Option<VerifyHealth>,
    /// `watch --ship`: how the store keeps up (null when off).
    #[serde(default)]
    pub ship: Option<crate::fleet::ship::ShipStatus>,
}

/// How `watch --verify-every` keeps up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyHealth {
    /// --verify-every, in seconds.
    pub every_s: u64,
    /// Seconds since the last run that completed, or since the start when none did yet
    /// (so that a verify that never completes grows stale too).
    pub last_success_age_s: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub iface: String,
    /// "bridge" or "uplink".
    pub role: String,
    /// "tcx", "xdp native", "xdp generic".
    pub mode: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryHealth {
    /// "docker", or "off" (--no-docker).
    pub source: String,
    pub connected: bool,
    /// Seconds since Docker last gave an inventory (null: never).
    pub age_s: Option<u64>,
    pub containers: usize,
    pub networks: usize,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    /// Records the kernel could not write: the ring buffer was full.
    pub kernel_ring_full: u64,
    /// Records the reader could not hand over.
    pub reader_lost: u64,
    /// Audit-log lines not written (disk full, I/O error).
    pub audit_lines_lost: u64,
    /// Alerts dropped by the sinks (queue full or delivery given up).
    pub sink_alerts_dropped: u64,
    /// Packets from outside a bridge program could not inspect.
    pub bridge_uninspected: u64,
    /// Attempts that got no verdict (the tracker was full).
    pub attempts_untracked: u64,
    /// Lines for people that could not be written to stderr (closed, EPIPE).
    #[serde(default)]
    pub stderr_lines_lost: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHealth {
    /// The file, "-" for stdout, null when off.
    pub path: Option<String>,
    pub lines_written: u64,
    pub lines_lost: u64,
    pub failing: bool,
    /// While it fails: lines held in memory until they can be written, their bytes,
    /// and the ring's bytes not released to the kernel (they hold the rest).
    #[serde(default)]
    pub lines_held: u64,
    #[serde(default)]
    pub bytes_held: u64,
    #[serde(default)]
    pub ring_bytes_unreleased: u64,
    pub reopens: u64,
    pub rotations: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    #[serde(flatten)]
    pub stats: SinkStats,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

impl StatusReport {
    /// `dockexpose status`'s exit code: 0 healthy, 1 degraded.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.health.state != "healthy")
    }

    /// Tables for people. Untrusted strings (container names, images) are escaped.
    pub fn to_table(&self) -> String {
        let h = &self.health;
        let mut out = String::new();
        let _ = writeln!(out, "dockexpose {}: {} (up {} s)", self.version, h.state.to_uppercase(), h.uptime_s);
        for r in &h.reasons {
            let _ = writeln!(out, "  degraded: {}", escape_untrusted(r));
        }
        let inv = &h.inventory;
        let _ = writeln!(
            out,
            "inventory: {} ({}; {} containers on {} networks{})",
            inv.source,
            if inv.connected { "connected" } else { "NOT connected" },
            inv.containers,
            inv.networks,
            inv.age_s.map_or(", never received".to_string(), |a| format!(", {a} s old"))
        );
        let att: Vec<String> =
            h.attachments.iter().map(|a| format!("{} {} ({})", a.role, escape_untrusted(&a.iface), a.mode)).collect();
        if !h.kernel.kernel.is_empty() {
            let _ = writeln!(out, "{}", h.kernel.line());
            for (_, limit) in h.kernel.limits() {
                let _ = writeln!(out, "  this kernel: {limit}");
            }
        }
        let _ = writeln!(out, "attached: {}", if att.is_empty() { "nothing".into() } else { att.join(", ") });
        let l = &h.losses;
        let _ = writeln!(
            out,
            "losses: ring full {}, reader {}, audit lines {}, sink alerts {}, uninspected {}, attempts without verdict {}",
            l.kernel_ring_full, l.reader_lost, l.audit_lines_lost, l.sink_alerts_dropped, l.bridge_uninspected, l.attempts_untracked
        );
        let a = &h.audit;
        let _ = writeln!(
            out,
            "audit log: {} ({} lines written, {} lost{})",
            a.path.as_deref().map_or("off".to_string(), escape_untrusted),
            a.lines_written,
            a.lines_lost,
            if a.failing {
                format!(
                    ", FAILING now: {} lines ({} bytes) held, {} ring bytes not released",
                    a.lines_held, a.bytes_held, a.ring_bytes_unreleased
                )
            } else {
                String::new()
            }
        );
        for sink in &h.sinks {
            let s = &sink.stats;
            let _ = writeln!(
                out,
                "sink {}: {}/{} queued, {} delivered, {} dropped (queue full), {} dropped (failed), {} retries, {} timeouts{}",
                escape_untrusted(&sink.name),
                s.queued,
                s.capacity,
                s.delivered,
                s.dropped_full,
                s.dropped_failed,
                s.retries,
                s.timeouts,
                s.last_error.as_deref().map_or(String::new(), |e| format!("; last error: {}", escape_untrusted(e)))
            );
        }
        for m in &h.maps {
            let _ = writeln!(out, "map {}: {} of {} entries", m.map, m.entries, m.capacity);
        }
        out.push('\n');
        let header = [
            "CONTAINER",
            "IMAGE",
            "PUBLISHED",
            "EXPOSURE",
            "ATTEMPTS",
            "REACHED",
            "BLOCKED",
            "SOURCES",
            "LAST SEEN",
            "TOP SOURCES",
        ];
        let rows: Vec<[String; 10]> = self
            .exposures
            .iter()
            .map(|r| {
                let published = match (r.host_ip, r.host_port) {
                    (Some(ip), Some(p)) if ip.is_ipv6() => format!("[{ip}]:{p} -> {}/{}", r.container_port, r.proto),
                    (Some(ip), Some(p)) => format!("{ip}:{p} -> {}/{}", r.container_port, r.proto),
                    _ => format!("(not published) {}/{}", r.container_port, r.proto),
                };
                let sources = format!("{}{}", r.distinct_sources, if r.distinct_sources_exact { "" } else { "+" });
                let top = r
                    .top_sources
                    .iter()
                    .map(|s| format!("{} ({})", s.ip, s.connections))
                    .collect::<Vec<_>>()
                    .join(", ");
                [
                    escape_untrusted(&r.container),
                    escape_untrusted(&r.image),
                    published,
                    r.exposure.clone(),
                    r.attempts.to_string(),
                    r.reached.to_string(),
                    r.blocked.to_string(),
                    sources,
                    r.last_seen.clone().unwrap_or_else(|| "-".into()),
                    if top.is_empty() { "-".into() } else { top },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&header.map(str::to_string)));
        for r in &rows {
            let _ = writeln!(out, "{}", line(r));
        }
        if rows.is_empty() {
            out.push_str("(no published ports)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> ExposureRow {
        ExposureRow::sample(name)
    }

    #[test]
    fn the_table_shows_each_exposure_and_escapes_names() {
        let report = StatusReport {
            version: "0.1.0".into(),
            health: Health { state: "healthy".into(), ..Health::default() },
            exposures: vec![row("web"), row("evil\u{1b}[2J")],
            ..StatusReport::default()
        };
        let t = report.to_table();
        assert!(t.contains("HEALTHY"), "{t}");
        assert!(t.contains("0.0.0.0:8080 -> 80/tcp") && t.contains("198.18.3.2 (2)"), "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
        assert_eq!(report.exit_code(), 0);
        let degraded = StatusReport { health: Health { state: "degraded".into(), ..Health::default() }, ..report };
        assert_eq!(degraded.exit_code(), 1);
    }

    #[test]
    fn the_report_round_trips_as_json() {
        let report = StatusReport {
            version: "x".into(),
            exposures: vec![row("web")],
            counters: [("reached_emitted".to_string(), 3)].into(),
            ..StatusReport::default()
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&text).unwrap(), report);
    }
}
