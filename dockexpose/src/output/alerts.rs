//! Live alerts for operators: one line per new (container, port, source, kind) within a
//! window, then a count when the window closes. Bounded in memory and in lines per
//! second, so that a flood from random sources cannot flood the terminal as well.

use std::{
    collections::HashMap,
    fmt::Write,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{human::escape_untrusted, record::Record};

/// Most distinct alert keys tracked at once; past that, alerts are counted, not shown.
const MAX_OPEN: usize = 50_000;
/// Most new alert lines per second; past that, they are counted and summarised.
const MAX_NEW_PER_SECOND: u32 = 50;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AlertKey {
    kind: &'static str,
    /// Container id, or the destination address when no container is known.
    target: String,
    port: u16,
    proto: &'static str,
    src: IpAddr,
}

struct Open {
    first: Instant,
    count: u64,
    headline: String,
}

pub struct Alerter {
    window: Duration,
    open: HashMap<AlertKey, Open>,
    second_started: Option<Instant>,
    new_this_second: u32,
    suppressed: u64,
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

impl Alerter {
    pub fn new(window: Duration) -> Self {
        Self { window, open: HashMap::new(), second_started: None, new_this_second: 0, suppressed: 0 }
    }

    /// Registers a record; returns the line to show now, if any.
    pub fn observe(&mut self, rec: &Record, now: Instant) -> Option<String> {
        let (kind, line) = headline(rec)?;
        let key = AlertKey {
            kind,
            target: rec.container.as_ref().map_or_else(|| rec.dst_ip.to_string(), |c| c.id.clone()),
            port: rec.host_port.unwrap_or(rec.dst_port),
            proto: rec.proto,
            src: rec.src_ip,
        };
        if let Some(open) = self.open.get_mut(&key) {
            open.count += 1;
            return None;
        }
        if self.second_started.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            self.second_started = Some(now);
            self.new_this_second = 0;
        }
        if self.open.len() >= MAX_OPEN || self.new_this_second >= MAX_NEW_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.new_this_second += 1;
        self.open.insert(key, Open { first: now, count: 1, headline: line.clone() });
        Some(line)
    }

    /// Closes the windows that are over: a count line for those seen more than once,
    /// and a line for alerts held back by the rate limit.
    pub fn flush(&mut self, now: Instant) -> Vec<String> {
        let window = self.window;
        let mut out = Vec::new();
        self.open.retain(|_, o| {
            if now.duration_since(o.first) < window {
                return true;
            }
            if o.count > 1 {
                let mut line = o.headline.clone();
                let _ = write!(line, " ({} connections in {} s)", o.count, window.as_secs());
                out.push(line);
            }
            false
        });
        if self.suppressed > 0 {
            out.push(format!(
                "WARNING: {} more alerts not shown (over {MAX_NEW_PER_SECOND} new sources per second: a scan or a flood?); every connection is still in the JSON log",
                self.suppressed
            ));
            self.suppressed = 0;
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        correlate,
        inventory::model::tests::sample,
        kernel::event::{Observation, Proto, Stage},
    };

    fn rec(src: &str, dst: &str, port: u16) -> Record {
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
        };
        correlate::record(&obs, Stage::Reached, SystemTime::UNIX_EPOCH, "docker0", Some(&sample()))
    }

    #[test]
    fn first_connection_alerts_and_repeats_are_counted() {
        let mut a = Alerter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let r = rec("198.18.3.2", "172.17.0.2", 80);
        assert_eq!(
            a.observe(&r, t0).unwrap(),
            "EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reached from 198.18.3.2"
        );
        assert!(a.observe(&r, t0 + Duration::from_secs(1)).is_none());
        assert!(a.observe(&r, t0 + Duration::from_secs(2)).is_none());
        assert!(a.flush(t0 + Duration::from_secs(30)).is_empty(), "window still open");
        assert_eq!(
            a.flush(t0 + Duration::from_secs(61)),
            ["EXPOSED web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reached from 198.18.3.2 (3 connections in 60 s)"]
        );
        // A new window starts with a new alert.
        assert!(a.observe(&r, t0 + Duration::from_secs(62)).is_some());
    }

    #[test]
    fn each_source_and_kind_alerts_separately() {
        let mut a = Alerter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(a.observe(&rec("198.18.3.2", "172.17.0.2", 80), t0).is_some());
        assert!(a.observe(&rec("198.18.3.3", "172.17.0.2", 80), t0).is_some());
        let lo = a.observe(&rec("198.18.3.2", "172.17.0.2", 9000), t0).unwrap();
        assert!(lo.starts_with("EXPOSED LOOPBACK-ONLY PORT web"), "{lo}");
        let direct = a.observe(&rec("198.18.3.2", "172.17.0.3", 5432), t0).unwrap();
        assert!(direct.starts_with("EXPOSED UNPUBLISHED PORT db (postgres) port 5432/tcp"), "{direct}");
        assert!(a.flush(t0 + Duration::from_secs(61)).is_empty(), "single connections need no count line");
    }

    #[test]
    fn a_flood_of_new_sources_is_rate_limited_and_said() {
        let mut a = Alerter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let shown = (0..200u32)
            .filter(|i| a.observe(&rec(&format!("198.18.{}.{}", i / 250, i % 250 + 1), "172.17.0.2", 80), t0).is_some())
            .count();
        assert_eq!(shown, MAX_NEW_PER_SECOND as usize);
        let lines = a.flush(t0 + Duration::from_millis(1500));
        assert!(lines.iter().any(|l| l.contains("150 more alerts not shown")), "{lines:?}");
    }

    #[test]
    fn untrusted_names_are_escaped() {
        let mut r = rec("198.18.3.2", "172.17.0.2", 80);
        r.container.as_mut().unwrap().name = "web\u{1b}[2J\nFAKE".into();
        let (_, line) = headline(&r).unwrap();
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line}");
    }
}
