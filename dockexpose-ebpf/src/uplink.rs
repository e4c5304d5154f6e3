//! The uplink's programs: an *attempt* at a published port, before any firewall (XDP,
//! or TCX ingress where XDP is costly), and the host's answer to it (TC egress),
//! matched by the attempt's whole tuple.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dockexpose_common::{
    published_port_index, AttemptValue, Counter, FlowKey, FLAG_SPOOFED_LOCAL, FLAG_SPOOFED_TRUSTED, PREFIX_HOST,
    PREFIX_TRUSTED, PROTO_UDP, STAGE_ANSWERED, STAGE_ATTEMPTED,
};

use crate::{
    flows::flow_key,
    maps::{ATTEMPTS, PUBLISHED_PORTS, RETRANSMIT_WINDOW_NS, UDP_IDLE_NS},
    packet::{parse, Flow, Parsed, TCP_SYN, TCP_SYN_ACK},
    record::{count, emit, Extra},
    source::{prefix_kind, route_back_is, source_kind},
    TCX_NEXT,
};

/// An attempt at a published port, before any firewall.
#[inline(always)]
fn uplink_attempt<const ETHERNET: bool>(ctx: *mut core::ffi::c_void, data: usize, data_end: usize, ifindex: u32) {
    count(Counter::UplinkPackets);
    let flow = match parse::<ETHERNET, false, TCP_SYN>(data, data_end) {
        Parsed::NewFlow(flow) => flow,
        Parsed::Skip => return,
        // Not inspectable here; if it reaches a container, the bridge reports it.
        Parsed::FlagsHidden(_) | Parsed::Uninspectable => {
            count(Counter::Unparsed);
            return;
        }
    };
    let published = PUBLISHED_PORTS.get(published_port_index(flow.dst_port, flow.proto));
    if published.is_none_or(|p| *p == 0) {
        return;
    }
    // Only an address of the host itself is DNAT'd to a published port: traffic routed
    // or bridged past the host (to a VM on a bridged uplink) is no attempt.
    if prefix_kind(flow.family, &flow.dst) != Some(PREFIX_HOST) {
        return;
    }
    let mut flags = flow.shape;
    match source_kind(&flow) {
        None => {}
        Some(PREFIX_TRUSTED) => {
            if route_back_is(ctx, &flow, ifindex) {
                return;
            }
            flags |= FLAG_SPOOFED_TRUSTED;
        }
        // Arrived on an uplink, so from outside, whatever its source says.
        Some(_) => flags |= FLAG_SPOOFED_LOCAL,
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = flow_key(&flow);
    let window = if flow.proto == PROTO_UDP { UDP_IDLE_NS.load() } else { RETRANSMIT_WINDOW_NS.load() };
    if let Some(seen) = ATTEMPTS.get_ptr_mut(&key) {
        let seen = unsafe { &mut *seen };
        if now.wrapping_sub(seen.ktime_ns) < window && seen.seq == flow.seq {
            // A retransmit, or a later packet of the same UDP flow: keep it alive.
            seen.ktime_ns = now;
            count(Counter::AttemptsDeduplicated);
            return;
        }
    }
    let value = AttemptValue { ktime_ns: now, seq: flow.seq, answered: 0, reached: 0, _pad: [0; 2] };
    if ATTEMPTS.insert(&key, &value, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    let extra = Extra { orig_addr: [0; 16], orig_port: 0, flags };
    if emit(&flow, STAGE_ATTEMPTED, ifindex, now, &extra) {
        count(Counter::AttemptsEmitted);
        if flags & FLAG_SPOOFED_LOCAL != 0 {
            count(Counter::SpoofedLocal);
        }
        if flags & FLAG_SPOOFED_TRUSTED != 0 {
            count(Counter::SpoofedTrusted);
        }
    }
}

#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    uplink_attempt::<true>(ctx.ctx.cast(), ctx.data(), ctx.data_end(), unsafe { (*ctx.ctx).ingress_ifindex });
    xdp_action::XDP_PASS
}

/// The same on the uplink's TCX ingress hook: also before any firewall (ahead of
/// netfilter's PREROUTING), and on devices where XDP is costly (veth, virtio) it
/// reads the packet where it is, instead of converting every packet for XDP.
#[classifier]
pub fn uplink_ingress(ctx: TcContext) -> i32 {
    uplink_attempt::<true>(ctx.skb.skb.cast(), ctx.data(), ctx.data_end(), unsafe { (*ctx.skb.skb).ifindex });
    TCX_NEXT
}

#[classifier]
pub fn uplink_ingress_l3(ctx: TcContext) -> i32 {
    uplink_attempt::<false>(ctx.skb.skb.cast(), ctx.data(), ctx.data_end(), unsafe { (*ctx.skb.skb).ifindex });
    TCX_NEXT
}

/// For L3 devices (wg, tun, ipip, gre): the data starts at the IP header.
#[xdp]
pub fn uplink_xdp_l3(ctx: XdpContext) -> u32 {
    uplink_attempt::<false>(ctx.ctx.cast(), ctx.data(), ctx.data_end(), unsafe { (*ctx.ctx).ingress_ifindex });
    xdp_action::XDP_PASS
}

/// A SYN-ACK, SCTP INIT-ACK or UDP datagram leaving towards an outside host: does it
/// answer an attempt, from the very host address and port the attempt was made to?
#[inline(always)]
fn uplink_answer<const ETHERNET: bool>(ctx: &TcContext) -> i32 {
    count(Counter::UplinkEgressPackets);
    let Parsed::NewFlow(reply) = parse::<ETHERNET, false, TCP_SYN_ACK>(ctx.data(), ctx.data_end()) else {
        return TCX_NEXT;
    };
    let key = FlowKey {
        src_addr: reply.dst,
        dst_addr: reply.src,
        src_port: reply.dst_port,
        dst_port: reply.src_port,
        family: reply.family,
        proto: reply.proto,
        _pad: [0; 2],
    };
    let Some(attempt) = ATTEMPTS.get_ptr_mut(&key) else {
        return TCX_NEXT;
    };
    let attempt = unsafe { &mut *attempt };
    if attempt.answered != 0 {
        return TCX_NEXT;
    }
    attempt.answered = 1;
    if attempt.reached != 0 {
        // Already reported as reached: the answer decides nothing.
        count(Counter::AnswersOfReached);
        return TCX_NEXT;
    }
    count(Counter::AttemptsAnswered);
    // Reported the way the attempt was: from the outside host to the host side.
    let inbound = Flow {
        src: reply.dst,
        dst: reply.src,
        seq: attempt.seq,
        src_port: reply.dst_port,
        dst_port: reply.src_port,
        family: reply.family,
        proto: reply.proto,
        shape: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    emit(&inbound, STAGE_ANSWERED, ifindex, now, &Extra { orig_addr: [0; 16], orig_port: 0, flags: 0 });
    TCX_NEXT
}

#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    uplink_answer::<true>(&ctx)
}

/// For L3 devices: the data starts at the IP header.
#[classifier]
pub fn uplink_egress_l3(ctx: TcContext) -> i32 {
    uplink_answer::<false>(&ctx)
}
