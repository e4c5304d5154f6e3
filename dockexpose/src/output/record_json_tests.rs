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

#[test]
fn the_eight_byte_escape_check_agrees_with_the_byte_by_byte_one() {
    let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    // Every byte value at every position of strings of 1 to 19 bytes, among bytes that
    // need nothing (ASCII and UTF-8 continuation bytes alike).
    for len in 1..20 {
        for at in 0..len {
            for b in 0..=255u8 {
                let mut s = vec![b'a'; len];
                if len > 3 {
                    s[(at + 1) % len] = 0xc3;
                }
                s[at] = b;
                assert_eq!(needs_escape(&s), naive(&s), "byte {b:#04x} at {at} of {len}");
            }
        }
    }
    assert!(!needs_escape(b""));
}

#[test]
fn the_encoder_reuses_a_container_only_while_it_is_the_same_one() {
    let mut enc = Encoder::default();
    let first = samples::reached();
    let mut other = samples::reached();
    let mut c = (**first.container.as_ref().unwrap()).clone();
    c.name = "other \"quoted\" name".into();
    other.container = Some(Arc::new(c));
    let mut no_container = samples::reached();
    no_container.container = None;
    for rec in [&first, &first, &other, &first, &no_container, &other] {
        let mut out = Vec::new();
        enc.write(rec, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), reference(rec));
    }
}

#[test]
fn the_encoder_reuses_a_second_an_interface_a_host_and_a_boot_only_while_they_are_the_same() {
    use std::time::{Duration, SystemTime};

    use crate::output::record::Timestamp;

    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    let first = samples::reached();
    let mut next_micro = first.clone();
    next_micro.ts = Timestamp(base + Duration::from_micros(999_999));
    let mut next_second = first.clone();
    next_second.ts = Timestamp(base + Duration::from_secs(1));
    let mut next_day = first.clone();
    next_day.ts = Timestamp(base + Duration::from_secs(86_400));
    let mut other_iface = first.clone();
    other_iface.iface = "br-\"odd\\name".into();
    let mut other_host = first.clone();
    other_host.host = Some("edge \"7\"".into());
    let mut no_host_id = first.clone();
    no_host_id.host_id = None;
    let mut no_host = first.clone();
    (no_host.host, no_host.host_id) = (None, None);
    static OTHER_BOOT: &str = "6f1c6a0e-5b7e-4d7e-9a9e-1f6b0c0d0e0f";
    let mut other_boot = first.clone();
    other_boot.boot_id = Some(OTHER_BOOT);
    let mut enc = Encoder::default();
    for rec in [
        &first,
        &next_micro,
        &next_second,
        &next_day,
        &first,
        &other_iface,
        &first,
        &other_host,
        &no_host_id,
        &no_host,
        &first,
        &other_boot,
        &first,
    ] {
        let mut out = Vec::new();
        enc.write(rec, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), reference(rec));
    }
}

#[test]
fn every_octet_in_every_position_is_written_as_serde_writes_it() {
    for v in 0..=255u8 {
        for at in 0..4 {
            let mut octets = [198, 18, 0, 1];
            octets[at] = v;
            let addr = IpAddr::from(octets);
            let mut out = b"x".to_vec();
            ip(&mut out, addr);
            assert_eq!(out, format!("x{}", serde_json::to_string(&addr).unwrap()).into_bytes(), "{addr}");
        }
    }
}
