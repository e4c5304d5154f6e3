//! The lines people read: what each alert says about its record. Pure formatting;
//! every untrusted string (names, images, interfaces) is escaped here.

use std::net::IpAddr;

use super::super::{human::escape_untrusted, record::Record};

fn endpoint(ip: IpAddr, port: u16) -> String {
    if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// "web (nginx:1.27)" or "unknown container at 10.0.0.2".
pub(super) fn who(rec: &Record) -> String {
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
pub(super) fn kind(rec: &Record) -> Option<&'static str> {
    match (rec.stage, rec.exposure) {
        ("reached", "loopback_only") => Some("loopback_only"),
        ("reached", "unpublished" | "direct") => Some("unpublished"),
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
        ("reached", "direct") => (
            "unpublished",
            format!(
                "EXPOSED DIRECTLY ROUTED PORT {} port {target} reached from {}: routed straight to the container, not through its published port (exposure without publishing)",
                who(rec),
                rec.src_ip
            ),
        ),
        ("reached", _) if rec.path == Some("proxy") => (
            "reached",
            format!("EXPOSED {} {} reached from {} through a proxy on the host (docker-proxy)", who(rec), host_side(rec), rec.src_ip),
        ),
        ("reached", _) => ("reached", format!("EXPOSED {} {} -> {target} reached from {}", who(rec), host_side(rec), rec.src_ip)),
        ("blocked", _) => ("blocked", format!("BLOCKED {} {} attempted from {}: the firewall held", who(rec), host_side(rec), rec.src_ip)),
        _ => return None,
    };
    Some(line)
}

/// "EXPOSED (verified) web (nginx:1.27) 198.18.3.1:8080 -> 80/tcp reachable from outside on eth0"
pub(super) fn verified_headline(rec: &Record, container_port: Option<u16>) -> String {
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

/// Ports and protocols held back in one window: the lowest and highest of each protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PortSpan {
    /// (protocol, lowest port, highest port), in the order first seen; at most 3 protocols.
    spans: Vec<(&'static str, u16, u16)>,
}

impl PortSpan {
    pub(super) fn add(&mut self, proto: &'static str, port: u16) {
        match self.spans.iter_mut().find(|(p, _, _)| *p == proto) {
            Some((_, lo, hi)) => (*lo, *hi) = ((*lo).min(port), (*hi).max(port)),
            None => self.spans.push((proto, port, port)),
        }
    }

    /// "1-65000/tcp, 1-65000/udp"
    fn describe(&self) -> String {
        let one =
            |(p, lo, hi): &(&str, u16, u16)| if lo == hi { format!("{lo}/{p}") } else { format!("{lo}-{hi}/{p}") };
        self.spans.iter().map(one).collect::<Vec<_>>().join(", ")
    }
}

/// The summary of a container's new exposures held back in a window: "WARNING: 129990
/// more ports of db (postgres) reached in 60 s, not shown one by one (1-65000/tcp,
/// 1-65000/udp; the first from 203.0.113.7): a scan? ..."
pub(super) fn exposures_summary(held: u64, first: &Record, ports: &PortSpan, window_s: u64) -> String {
    format!(
        "WARNING: {held} more ports of {} reached in {window_s} s, not shown one by one ({}; the first from {}): a scan? Every connection is in the JSON log",
        who(first),
        ports.describe(),
        first.src_ip
    )
}
