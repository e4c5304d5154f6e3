//! The alert limits and lines, without root: floods, scans, windows, escaping.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    limiter::{
        MAX_ADDRESS_TARGETS, MAX_EXPOSURES, MAX_NEW_EXPOSURES_PER_TARGET, MAX_NEW_PER_SECOND, MAX_OPEN,
        MAX_SOURCES_PER_EXPOSURE,
    },
    *,
};
use crate::{
    correlate,
    inventory::model::tests::sample,
    kernel::event::{Observation, Proto, Stage},
    output::record::Record,
};

/// The alert texts, for records the tests change in place.
impl Alerter {
    fn observe_text(&mut self, r: &Record, now: Instant) -> Option<String> {
        self.observe(&Arc::new(r.clone()), now).map(|a| a.text)
    }
    fn verified_text(&mut self, r: &Record, port: Option<u16>, now: Instant) -> Option<String> {
        self.verified(&Arc::new(r.clone()), port, now).map(|a| a.text)
    }
    fn flush_text(&mut self, now: Instant) -> Vec<String> {
        self.flush(now).into_iter().map(|a| a.text).collect()
    }
}

#[test]
fn alerts_carry_their_kind_and_record() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let r = Arc::new(rec("198.18.3.2", "172.17.0.2", 80));
    let alert = a.observe(&r, t0).unwrap();
    assert_eq!((alert.kind, alert.record.as_ref()), (AlertKind::Reached, Some(&r)));
    assert!(a.observe(&r, t0).is_none());
    let closing = a.flush(t0 + Duration::from_secs(61));
    assert_eq!(closing.len(), 1);
    assert_eq!((closing[0].kind, closing[0].record.as_ref()), (AlertKind::Repeated, Some(&r)));
    let lo = a.observe(&Arc::new(rec("198.18.3.2", "172.17.0.2", 9000)), t0).unwrap();
    assert_eq!(lo.kind, AlertKind::LoopbackOnly);
    let direct = a.observe(&Arc::new(rec("198.18.3.2", "172.17.0.3", 5432)), t0).unwrap();
    assert_eq!(direct.kind, AlertKind::Unpublished);
}

/// A `reached` record from `src` to `dst:port` (host side 198.18.3.1:8080), named
/// from the sample inventory.
pub(crate) fn rec(src: &str, dst: &str, port: u16) -> Record {
    let obs = Observation {
        ktime_ns: 0,
        stage: Stage::Reached,
        proto: Proto::Tcp,
        src: src.parse().unwrap(),
        src_port: 1,
        dst: dst.parse().unwrap(),
        dst_port: port,
        orig_dst: Some(("198.18.3.1".parse().unwrap(), 8080)),
        ifindex: 0,
        seq: 0,
        flags: 0,
        cpu: 0,
        rec_seq: 0,
    };
    correlate::record(&obs, Stage::Reached, SystemTime::UNIX_EPOCH, "docker0", Some(&sample()))
}

#[test]
fn first_connection_alerts_and_repeats_are_counted() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let r = rec("198.18.3.2", "172.17.0.2", 80);
    assert_eq!(
        a.observe_text(&r, t0).unwrap(),
        "EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reached from 198.18.3.2"
    );
    assert!(a.observe_text(&r, t0 + Duration::from_secs(1)).is_none());
    assert!(a.observe_text(&r, t0 + Duration::from_secs(2)).is_none());
    assert!(a.flush_text(t0 + Duration::from_secs(30)).is_empty(), "window still open");
    assert_eq!(
        a.flush_text(t0 + Duration::from_secs(61)),
        ["EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reached from 198.18.3.2 (3 connections in 60 s)"]
    );
    // A new window starts with a new alert.
    assert!(a.observe_text(&r, t0 + Duration::from_secs(62)).is_some());
}

#[test]
fn each_source_and_kind_alerts_separately() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    assert!(a.observe_text(&rec("198.18.3.2", "172.17.0.2", 80), t0).is_some());
    assert!(a.observe_text(&rec("198.18.3.3", "172.17.0.2", 80), t0).is_some());
    let lo = a.observe_text(&rec("198.18.3.2", "172.17.0.2", 9000), t0).unwrap();
    assert!(lo.starts_with("EXPOSED LOOPBACK-ONLY PORT web"), "{lo}");
    let direct = a.observe_text(&rec("198.18.3.2", "172.17.0.3", 5432), t0).unwrap();
    assert!(direct.starts_with("EXPOSED UNPUBLISHED PORT db (postgres) port 5432/tcp"), "{direct}");
    assert!(a.flush_text(t0 + Duration::from_secs(61)).is_empty(), "single connections need no count line");
}

#[test]
fn a_flood_of_new_sources_is_rate_limited_and_said() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let shown = (0..200u32)
        .filter(|i| {
            a.observe_text(&rec(&format!("198.18.{}.{}", i / 250, i % 250 + 1), "172.17.0.2", 80), t0).is_some()
        })
        .count();
    assert_eq!(shown, MAX_NEW_PER_SECOND as usize);
    let lines = a.flush_text(t0 + Duration::from_millis(1500));
    assert!(lines.iter().any(|l| l.contains("150 more alerts not shown")), "{lines:?}");
}

/// The i-th of up to 131 072 distinct spoofed sources (198.18.0.0/15).
fn spoofed(i: u32) -> IpAddr {
    std::net::Ipv4Addr::from(0xC612_0000 + i).into()
}

/// The count in a "N more alerts not shown" line, 0 for any other line.
fn not_shown(line: &str) -> u64 {
    line.strip_prefix("WARNING: ")
        .and_then(|l| l.split_once(" more alerts not shown"))
        .map_or(0, |(n, _)| n.parse().unwrap())
}

#[test]
fn a_new_exposure_alerts_through_a_flood_at_another() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    // 100 000 distinct spoofed sources at exposure A (web, 8080/tcp) within one second.
    let mut flood = rec("198.18.3.2", "172.17.0.2", 80);
    let mut shown = 0;
    for i in 0..100_000u32 {
        flood.src_ip = spoofed(i);
        shown += usize::from(a.observe_text(&flood, t0 + Duration::from_micros(u64::from(i) * 9)).is_some());
    }
    assert!(shown <= MAX_NEW_PER_SECOND as usize, "{shown} lines for one exposure in one second");
    assert!(a.sizes().0 <= MAX_OPEN && a.sizes().1 <= MAX_EXPOSURES);
    let now = t0 + Duration::from_millis(950);
    // Another container: its first connection is shown, however late in the second.
    let db = a.observe_text(&rec("203.0.113.7", "172.17.0.3", 5432), now).expect("new exposure: another container");
    assert!(db.starts_with("EXPOSED UNPUBLISHED PORT db (postgres) port 5432/tcp"), "{db}");
    // Another port of the flooded container, and another kind on it.
    let mut other_port = rec("203.0.113.7", "172.17.0.2", 80);
    other_port.host_port = Some(8443);
    assert!(a.observe_text(&other_port, now).is_some(), "new exposure: another port");
    let lo = a.observe_text(&rec("203.0.113.7", "172.17.0.2", 9000), now).expect("new exposure: another kind");
    assert!(lo.starts_with("EXPOSED LOOPBACK-ONLY PORT web"), "{lo}");
    // Every alert of the flood is either shown or counted.
    let lines = a.flush_text(t0 + Duration::from_millis(1500));
    let counted: u64 = lines.iter().map(|l| not_shown(l)).sum();
    assert_eq!(shown as u64 + counted, 100_000, "{lines:?}");
}

#[test]
fn a_flood_of_distinct_sources_at_one_exposure_stays_bounded() {
    let window = Duration::from_secs(60);
    let mut a = Alerter::new(window);
    let t0 = Instant::now();
    let mut flood = rec("198.18.3.2", "172.17.0.2", 80);
    let (mut shown, mut lines) = (0u64, Vec::new());
    // 100 000 distinct sources, 1 000 a second for 100 s, flushed every second.
    for s in 0..100u32 {
        for j in 0..1000u32 {
            flood.src_ip = spoofed(s * 1000 + j);
            let at = t0 + Duration::from_secs(s.into()) + Duration::from_millis(j.into());
            shown += u64::from(a.observe_text(&flood, at).is_some());
        }
        lines.extend(a.flush_text(t0 + Duration::from_secs(u64::from(s) + 1)));
        assert!(a.sizes().0 <= MAX_OPEN && a.sizes().1 <= MAX_EXPOSURES);
    }
    lines.extend(a.flush_text(t0 + Duration::from_secs(100) + window));
    let counted: u64 = lines.iter().map(|l| not_shown(l)).sum();
    assert_eq!(shown + counted, 100_000, "every alert is shown or counted: {lines:?}");
    // Two windows: a bounded number of sources shown in each, and a few summary lines.
    let total = shown as usize + lines.len();
    assert!(total <= 2 * (MAX_SOURCES_PER_EXPOSURE as usize + 2), "{shown} alerts and {} summary lines", lines.len());
    assert_eq!(a.sizes(), (0, 0, 0), "everything closed at the end");
}

#[test]
fn a_sweep_of_addresses_without_a_container_is_bounded_and_a_container_still_alerts() {
    let window = Duration::from_secs(60);
    let mut a = Alerter::new(window);
    let t0 = Instant::now();
    // 70 000 distinct destinations with no known container within 70 ms: each one a new
    // exposure, more than the tables hold. They share the per-second budget.
    let mut r = rec("198.18.3.2", "172.17.0.9", 80);
    assert!(r.container.is_none());
    let mut shown = 0u64;
    for i in 0..70_000u32 {
        r.dst_ip = std::net::Ipv4Addr::from(0x0A00_0000 + i).into();
        let alert = a.observe(&Arc::new(r.clone()), t0 + Duration::from_micros(i.into()));
        assert!(alert.as_ref().is_none_or(|a| !a.priority), "an address is no container: no priority lane");
        shown += u64::from(alert.is_some());
    }
    assert_eq!(shown, u64::from(MAX_NEW_PER_SECOND));
    let (open, exposures, targets) = a.sizes();
    assert!(open <= MAX_OPEN && exposures <= MAX_EXPOSURES && targets <= MAX_ADDRESS_TARGETS, "{:?}", a.sizes());
    // A container's first connection is shown at once, through the priority lane.
    let db = a.observe(&Arc::new(rec("203.0.113.7", "172.17.0.3", 5432)), t0 + Duration::from_millis(100)).unwrap();
    assert!(db.priority && db.text.starts_with("EXPOSED UNPUBLISHED PORT db (postgres)"), "{db:?}");
    let lines = a.flush_text(t0 + Duration::from_secs(1));
    let counted: u64 = lines.iter().map(|l| not_shown(l)).sum();
    assert_eq!(shown + counted, 70_000, "{lines:?}");
}

/// A verified record as the daemon builds it: an attempt's, from the probe source.
fn verified(verdict: &'static str, uplink: &str, host_port: u16) -> Record {
    let obs = Observation::sample(Stage::Attempted, Proto::Tcp, "198.51.100.77", 20001, "198.18.3.1", host_port);
    let mut r = correlate::record(&obs, Stage::Attempted, SystemTime::UNIX_EPOCH, uplink, Some(&sample()));
    r.stage = crate::output::record::STAGE_VERIFIED;
    r.verdict = Some(verdict);
    r.why = Some("reached the container".into());
    r
}

#[test]
fn verified_exposures_alert_once_per_container_port_and_uplink_in_a_window() {
    let mut a = Alerter::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let r = verified("EXPOSED", "eth0", 8080);
    assert_eq!(a.observe_text(&r, t0), None, "verified records take their own path");
    assert_eq!(
        a.verified_text(&r, Some(80), t0).unwrap(),
        "EXPOSED (verified) web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reachable from outside on eth0"
    );
    assert_eq!(a.verified_text(&r, Some(80), t0 + Duration::from_secs(5)), None, "same port and uplink in the window");
    let mut v6 = r.clone();
    v6.host_ip = Some("fd42::1".parse().unwrap());
    assert_eq!(a.verified_text(&v6, Some(80), t0), None, "the other family of the same port: one alert");
    assert!(a.verified_text(&verified("EXPOSED", "eth1", 8080), Some(80), t0).is_some(), "another uplink");
    assert!(a.verified_text(&verified("EXPOSED", "eth0", 8443), Some(80), t0).is_some(), "another port");
    let proxy = a.verified_text(&verified("PROXY", "eth0", 9999), Some(80), t0).unwrap();
    assert!(proxy.ends_with("on eth0 (through a proxy on the host: docker-proxy)"), "{proxy}");
    assert_eq!(a.verified_text(&verified("HELD", "eth0", 7777), Some(80), t0), None, "HELD: no alert");
    assert!(a.flush_text(t0 + Duration::from_secs(61)).is_empty(), "no count lines for verified alerts");
    assert!(a.verified_text(&r, Some(80), t0 + Duration::from_secs(62)).is_some(), "a new window, a new alert");
    let mut evil = verified("EXPOSED", "eth0\u{1b}[2J", 8080);
    std::sync::Arc::make_mut(evil.container.as_mut().unwrap()).name = "x\u{202e}y".into();
    let line = a.verified_text(&evil, None, t0 + Duration::from_secs(200)).unwrap();
    assert!(!line.contains('\u{1b}') && !line.contains('\u{202e}') && line.contains("-> ?/tcp"), "{line}");
}

/// The count of a summary line ("WARNING: N more ..."), 0 for any other line.
fn held(line: &str) -> u64 {
    line.strip_prefix("WARNING: ").and_then(|l| l.split_once(" more ")).and_then(|(n, _)| n.parse().ok()).unwrap_or(0)
}

/// A reach of `port`/`proto` of db by direct routing (no publication, no host side).
fn scan_of_db(port: u16, proto: &'static str) -> Record {
    let mut r = rec("203.0.113.7", "172.17.0.3", port);
    (r.host_ip, r.host_port, r.proto, r.exposure) = (None, None, proto, "unpublished");
    r
}

#[test]
fn a_port_scan_of_one_container_yields_a_bounded_number_of_alerts() {
    let window = Duration::from_secs(60);
    let mut a = Alerter::new(window);
    let t0 = Instant::now();
    // 130 000 new exposures of db within one window: every TCP and UDP port, each
    // one a new (container, port, protocol), from one scanner.
    let mut shown = Vec::new();
    for i in 0..130_000u32 {
        let (port, proto) = if i < 65_000 { (i + 1, "tcp") } else { (i - 64_999, "udp") };
        let at = t0 + Duration::from_micros(u64::from(i) * 300);
        shown.extend(a.observe_text(&scan_of_db(port as u16, proto), at));
    }
    assert_eq!(shown.len(), MAX_NEW_EXPOSURES_PER_TARGET as usize, "alerts for one scan of one container");
    assert!(
        shown[0].starts_with("EXPOSED UNPUBLISHED PORT db (postgres) port 1/tcp"),
        "the first is shown: {}",
        shown[0]
    );
    let lines = a.flush_text(t0 + window + Duration::from_secs(1));
    let summary: Vec<&String> = lines.iter().filter(|l| l.contains("more ports of db (postgres)")).collect();
    assert_eq!(summary.len(), 1, "one summary line for the window: {lines:?}");
    let counted: u64 = lines.iter().map(|l| held(l)).sum();
    assert_eq!(shown.len() as u64 + counted, 130_000, "every new exposure is shown or counted: {lines:?}");
}

#[test]
fn untrusted_names_are_escaped() {
    let mut r = rec("198.18.3.2", "172.17.0.2", 80);
    std::sync::Arc::make_mut(r.container.as_mut().unwrap()).name = "web\u{1b}[2J\nFAKE".into();
    let (_, line) = headline(&r).unwrap();
    assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line}");
}

/// The health alerts of `out`: (condition, state, count, text).
fn health_of(out: Vec<Alert>) -> Vec<(HealthCondition, HealthState, u64, String)> {
    out.into_iter()
        .map(|a| {
            assert!(a.kind == AlertKind::Health && a.priority && a.record.is_none(), "{a:?}");
            let h = a.health.unwrap();
            (h.condition, h.state, h.count, a.text)
        })
        .collect()
}

#[test]
fn a_health_condition_alerts_at_once_then_once_a_window_with_counts() {
    use HealthCondition::RecordsLost;
    let window = Duration::from_secs(60);
    let mut h = HealthLimiter::new(window);
    let t0 = Instant::now();
    let first = h.failing(RecordsLost, None, "WARNING: 3 connection records lost".into(), t0).unwrap();
    assert_eq!(first.severity(), 3, "records lost: err");
    assert_eq!(
        health_of(vec![first]),
        [(RecordsLost, HealthState::Failing, 1, "WARNING: 3 connection records lost".into())]
    );
    // A loss every second for a minute: held, then one line with the count.
    for s in 1..60 {
        assert!(h.failing(RecordsLost, None, format!("WARNING: {s} more"), t0 + Duration::from_secs(s)).is_none());
        assert!(h.flush(t0 + Duration::from_secs(s)).is_empty(), "within the window");
    }
    let closing = health_of(h.flush(t0 + window));
    assert_eq!(
        closing,
        [(RecordsLost, HealthState::Failing, 59, "WARNING: 59 more (59 times in the last 60 s)".into())]
    );
    assert!(h.flush(t0 + window * 3).is_empty(), "nothing new, nothing said");
    // Events have no recovery; a later one alerts at once again.
    assert!(h.failing(RecordsLost, None, "again".into(), t0 + window * 3).is_some());
}

#[test]
fn a_state_that_clears_says_recovered_and_subjects_are_apart() {
    use HealthCondition::{AuditLog, Detached, Docker};
    let window = Duration::from_secs(60);
    let mut h = HealthLimiter::new(window);
    let t0 = Instant::now();
    assert!(h.recovered(Docker, None, "Docker answers".into(), t0).is_none(), "never failing: nothing to recover");
    assert_eq!(h.failing(Docker, None, "warning: Docker down".into(), t0).unwrap().severity(), 4);
    let back = h.recovered(Docker, None, "Docker answers again".into(), t0 + Duration::from_secs(5)).unwrap();
    assert_eq!(back.severity(), 5, "recovered: notice");
    assert_eq!(health_of(vec![back]), [(Docker, HealthState::Recovered, 1, "Docker answers again".into())]);
    // Flapping within the window: the failure is held, so is the recovery; the flush
    // says both as one line, in the state it ended in.
    assert!(h.failing(Docker, None, "warning: Docker down".into(), t0 + Duration::from_secs(6)).is_none());
    assert!(h.recovered(Docker, None, "Docker answers again".into(), t0 + Duration::from_secs(7)).is_none());
    let closing = health_of(h.flush(t0 + Duration::from_secs(65)));
    assert_eq!(
        closing,
        [(Docker, HealthState::Recovered, 1, "Docker answers again (1 times in the last 60 s)".into())]
    );
    // Each interface has its own limit; the audit log its own.
    let a = h.failing(Detached, Some("br-a"), "bridge br-a disappeared".into(), t0).unwrap();
    assert_eq!(a.health.as_ref().unwrap().subject.as_deref(), Some("br-a"));
    assert!(h.failing(Detached, Some("br-b"), "bridge br-b disappeared".into(), t0).is_some());
    assert!(h.failing(AuditLog, None, "WARNING: writing the audit log failed".into(), t0).unwrap().severity() == 3);
    assert!(h.recovered(Detached, Some("br-a"), "bridge br-a watched".into(), t0 + Duration::from_secs(1)).is_some());
    // Subjects are bounded: 1 000 interfaces share one entry past the cap.
    for i in 0..1000 {
        let _ = h.failing(Detached, Some(&format!("veth{i}")), format!("veth{i} gone"), t0 + Duration::from_secs(2));
    }
    let said = h.flush(t0 + Duration::from_secs(200)).len();
    assert!(said <= 300, "{said} lines");
}
