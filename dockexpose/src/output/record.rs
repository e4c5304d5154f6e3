//! The JSON audit record: one object per connection, one per line.
//!
//! A documented contract (README, "The JSON record"): keys are never renamed; new
//! keys may be added, and `schema` is bumped when the meaning of one changes.

use std::{net::IpAddr, time::SystemTime};

use serde::Serialize;

use crate::kernel::event::{IfName, Observation, Stage};

pub const SCHEMA_VERSION: u32 = 1;

/// The stage of a record written for a probe of `watch --verify-every` (userspace
/// only: the kernel never emits it).
pub const STAGE_VERIFIED: &str = "verified";

/// A record's time: serialized as RFC 3339, UTC, microseconds
/// ("2026-11-29T07:20:34.123456Z"), formatted on a stack buffer (no allocation; a
/// general-purpose formatter was a tenth of the daemon's time per record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The 27 bytes of its RFC 3339 form.
    pub fn format(&self) -> [u8; 27] {
        let (secs, micros) = self.parts();
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        out[..19].copy_from_slice(&Self::format_second(secs));
        out[20..26].copy_from_slice(&Self::format_micros(micros));
        out
    }

    /// Whole seconds since the epoch, and the microseconds within the second.
    pub fn parts(&self) -> (u64, u32) {
        let since = self.0.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (since.as_secs(), since.subsec_micros())
    }

    /// "YYYY-MM-DDTHH:MM:SS" of a second since the epoch (the same for every record
    /// of that second: the encoder keeps the last one).
    pub fn format_second(secs: u64) -> [u8; 19] {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        let mut out = *b"0000-00-00T00:00:00";
        digits(&mut out[0..4], y as u64);
        digits(&mut out[5..7], m);
        digits(&mut out[8..10], d);
        digits(&mut out[11..13], rem / 3600);
        digits(&mut out[14..16], rem % 3600 / 60);
        digits(&mut out[17..19], rem % 60);
        out
    }

    /// The six digits of the microseconds.
    pub fn format_micros(micros: u32) -> [u8; 6] {
        let mut out = [b'0'; 6];
        digits(&mut out, u64::from(micros));
        out
    }
}

/// `value`'s last `out.len()` decimal digits, zero-padded.
fn digits(out: &mut [u8], mut value: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// (year, month, day) of a day count since 1970-01-01 (the proleptic Gregorian
/// calendar; H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.format();
        // ASCII digits and separators only.
        serializer.serialize_str(std::str::from_utf8(&text).expect("ASCII"))
    }
}

/// Identity of the container a connection reached (null when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `com.docker.compose.project` label, when the container is part of a compose project.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service` label.
    pub compose_service: Option<String>,
    /// `com.docker.swarm.service.name` label, when the container is a swarm task.
    pub swarm_service: Option<String>,
    /// `com.docker.swarm.task.name` label (`SERVICE.SLOT.TASKID`).
    pub swarm_task: Option<String>,
}

/// One published host side a connection may have come through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostSide {
    pub host_ip: IpAddr,
    pub host_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub schema: u32,
    /// RFC 3339, UTC, microseconds.
    pub ts: Timestamp,
    pub stage: &'static str,
    pub proto: &'static str,
    pub family: &'static str,
    pub src_ip: IpAddr,
    pub src_port: u16,
    /// As seen at the hook: the container side for `reached`, the host side for `attempted`.
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The published host side; null where unknown.
    pub host_ip: Option<IpAddr>,
    pub host_port: Option<u16>,
    /// Community ID v1 (seed 0) of the tuple the outsider used: source to `host_ip`/
    /// `host_port` when known, else the observed tuple. Set by the fan-out, so every
    /// record written carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub community_id: Option<std::sync::Arc<str>>,
    /// Interface where the kernel saw it.
    pub iface: IfName,
    pub container: Option<std::sync::Arc<ContainerRef>>,
    /// `published` (through a published port), `loopback_only` (the port is published
    /// only on 127.0.0.1/::1, yet reached from outside), `unpublished` (not published at
    /// all, yet reached: direct routing), `direct` (published, but this connection was
    /// routed straight to the container's address: conntrack saw no DNAT, so there is
    /// no host side and `host_ip`/`host_port` are null), `unknown` (no container identity).
    pub exposure: &'static str,
    /// Every published host side that maps to the destination (several host ports may
    /// map to one container port); `host_ip`/`host_port` say which one when known.
    pub published: Vec<HostSide>,
    /// For `reached`: `bridge` (seen entering the container bridge) or `proxy` (answered
    /// by the host itself, e.g. docker-proxy, which reaches the container from the
    /// bridge gateway); null for `attempted` and `blocked`.
    pub path: Option<&'static str>,
    /// The source lies in the host's own ranges (a host address, a container bridge's
    /// subnet), yet the packet arrived from outside: a spoofed source. Locality is
    /// judged by the path a packet took, never by its source address alone.
    pub spoofed_local: bool,
    /// The source lies in a `--trusted` network, yet the route back to it leaves by
    /// another interface than the one it arrived on: a spoofed trusted source, reported
    /// (a genuinely trusted one never is).
    pub spoofed_trusted: bool,
    /// How the first packet was shaped, when it was not plain: `fragment`,
    /// `ip_options` (IPv4 options, IPv6 extension headers), `vlan`, `flags_hidden`
    /// (a first fragment cut before the TCP flags: conntrack told it new).
    pub shape: Vec<&'static str>,
    /// Only on `verified` records: `EXPOSED`, `PROXY` or `HELD` (the probe's verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    /// Only on `verified` records: a few words on why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Only on `reached` records of a host whose firewall says something about the
    /// host port (see "Intent against reality"): what it says...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::intent::Intent>,
    /// ...and whether this connection contradicts it (a denied port reached, or a
    /// source that a ban in INPUT drops reached a container through FORWARD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contradiction: Option<bool>,
    /// The ban (an ipset set, a fail2ban jail, a `ufw deny from` rule) that INPUT
    /// applies to this source and FORWARD does not: the connection went past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ban_bypassed: Option<String>,
    /// The kernel's name for the record it comes from (records the kernel made, not
    /// verdicts): (boot_id, cpu, kseq) is unique per kernel record, so a duplicate
    /// written again after a crash is told. Set by the fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kseq: Option<u64>,
    /// The record's own name, the same each time the same record is delivered
    /// (output/record_id.rs). Set by the fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<super::record_id::RecordId>,
    /// The host that saw it (`--host-name`, by default the hostname) and its
    /// /etc/machine-id. Set by the fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<std::sync::Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<std::sync::Arc<str>>,
}

/// The shape words of an observation; on a kernel whose conntrack the bridge program
/// cannot read, a `reached` record adds "uninspected": a first fragment cut before the
/// TCP flags could not be told there (counted as bridge_uninspected, not recorded).
fn shape_of(obs: &Observation, stage: Stage, conntrack: bool) -> Vec<&'static str> {
    let mut shape = obs.shape();
    if stage == Stage::Reached && !conntrack {
        shape.push("uninspected");
    }
    shape
}

impl Record {
    /// The record of an observation, before any Docker enrichment.
    pub fn from_observation(obs: &Observation, stage: Stage, at: SystemTime, iface: impl Into<IfName>) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ts: Timestamp(at),
            stage: stage.as_str(),
            proto: obs.proto.as_str(),
            family: if obs.src.is_ipv4() { "ipv4" } else { "ipv6" },
            src_ip: obs.src,
            src_port: obs.src_port,
            dst_ip: obs.dst,
            dst_port: obs.dst_port,
            host_ip: obs.orig_dst.map(|(ip, _)| ip),
            host_port: obs.orig_dst.map(|(_, port)| port),
            community_id: None,
            iface: iface.into(),
            container: None,
            exposure: "unknown",
            published: Vec::new(),
            path: (stage == Stage::Reached).then_some("bridge"),
            spoofed_local: obs.spoofed_local(),
            spoofed_trusted: obs.spoofed_trusted(),
            shape: shape_of(obs, stage, crate::kernel::loader::conntrack_inspects()),
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
        }
    }

    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, numbers and addresses cannot fail.
        let mut line = serde_json::to_string(self).expect("a Record always serializes");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reach_on_a_kernel_without_conntrack_says_its_shape_went_uninspected() {
        let o = Observation::sample(
            Stage::Reached,
            crate::kernel::event::Proto::Tcp,
            "198.18.3.2",
            40000,
            "172.17.0.2",
            80,
        );
        assert_eq!(shape_of(&o, Stage::Reached, false), ["uninspected"]);
        assert!(shape_of(&o, Stage::Reached, true).is_empty());
        assert!(shape_of(&o, Stage::Attempted, false).is_empty(), "an attempt is never read from conntrack");
    }

    #[test]
    fn timestamps_match_a_reference_formatter() {
        for secs in [0u64, 951_782_400, 1_709_164_799, 1_796_000_000, 4_102_444_800, 253_402_300_799] {
            for micros in [0u32, 1, 999_999, 123_456] {
                let t = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
                let ours = Timestamp(t).format();
                assert_eq!(
                    std::str::from_utf8(&ours).unwrap(),
                    humantime::format_rfc3339_micros(t).to_string(),
                    "{secs}.{micros}"
                );
            }
        }
    }
    use crate::kernel::event::Proto;

    fn obs() -> Observation {
        Observation {
            ktime_ns: 1,
            stage: Stage::Reached,
            proto: Proto::Tcp,
            src: "198.18.3.2".parse().unwrap(),
            src_port: 40000,
            dst: "10.251.0.2".parse().unwrap(),
            dst_port: 80,
            orig_dst: None,
            ifindex: 3,
            seq: 0,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        }
    }

    #[test]
    fn json_has_every_contract_key_with_nulls_for_unknowns() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_910_400_123_456);
        let rec = Record::from_observation(&obs(), Stage::Reached, at, "br-test");
        let line = rec.to_json_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "ts",
            "stage",
            "proto",
            "family",
            "src_ip",
            "src_port",
            "dst_ip",
            "dst_port",
            "host_ip",
            "host_port",
            "iface",
            "container",
        ] {
            assert!(v.get(key).is_some(), "missing contract key {key}");
        }
        assert_eq!(v["ts"], "2026-11-29T00:00:00.123456Z");
        assert_eq!(v["stage"], "reached");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["src_ip"], "198.18.3.2");
        assert_eq!(v["src_port"], 40000);
        assert_eq!(v["dst_port"], 80);
        assert!(v["host_ip"].is_null() && v["host_port"].is_null() && v["container"].is_null());
        assert_eq!(v["iface"], "br-test");
        assert_eq!(v["schema"], SCHEMA_VERSION);
        assert!(v.get("verdict").is_none() && v.get("why").is_none(), "verdict and why only on verified records");
    }

    #[test]
    fn ipv6_and_joined_host_side_are_written() {
        let mut o = obs();
        o.src = "fd42:1::2".parse().unwrap();
        o.dst = "fd42:2::2".parse().unwrap();
        o.proto = Proto::Udp;
        o.orig_dst = Some(("fd42:1::1".parse().unwrap(), 8080));
        let v: serde_json::Value = serde_json::from_str(
            &Record::from_observation(&o, Stage::Reached, SystemTime::UNIX_EPOCH, "br0").to_json_line(),
        )
        .unwrap();
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["proto"], "udp");
        assert_eq!(v["host_ip"], "fd42:1::1");
        assert_eq!(v["host_port"], 8080);
    }

    #[test]
    fn untrusted_strings_are_valid_json() {
        let mut rec = Record::from_observation(&obs(), Stage::Reached, SystemTime::UNIX_EPOCH, "br0");
        rec.container = Some(
            ContainerRef {
                id: "abc".into(),
                name: "evil\"\n\u{1b}[31m".into(),
                image: "img".into(),
                ..Default::default()
            }
            .into(),
        );
        let line = rec.to_json_line();
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["container"]["name"], "evil\"\n\u{1b}[31m");
    }
}
