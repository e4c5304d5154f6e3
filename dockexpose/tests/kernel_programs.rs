//! The kernel programs on crafted frames (BPF_PROG_TEST_RUN): the real verifier and
//! maps, no network needed. Needs root.

mod support;

use std::net::IpAddr;

use std::collections::BTreeSet;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use dockexpose::{
    kernel::{
        event::Observation,
        loader::{Kernel, KernelSettings},
    },
    net::prefix::{PrefixTable, SourceKind},
};
use dockexpose_common::{program_names, Counter, PortKey};
use support::privileged;

/// Ethernet + IPv4/IPv6 + a 20-byte TCP header (or 8-byte UDP header).
fn frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8, tcp_flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    let l4_len = if proto == 6 { 20 } else { 8 };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, (20 + l4_len) as u8, 0, 0, 0x40, 0, 64, proto, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, l4_len as u8, proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&[0, 8, 0, 0]);
    }
    f
}

struct Loaded {
    kernel: Kernel,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Loaded {
    fn new(local: &[&str], trusted: &[&str]) -> Self {
        let (mut kernel, ring) = Kernel::load(KernelSettings::default()).unwrap();
        let mut table = PrefixTable::default();
        for p in local {
            // A single address is one of the host's own; a prefix, a bridge's subnet.
            let kind = if p.contains('/') { SourceKind::Local } else { SourceKind::HostAddress };
            table.insert(p.parse().unwrap(), kind);
        }
        for p in trusted {
            table.insert(p.parse().unwrap(), SourceKind::Trusted);
        }
        assert_eq!(kernel.sync_prefixes(&table), 0, "every prefix in the tries");
        Self { kernel, ring }
    }

    fn run(&mut self, program: &str, frame: &[u8]) -> Vec<Observation> {
        let prog: &mut SchedClassifier = self.kernel.program_mut(program).unwrap().try_into().unwrap();
        let res = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap();
        assert_eq!(res.return_value, u32::MAX, "classifiers return TCX_NEXT (-1): fail open, let later programs run");
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(Observation::from_bytes(&item).unwrap());
        }
        out
    }

    fn run_xdp(&mut self, frame: &[u8]) -> Vec<Observation> {
        let prog: &mut Xdp = self.kernel.program_mut(program_names::UPLINK_XDP).unwrap().try_into().unwrap();
        let res = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap();
        assert_eq!(res.return_value, 2, "XDP fails open with XDP_PASS");
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(Observation::from_bytes(&item).unwrap());
        }
        out
    }

    fn counter(&self, c: Counter) -> u64 {
        self.kernel.counters().unwrap().get(c)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn bridge_program_reports_outside_syns_of_both_families_and_skips_local_ones() {
    if !privileged("bridge_program_reports_outside_syns_of_both_families_and_skips_local_ones") {
        return;
    }
    let mut k = Loaded::new(&["fd42:251:1::/64", "10.251.1.0/24", "fd42:198:1::1"], &["fd42:198:1::3", "198.18.1.3"]);
    for (src, dst) in [("198.18.1.2", "10.251.1.2"), ("fd42:198:1::2", "fd42:251:1::2")] {
        let got = k.run(program_names::BRIDGE_EGRESS, &frame(ip(src), 40000, ip(dst), 80, 6, 0x02));
        assert_eq!(got.len(), 1, "{src} -> {dst}: one record");
        assert_eq!((got[0].src, got[0].dst, got[0].src_port, got[0].dst_port), (ip(src), ip(dst), 40000, 80));
    }
    // Local (the bridge's own subnet, a host address) and trusted sources: nothing.
    for src in ["10.251.1.1", "fd42:251:1::1", "fd42:198:1::1", "fd42:198:1::3", "198.18.1.3"] {
        let dst = if src.contains(':') { "fd42:251:1::2" } else { "10.251.1.2" };
        assert!(k.run(program_names::BRIDGE_EGRESS, &frame(ip(src), 40001, ip(dst), 80, 6, 0x02)).is_empty(), "{src}");
    }
    // Not a new connection: SYN-ACK, ACK.
    for flags in [0x12, 0x10] {
        assert!(k
            .run(program_names::BRIDGE_EGRESS, &frame(ip("198.18.1.2"), 40000, ip("10.251.1.2"), 80, 6, flags))
            .is_empty());
    }
    assert_eq!(k.counter(Counter::ReachedEmitted), 2);
    assert_eq!(k.counter(Counter::BridgeLocalOrTrusted), 5);
}

#[test]
fn udp_flows_are_reported_once_and_replies_to_container_flows_not_at_all() {
    if !privileged("udp_flows_are_reported_once_and_replies_to_container_flows_not_at_all") {
        return;
    }
    let mut k = Loaded::new(&["10.251.1.0/24", "fd42:251:1::/64"], &[]);
    for (outside, container) in [("198.18.1.2", "10.251.1.2"), ("fd42:198:1::2", "fd42:251:1::2")] {
        let inbound = frame(ip(outside), 5000, ip(container), 53, 17, 0);
        assert_eq!(k.run(program_names::BRIDGE_EGRESS, &inbound).len(), 1);
        assert!(k.run(program_names::BRIDGE_EGRESS, &inbound).is_empty(), "second datagram of the flow");
        // The container asks outside (ingress), the answer comes back (egress): not new.
        let ask = frame(ip(container), 33000, ip(outside), 53, 17, 0);
        assert!(k.run(program_names::BRIDGE_INGRESS, &ask).is_empty());
        let answer = frame(ip(outside), 53, ip(container), 33000, 17, 0);
        assert!(k.run(program_names::BRIDGE_EGRESS, &answer).is_empty(), "reply to a container's own flow");
    }
    assert_eq!(k.counter(Counter::ReachedEmitted), 2);
    assert_eq!(k.counter(Counter::UdpDeduplicated), 4);
}

#[test]
fn uplink_attempts_and_answers_are_matched_by_their_whole_tuple_for_both_families() {
    if !privileged("uplink_attempts_and_answers_are_matched_by_their_whole_tuple_for_both_families") {
        return;
    }
    use dockexpose::kernel::event::Stage;
    let mut k = Loaded::new(&["10.251.1.0/24", "fd42:251:1::/64", "198.18.1.1", "fd42:198:1::1"], &[]);
    let ports: BTreeSet<PortKey> = [8080, 8443].iter().map(|p| PortKey { port: *p, proto: 6, _pad: 0 }).collect();
    k.kernel.sync_published_ports(&ports).unwrap();
    for (client, host, container) in
        [("198.18.1.2", "198.18.1.1", "10.251.1.2"), ("fd42:198:1::2", "fd42:198:1::1", "fd42:251:1::2")]
    {
        // Not published: no attempt.
        assert!(k.run_xdp(&frame(ip(client), 40000, ip(host), 9999, 6, 0x02)).is_empty());
        // A scanner's SYNs: one source port, two host ports. Two attempts; neither
        // overwrites the other, each retransmit is recognised as such.
        for host_port in [8080u16, 8443] {
            let attempt = k.run_xdp(&frame(ip(client), 41000, ip(host), host_port, 6, 0x02));
            assert_eq!(attempt.len(), 1);
            assert_eq!(
                (attempt[0].stage, attempt[0].dst, attempt[0].dst_port),
                (Stage::Attempted, ip(host), host_port)
            );
            assert!(k.run_xdp(&frame(ip(client), 41000, ip(host), host_port, 6, 0x02)).is_empty(), "retransmit");
        }
        // Each SYN-ACK leaving the uplink from its host port answers its own attempt, once.
        for host_port in [8443u16, 8080] {
            let answer = k.run(program_names::UPLINK_EGRESS, &frame(ip(host), host_port, ip(client), 41000, 6, 0x12));
            assert_eq!(answer.len(), 1);
            assert_eq!((answer[0].stage, answer[0].src_port, answer[0].dst_port), (Stage::Answered, 41000, host_port));
            assert!(k
                .run(program_names::UPLINK_EGRESS, &frame(ip(host), host_port, ip(client), 41000, 6, 0x12))
                .is_empty());
        }
        // On the bridge, past DNAT, without a conntrack entry (a test frame has none):
        // reported, with no invented host side.
        let reach = k.run(program_names::BRIDGE_EGRESS, &frame(ip(client), 41000, ip(container), 80, 6, 0x02));
        assert_eq!(reach.len(), 1);
        assert_eq!(reach[0].orig_dst, None);
    }
    assert_eq!(k.counter(Counter::AttemptsEmitted), 4);
    assert_eq!(k.counter(Counter::AttemptsDeduplicated), 4);
    assert_eq!(k.counter(Counter::AttemptsAnswered), 4);
    // Unpublishing a port takes it out of the uplink program's view.
    k.kernel.sync_published_ports(&BTreeSet::new()).unwrap();
    assert!(k.run_xdp(&frame(ip("198.18.1.2"), 43000, ip("198.18.1.1"), 8080, 6, 0x02)).is_empty());
}
