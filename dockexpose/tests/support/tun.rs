//! A TUN device the test feeds: an L3 uplink with no Ethernet header (as wg0 or a
//! VPN tunnel are), on which packets "arrive" when the test writes them and from
//! which the test reads what the host routes out of it. Plus pure builders and
//! parsers of the IP packets written and read there, with their checksums.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

use super::{sh, sh_quiet};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// struct ifreq as TUNSETIFF reads it: the name, then the flags (the rest of the
/// union is unused here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TUN device (IFF_TUN | IFF_NO_PI: each read or write is one bare IP packet),
/// up, with an IPv4 and an IPv6 address. The kernel removes a non-persistent TUN
/// device when its last fd closes: dropping the `Tun` removes it (and its routes).
pub struct Tun {
    pub name: String,
    file: File,
}

impl Tun {
    /// Creates `name` (at most 15 bytes) in the current network namespace with
    /// `addr4` (CIDR, e.g. "198.18.230.1/24") and `addr6` (e.g. "fd42:198:230::1/64",
    /// added without DAD). Fails clearly when a prefix is routed already.
    pub fn create(name: &str, addr4: &str, addr6: &str) -> Tun {
        assert!(name.len() < libc::IFNAMSIZ, "TUN name {name:?} longer than 15 bytes");
        for cidr in [addr4, addr6] {
            super::assert_unrouted(&network_of(cidr));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .unwrap_or_else(|e| panic!("open /dev/net/tun: {e} (no TUN support in this kernel?)"));
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        let tun = Tun { name: name.to_string(), file };
        sh(&["ip", "addr", "add", addr4, "dev", name]);
        sh(&["ip", "-6", "addr", "add", addr6, "dev", name, "nodad"]);
        sh(&["ip", "link", "set", name, "up"]);
        tun
    }

    /// Injects one IP packet, as if the device had received it.
    pub fn write(&self, packet: &[u8]) {
        let n = (&self.file).write(packet).unwrap_or_else(|e| panic!("write to {}: {e}", self.name));
        assert_eq!(n, packet.len(), "short write to {}", self.name);
    }

    /// The next packet the host sends out of the device, or None after `timeout`.
    pub fn read_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd { fd: self.file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd we own.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll {}: {e}", self.name);
                continue;
            }
            if rc == 0 {
                return None;
            }
            let mut buf = vec![0u8; 65536];
            let n = (&self.file).read(&mut buf).unwrap_or_else(|e| panic!("read from {}: {e}", self.name));
            buf.truncate(n);
            return Some(buf);
        }
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        // Closing the fd removes the device; this also covers a device made
        // persistent by someone else meanwhile.
        sh_quiet(&["ip", "link", "del", &self.name]);
    }
}

/// "198.18.230.1/24" -> "198.18.230.0/24" (the prefix the address creates a route for).
fn network_of(cidr: &str) -> String {
    let (addr, len) = cidr.split_once('/').unwrap_or_else(|| panic!("{cidr:?} is not a CIDR"));
    let len: u32 = len.parse().unwrap_or_else(|_| panic!("bad prefix length in {cidr:?}"));
    match addr.parse::<IpAddr>().unwrap_or_else(|_| panic!("bad address in {cidr:?}")) {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            format!("{}/{len}", Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Internet checksum (RFC 1071) over the concatenation of `chunks`. Each chunk but
/// the last must have an even length (as pseudo-headers and headers do).
pub fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header of a transport checksum (RFC 793 / RFC 8200 8.1).
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            [&s.octets()[..], &d.octets()[..], &[0, proto], &(len as u16).to_be_bytes()[..]].concat()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            [&s.octets()[..], &d.octets()[..], &(len as u32).to_be_bytes()[..], &[0, 0, 0, proto]].concat()
        }
        _ => panic!("pseudo header of mixed families {src} -> {dst}"),
    }
}

/// A TCP SYN segment (20-byte header + MSS 1460), checksummed for src -> dst.
fn tcp_syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut tcp = vec![0u8; 24];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4; // data offset: 6 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let sum = inet_checksum(&[&pseudo_header(src, dst, 6, tcp.len()), &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = inet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    ip
}

/// An IPv4 packet carrying a TCP SYN (MSS option), all checksums set.
pub fn ipv4_tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let tcp = tcp_syn(src.into(), dst.into(), sport, dport, seq);
    [ipv4_header(src, dst, 6, tcp.len()), tcp].concat()
}

/// An IPv6 packet carrying a TCP SYN (MSS option), checksum set.
pub fn ipv6_tcp_syn(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let tcp = tcp_syn(src.into(), dst.into(), sport, dport, seq);
    [ipv6_header(src, dst, 6, tcp.len()), tcp].concat()
}

/// An IPv4 packet carrying a UDP datagram, all checksums set.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    let sum = match inet_checksum(&[&pseudo_header(src.into(), dst.into(), 17, udp.len()), &udp]) {
        0 => 0xffff, // RFC 768: a computed 0 is sent as all ones
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    [ipv4_header(src, dst, 17, udp.len()), udp].concat()
}

/// The transport part of an IP packet: (src, dst, protocol, transport bytes).
/// IPv6 extension headers (Hop-by-Hop, Routing, Destination Options) are skipped;
/// fragments (v4 with MF or an offset, v6 Fragment header) and truncated packets
/// give None.
pub fn transport(packet: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            if ihl < 20 || total < ihl || packet.len() < total {
                return None;
            }
            let frag = u16::from_be_bytes([packet[6], packet[7]]);
            if frag & 0x3fff != 0 {
                return None;
            }
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            Some((src.into(), dst.into(), packet[9], &packet[ihl..total]))
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if packet.len() < total {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?);
            let (mut next, mut off) = (packet[6], 40);
            while matches!(next, 0 | 43 | 60) {
                let len = (usize::from(*packet.get(off + 1)?) + 1) * 8;
                next = packet[off];
                off += len;
            }
            if next == 44 || off > total {
                return None;
            }
            Some((src.into(), dst.into(), next, &packet[off..total]))
        }
        _ => None,
    }
}

/// True when the TCP or UDP checksum of an (unfragmented) IP packet is right, and
/// for IPv4 the header checksum too.
pub fn checksums_ok(packet: &[u8]) -> bool {
    let Some((src, dst, proto, seg)) = transport(packet) else { return false };
    if src.is_ipv4() && inet_checksum(&[&packet[..usize::from(packet[0] & 0x0f) * 4]]) != 0 {
        return false;
    }
    matches!(proto, 6 | 17) && inet_checksum(&[&pseudo_header(src, dst, proto, seg.len()), seg]) == 0
}

/// A TCP segment's (src, sport, dst, dport, flags), e.g. a SYN-ACK (flags 0x12) the
/// host routed out of a TUN device. None when the packet is not TCP.
pub fn tcp_reply(packet: &[u8]) -> Option<(IpAddr, u16, IpAddr, u16, u8)> {
    let (src, dst, proto, seg) = transport(packet)?;
    if proto != 6 || seg.len() < 20 {
        return None;
    }
    let sport = u16::from_be_bytes([seg[0], seg[1]]);
    let dport = u16::from_be_bytes([seg[2], seg[3]]);
    Some((src, sport, dst, dport, seg[13]))
}

/// A UDP datagram's (src, sport, dst, dport, payload). None when not UDP.
pub fn udp_datagram(packet: &[u8]) -> Option<(IpAddr, u16, IpAddr, u16, Vec<u8>)> {
    let (src, dst, proto, seg) = transport(packet)?;
    if proto != 17 || seg.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([seg[0], seg[1]]);
    let dport = u16::from_be_bytes([seg[2], seg[3]]);
    Some((src, sport, dst, dport, seg[8..].to_vec()))
}
