//! Lines for people: one per connection on stderr, and the escaping of strings that
//! outsiders control (container names, labels, images), so that they cannot forge
//! lines or drive the terminal.

use std::fmt::Write;

use super::record::Record;

/// Longest untrusted string shown in a human line.
const MAX_SHOWN: usize = 96;

/// Escapes control characters (C0, DEL, C1), bidirectional overrides and other
/// invisible format characters as `\u{..}`, and cuts the string at `MAX_SHOWN` chars.
pub fn escape_untrusted(s: &str) -> String {
    escape_cut(s, MAX_SHOWN)
}

/// As `escape_untrusted`, without the cut: for text a line is about (a firewall
/// rule, the path a packet took), whose end matters as much as its start.
pub fn escape_untrusted_whole(s: &str) -> String {
    escape_cut(s, usize::MAX)
}

fn escape_cut(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_add(8)));
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let invisible = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if invisible {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

fn endpoint(ip: std::net::IpAddr, port: u16) -> String {
    if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// One line per connection, for the live view.
pub fn connection_line(rec: &Record) -> String {
    let mut line = format!(
        "{} {} {} -> {}",
        rec.stage.to_uppercase(),
        rec.proto,
        endpoint(rec.src_ip, rec.src_port),
        endpoint(rec.dst_ip, rec.dst_port),
    );
    if let (Some(ip), Some(port)) = (rec.host_ip, rec.host_port) {
        let _ = write!(line, " (published {})", endpoint(ip, port));
    }
    let _ = write!(line, " on {}", escape_untrusted(&rec.iface));
    match &rec.container {
        Some(c) => {
            let _ = write!(line, " container {} ({})", escape_untrusted(&c.name), escape_untrusted(&c.image));
        }
        None => line.push_str(" container unknown"),
    }
    if rec.spoofed_local {
        line.push_str(" SPOOFED LOCAL SOURCE (arrived from outside)");
    }
    if rec.spoofed_trusted {
        line.push_str(" SPOOFED TRUSTED SOURCE (arrived where the route back to it does not go)");
    }
    if rec.exposure == "direct" {
        line.push_str(" DIRECT (routed to the container, not through a published port)");
    }
    if !rec.shape.is_empty() {
        let _ = write!(line, " [{}]", rec.shape.join(","));
    }
    if let Some(verdict) = rec.verdict {
        let _ = write!(line, ": {verdict}, {}", rec.why.as_deref().unwrap_or(""));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_and_bidi_overrides() {
        assert_eq!(escape_untrusted("web"), "web");
        assert_eq!(escape_untrusted("a\nb"), "a\\u{a}b");
        assert_eq!(escape_untrusted("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape_untrusted("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escape_untrusted("back\\slash"), "back\\\\slash");
        assert_eq!(escape_untrusted("nginx:1.27 café"), "nginx:1.27 café");
    }

    #[test]
    fn long_strings_are_cut() {
        let s = "a".repeat(500);
        let e = escape_untrusted(&s);
        assert_eq!(e.chars().count(), MAX_SHOWN + 1);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn line_names_both_ends_and_the_interface() {
        let rec = Record {
            schema: 1,
            ts: super::super::record::Timestamp(std::time::SystemTime::UNIX_EPOCH),
            stage: "reached",
            proto: "tcp",
            family: "ipv6",
            src_ip: "fd42::2".parse().unwrap(),
            src_port: 5000,
            dst_ip: "fd42:1::2".parse().unwrap(),
            dst_port: 80,
            host_ip: Some("fd42::1".parse().unwrap()),
            host_port: Some(8080),
            community_id: None,
            iface: "br0".into(),
            container: None,
            exposure: "unknown",
            published: Vec::new(),
            path: Some("bridge"),
            spoofed_local: false,
            spoofed_trusted: false,
            shape: Vec::new(),
            verdict: None,
            why: None,
            intent: None,
            contradiction: None,
            ban_bypassed: None,
            boot_id: None,
            cpu: None,
            kseq: None,
            record_id: None,
            host: None,
            host_id: None,
        };
        assert_eq!(
            connection_line(&rec),
            "REACHED tcp [fd42::2]:5000 -> [fd42:1::2]:80 (published [fd42::1]:8080) on br0 container unknown"
        );
        let verified = Record {
            stage: "verified",
            verdict: Some("HELD"),
            why: Some("dropped before reaching the container".into()),
            path: None,
            ..rec
        };
        assert_eq!(
            connection_line(&verified),
            "VERIFIED tcp [fd42::2]:5000 -> [fd42:1::2]:80 (published [fd42::1]:8080) on br0 container unknown: HELD, dropped before reaching the container"
        );
    }
}
