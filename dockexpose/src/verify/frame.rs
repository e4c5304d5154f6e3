//! Probe frames (pure): Ethernet or bare IP, IPv4 or IPv6, a TCP SYN (with an MSS
//! option, as a real stack sends), a TCP RST closing it, or a first UDP datagram;
//! every checksum computed.

use std::net::IpAddr;

/// The MAC address probes claim to come from: locally administered (bit 1 of the
/// first byte), unicast.
pub const PROBE_SRC_MAC: [u8; 6] = [0x02, 0xd0, 0xc4, 0x5e, 0x70, 0x01];

/// What UDP probes carry: small, and says what it is to anyone capturing it.
pub const UDP_PAYLOAD: &[u8] = b"dockexpose verify probe\n";

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A TCP SYN with this initial sequence number.
    Syn { isn: u32 },
    /// A TCP RST with this sequence number (the SYN's ISN + 1).
    Rst { seq: u32 },
    /// A UDP datagram carrying `UDP_PAYLOAD`.
    Udp,
    /// An SCTP INIT chunk with this initiate tag (a new association).
    SctpInit { tag: u32 },
}

/// One probe packet, from `src:sport` to `dst:dport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// `Some(uplink MAC)` for an Ethernet uplink; `None`: bare IP (L3 uplinks).
    pub dst_mac: Option<[u8; 6]>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub segment: Segment,
    /// IPv4 identification (any value).
    pub ip_id: u16,
}

/// The destination MAC of a probe injected as an XDP live frame on a device whose MAC is
/// `mac` (None: an L3 device: tun, WireGuard, a VPN). A live frame always goes through
/// `eth_type_trans`, whatever the device: a bare IP packet would lose its first 14
/// bytes there and be dropped, and the port would be called HELD while it is open. An
/// L3 device is handed an Ethernet header whose destination is all zeros, which equals
/// its (empty, zeroed) hardware address: the stack then takes the IP packet behind it
/// as one the device received for the host, as a packet from the tunnel is.
pub fn live_frame_mac(mac: Option<[u8; 6]>) -> [u8; 6] {
    mac.unwrap_or([0; 6])
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (s, d) => {
            bytes.extend_from_slice(&to_v6(s));
            bytes.extend_from_slice(&to_v6(d));
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    bytes.chunks_exact(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum()
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// CRC32c (Castagnoli), as SCTP checksums its packets (RFC 9260, appendix A).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk; its checksum is CRC32c, stored as Linux
/// stores it (little-endian), not the Internet checksum.
fn sctp_init(spec: &FrameSpec, tag: u32) -> Vec<u8> {
    let mut s = Vec::with_capacity(32);
    s.extend_from_slice(&spec.sport.to_be_bytes());
    s.extend_from_slice(&spec.dport.to_be_bytes());
    s.extend_from_slice(&[0; 8]); // verification tag 0 (an INIT), checksum
    s.extend_from_slice(&[1, 0]); // INIT, no flags
    s.extend_from_slice(&20u16.to_be_bytes());
    s.extend_from_slice(&tag.to_be_bytes());
    s.extend_from_slice(&65_535u32.to_be_bytes()); // advertised receiver window
    s.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
    s.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
    s.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    let sum = crc32c(&s);
    s[8..12].copy_from_slice(&sum.to_le_bytes());
    s
}

/// The transport header and payload, checksummed.
fn transport(spec: &FrameSpec) -> (u8, Vec<u8>) {
    if let Segment::SctpInit { tag } = spec.segment {
        return (132, sctp_init(spec, tag));
    }
    let (proto, mut seg) = match spec.segment {
        Segment::Syn { isn } => {
            let mut t = Vec::with_capacity(24);
            t.extend_from_slice(&spec.sport.to_be_bytes());
            t.extend_from_slice(&spec.dport.to_be_bytes());
            t.extend_from_slice(&isn.to_be_bytes());
            t.extend_from_slice(&0u32.to_be_bytes());
            t.extend_from_slice(&[6 << 4, TCP_SYN]);
            t.extend_from_slice(&64240u16.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            t.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
            (6u8, t)
        }
        Segment::Rst { seq } => {
            let mut t = Vec::with_capacity(20);
            t.extend_from_slice(&spec.sport.to_be_bytes());
            t.extend_from_slice(&spec.dport.to_be_bytes());
            t.extend_from_slice(&seq.to_be_bytes());
            t.extend_from_slice(&0u32.to_be_bytes());
            t.extend_from_slice(&[5 << 4, TCP_RST]);
            t.extend_from_slice(&0u16.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]);
            (6u8, t)
        }
        Segment::Udp => {
            let len = 8 + UDP_PAYLOAD.len();
            let mut t = Vec::with_capacity(len);
            t.extend_from_slice(&spec.sport.to_be_bytes());
            t.extend_from_slice(&spec.dport.to_be_bytes());
            t.extend_from_slice(&(len as u16).to_be_bytes());
            t.extend_from_slice(&[0, 0]);
            t.extend_from_slice(UDP_PAYLOAD);
            (17u8, t)
        }
        Segment::SctpInit { .. } => unreachable!("built above"),
    };
    let at = if proto == 6 { 16 } else { 6 };
    let mut sum = checksum(&seg, pseudo_header_sum(spec.src, spec.dst, proto, seg.len()));
    if proto == 17 && sum == 0 {
        sum = 0xffff; // 0 means "no checksum" in UDP
    }
    seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    (proto, seg)
}

/// The whole frame, ready to inject.
pub fn build(spec: &FrameSpec) -> Vec<u8> {
    let (proto, seg) = transport(spec);
    let mut out = Vec::with_capacity(14 + 40 + seg.len());
    let ethertype: u16 = if spec.src.is_ipv4() { 0x0800 } else { 0x86dd };
    if let Some(mac) = spec.dst_mac {
        out.extend_from_slice(&mac);
        out.extend_from_slice(&PROBE_SRC_MAC);
        out.extend_from_slice(&ethertype.to_be_bytes());
    }
    match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
            out.extend_from_slice(&spec.ip_id.to_be_bytes());
            out.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let sum = checksum(&out[start..start + 20], 0);
            out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        (s, d) => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&to_v6(s));
            out.extend_from_slice(&to_v6(d));
        }
    }
    out.extend_from_slice(&seg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn an_sctp_init_carries_its_tag_and_a_valid_crc32c() {
        let f = build(&spec("198.18.3.77", "198.18.3.1", Segment::SctpInit { tag: 0xdead_beef }, false));
        assert_eq!((f[9], f.len()), (132, 20 + 32));
        let sctp = &f[20..];
        assert_eq!(sctp[12], 1, "an INIT chunk");
        assert_eq!(&sctp[16..20], &0xdead_beefu32.to_be_bytes());
        let mut zeroed = sctp.to_vec();
        zeroed[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(&sctp[8..12], &crc32c(&zeroed).to_le_bytes());
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn spec(src: &str, dst: &str, segment: Segment, mac: bool) -> FrameSpec {
        FrameSpec {
            dst_mac: mac.then_some(MAC),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40001,
            dport: 8080,
            segment,
            ip_id: 7,
        }
    }

    /// A correct checksum sums (with the pseudo-header) to all ones: `checksum` gives 0.
    fn transport_ok(f: &[u8], l3: usize, v4: bool, src: &str, dst: &str) -> bool {
        let off = if v4 { l3 + 20 } else { l3 + 40 };
        let proto = if v4 { f[l3 + 9] } else { f[l3 + 6] };
        let seg = &f[off..];
        checksum(seg, pseudo_header_sum(src.parse().unwrap(), dst.parse().unwrap(), proto, seg.len())) == 0
    }

    #[test]
    fn ipv4_syn_on_ethernet() {
        let f = build(&spec("198.51.100.77", "198.18.5.1", Segment::Syn { isn: 0x01020304 }, true));
        assert_eq!(&f[..6], &MAC);
        assert_eq!(f[6] & 0x02, 0x02, "locally administered source MAC");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f.len(), 14 + 20 + 24);
        assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 20 + 24);
        assert_eq!(f[14 + 9], 6);
        assert_eq!(&f[26..30], &[198, 51, 100, 77]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 40001);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 8080);
        assert_eq!(u32::from_be_bytes([f[38], f[39], f[40], f[41]]), 0x01020304);
        assert_eq!(f[34 + 13], TCP_SYN);
        assert!(transport_ok(&f, 14, true, "198.51.100.77", "198.18.5.1"));
    }

    #[test]
    fn rst_carries_the_given_sequence() {
        let f = build(&spec("198.51.100.77", "198.18.5.1", Segment::Rst { seq: 9 }, true));
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(f[34 + 13], TCP_RST);
        assert_eq!(u32::from_be_bytes([f[38], f[39], f[40], f[41]]), 9);
        assert!(transport_ok(&f, 14, true, "198.51.100.77", "198.18.5.1"));
    }

    #[test]
    fn ipv6_udp_bare_ip() {
        let f = build(&spec("2001:db8::77", "fd42:198:5::1", Segment::Udp, false));
        assert_eq!(f[0] >> 4, 6);
        assert_eq!(f[6], 17);
        assert_eq!(u16::from_be_bytes([f[4], f[5]]) as usize, 8 + UDP_PAYLOAD.len());
        assert_eq!(&f[48..], UDP_PAYLOAD);
        assert!(transport_ok(&f, 0, false, "2001:db8::77", "fd42:198:5::1"));
        assert_ne!(u16::from_be_bytes([f[46], f[47]]), 0, "UDP over IPv6 needs its checksum");
    }

    #[test]
    fn ipv6_syn_and_ipv4_udp_checksums() {
        let f = build(&spec("2001:db8::77", "fd42:198:5::1", Segment::Syn { isn: 1 }, true));
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert!(transport_ok(&f, 14, false, "2001:db8::77", "fd42:198:5::1"));
        let f = build(&spec("198.51.100.77", "198.18.5.1", Segment::Udp, false));
        assert_eq!(checksum(&f[..20], 0), 0);
        assert!(transport_ok(&f, 0, true, "198.51.100.77", "198.18.5.1"));
    }

    #[test]
    fn checksum_of_odd_lengths() {
        // RFC 1071's example: 0x0001 + 0xf203 + 0xf4f5 + 0xf6f7 -> sum 0xddf2, checksum 0x220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0), 0x220d);
        assert_eq!(checksum(&[0xff], 0), !0xff00u16);
    }

    #[test]
    fn an_l3_uplink_gets_a_frame_eth_type_trans_hands_to_the_host() {
        let mut spec = spec("198.18.9.2", "198.18.9.1", Segment::Syn { isn: 7 }, false);
        spec.dst_mac = Some(live_frame_mac(None));
        let f = build(&spec);
        assert_eq!(&f[..6], &[0; 6], "the all-zero address an L3 device has");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14] >> 4, 4, "the IP packet follows the 14-byte header");
        assert_eq!(live_frame_mac(Some([2, 0, 0, 0, 0, 1])), [2, 0, 0, 0, 0, 1]);
    }
}
