//! Ethernet / IPv4 / IPv6 / TCP / UDP parsing with direct packet access.
//!
//! Ordered for the fast path: a TCP segment that is not a SYN (most traffic) leaves
//! after three bounds-checked reads, before any address is copied or map consulted.

use core::mem::size_of;

use dockexpose_common::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};

use crate::count;
use dockexpose_common::Counter;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV6_HLEN: usize = 40;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

// IPv6 next-header values that mean an extension header stands before TCP/UDP.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// A packet that starts a flow: a TCP SYN without ACK, or any UDP datagram (whether it
/// starts a flow is the caller's business: only it knows the flow table).
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub proto: u8,
}

pub enum Parsed {
    /// Nothing to report: not IP, not TCP/UDP, or TCP that is not a SYN.
    Skip,
    NewFlow(Flow),
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

/// Parses a frame: UDP datagrams, and TCP segments whose SYN/ACK flags are exactly
/// `TCP_FLAGS` (TCP_SYN: a connection starts; TCP_SYN_ACK: it is answered). With
/// `UDP_ONLY`, TCP is skipped as early as anything else (the bridge ingress program
/// needs only UDP; a TCP flow it does not use also keeps the compiler from merging
/// undefined values into paths the verifier then rejects).
#[inline(always)]
pub fn parse<const UDP_ONLY: bool, const TCP_FLAGS: u8>(data: usize, data_end: usize) -> Parsed {
    let Some(ether_type) = read::<[u8; 2]>(data, data_end, 12) else {
        return Parsed::Skip;
    };
    match u16::from_be_bytes(ether_type) {
        ETH_P_IP => parse_ipv4::<UDP_ONLY, TCP_FLAGS>(data, data_end),
        ETH_P_IPV6 => parse_ipv6::<UDP_ONLY, TCP_FLAGS>(data, data_end),
        // VLAN tags are not walked (bridges hand untagged frames to their own hooks;
        // a tagged uplink is rare): counted, so that nothing is missed silently.
        ETH_P_8021Q | ETH_P_8021AD => unparsed(),
        _ => Parsed::Skip,
    }
}

#[inline(always)]
fn parse_ipv4<const UDP_ONLY: bool, const TCP_FLAGS: u8>(data: usize, data_end: usize) -> Parsed {
    // The fixed header in one bounds check, taken at a constant offset: a check at the
    // variable transport offset alone would not let the verifier see the addresses.
    let Some(head) = read::<[u8; 20]>(data, data_end, ETH_HLEN) else {
        return unparsed();
    };
    let proto = head[9];
    if proto != PROTO_UDP && (UDP_ONLY || proto != PROTO_TCP) {
        return Parsed::Skip;
    }
    // A fragment other than the first carries no transport header, and no flow start.
    if u16::from_be_bytes([head[6], head[7]]) & 0x1fff != 0 {
        return Parsed::Skip;
    }
    let ihl = ((head[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return unparsed();
    }
    let l4 = ETH_HLEN + ihl;
    let Some((src_port, dst_port, seq)) = transport::<TCP_FLAGS>(data, data_end, l4, proto) else {
        return unparsed_or_skip(data, data_end, l4, proto);
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&head[12..16]);
    dst[..4].copy_from_slice(&head[16..20]);
    Parsed::NewFlow(Flow { src, dst, seq, src_port, dst_port, family: FAMILY_IPV4, proto })
}

#[inline(always)]
fn parse_ipv6<const UDP_ONLY: bool, const TCP_FLAGS: u8>(data: usize, data_end: usize) -> Parsed {
    // The whole fixed header in one bounds check, for the same reason as IPv4: no
    // later read of it can fail, so no half-built flow reaches the verifier.
    let Some(head) = read::<[u8; IPV6_HLEN]>(data, data_end, ETH_HLEN) else {
        return unparsed();
    };
    let next_hdr = head[6];
    if UDP_ONLY && next_hdr == PROTO_TCP {
        return Parsed::Skip;
    }
    if next_hdr != PROTO_TCP && next_hdr != PROTO_UDP {
        return match next_hdr {
            // Extension headers are rare on a connection's first packet; they are not
            // walked, but they are counted so that nothing is missed silently.
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS => {
                unparsed()
            }
            _ => Parsed::Skip,
        };
    }
    let l4 = ETH_HLEN + IPV6_HLEN;
    let Some((src_port, dst_port, seq)) = transport::<TCP_FLAGS>(data, data_end, l4, next_hdr) else {
        return unparsed_or_skip(data, data_end, l4, next_hdr);
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&head[8..24]);
    dst.copy_from_slice(&head[24..40]);
    Parsed::NewFlow(Flow { src, dst, seq, src_port, dst_port, family: FAMILY_IPV6, proto: next_hdr })
}

/// Ports (and TCP sequence number) of a UDP datagram or of a TCP segment with the
/// wanted flags, or None.
#[inline(always)]
fn transport<const TCP_FLAGS: u8>(data: usize, data_end: usize, l4: usize, proto: u8) -> Option<(u16, u16, u32)> {
    if proto == PROTO_TCP {
        let head = read::<[u8; 14]>(data, data_end, l4)?;
        if head[TCP_FLAGS_OFFSET] & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAGS {
            return None;
        }
        let seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        Some((u16::from_be_bytes([head[0], head[1]]), u16::from_be_bytes([head[2], head[3]]), seq))
    } else {
        let head = read::<[u8; 4]>(data, data_end, l4)?;
        Some((u16::from_be_bytes([head[0], head[1]]), u16::from_be_bytes([head[2], head[3]]), 0))
    }
}

/// After `transport` said no: a TCP segment without the wanted flags is skipped; a
/// transport header cut short is counted.
#[inline(always)]
fn unparsed_or_skip(data: usize, data_end: usize, l4: usize, proto: u8) -> Parsed {
    let need = if proto == PROTO_TCP { 14 } else { 4 };
    if data + l4 + need > data_end {
        unparsed()
    } else {
        Parsed::Skip
    }
}

#[inline(always)]
fn unparsed() -> Parsed {
    count(Counter::Unparsed);
    Parsed::Skip
}
