//! `dockexpose verify`: probes injected as if they arrived on an uplink, and a guard
//! that keeps every answer to them inside the host. `watch` never attaches any of it.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use dockexpose_common::{
    ProbeAnswer, FAMILY_IPV4, FAMILY_IPV6, LOCAL_IFACES_MAX, PROBE_COUNTERS_LEN, PROBE_COUNTER_DROPPED,
    PROBE_COUNTER_LOST, PROBE_EVENTS_RING_BYTES, PROBE_FRAME_MARK, PROBE_SOURCES_MAX, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::TCX_NEXT;

/// Drop the packet (a TC verdict: used only by the probe guard).
const TC_ACT_SHOT: i32 = 2;

/// Probe source addresses (16 bytes, IPv4 in the first four): packets to them never
/// leave. Filled by `verify` for the length of a run.
#[map]
static PROBE_SOURCES: HashMap<[u8; 16], u8> = HashMap::with_max_entries(PROBE_SOURCES_MAX, 0);

/// Interfaces where the guard sees bare IP (L3 devices: tun, wg).
#[map]
static PROBE_GUARD_L3: HashMap<u32, u8> = HashMap::with_max_entries(LOCAL_IFACES_MAX, 0);

/// What the guard dropped (ProbeCounter indexes), per CPU.
#[map]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_COUNTERS_LEN, 0);

/// Answers to probes the guard stopped (SYN-ACK, RST, UDP, ICMP): who answered.
#[map]
static PROBE_EVENTS: RingBuf = RingBuf::with_byte_size(PROBE_EVENTS_RING_BYTES, 0);

#[inline(always)]
fn probe_count(index: u32) {
    if let Some(slot) = PROBE_COUNTERS.get_ptr_mut(index) {
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn probe_read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// The injector: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs it on a crafted
/// frame, and XDP_PASS hands that frame to the receive path of the `ingress_ifindex`
/// given in the context. Never attached.
#[xdp]
pub fn probe_inject(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// TCX egress on the uplinks (and the interfaces the routes to probe sources leave by)
/// while `verify` runs: any IPv4/IPv6 packet to a probe source is dropped (counted,
/// and reported when it answers a probe); everything else goes on untouched.
#[classifier]
pub fn uplink_probe_guard(ctx: TcContext) -> i32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let l3 = unsafe { PROBE_GUARD_L3.get(&ifindex) }.is_some();
    let mut off = 0usize;
    let version = if l3 {
        // The smallest IP header at once (a one-byte bounds check is not taken as one).
        let Some(first) = probe_read::<[u8; 20]>(data, data_end, 0) else { return TCX_NEXT };
        first[0] >> 4
    } else {
        let Some(et) = probe_read::<[u8; 2]>(data, data_end, 12) else { return TCX_NEXT };
        off = 14;
        match u16::from_be_bytes(et) {
            0x0800 => 4,
            0x86DD => 6,
            _ => return TCX_NEXT,
        }
    };
    let mut ev = ProbeAnswer::zeroed();
    let l4;
    if version == 4 {
        let Some(h) = probe_read::<[u8; 20]>(data, data_end, off) else { return TCX_NEXT };
        if h[0] >> 4 != 4 {
            return TCX_NEXT;
        }
        ev.dst_addr[..4].copy_from_slice(&h[16..20]);
        ev.src_addr[..4].copy_from_slice(&h[12..16]);
        ev.family = FAMILY_IPV4;
        ev.proto = h[9];
        // A later fragment carries no ports.
        let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        l4 = if frag == 0 { off + ((h[0] & 0x0f) as usize) * 4 } else { 0 };
    } else if version == 6 {
        let Some(h) = probe_read::<[u8; 40]>(data, data_end, off) else { return TCX_NEXT };
        ev.src_addr.copy_from_slice(&h[8..24]);
        ev.dst_addr.copy_from_slice(&h[24..40]);
        ev.family = FAMILY_IPV6;
        ev.proto = h[6];
        l4 = off + 40;
    } else {
        return TCX_NEXT;
    }
    if unsafe { PROBE_SOURCES.get(&ev.dst_addr) }.is_none() {
        return TCX_NEXT;
    }
    probe_count(PROBE_COUNTER_DROPPED);
    if l4 != 0 && (ev.proto == PROTO_TCP || ev.proto == PROTO_UDP || ev.proto == PROTO_SCTP) {
        if ev.proto == PROTO_TCP || ev.proto == PROTO_SCTP {
            // TCP: the flags; SCTP: the first chunk's type (INIT-ACK 2, ABORT 6).
            let at = if ev.proto == PROTO_TCP { 13 } else { 12 };
            if let Some(t) = probe_read::<[u8; 14]>(data, data_end, l4) {
                ev.src_port = u16::from_be_bytes([t[0], t[1]]);
                ev.dst_port = u16::from_be_bytes([t[2], t[3]]);
                ev.tcp_flags = t[at];
            }
        } else if let Some(ports) = probe_read::<[u8; 4]>(data, data_end, l4) {
            ev.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            ev.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    ev.ifindex = ifindex;
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    if PROBE_EVENTS.output::<ProbeAnswer>(&ev, 0).is_err() {
        probe_count(PROBE_COUNTER_LOST);
    }
    TC_ACT_SHOT
}

/// The uplink `probe_redirect` hands probes to (slot 0, an ifindex; 0: none).
#[map]
static PROBE_REDIRECT: Array<u32> = Array::with_max_entries(1, 0);

/// `verify` where XDP live frames are refused: TC ingress on the far end of a veth
/// that only the daemon sends into. A frame with the probe mark goes on into the
/// chosen uplink's receive path, as if it had arrived there; anything else the veth
/// carries (the kernel's own IPv6 chatter) is dropped, never handed on.
#[classifier]
pub fn probe_redirect(ctx: TcContext) -> i32 {
    let mark = unsafe { (*ctx.skb.skb).mark };
    let target = PROBE_REDIRECT.get(0).copied().unwrap_or(0);
    if mark != PROBE_FRAME_MARK || target == 0 {
        return TC_ACT_SHOT;
    }
    // The mark was only ours: the uplink's rules and routing see the probe as they
    // would see a packet from outside, unmarked.
    unsafe { (*ctx.skb.skb).mark = 0 };
    unsafe { bpf_redirect(target, BPF_F_INGRESS as u64) as i32 }
}
