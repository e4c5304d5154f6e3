//! Live alerts for operators: one line per new (container, port, source, kind) within a
//! window, then a count when the window closes. Bounded in memory and in lines per
//! second, so that a flood from random sources cannot flood the terminal as well.
//!
//! A flood cannot blind them either: the first alert for a new exposure (a container, or
//! a destination address when no container is known, a port, a protocol and a kind) is
//! always shown, whatever the rate and however full the tables. Only further sources at an
//! exposure already alerted on are limited, and counted in a summary line.

use std::{
    collections::HashMap as StdHashMap,
    fmt::Write,
    net::IpAddr,
    time::{Duration, Instant},
};

use std::sync::Arc;

use super::{human::escape_untrusted, record::Record};

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
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Reached,
        AlertKind::LoopbackOnly,
        AlertKind::Unpublished,
        AlertKind::Blocked,
        AlertKind::Verified,
        AlertKind::Repeated,
        AlertKind::Suppressed,
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
/// and the record that raised it (None for the rate-limit summary).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub text: String,
    pub record: Option<Arc<Record>>,
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Outsiders choose these keys (addresses, ports): a randomly seeded hasher, much
/// cheaper than SipHash and still resistant to crafted collisions.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// Most (exposure, source) keys tracked at once; past that, new sources at a known
/// exposure are counted, not shown, and a new exposure is shown but not tracked per source.
const MAX_OPEN: usize = 50_000;
/// Most exposures remembered at once. Real exposures are bounded by containers x ports x
/// kinds; past this cap a new exposure is still shown, just not remembered.
const MAX_EXPOSURES: usize = 65_536;
/// Most alert lines a second for new sources at a known exposure; past that they are
/// counted and summarised. New exposures count towards it but are never held back by it.
const MAX_NEW_PER_SECOND: u32 = 50;
/// Most sources shown per exposure and window, its first alert included; past that they
/// are counted and summarised, so that a flood at one exposure shows a bounded number of lines.
const MAX_SOURCES_PER_EXPOSURE: u32 = 50;

/// What was exposed, whoever reached it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExposureKey {
    kind: &'static str,
    /// Container id, or the destination address when no container is known.
    target: Target,
    port: u16,
    proto: &'static str,
}

/// The container reached (its shared identity: a clone is a reference count), or
/// the destination address when no container is known.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Container(std::sync::Arc<super::record::ContainerRef>),
    Address(IpAddr),
}

/// A port a probe of `watch --verify-every` found reachable, on one uplink.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VerifiedKey {
    target: Target,
    port: u16,
    proto: &'static str,
    uplink: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AlertKey {
    exposure: ExposureKey,
    src: IpAddr,
}

struct Open {
    first: Instant,
    count: u64,
    headline: String,
    record: Arc<Record>,
}

struct Exposure {
    /// Start of the window in which `shown` sources were shown.
    window_start: Instant,
    /// Last connection: the exposure is forgotten a window after it.
    last: Instant,
    shown: u32,
}

pub struct Alerter {
    window: Duration,
    open: HashMap<AlertKey, Open>,
    exposures: HashMap<ExposureKey, Exposure>,
    second_started: Option<Instant>,
    new_this_second: u32,
    suppressed: u64,
    /// When the last summary line was shown: after the first, at most one a window.
    last_summary: Option<Instant>,
    /// Verified exposures alerted on, and when (one alert per window).
    verified: HashMap<VerifiedKey, Instant>,
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    if ip.is_ipv6() { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

/// "web (nginx:1.27)" or "unknown container at 10.0.0.2".
fn who(rec: &Record) -> String {
    match &rec.container {
        Some(c) => format!("{} ({})", escape_untrusted(&c.name), escape_untrusted(&c.image)),
        None => format!("unknown container at {}", rec.dst_ip),
    }
}

/// The published host side(s): the exact one when known, else every candidate.
fn host_side(rec: &Record) -> String {
    match (rec.host_ip, rec.host_port) {
        (Some(ip), Some(port)) => endpoint(ip, port),
        (None, Some(port)) => format!("*:{port}"),
        _ if !rec.published.is_empty() => {
            rec.published.iter().map(|h| endpoint(h.host_ip, h.host_port)).collect::<Vec<_>>().join("|")
        }
        _ => "?".into(),
    }
}

/// The alert kind of a record, or None when it deserves no alert. Cheap: no
/// formatting, so that records which only add to a count cost little.
fn kind(rec: &Record) -> Option<&'static str> {
    match (rec.stage, rec.exposure) {
        ("reached", "loopback_only") => Some("loopback_only"),
        ("reached", "unpublished") => Some("unpublished"),
        ("reached", _) => Some("reached"),
        ("blocked", _) => Some("blocked"),
        _ => None,
    }
}

/// The alert kind and line for a record, or None when it deserves no alert.
pub fn headline(rec: &Record) -> Option<(&'static str, String)> {
    let target = format!("{}/{}", rec.dst_port, rec.proto);
    let line = match (rec.stage, rec.exposure) {
        ("reached", "loopback_only") => (
            "loopback_only",
            format!(
                "EXPOSED LOOPBACK-ONLY PORT {} {} -> {target} reached from {}: published only on loopback, yet reachable from outside",
                who(rec),
                host_side(rec),
                rec.src_ip
            ),
        ),
        ("reached", "unpublished") => (
            "unpublished",
            format!(
                "EXPOSED UNPUBLISHED PORT {} port {target} reached from {}: not published, yet direct routing to the container got through",
                who(rec),
                rec.src_ip
            ),
        ),
        ("reached", _) if rec.path == Some("proxy") => (
            "reached",
            format!("EXPOSED {} {} reached from {} through a proxy on the host (docker-proxy)", who(rec), host_side(rec), rec.src_ip),
        ),
        ("reached", _) => ("reached", format!("EXPOSED {} {} -> {target} reached from {}", who(rec), host_side(rec), rec.src_ip)),
        ("blocked", _) => (
            "blocked",
            format!("BLOCKED {} {} attempted from {}: the firewall held", who(rec), host_side(rec), rec.src_ip),
        ),
        _ => return None,
    };
    Some(line)
}

/// "EXPOSED (verified) web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reachable from outside on eth0"
fn verified_headline(rec: &Record, container_port: Option<u16>) -> String {
    let port = container_port.map_or_else(|| "?".to_string(), |p| p.to_string());
    let proxy = if rec.verdict == Some("PROXY") { " (through a proxy on the host: docker-proxy)" } else { "" };
    format!(
        "EXPOSED (verified) {} {} -> {port}/{} reachable from outside on {}{proxy}",
        who(rec),
        host_side(rec),
        rec.proto,
        escape_untrusted(&rec.iface)
    )
}

impl Alerter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::default(),
            exposures: HashMap::default(),
            second_started: None,
            new_this_second: 0,
            suppressed: 0,
            last_summary: None,
            verified: HashMap::default(),
        }
    }

    /// A `verified` record (a probe of `watch --verify-every`): the line for a port
    /// found reachable (verdict EXPOSED or PROXY), once per (container, host port,
    /// protocol, uplink) per window; None for HELD and for repeats. `container_port`:
    /// the binding's container side.
    pub fn verified(&mut self, rec: &Arc<Record>, container_port: Option<u16>, now: Instant) -> Option<Alert> {
        if rec.stage != super::record::STAGE_VERIFIED || !matches!(rec.verdict, Some("EXPOSED" | "PROXY")) {
            return None;
        }
        let key = VerifiedKey {
            target: rec.container.as_ref().map_or(Target::Address(rec.dst_ip), |c| Target::Container(c.clone())),
            port: rec.host_port.unwrap_or(rec.dst_port),
            proto: rec.proto,
            uplink: rec.iface.clone(),
        };
        if self.verified.get(&key).is_some_and(|t| now.duration_since(*t) < self.window) {
            return None;
        }
        if self.verified.len() < MAX_EXPOSURES || self.verified.contains_key(&key) {
            self.verified.insert(key, now);
        }
        Some(Alert { kind: AlertKind::Verified, text: verified_headline(rec, container_port), record: Some(rec.clone()) })
    }

    /// Registers a record; returns the line to show now, if any.
    pub fn observe(&mut self, rec: &Arc<Record>, now: Instant) -> Option<Alert> {
        let kind = kind(rec)?;
        let exposure = ExposureKey {
            kind,
            target: rec.container.as_ref().map_or(Target::Address(rec.dst_ip), |c| Target::Container(c.clone())),
            port: rec.host_port.unwrap_or(rec.dst_port),
            proto: rec.proto,
        };
        if let Some(e) = self.exposures.get_mut(&exposure) {
            e.last = now;
        }
        let key = AlertKey { exposure, src: rec.src_ip };
        if let Some(open) = self.open.get_mut(&key) {
            open.count += 1;
            return None;
        }
        if self.second_started.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            self.second_started = Some(now);
            self.new_this_second = 0;
        }
        match self.exposures.get_mut(&key.exposure) {
            // A new exposure: always shown, remembered while there is room.
            None => {
                if self.exposures.len() < MAX_EXPOSURES {
                    self.exposures.insert(key.exposure.clone(), Exposure { window_start: now, last: now, shown: 1 });
                }
            }
            // A new source at a known exposure: limited per second and per exposure.
            Some(e) => {
                if now.duration_since(e.window_start) >= self.window {
                    e.window_start = now;
                    e.shown = 0;
                }
                if self.open.len() >= MAX_OPEN
                    || self.new_this_second >= MAX_NEW_PER_SECOND
                    || e.shown >= MAX_SOURCES_PER_EXPOSURE
                {
                    self.suppressed += 1;
                    return None;
                }
                e.shown += 1;
            }
        }
        self.new_this_second = self.new_this_second.saturating_add(1);
        let (kind, line) = headline(rec)?;
        let kind = AlertKind::of(kind);
        if self.open.len() < MAX_OPEN {
            self.open.insert(key, Open { first: now, count: 1, headline: line.clone(), record: rec.clone() });
        }
        Some(Alert { kind, text: line, record: Some(rec.clone()) })
    }

    /// Closes the windows that are over: a count line for those seen more than once,
    /// and a line for alerts held back by the rate limits (the first at once, then at
    /// most one a window). Forgets exposures quiet for a window.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        let window = self.window;
        let mut out = Vec::new();
        self.open.retain(|_, o| {
            if now.duration_since(o.first) < window {
                return true;
            }
            if o.count > 1 {
                let mut line = o.headline.clone();
                let _ = write!(line, " ({} connections in {} s)", o.count, window.as_secs());
                out.push(Alert { kind: AlertKind::Repeated, text: line, record: Some(o.record.clone()) });
            }
            false
        });
        self.exposures.retain(|_, e| now.duration_since(e.last) < window);
        self.verified.retain(|_, t| now.duration_since(*t) < window);
        if self.suppressed > 0 && self.last_summary.is_none_or(|t| now.duration_since(t) >= window) {
            let text = format!(
                "WARNING: {} more alerts not shown (new sources at exposures already shown, over {MAX_NEW_PER_SECOND} per second or {MAX_SOURCES_PER_EXPOSURE} per exposure in {} s: a scan or a flood?); every connection is still in the JSON log",
                self.suppressed,
                window.as_secs()
            );
            out.push(Alert { kind: AlertKind::Suppressed, text, record: None });
            self.suppressed = 0;
            self.last_summary = Some(now);
        }
        out.sort_by(|a, b| a.text.cmp(&b.text));
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        correlate,
        inventory::model::tests::sample,
        kernel::event::{Observation, Proto, Stage},
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
            .filter(|i| a.observe_text(&rec(&format!("198.18.{}.{}", i / 250, i % 250 + 1), "172.17.0.2", 80), t0).is_some())
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
        assert!(a.open.len() <= MAX_OPEN && a.exposures.len() <= MAX_EXPOSURES);
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
            assert!(a.open.len() <= MAX_OPEN && a.exposures.len() <= MAX_EXPOSURES);
        }
        lines.extend(a.flush_text(t0 + Duration::from_secs(100) + window));
        let counted: u64 = lines.iter().map(|l| not_shown(l)).sum();
        assert_eq!(shown + counted, 100_000, "every alert is shown or counted: {lines:?}");
        // Two windows: a bounded number of sources shown in each, and a few summary lines.
        let total = shown as usize + lines.len();
        assert!(total <= 2 * (MAX_SOURCES_PER_EXPOSURE as usize + 2), "{shown} alerts and {} summary lines", lines.len());
        assert!(a.open.is_empty() && a.exposures.is_empty(), "everything closed at the end");
    }

    #[test]
    fn a_new_exposure_alerts_even_when_the_tables_are_full() {
        let mut a = Alerter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // 70 000 distinct destinations with no known container: each one a new exposure,
        // more than either table holds. Each is shown, past any per-second budget.
        let mut r = rec("198.18.3.2", "172.17.0.9", 80);
        assert!(r.container.is_none());
        for i in 0..70_000u32 {
            r.dst_ip = std::net::Ipv4Addr::from(0x0A00_0000 + i).into();
            let line = a.observe_text(&r, t0 + Duration::from_micros(i.into()));
            assert!(line.is_some_and(|l| l.contains(&format!("unknown container at {}", r.dst_ip))), "exposure {i} not shown");
        }
        assert_eq!((a.open.len(), a.exposures.len()), (MAX_OPEN, MAX_EXPOSURES), "both tables full, never past their cap");
        let db = a.observe_text(&rec("203.0.113.7", "172.17.0.3", 5432), t0 + Duration::from_millis(100));
        assert!(db.is_some(), "a new exposure is shown even when the tables are full");
    }

    /// A verified record as the daemon builds it: an attempt's, from the probe source.
    fn verified(verdict: &'static str, uplink: &str, host_port: u16) -> Record {
        let obs = Observation {
            ktime_ns: 0,
            stage: Stage::Attempted,
            proto: Proto::Tcp,
            src: "198.51.100.77".parse().unwrap(),
            src_port: 20001,
            dst: "198.18.3.1".parse().unwrap(),
            dst_port: host_port,
            orig_dst: None,
            ifindex: 0,
            seq: 0,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        };
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
        line.strip_prefix("WARNING: ")
            .and_then(|l| l.split_once(" more "))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0)
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
        assert!(shown.len() <= 20, "{} alerts for one scan of one container", shown.len());
        assert!(shown[0].starts_with("EXPOSED UNPUBLISHED PORT db (postgres) port 1/tcp"), "the first is shown: {}", shown[0]);
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
}
