//! Whose source a packet has: local or trusted prefixes (filled by the daemon), and
//! the checks that tell such a source arriving from outside, i.e. spoofed.

use core::mem::size_of;

use aya_ebpf::{bindings::bpf_fib_lookup, helpers::bpf_fib_lookup, maps::lpm_trie::Key};
use dockexpose_common::FAMILY_IPV4;

use crate::{
    maps::{LOCAL_IFACES, LOCAL_V4, LOCAL_V6},
    packet::Flow,
};

/// Address families of `bpf_fib_lookup`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// PREFIX_LOCAL, PREFIX_HOST, PREFIX_TRUSTED, or None for an outside address.
#[inline(always)]
pub fn prefix_kind(family: u8, addr: &[u8; 16]) -> Option<u8> {
    let kind = if family == FAMILY_IPV4 {
        LOCAL_V4.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]]))
    } else {
        LOCAL_V6.get(Key::new(128, *addr))
    };
    kind.copied()
}

#[inline(always)]
pub fn source_kind(flow: &Flow) -> Option<u8> {
    prefix_kind(flow.family, &flow.src)
}

/// True when the packet is the host's own doing: sent by the host itself, or routed
/// from a watched bridge or loopback.
#[inline(always)]
pub fn arrived_from_inside(ingress_ifindex: u32) -> bool {
    ingress_ifindex == 0 || unsafe { LOCAL_IFACES.get(&ingress_ifindex) }.is_some()
}

/// True when the route back to the flow's source leaves by `ingress`, the interface
/// the packet arrived on (the reverse-path check of rp_filter, for trusted sources:
/// one that arrives elsewhere, say from the internet with the admin VPN's address,
/// was spoofed). A lookup that cannot answer (an error, forwarding off) keeps the
/// source trusted, as before; no route back at all, or another interface, does not.
#[inline(always)]
pub fn route_back_is(ctx: *mut core::ffi::c_void, flow: &Flow, ingress: u32) -> bool {
    // SAFETY: plain data, all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    if flow.family == FAMILY_IPV4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([flow.src[0], flow.src[1], flow.src[2], flow.src[3]]);
    } else {
        params.family = AF_INET6;
        // SAFETY: 16 bytes into [u32; 4], both plain data.
        params.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(flow.dst) };
        params.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(flow.src) };
    }
    // SAFETY: params lives on our stack for the call; its size is passed.
    let ret = unsafe { bpf_fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match ret {
        // Routed (the neighbour of the route back may not be resolved yet: the
        // interface is known all the same).
        0 | 7 => params.ifindex == ingress,
        // Blackhole, unreachable, prohibit, not a unicast route: nothing goes back.
        1..=4 => false,
        _ => true,
    }
}
