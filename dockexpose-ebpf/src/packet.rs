//! Ethernet (with up to two VLAN tags) or bare L3 / IPv4 (with options and fragments) /
//! IPv6 (with a bounded walk of its extension-header chain) / TCP / UDP / SCTP parsing,
//! with direct packet access.
//!
//! Ordered for the fast path: a TCP segment that is not a SYN (most traffic) leaves
//! after a handful of bounds-checked reads, before any map is consulted.
//!
//! Every shape a first packet can take is either parsed or reported as such:
//! - a first fragment carries the ports; when it is cut before the TCP flags, the
//!   caller asks conntrack whether it starts a connection (`FlagsHidden`);
//! - a later fragment carries no transport header and starts nothing (`Skip`);
//! - anything that cannot be walked is `Uninspectable`, for the caller to count.

use core::mem::size_of;

use dockexpose_common::{
    FAMILY_IPV4, FAMILY_IPV6, FLAG_FRAGMENT, FLAG_IP_OPTIONS, FLAG_VLAN, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// SCTP chunk types that open an association, and answer the opening.
const SCTP_INIT: u8 = 1;
const SCTP_INIT_ACK: u8 = 2;

// IPv6 next-header values that mean an extension header stands before TCP/UDP.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up (counted as uninspectable). Linux itself
/// forwards any number, but real traffic carries at most a few; the bound keeps the
/// verifier's path count small.
const IPV6_MAX_EXT_HEADERS: usize = 6;

/// A packet that may start a flow: a TCP segment with the wanted flags, a UDP datagram
/// (whether it starts a flow is the caller's business: only it knows the flow table),
/// an SCTP INIT (or INIT-ACK).
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP sequence number, SCTP initiate tag (0 for UDP).
    pub seq: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub proto: u8,
    /// FLAG_FRAGMENT | FLAG_IP_OPTIONS | FLAG_VLAN: how the packet was shaped.
    pub shape: u8,
}

pub enum Parsed {
    /// Nothing to report: not IP, not TCP/UDP/SCTP, a later fragment, or a segment
    /// without the wanted flags.
    Skip,
    NewFlow(Flow),
    /// A TCP or SCTP first fragment cut before its flags / chunk type: ports (and, for
    /// TCP, the sequence number) are known, whether it starts something is not.
    FlagsHidden(Flow),
    /// An IP packet whose transport header could not be reached or read.
    Uninspectable,
}

/// Reads a `T` at `offset` from the start of the packet, if the packet is long enough.
#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked just above against data_end (the verifier checks it too).
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// Which TCP segments `parse` returns.
pub const TCP_SYN: u8 = TCP_FLAG_SYN;
pub const TCP_SYN_ACK: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK;

/// Parses a frame: UDP datagrams, TCP segments whose SYN/ACK flags are exactly
/// `TCP_FLAGS` (TCP_SYN: a connection starts; TCP_SYN_ACK: it is answered), and SCTP
/// INIT (INIT-ACK with TCP_SYN_ACK). `ETHERNET` false: the data starts at the IP header
/// (wg, tun, ipip, gre devices). With `UDP_ONLY`, everything but UDP is skipped as
/// early as can be (the bridge ingress program needs only UDP).
#[inline(always)]
pub fn parse<const ETHERNET: bool, const UDP_ONLY: bool, const TCP_FLAGS: u8>(data: usize, data_end: usize) -> Parsed {
    if !ETHERNET {
        // The smallest IP header at once: a one-byte bounds check compiles to a
        // comparison the verifier does not take as one.
        let Some(first) = read::<[u8; IPV4_HLEN]>(data, data_end, 0) else {
            return Parsed::Skip;
        };
        return match first[0] >> 4 {
            4 => parse_ipv4::<UDP_ONLY, TCP_FLAGS>(data, data_end, 0, 0),
            6 => parse_ipv6::<UDP_ONLY, TCP_FLAGS>(data, data_end, 0, 0),
            _ => Parsed::Skip,
        };
    }
    let Some(ether_type) = read::<[u8; 2]>(data, data_end, 12) else {
        return Parsed::Skip;
    };
    match u16::from_be_bytes(ether_type) {
        ETH_P_IP => parse_ipv4::<UDP_ONLY, TCP_FLAGS>(data, data_end, ETH_HLEN, 0),
        ETH_P_IPV6 => parse_ipv6::<UDP_ONLY, TCP_FLAGS>(data, data_end, ETH_HLEN, 0),
        ETH_P_8021Q | ETH_P_8021AD => parse_vlan::<UDP_ONLY, TCP_FLAGS>(data, data_end),
        _ => Parsed::Skip,
    }
}

/// One VLAN tag, or two (802.1ad outer, 802.1Q inner): a NIC without VLAN offload
/// hands tagged frames to XDP as they are.
#[inline(always)]
fn parse_vlan<const UDP_ONLY: bool, const TCP_FLAGS: u8>(data: usize, data_end: usize) -> Parsed {
    let Some(inner) = read::<[u8; 2]>(data, data_end, ETH_HLEN + 2) else {
        return Parsed::Uninspectable;
    };
    let (ether_type, l3) = match u16::from_be_bytes(inner) {
        ETH_P_8021Q | ETH_P_8021AD => {
            let Some(inner) = read::<[u8; 2]>(data, data_end, ETH_HLEN + VLAN_HLEN + 2) else {
                return Parsed::Uninspectable;
            };
            (u16::from_be_bytes(inner), ETH_HLEN + 2 * VLAN_HLEN)
        }
        other => (other, ETH_HLEN + VLAN_HLEN),
    };
    match ether_type {
        ETH_P_IP => parse_ipv4::<UDP_ONLY, TCP_FLAGS>(data, data_end, l3, FLAG_VLAN),
        ETH_P_IPV6 => parse_ipv6::<UDP_ONLY, TCP_FLAGS>(data, data_end, l3, FLAG_VLAN),
        _ => Parsed::Skip,
    }
}

#[inline(always)]
fn wanted_proto<const UDP_ONLY: bool>(proto: u8) -> bool {
    proto == PROTO_UDP || (!UDP_ONLY && (proto == PROTO_TCP || proto == PROTO_SCTP))
}

#[inline(always)]
fn parse_ipv4<const UDP_ONLY: bool, const TCP_FLAGS: u8>(
    data: usize,
    data_end: usize,
    l3: usize,
    mut shape: u8,
) -> Parsed {
    // The fixed header in one bounds check: no later read of it can fail, so no
    // half-built flow reaches the verifier.
    let Some(head) = read::<[u8; IPV4_HLEN]>(data, data_end, l3) else {
        return Parsed::Uninspectable;
    };
    let proto = head[9];
    if !wanted_proto::<UDP_ONLY>(proto) {
        return Parsed::Skip;
    }
    let frag = u16::from_be_bytes([head[6], head[7]]);
    // A later fragment carries no transport header, and starts nothing: the first
    // one (offset 0) carries the ports and is inspected.
    if frag & 0x1fff != 0 {
        return Parsed::Skip;
    }
    if frag & 0x2000 != 0 {
        shape |= FLAG_FRAGMENT;
    }
    let ihl = ((head[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Parsed::Uninspectable;
    }
    if ihl > IPV4_HLEN {
        shape |= FLAG_IP_OPTIONS;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&head[12..16]);
    dst[..4].copy_from_slice(&head[16..20]);
    let flow = Flow { src, dst, seq: 0, src_port: 0, dst_port: 0, family: FAMILY_IPV4, proto, shape };
    transport::<TCP_FLAGS>(data, data_end, l3 + ihl, flow)
}

#[inline(always)]
fn parse_ipv6<const UDP_ONLY: bool, const TCP_FLAGS: u8>(
    data: usize,
    data_end: usize,
    l3: usize,
    mut shape: u8,
) -> Parsed {
    let Some(head) = read::<[u8; IPV6_HLEN]>(data, data_end, l3) else {
        return Parsed::Uninspectable;
    };
    let mut next = head[6];
    if UDP_ONLY && next == PROTO_TCP {
        return Parsed::Skip;
    }
    let mut l4 = l3 + IPV6_HLEN;
    // The extension-header chain, walked as the kernel does (bounded): hop-by-hop,
    // routing and destination options share one layout; a fragment header says
    // whether the transport header follows (offset 0) or not.
    let mut walked = 0;
    while walked < IPV6_MAX_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let Some(ext) = read::<[u8; 2]>(data, data_end, l4) else {
                    return Parsed::Uninspectable;
                };
                next = ext[0];
                l4 += (ext[1] as usize + 1) * 8;
                shape |= FLAG_IP_OPTIONS;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = read::<[u8; 4]>(data, data_end, l4) else {
                    return Parsed::Uninspectable;
                };
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    return Parsed::Skip;
                }
                next = ext[0];
                l4 += 8;
                shape |= FLAG_FRAGMENT;
            }
            IPV6_AUTH => {
                let Some(ext) = read::<[u8; 2]>(data, data_end, l4) else {
                    return Parsed::Uninspectable;
                };
                next = ext[0];
                l4 += (ext[1] as usize + 2) * 4;
                shape |= FLAG_IP_OPTIONS;
            }
            _ => break,
        }
        walked += 1;
    }
    if !wanted_proto::<UDP_ONLY>(next) {
        return match next {
            // Still an extension header after the bound: could hide anything.
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS => Parsed::Uninspectable,
            // ICMPv6 (MLD, neighbour discovery), ESP, no next header, ...
            _ => Parsed::Skip,
        };
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&head[8..24]);
    dst.copy_from_slice(&head[24..40]);
    let flow = Flow { src, dst, seq: 0, src_port: 0, dst_port: 0, family: FAMILY_IPV6, proto: next, shape };
    transport::<TCP_FLAGS>(data, data_end, l4, flow)
}

/// Fills in ports (and sequence number / initiate tag) of a UDP datagram, a TCP segment
/// with the wanted flags, or an SCTP INIT (INIT-ACK).
#[inline(always)]
fn transport<const TCP_FLAGS: u8>(data: usize, data_end: usize, l4: usize, mut flow: Flow) -> Parsed {
    match flow.proto {
        PROTO_TCP => {
            if let Some(head) = read::<[u8; 14]>(data, data_end, l4) {
                if head[TCP_FLAGS_OFFSET] & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAGS {
                    return Parsed::Skip;
                }
                flow.src_port = u16::from_be_bytes([head[0], head[1]]);
                flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
                flow.seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                return Parsed::NewFlow(flow);
            }
            // A first fragment may legally end after 8 bytes of TCP: ports and ISN.
            if flow.shape & FLAG_FRAGMENT != 0 {
                if let Some(head) = read::<[u8; 8]>(data, data_end, l4) {
                    flow.src_port = u16::from_be_bytes([head[0], head[1]]);
                    flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
                    flow.seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                    return Parsed::FlagsHidden(flow);
                }
            }
            Parsed::Uninspectable
        }
        PROTO_SCTP => {
            // Common header (ports, verification tag, checksum), then the first chunk:
            // type, flags, length, initiate tag.
            if let Some(head) = read::<[u8; 20]>(data, data_end, l4) {
                let wanted = if TCP_FLAGS == TCP_SYN { SCTP_INIT } else { SCTP_INIT_ACK };
                if head[12] != wanted {
                    return Parsed::Skip;
                }
                flow.src_port = u16::from_be_bytes([head[0], head[1]]);
                flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
                flow.seq = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
                return Parsed::NewFlow(flow);
            }
            if flow.shape & FLAG_FRAGMENT != 0 {
                if let Some(head) = read::<[u8; 4]>(data, data_end, l4) {
                    flow.src_port = u16::from_be_bytes([head[0], head[1]]);
                    flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
                    return Parsed::FlagsHidden(flow);
                }
            }
            Parsed::Uninspectable
        }
        _ => {
            let Some(head) = read::<[u8; 4]>(data, data_end, l4) else {
                return Parsed::Uninspectable;
            };
            flow.src_port = u16::from_be_bytes([head[0], head[1]]);
            flow.dst_port = u16::from_be_bytes([head[2], head[3]]);
            Parsed::NewFlow(flow)
        }
    }
}
