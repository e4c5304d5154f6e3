//! The JSON audit record: one object per connection, one per line.
//!
//! A documented contract (README, "The JSON record"): keys are never renamed; new
//! keys may be added, and `schema` is bumped when the meaning of one changes.

use std::{net::IpAddr, time::SystemTime};

use serde::Serialize;

use crate::kernel::event::{Observation, Stage};

pub const SCHEMA_VERSION: u32 = 1;

/// Identity of the container a connection reached (null when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `com.docker.compose.project` label, when the container is part of a compose project.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service` label.
    pub compose_service: Option<String>,
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
    pub ts: String,
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
    /// Interface where the kernel saw it.
    pub iface: String,
    pub container: Option<ContainerRef>,
    /// `published` (through a published port), `loopback_only` (the port is published
    /// only on 127.0.0.1/::1, yet reached from outside), `unpublished` (not published at
    /// all, yet reached: direct routing), `unknown` (no container identity).
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
    /// How the first packet was shaped, when it was not plain: `fragment`,
    /// `ip_options` (IPv4 options, IPv6 extension headers), `vlan`, `flags_hidden`
    /// (a first fragment cut before the TCP flags: conntrack told it new).
    pub shape: Vec<&'static str>,
}

impl Record {
    /// The record of an observation, before any Docker enrichment.
    pub fn from_observation(obs: &Observation, stage: Stage, at: SystemTime, iface: &str) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            ts: humantime::format_rfc3339_micros(at).to_string(),
            stage: stage.as_str(),
            proto: obs.proto.as_str(),
            family: if obs.src.is_ipv4() { "ipv4" } else { "ipv6" },
            src_ip: obs.src,
            src_port: obs.src_port,
            dst_ip: obs.dst,
            dst_port: obs.dst_port,
            host_ip: obs.orig_dst.map(|(ip, _)| ip),
            host_port: obs.orig_dst.map(|(_, port)| port),
            iface: iface.to_string(),
            container: None,
            exposure: "unknown",
            published: Vec::new(),
            path: (stage == Stage::Reached).then_some("bridge"),
            spoofed_local: obs.spoofed_local(),
            shape: obs.shape(),
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
            "ts", "stage", "proto", "family", "src_ip", "src_port", "dst_ip", "dst_port", "host_ip",
            "host_port", "iface", "container",
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
    }

    #[test]
    fn ipv6_and_joined_host_side_are_written() {
        let mut o = obs();
        o.src = "fd42:1::2".parse().unwrap();
        o.dst = "fd42:2::2".parse().unwrap();
        o.proto = Proto::Udp;
        o.orig_dst = Some(("fd42:1::1".parse().unwrap(), 8080));
        let v: serde_json::Value =
            serde_json::from_str(&Record::from_observation(&o, Stage::Reached, SystemTime::UNIX_EPOCH, "br0").to_json_line())
                .unwrap();
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["proto"], "udp");
        assert_eq!(v["host_ip"], "fd42:1::1");
        assert_eq!(v["host_port"], 8080);
    }

    #[test]
    fn untrusted_strings_are_valid_json() {
        let mut rec = Record::from_observation(&obs(), Stage::Reached, SystemTime::UNIX_EPOCH, "br0");
        rec.container = Some(ContainerRef {
            id: "abc".into(),
            name: "evil\"\n\u{1b}[31m".into(),
            image: "img".into(),
            ..Default::default()
        });
        let line = rec.to_json_line();
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["container"]["name"], "evil\"\n\u{1b}[31m");
    }
}
