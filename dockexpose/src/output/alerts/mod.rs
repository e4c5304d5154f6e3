//! Alerts for people, and for the sinks: what each says (`text`), how connection alerts
//! are limited so that a flood or a scan cannot drown the real one (`limiter`), and
//! the daemon's own health (`health`).

mod health;
mod limiter;
mod text;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

pub use health::{HealthCondition, HealthInfo, HealthLimiter, HealthState};
pub use limiter::Alerter;
pub use text::headline;

use super::record::Record;

/// What an alert is about; sinks tell them apart (journald's MESSAGE_ID, a webhook's
/// `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A published port reached from outside.
    Reached,
    /// A port published only on loopback, reached from outside.
    LoopbackOnly,
    /// A port not published at all, reached by direct routing.
    Unpublished,
    /// An attempt the firewall held.
    Blocked,
    /// A probe of `watch --verify-every` found a port reachable.
    Verified,
    /// The count line that closes a window in which an alert repeated.
    Repeated,
    /// Alerts held back by the rate limits (a scan or a flood?).
    Suppressed,
    /// A connection that contradicts the firewall's word: a port it denies reached,
    /// or a source it bans in INPUT reaching a container through FORWARD.
    Contradiction,
    /// `watch --verify-every` found a port's verdict changed after the ground moved
    /// (a ruleset change, a Docker event, a link or address change).
    ExposureChanged,
    /// The daemon's own health: records lost, the audit log failing, Docker
    /// unreachable, an interface detached... and their recovery.
    Health,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::Reached,
        AlertKind::LoopbackOnly,
        AlertKind::Unpublished,
        AlertKind::Blocked,
        AlertKind::Verified,
        AlertKind::Repeated,
        AlertKind::Suppressed,
        AlertKind::Health,
        AlertKind::Contradiction,
        AlertKind::ExposureChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Reached => "reached",
            AlertKind::LoopbackOnly => "loopback_only",
            AlertKind::Unpublished => "unpublished",
            AlertKind::Blocked => "blocked",
            AlertKind::Verified => "verified",
            AlertKind::Repeated => "repeated",
            AlertKind::Suppressed => "suppressed",
            AlertKind::Health => "health",
            AlertKind::Contradiction => "contradiction",
            AlertKind::ExposureChanged => "exposure_changed",
        }
    }

    fn of(kind: &str) -> Self {
        match kind {
            "loopback_only" => AlertKind::LoopbackOnly,
            "unpublished" => AlertKind::Unpublished,
            "blocked" => AlertKind::Blocked,
            _ => AlertKind::Reached,
        }
    }
}

/// One alert: its kind, the line people read (untrusted strings already escaped),
/// and the record that raised it (None for the shared rate-limit summary and for
/// health alerts).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub text: String,
    pub record: Option<Arc<Record>>,
    /// Goes through the sinks' priority lane, which a flood of other alerts cannot
    /// fill: the first alert of a container in a window, the summary of its window, and
    /// health alerts.
    pub priority: bool,
    /// Only on `health` alerts.
    pub health: Option<HealthInfo>,
}

impl Alert {
    pub fn new(kind: AlertKind, text: String, record: Option<Arc<Record>>) -> Self {
        Self { kind, text, record, priority: false, health: None }
    }

    /// Syslog severity (also journald's PRIORITY): warning (4) for an exposure and for
    /// alerts held back in a flood, notice (5) for blocked attempts, count lines and
    /// recovered health; for a failing health condition, its own (err, 3, when records
    /// are lost or the audit log fails; warning otherwise).
    pub fn severity(&self) -> u8 {
        match (self.kind, &self.health) {
            (AlertKind::Health, Some(h)) if h.state == HealthState::Recovered => 5,
            (AlertKind::Health, Some(h)) => h.condition.severity(),
            (AlertKind::Health, None) => 4,
            (AlertKind::Reached | AlertKind::LoopbackOnly | AlertKind::Unpublished | AlertKind::Verified, _) => 4,
            // The firewall's word is false: the operator believes something closed.
            (AlertKind::Contradiction, _) => 3,
            (AlertKind::ExposureChanged, _) => 4,
            (AlertKind::Suppressed, _) => 4,
            (AlertKind::Blocked | AlertKind::Repeated, _) => 5,
        }
    }
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
