//! Every shape an attacker can give a connection's first packet, on the real kernel
//! programs (BPF_PROG_TEST_RUN, real verifier and maps): IPv4 options and fragments,
//! IPv6 extension-header chains and fragments, VLAN tags, L3 uplinks, SCTP, spoofed
//! local sources, SYN retransmits. Needs root. What needs live conntrack (a first
//! fragment cut before the TCP flags) is covered end to end in `crafted_e2e.rs`.

mod support;

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use dockexpose::kernel::{
    event::{Observation, Proto, Stage},
    loader::{Kernel, KernelSettings},
};
use dockexpose::net::prefix::{PrefixTable, SourceKind};
use dockexpose_common::{program_names, Counter, PortKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use support::privileged;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const MF: u16 = 0x2000;

// --- Packet builders -------------------------------------------------------------

fn tcp(sport: u16, dport: u16, seq: u32, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 8, 0, 0]);
    u
}

/// SCTP common header + one chunk of `chunk_type` carrying `tag` (INIT: the initiate tag).
fn sctp(sport: u16, dport: u16, chunk_type: u8, tag: u32) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0; 8]); // verification tag 0 (INIT), checksum
    s.extend_from_slice(&[chunk_type, 0, 0, 20]);
    s.extend_from_slice(&tag.to_be_bytes());
    s.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
    s
}

fn ipv4(src: &str, dst: &str, proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
    p.extend_from_slice(&dst.parse::<std::net::Ipv4Addr>().unwrap().octets());
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

/// IPv6 with extension headers: (type, body length in 8-byte units beyond the first).
/// A fragment header (44) takes `frag_offset` (in 8-byte units) and sets M.
fn ipv6(src: &str, dst: &str, ext: &[u8], frag_offset: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, kind) in ext.iter().enumerate() {
        let next = *ext.get(i + 1).unwrap_or(&proto);
        match kind {
            44 => {
                chain.push(next);
                chain.push(0);
                chain.extend_from_slice(&((frag_offset << 3) | 1).to_be_bytes());
                chain.extend_from_slice(&[0, 0, 0, 7]);
            }
            51 => {
                // AH: length in 4-byte units minus 2; 12 bytes of header + 12 of ICV.
                chain.extend_from_slice(&[next, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
                chain.extend_from_slice(&[0; 12]);
            }
            _ => {
                // Hop-by-hop, routing, destination options: 8 bytes, PadN inside.
                chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
    }
    let first = *ext.first().unwrap_or(&proto);
    let len = (chain.len() + payload.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&chain);
    p.extend_from_slice(payload);
    p
}

/// Ethernet around an IP packet, with VLAN tags (TPIDs, outermost first).
fn eth(packet: &[u8], vlans: &[u16]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in vlans.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(if packet[0] >> 4 == 4 { &[0x08, 0x00] } else { &[0x86, 0xdd] });
    f.extend_from_slice(packet);
    f
}

// --- The programs ------------------------------------------------------------------

struct Loaded {
    kernel: Kernel,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it: only `ingress_ifindex` (offset 36) set.
fn skb_ctx(ingress_ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

impl Loaded {
    fn new() -> Self {
        let (mut kernel, ring) = Kernel::load(KernelSettings::default()).unwrap();
        let mut table = PrefixTable::default();
        for p in ["10.251.1.0/24", "fd42:251:1::/64"] {
            table.insert(p.parse().unwrap(), SourceKind::Local);
        }
        // The host's own addresses: the only destinations of attempts.
        for p in ["198.18.1.1", "fd42:198:1::1"] {
            table.insert(p.parse().unwrap(), SourceKind::HostAddress);
        }
        assert_eq!(kernel.sync_prefixes(&table), 0, "every prefix in the tries");
        let ports: BTreeSet<PortKey> = [(8080, PROTO_TCP), (5300, PROTO_UDP), (3868, PROTO_SCTP)]
            .iter()
            .map(|(port, proto)| PortKey { port: *port, proto: *proto, _pad: 0 })
            .collect();
        kernel.sync_published_ports(&ports).unwrap();
        Self { kernel, ring }
    }

    fn drain(&mut self) -> Vec<Observation> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(Observation::from_bytes(&item).unwrap());
        }
        out
    }

    /// The bridge egress program on `frame`, as if routed in from `ingress_ifindex`
    /// (0: sent by the host itself).
    fn bridge(&mut self, frame: &[u8], ingress_ifindex: u32) -> Vec<Observation> {
        let ctx = skb_ctx(ingress_ifindex);
        let prog: &mut SchedClassifier =
            self.kernel.program_mut(program_names::BRIDGE_EGRESS).unwrap().try_into().unwrap();
        let res =
            prog.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..Default::default() }).unwrap();
        assert_eq!(res.return_value, u32::MAX, "fail open: TCX_NEXT");
        self.drain()
    }

    fn classifier(&mut self, name: &str, frame: &[u8]) -> Vec<Observation> {
        let prog: &mut SchedClassifier = self.kernel.program_mut(name).unwrap().try_into().unwrap();
        let res = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap();
        assert_eq!(res.return_value, u32::MAX, "fail open: TCX_NEXT");
        self.drain()
    }

    fn xdp(&mut self, name: &str, frame: &[u8]) -> Vec<Observation> {
        let prog: &mut Xdp = self.kernel.program_mut(name).unwrap().try_into().unwrap();
        let res = prog.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).unwrap();
        assert_eq!(res.return_value, 2, "fail open: XDP_PASS");
        self.drain()
    }

    fn counter(&self, c: Counter) -> u64 {
        self.kernel.counters().unwrap().get(c)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An "uplink" ifindex for the bridge program's path check: not the host, not a
/// watched bridge, not loopback.
const FROM_UPLINK: u32 = 4242;

#[test]
fn every_first_packet_shape_reaching_a_bridge_is_reported() {
    if !privileged("every_first_packet_shape_reaching_a_bridge_is_reported") {
        return;
    }
    let mut k = Loaded::new();
    let (o4, c4, o6, c6) = ("198.18.1.2", "10.251.1.2", "fd42:198:1::2", "fd42:251:1::2");
    let nop_options = [1, 1, 1, 0]; // NOP NOP NOP EOL: ihl 6
    let cases: Vec<(&str, Vec<u8>, Proto, &[&str])> = vec![
        ("ipv4 plain", ipv4(o4, c4, 6, &[], 0, &tcp(40001, 80, 1, SYN)), Proto::Tcp, &[]),
        ("ipv4 options", ipv4(o4, c4, 6, &nop_options, 0, &tcp(40002, 80, 1, SYN)), Proto::Tcp, &["ip_options"]),
        ("ipv4 first fragment", ipv4(o4, c4, 6, &[], MF, &tcp(40003, 80, 1, SYN)), Proto::Tcp, &["fragment"]),
        ("ipv4 udp first fragment", ipv4(o4, c4, 17, &[], MF, &udp(40004, 5300)), Proto::Udp, &["fragment"]),
        ("ipv6 hop-by-hop", ipv6(o6, c6, &[0], 0, 6, &tcp(40005, 80, 1, SYN)), Proto::Tcp, &["ip_options"]),
        ("ipv6 destination options", ipv6(o6, c6, &[60], 0, 6, &tcp(40006, 80, 1, SYN)), Proto::Tcp, &["ip_options"]),
        ("ipv6 routing", ipv6(o6, c6, &[43], 0, 6, &tcp(40007, 80, 1, SYN)), Proto::Tcp, &["ip_options"]),
        ("ipv6 first fragment", ipv6(o6, c6, &[44], 0, 6, &tcp(40008, 80, 1, SYN)), Proto::Tcp, &["fragment"]),
        (
            "ipv6 chain",
            ipv6(o6, c6, &[0, 43, 44, 51, 60], 0, 6, &tcp(40009, 80, 1, SYN)),
            Proto::Tcp,
            &["fragment", "ip_options"],
        ),
        ("ipv6 udp behind options", ipv6(o6, c6, &[60], 0, 17, &udp(40010, 5300)), Proto::Udp, &["ip_options"]),
        ("sctp init ipv4", ipv4(o4, c4, 132, &[], 0, &sctp(40011, 3868, 1, 77)), Proto::Sctp, &[]),
        (
            "sctp init ipv6 behind options",
            ipv6(o6, c6, &[60], 0, 132, &sctp(40012, 3868, 1, 78)),
            Proto::Sctp,
            &["ip_options"],
        ),
    ];
    for (what, packet, proto, shape) in &cases {
        let got = k.bridge(&eth(packet, &[]), FROM_UPLINK);
        assert_eq!(got.len(), 1, "{what}: one reached record");
        assert_eq!((got[0].stage, got[0].proto), (Stage::Reached, *proto), "{what}");
        assert_eq!(got[0].shape(), shape.to_vec(), "{what}");
        assert!(!got[0].spoofed_local(), "{what}");
    }
    let sctp_seen = k.bridge(&eth(&ipv4(o4, c4, 132, &[], 0, &sctp(40013, 3868, 1, 0xdead_beef)), &[]), FROM_UPLINK);
    assert_eq!(sctp_seen[0].seq, 0xdead_beef, "the INIT's initiate tag ties its retransmits");
    assert_eq!(k.counter(Counter::BridgeUninspected), 0, "every shape above was inspected");

    // What starts nothing is skipped, and is no cause for alarm either.
    let quiet: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4 later fragment", ipv4(o4, c4, 6, &[], 3, &[0; 16])),
        ("ipv6 later fragment", ipv6(o6, c6, &[44], 2, 6, &[0; 16])),
        ("ipv4 ack", ipv4(o4, c4, 6, &[], 0, &tcp(40001, 80, 2, ACK))),
        ("ipv6 ack behind options", ipv6(o6, c6, &[0, 60], 0, 6, &tcp(40005, 80, 2, ACK))),
        ("mld behind hop-by-hop", ipv6(o6, "ff02::16", &[0], 0, 58, &[143, 0, 0, 0, 0, 0, 0, 0])),
        ("icmp", ipv4(o4, c4, 1, &[], 0, &[8, 0, 0, 0, 0, 0, 0, 0])),
        ("sctp data chunk", ipv4(o4, c4, 132, &[], 0, &sctp(40011, 3868, 0, 1))),
    ];
    for (what, packet) in &quiet {
        assert!(k.bridge(&eth(packet, &[]), FROM_UPLINK).is_empty(), "{what}: nothing to report");
    }
    assert_eq!(k.counter(Counter::BridgeUninspected), 0, "ordinary traffic never counts as uninspected");

    // What cannot be walked is counted, for a warning: a chain past the bound, a
    // truncated transport header, and (without a conntrack entry to ask) a first
    // fragment cut before the TCP flags.
    let mut cut = ipv4(o4, c4, 6, &[], MF, &tcp(40020, 80, 1, SYN));
    cut.truncate(20 + 8);
    let uninspectable: Vec<(&str, Vec<u8>)> = vec![
        ("seven destination options headers", ipv6(o6, c6, &[60; 7], 0, 6, &tcp(40021, 80, 1, SYN))),
        ("truncated tcp", ipv4(o4, c4, 6, &[], 0, &tcp(40022, 80, 1, SYN)[..6])),
        ("first fragment cut before the flags, no conntrack entry", cut),
    ];
    for (what, packet) in &uninspectable {
        let before = k.counter(Counter::BridgeUninspected);
        assert!(k.bridge(&eth(packet, &[]), FROM_UPLINK).is_empty(), "{what}");
        assert_eq!(k.counter(Counter::BridgeUninspected), before + 1, "{what}: counted");
    }
}

#[test]
fn retransmits_are_one_connection_and_a_reused_port_with_a_new_isn_another() {
    if !privileged("retransmits_are_one_connection_and_a_reused_port_with_a_new_isn_another") {
        return;
    }
    let mut k = Loaded::new();
    let syn = |seq| eth(&ipv4("198.18.1.2", "10.251.1.2", 6, &[], 0, &tcp(41000, 80, seq, SYN)), &[]);
    assert_eq!(k.bridge(&syn(1000), FROM_UPLINK).len(), 1);
    assert!(k.bridge(&syn(1000), FROM_UPLINK).is_empty(), "retransmitted SYN: no second record");
    assert!(k.bridge(&syn(1000), FROM_UPLINK).is_empty());
    assert_eq!(k.bridge(&syn(5000), FROM_UPLINK).len(), 1, "new ISN on the same port: a new connection");
    assert_eq!(k.counter(Counter::RetransmitsDeduplicated), 2);
    let init = |tag| eth(&ipv4("198.18.1.2", "10.251.1.2", 132, &[], 0, &sctp(41001, 3868, 1, tag)), &[]);
    assert_eq!(k.bridge(&init(9), FROM_UPLINK).len(), 1);
    assert!(k.bridge(&init(9), FROM_UPLINK).is_empty(), "retransmitted INIT");
}

#[test]
fn locality_is_judged_by_the_path_not_by_the_source_address() {
    if !privileged("locality_is_judged_by_the_path_not_by_the_source_address") {
        return;
    }
    let mut k = Loaded::new();
    let lo = nix::net::if_::if_nametoindex("lo").unwrap();
    for (src, dst) in [("10.251.1.7", "10.251.1.2"), ("198.18.1.1", "10.251.1.2"), ("fd42:251:1::7", "fd42:251:1::2")] {
        let frame = |sport| {
            let packet = if src.contains(':') {
                ipv6(src, dst, &[], 0, 6, &tcp(sport, 80, 1, SYN))
            } else {
                ipv4(src, dst, 6, &[], 0, &tcp(sport, 80, 1, SYN))
            };
            eth(&packet, &[])
        };
        // The host itself (no ingress) and loopback: local, never reported.
        assert!(k.bridge(&frame(42000), 0).is_empty(), "{src} from the host");
        assert!(k.bridge(&frame(42001), lo).is_empty(), "{src} from loopback");
        // The same source arriving from an uplink: spoofed, reported and flagged.
        let got = k.bridge(&frame(42002), FROM_UPLINK);
        assert_eq!(got.len(), 1, "{src} from outside");
        assert!(got[0].spoofed_local(), "{src}: flagged spoofed");
    }
    assert_eq!(k.counter(Counter::SpoofedLocal), 3);
    // On an uplink every packet is from outside: a local source there is spoofed too.
    let got = k.xdp(
        program_names::UPLINK_XDP,
        &eth(&ipv4("10.251.1.7", "198.18.1.1", 6, &[], 0, &tcp(42003, 8080, 1, SYN)), &[]),
    );
    assert_eq!(got.len(), 1);
    assert!(got[0].spoofed_local() && got[0].stage == Stage::Attempted);
}

#[test]
fn uplinks_of_every_link_layer_see_attempts() {
    if !privileged("uplinks_of_every_link_layer_see_attempts") {
        return;
    }
    let mut k = Loaded::new();
    let (o4, h4, o6, h6) = ("198.18.1.2", "198.18.1.1", "fd42:198:1::2", "fd42:198:1::1");
    let mut sport = 43000;
    let mut next = || {
        sport += 1;
        sport
    };
    // VLAN-tagged (802.1Q, and QinQ 802.1ad + 802.1Q) frames, both families.
    for vlans in [&[0x8100u16][..], &[0x88a8, 0x8100]] {
        for packet in [
            ipv4(o4, h4, 6, &[], 0, &tcp(next(), 8080, 1, SYN)),
            ipv6(o6, h6, &[], 0, 6, &tcp(next(), 8080, 1, SYN)),
            ipv4(o4, h4, 17, &[], 0, &udp(next(), 5300)),
        ] {
            let got = k.xdp(program_names::UPLINK_XDP, &eth(&packet, vlans));
            assert_eq!(got.len(), 1, "tagged {vlans:x?}");
            assert_eq!(got[0].stage, Stage::Attempted);
            assert!(got[0].shape().contains(&"vlan"));
        }
    }
    // L3 devices (wg, tun, ipip, gre): the frame starts at the IP header.
    for packet in [
        ipv4(o4, h4, 6, &[], 0, &tcp(next(), 8080, 1, SYN)),
        ipv6(o6, h6, &[0, 60], 0, 6, &tcp(next(), 8080, 1, SYN)),
        ipv4(o4, h4, 132, &[], 0, &sctp(next(), 3868, 1, 5)),
    ] {
        let got = k.xdp(program_names::UPLINK_XDP_L3, &packet);
        assert_eq!(got.len(), 1, "L3 uplink");
        assert_eq!((got[0].dst, got[0].stage), (ip(if packet[0] >> 4 == 4 { h4 } else { h6 }), Stage::Attempted));
    }
    // Past the host (to a VM on a bridged uplink, routed through): no attempt, even
    // at a published port number.
    assert!(k
        .xdp(program_names::UPLINK_XDP, &eth(&ipv4(o4, "198.18.1.9", 6, &[], 0, &tcp(next(), 8080, 1, SYN)), &[]))
        .is_empty());
    assert!(k
        .xdp(program_names::UPLINK_XDP, &eth(&ipv4(o4, "10.251.1.2", 6, &[], 0, &tcp(next(), 8080, 1, SYN)), &[]))
        .is_empty());
    // The Ethernet program on a bare IP packet must not invent an attempt.
    assert!(k.xdp(program_names::UPLINK_XDP, &ipv4(o4, h4, 6, &[], 0, &tcp(next(), 8080, 1, SYN))).is_empty());
    // A scanner: one source port, two published ports, one ISN: two attempts, and
    // each host answer is matched to its own.
    let scan_port = next();
    for (port, proto) in [(8080u16, 6u8), (5300, 17)] {
        let payload = if proto == 6 { tcp(scan_port, port, 1, SYN) } else { udp(scan_port, port) };
        assert_eq!(k.xdp(program_names::UPLINK_XDP, &eth(&ipv4(o4, h4, proto, &[], 0, &payload), &[])).len(), 1);
    }
    let answer = k.classifier(
        program_names::UPLINK_EGRESS,
        &eth(&ipv4(h4, o4, 6, &[], 0, &tcp(8080, scan_port, 9, SYN | ACK)), &[]),
    );
    assert_eq!(answer.len(), 1);
    assert_eq!((answer[0].stage, answer[0].dst_port, answer[0].proto), (Stage::Answered, 8080, Proto::Tcp));
    // An SCTP INIT answered by INIT-ACK.
    let init_port = next();
    assert_eq!(
        k.xdp(program_names::UPLINK_XDP, &eth(&ipv4(o4, h4, 132, &[], 0, &sctp(init_port, 3868, 1, 5)), &[])).len(),
        1
    );
    let init_ack =
        k.classifier(program_names::UPLINK_EGRESS, &eth(&ipv4(h4, o4, 132, &[], 0, &sctp(3868, init_port, 2, 6)), &[]));
    assert_eq!((init_ack.len(), init_ack[0].proto), (1, Proto::Sctp));
    // A first fragment cut before the flags cannot be judged here: counted, no attempt
    // (the bridge reports it if it reaches a container).
    let before = k.counter(Counter::Unparsed);
    let mut cut = ipv4(o4, h4, 6, &[], MF, &tcp(next(), 8080, 1, SYN));
    cut.truncate(28);
    assert!(k.xdp(program_names::UPLINK_XDP, &eth(&cut, &[])).is_empty());
    assert_eq!(k.counter(Counter::Unparsed), before + 1);
}

#[test]
fn one_udp_idle_time_governs_bridges_and_uplinks_alike() {
    if !privileged("one_udp_idle_time_governs_bridges_and_uplinks_alike") {
        return;
    }
    // A 2 s idle time stands for the default 30 s: a WireGuard-like flow that pauses
    // for less than it is one flow on both sides; longer, a new flow on both sides.
    // Were the two sides to disagree, the uplink would see a new attempt the bridge
    // does not reach again, and a verdict would call it blocked.
    let (mut kernel, ring) =
        Kernel::load(KernelSettings { udp_idle_ns: 2_000_000_000, ..KernelSettings::default() }).unwrap();
    let ports: BTreeSet<PortKey> = [PortKey { port: 5300, proto: PROTO_UDP, _pad: 0 }].into();
    kernel.sync_published_ports(&ports).unwrap();
    let mut hosts = PrefixTable::default();
    hosts.insert("198.18.1.1".parse().unwrap(), SourceKind::HostAddress);
    assert_eq!(kernel.sync_prefixes(&hosts), 0, "every prefix in the tries");
    let mut k = Loaded { kernel, ring };
    let at_uplink = eth(&ipv4("198.18.1.2", "198.18.1.1", 17, &[], 0, &udp(51820, 5300)), &[]);
    let at_bridge = eth(&ipv4("198.18.1.2", "10.251.1.2", 17, &[], 0, &udp(51820, 5300)), &[]);
    let mut seen = Vec::new();
    for pause_ms in [0u64, 1200, 1200, 2600] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        let attempts = k.xdp(program_names::UPLINK_XDP, &at_uplink).len();
        let reaches = k.bridge(&at_bridge, FROM_UPLINK).len();
        seen.push((attempts, reaches));
    }
    assert_eq!(seen, [(1, 1), (0, 0), (0, 0), (1, 1)], "(attempts, reaches) after each pause");
}
