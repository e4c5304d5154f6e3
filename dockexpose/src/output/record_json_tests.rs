use std::sync::Arc;

use super::*;
use crate::output::formats::samples;

/// serde_json's encoding of the record: the reference the fast path must match.
fn reference(rec: &Record) -> String {
    serde_json::to_string(rec).unwrap()
}

fn fast(rec: &Record) -> String {
    let mut out = Vec::new();
    write(rec, &mut out);
    String::from_utf8(out).unwrap()
}

fn same(rec: &Record) {
    assert_eq!(fast(rec), reference(rec));
}

#[test]
fn every_key_set_matches_serde() {
    same(&samples::reached());
    same(&samples::verified("HELD"));
    for stage in ["attempted", "blocked", "reached"] {
        same(&samples::without_host_side(stage));
    }
}

#[test]
fn every_optional_key_absent_or_null_matches_serde() {
    let mut rec = samples::without_host_side("attempted");
    rec.community_id = None;
    rec.container = None;
    rec.published.clear();
    rec.path = None;
    rec.shape.clear();
    rec.intent = None;
    rec.contradiction = None;
    rec.ban_bypassed = None;
    rec.boot_id = None;
    rec.cpu = None;
    rec.kseq = None;
    rec.record_id = None;
    rec.host = None;
    rec.host_id = None;
    same(&rec);
    rec.path = Some("proxy");
    rec.shape = vec!["fragment", "ip_options", "flags_hidden"];
    rec.spoofed_local = true;
    rec.spoofed_trusted = true;
    rec.contradiction = Some(false);
    same(&rec);
}

#[test]
fn ipv6_and_extreme_numbers_match_serde() {
    let mut rec = samples::reached();
    for (src, dst) in [("2001:db8::1", "fd42:198:1::2"), ("::", "::ffff:198.18.3.1"), ("0.0.0.0", "255.255.255.255")] {
        rec.src_ip = src.parse().unwrap();
        rec.dst_ip = dst.parse().unwrap();
        rec.host_ip = Some(dst.parse().unwrap());
        rec.published = vec![
            HostSide { host_ip: "::".parse().unwrap(), host_port: 0 },
            HostSide { host_ip: dst.parse().unwrap(), host_port: u16::MAX },
        ];
        rec.src_port = u16::MAX;
        rec.cpu = Some(u32::MAX);
        rec.kseq = Some(u64::MAX);
        same(&rec);
    }
}

#[test]
fn strings_the_world_controls_are_escaped_as_serde_does() {
    let hostile = [
        "",
        "plain",
        "quote \" and backslash \\",
        "newline\n tab\t cr\r nul\0 bell\u{7} esc\u{1b}[31m",
        "del\u{7f} unicode é 日本 \u{2028} \u{fffd}",
        "\\\"}],\"stage\":\"forged",
    ];
    for s in hostile {
        let mut rec = samples::verified("EXPOSED");
        rec.iface = s.into();
        rec.why = Some(s.into());
        rec.ban_bypassed = Some(s.into());
        rec.host = Some(s.into());
        rec.host_id = Some(s.into());
        rec.container = Some(Arc::new(ContainerRef {
            id: s.into(),
            name: s.into(),
            image: s.into(),
            compose_project: Some(s.into()),
            compose_service: None,
            swarm_service: Some(s.into()),
            swarm_task: None,
        }));
        same(&rec);
        let line = fast(&rec);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["container"]["name"], s, "round trip");
        assert_eq!(parsed["stage"], "verified", "a string cannot forge a key");
    }
}
