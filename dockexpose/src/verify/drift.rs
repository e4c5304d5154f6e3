//! Drift: which verdicts changed since the last verify run, and why it ran. Pure: the
//! causes come from `watch::ground`, the verdicts from the runs, the clock from the
//! caller.
//!
//! - `Debounce`: a firewall reload is dozens of transactions in a second or two; one
//!   verify run after it settles, not one per transaction.
//! - `changes`: the ports whose verdict differs between two runs.
//! - `exposure_changed_json` / `exposure_changed_text`: the audit line and the alert.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Why verdicts may have changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// "ruleset" | "link" | "address" | "docker" | "firewalld" | "poll".
    pub kind: &'static str,
    /// The process that made the change, where the kernel names it.
    pub process: Option<String>,
    pub pid: Option<u32>,
    /// What changed ("dxd0 added", "tables: filter"), where known.
    pub detail: Option<String>,
}

/// A run starts once no cause came for this long...
pub const QUIET: Duration = Duration::from_secs(1);
/// ...but never later than this after the first cause of the batch: a host whose
/// ruleset never settles (a flapping script) is still re-verified.
pub const MAX_WAIT: Duration = Duration::from_secs(3);

/// The causes since the last run, and when the next run is due.
#[derive(Debug, Default)]
pub struct Debounce {
    causes: Vec<Cause>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// Notes a cause seen at `now`.
    pub fn push(&mut self, cause: Cause, now: Instant) {
        // One entry per (kind, process, detail): 40 `iptables` calls are one cause,
        // named by the first of them (its pid).
        let same = |c: &Cause| c.kind == cause.kind && c.process == cause.process && c.detail == cause.detail;
        if !self.causes.iter().any(same) {
            self.causes.push(cause);
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the run is due: QUIET after the last cause, at most MAX_WAIT after the
    /// first; None with no cause pending.
    pub fn due(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_WAIT))
    }

    /// The pending causes, first first; the debounce starts afresh.
    pub fn take(&mut self) -> Vec<Cause> {
        self.first = None;
        self.last = None;
        std::mem::take(&mut self.causes)
    }
}

/// A port's verdict is kept per published port, protocol, family and uplink.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VerdictKey {
    pub host_port: u16,
    /// "tcp" | "udp".
    pub proto: &'static str,
    /// "ipv4" | "ipv6".
    pub family: &'static str,
    pub uplink: String,
}

/// The keys whose verdict ("EXPOSED", "HELD", "PROXY") differs between two runs, in
/// key order, as (key, before, after). Only keys in both runs count: a port that went
/// away (container stopped) changed nothing the outside can reach, and a newly
/// published port is reported by the run itself, not as drift. So both verdicts are
/// always Some; the Options leave room for reporting appearances later.
pub fn changes(
    before: &BTreeMap<VerdictKey, &'static str>,
    after: &BTreeMap<VerdictKey, &'static str>,
) -> Vec<(VerdictKey, Option<&'static str>, Option<&'static str>)> {
    before
        .iter()
        .filter_map(|(key, from)| match after.get(key) {
            Some(to) if to != from => Some((key.clone(), Some(*from), Some(*to))),
            _ => None,
        })
        .collect()
}

/// The audit line's fields, in this order.
#[derive(Serialize)]
pub struct ExposureChanged<'a> {
    event: &'static str,
    ts: &'a str,
    host_port: u16,
    proto: &'a str,
    family: &'a str,
    uplink: &'a str,
    from: Option<&'a str>,
    to: Option<&'a str>,
    cause: &'a Cause,
}

/// One `exposure_changed` audit line; unknowns are null.
pub fn exposure_changed<'a>(
    ts: &'a str,
    key: &'a VerdictKey,
    from: Option<&'a str>,
    to: Option<&'a str>,
    cause: &'a Cause,
) -> ExposureChanged<'a> {
    ExposureChanged {
        event: "exposure_changed",
        ts,
        host_port: key.host_port,
        proto: key.proto,
        family: key.family,
        uplink: &key.uplink,
        from,
        to,
        cause,
    }
}

/// That line as JSON (no newline).
pub fn exposure_changed_json(
    ts: &str,
    key: &VerdictKey,
    from: Option<&str>,
    to: Option<&str>,
    cause: &Cause,
) -> String {
    serde_json::to_string(&exposure_changed(ts, key, from, to, cause)).expect("plain strings and numbers serialize")
}

/// The alert: "8080/tcp (ipv4, via eth0) went from HELD to EXPOSED after a ruleset
/// change by iptables (pid 1234)".
pub fn exposure_changed_text(key: &VerdictKey, from: Option<&str>, to: Option<&str>, cause: &Cause) -> String {
    let (from, to) = (from.unwrap_or("unknown"), to.unwrap_or("unknown"));
    format!(
        "{}/{} ({}, via {}) went from {from} to {to} after {}",
        key.host_port,
        key.proto,
        key.family,
        key.uplink,
        describe(cause)
    )
}

/// "a ruleset change by iptables (pid 1234)", "a link change: dxd0 added".
pub fn describe(cause: &Cause) -> String {
    let what = match cause.kind {
        "ruleset" => "a ruleset change",
        "firewalld" => "a firewalld change",
        "link" => "a link change",
        "address" => "an address change",
        "docker" => "a Docker change",
        "poll" => "a periodic check",
        other => other,
    };
    let mut s = what.to_string();
    if let Some(p) = &cause.process {
        s.push_str(&format!(" by {p}"));
    }
    if let Some(pid) = cause.pid {
        s.push_str(&format!(" (pid {pid})"));
    }
    if let Some(d) = &cause.detail {
        s.push_str(&format!(": {d}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(process: &str, pid: u32) -> Cause {
        Cause { kind: "ruleset", process: Some(process.into()), pid: Some(pid), detail: None }
    }

    /// Drives a debounce as the daemon does: causes at `at` (offsets from t0), a run
    /// whenever the clock passes `due`; the run times.
    fn runs(at: &[Duration]) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        let mut out = Vec::new();
        let end = *at.last().unwrap() + MAX_WAIT + QUIET;
        let mut next = at.iter().peekable();
        let mut now = Duration::ZERO;
        while now <= end {
            while next.peek().is_some_and(|t| **t <= now) {
                d.push(ruleset("iptables", 1000 + out.len() as u32), t0 + *next.next().unwrap());
            }
            if d.due().is_some_and(|due| due <= t0 + now) {
                assert!(!d.take().is_empty());
                out.push(now);
            }
            now += Duration::from_millis(10);
        }
        out
    }

    #[test]
    fn a_burst_of_40_edits_in_2_s_is_at_most_2_runs() {
        let burst: Vec<_> = (0..40).map(|i| Duration::from_millis(i * 50)).collect();
        let r = runs(&burst);
        assert!(!r.is_empty() && r.len() <= 2, "runs at {r:?}");
        // The run follows the last edit by the quiet period.
        assert_eq!(r, [Duration::from_millis(1950) + QUIET]);
    }

    #[test]
    fn an_endless_stream_still_runs_every_max_wait() {
        let stream: Vec<_> = (0..100).map(|i| Duration::from_millis(i * 50)).collect();
        let r = runs(&stream);
        assert_eq!(r[0], MAX_WAIT, "the first run is not held back past MAX_WAIT");
        assert_eq!(r.len(), 2, "runs at {r:?}");
    }

    #[test]
    fn a_lone_cause_runs_after_the_quiet_period_and_take_resets() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.due(), None);
        d.push(ruleset("nft", 1), t0);
        assert_eq!(d.due(), Some(t0 + QUIET));
        d.push(ruleset("nft", 2), t0 + Duration::from_millis(500));
        d.push(
            Cause { kind: "link", process: None, pid: None, detail: Some("dxd0 added".into()) },
            t0 + Duration::from_millis(600),
        );
        assert_eq!(d.due(), Some(t0 + Duration::from_millis(1600)));
        let taken = d.take();
        assert_eq!(taken.len(), 2, "the same process's edits are one cause: {taken:?}");
        assert_eq!(taken[0], ruleset("nft", 1), "the first cause comes first, with its pid");
        assert_eq!(taken[1].kind, "link");
        assert_eq!(d.due(), None);
        assert!(d.take().is_empty());
    }

    fn key(port: u16, uplink: &str) -> VerdictKey {
        VerdictKey { host_port: port, proto: "tcp", family: "ipv4", uplink: uplink.into() }
    }

    #[test]
    fn changes_are_the_keys_in_both_runs_with_other_verdicts() {
        let before = BTreeMap::from([
            (key(8080, "eth0"), "HELD"),
            (key(8081, "eth0"), "EXPOSED"),
            (key(9000, "eth0"), "PROXY"),
            (key(8080, "eth1"), "HELD"),
        ]);
        let after = BTreeMap::from([
            (key(8080, "eth0"), "EXPOSED"),
            (key(8081, "eth0"), "EXPOSED"),
            // 9000 went away: not reported. 7000 is new: not reported.
            (key(7000, "eth0"), "EXPOSED"),
            (key(8080, "eth1"), "PROXY"),
        ]);
        assert_eq!(
            changes(&before, &after),
            vec![(key(8080, "eth0"), Some("HELD"), Some("EXPOSED")), (key(8080, "eth1"), Some("HELD"), Some("PROXY"))]
        );
        assert!(changes(&after, &after).is_empty());
    }

    #[test]
    fn the_audit_line_and_the_alert() {
        let json = exposure_changed_json(
            "2026-12-07T07:00:00Z",
            &key(8080, "eth0"),
            Some("HELD"),
            Some("EXPOSED"),
            &ruleset("iptables", 1234),
        );
        assert_eq!(
            json,
            r#"{"event":"exposure_changed","ts":"2026-12-07T07:00:00Z","host_port":8080,"proto":"tcp","family":"ipv4","uplink":"eth0","from":"HELD","to":"EXPOSED","cause":{"kind":"ruleset","process":"iptables","pid":1234,"detail":null}}"#
        );
        let link = Cause { kind: "link", process: None, pid: None, detail: Some("eth1 down".into()) };
        let v: serde_json::Value =
            serde_json::from_str(&exposure_changed_json("t", &key(53, "eth1"), None, Some("HELD"), &link)).unwrap();
        assert_eq!(v["from"], serde_json::Value::Null);
        assert_eq!(v["cause"]["process"], serde_json::Value::Null);
        assert_eq!(v["cause"]["detail"], "eth1 down");
        assert_eq!(
            exposure_changed_text(&key(8080, "eth0"), Some("HELD"), Some("EXPOSED"), &ruleset("iptables", 1234)),
            "8080/tcp (ipv4, via eth0) went from HELD to EXPOSED after a ruleset change by iptables (pid 1234)"
        );
        assert_eq!(
            exposure_changed_text(&key(53, "eth1"), Some("EXPOSED"), Some("HELD"), &link),
            "53/tcp (ipv4, via eth1) went from EXPOSED to HELD after a link change: eth1 down"
        );
    }
}
