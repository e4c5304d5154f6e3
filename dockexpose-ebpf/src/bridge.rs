//! The container bridge's programs: what *reached* a container (egress, after every
//! firewall table and DNAT), and what containers send (ingress), remembered so that
//! their replies and answers are told from new inbound flows.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use dockexpose_common::{
    Counter, FlowKey, FLAG_BY_CONNTRACK, FLAG_DIRECT, FLAG_HAS_ORIG_DST, FLAG_SPOOFED_LOCAL, FLAG_SPOOFED_TRUSTED,
    PREFIX_TRUSTED, PROTO_UDP, STAGE_REACHED,
};

use crate::{
    conntrack::{conntrack, Conntrack},
    flows::{flow_is_known, flow_key, opening, opening_answered, Opened},
    maps::ATTEMPTS,
    packet::{parse, Parsed, TCP_SYN, TCP_SYN_ACK},
    record::{count, emit, Extra},
    source::{arrived_from_inside, route_back_is, source_kind},
    TCX_NEXT,
};

#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    count(Counter::BridgePackets);
    let (flow, flags_hidden) = match parse::<true, false, TCP_SYN>(ctx.data(), ctx.data_end()) {
        // Not a new flow: the fast path.
        Parsed::Skip => return TCX_NEXT,
        Parsed::NewFlow(flow) => (flow, false),
        Parsed::FlagsHidden(flow) => (flow, true),
        Parsed::Uninspectable => {
            count(Counter::BridgeUninspected);
            return TCX_NEXT;
        }
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = flow_key(&flow);
    // UDP: the flow table first (most UDP packets belong to a known flow).
    if flow.proto == PROTO_UDP && flow_is_known(&key, now) {
        count(Counter::UdpDeduplicated);
        return TCX_NEXT;
    }
    count(Counter::BridgeNewFlows);
    let mut flags = flow.shape;
    match source_kind(&flow) {
        None => {}
        Some(PREFIX_TRUSTED) => {
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            if route_back_is(ctx.skb.skb.cast(), &flow, ingress) {
                count(Counter::BridgeLocalOrTrusted);
                return TCX_NEXT;
            }
            // The route back to it leaves elsewhere: a trusted source spoofed.
            flags |= FLAG_SPOOFED_TRUSTED;
        }
        Some(_) => {
            let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
            if arrived_from_inside(ingress) {
                count(Counter::BridgeLocalOrTrusted);
                return TCX_NEXT;
            }
            // A local source from outside: spoofed, and reported as such.
            flags |= FLAG_SPOOFED_LOCAL;
        }
    }
    let mut extra = Extra { orig_addr: [0; 16], orig_port: 0, flags };
    let (mut ct, mut ct_replied) = (0, false);
    match conntrack(&ctx, &flow) {
        Conntrack::FromOutside { orig_addr, orig_port, replied, ct: entry } => {
            if flags_hidden && replied {
                // A fragment of a connection already answered: nothing new.
                return TCX_NEXT;
            }
            (ct, ct_replied) = (entry, replied);
            if orig_addr == flow.dst && orig_port == flow.dst_port {
                // Not DNAT'd: routed straight to the container, no host side to name.
                extra.flags |= FLAG_DIRECT;
            } else {
                extra.orig_addr = orig_addr;
                extra.orig_port = orig_port;
                extra.flags |= FLAG_HAS_ORIG_DST;
                count(Counter::ConntrackJoined);
                // The uplink's attempt, by the very tuple it saw: reached, so the
                // host's answer to it needs no record.
                let attempt = FlowKey { dst_addr: orig_addr, dst_port: orig_port, ..key };
                if let Some(a) = ATTEMPTS.get_ptr_mut(&attempt) {
                    unsafe { (*a).reached = 1 };
                }
            }
        }
        Conntrack::FromInside => {
            if flow.proto == PROTO_UDP || flags_hidden {
                // A reply to a flow the container opened.
                count(Counter::UdpDeduplicated);
                return TCX_NEXT;
            }
        }
        Conntrack::Unknown => {
            if flags_hidden {
                // No way to tell whether it starts a connection.
                count(Counter::BridgeUninspected);
                return TCX_NEXT;
            }
        }
    }
    if flags_hidden {
        extra.flags |= FLAG_BY_CONNTRACK;
    }
    if flow.proto != PROTO_UDP {
        match opening(&key, flow.seq, ct, ct_replied, now) {
            Opened::Retransmit => {
                count(Counter::RetransmitsDeduplicated);
                return TCX_NEXT;
            }
            Opened::Reused => count(Counter::TupleReused),
            Opened::New => {}
        }
    }
    if flags_hidden {
        count(Counter::ConntrackFirstPackets);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if emit(&flow, STAGE_REACHED, ifindex, now, &extra) {
        count(Counter::ReachedEmitted);
        if extra.flags & FLAG_HAS_ORIG_DST != 0 {
            count(Counter::ReachedJoined);
        }
        if extra.flags & FLAG_SPOOFED_LOCAL != 0 {
            count(Counter::SpoofedLocal);
        }
        if extra.flags & FLAG_SPOOFED_TRUSTED != 0 {
            count(Counter::SpoofedTrusted);
        }
    }
    TCX_NEXT
}

#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    // A container sends. Its answer to a SYN / INIT marks that opening answered; its
    // own UDP flow is remembered the way its replies will look inbound (for when
    // conntrack cannot be consulted).
    if let Parsed::NewFlow(flow) = parse::<true, false, TCP_SYN_ACK>(ctx.data(), ctx.data_end()) {
        if flow.proto != PROTO_UDP {
            opening_answered(&flow);
            return TCX_NEXT;
        }
        let reply = FlowKey {
            src_addr: flow.dst,
            dst_addr: flow.src,
            src_port: flow.dst_port,
            dst_port: flow.src_port,
            family: flow.family,
            proto: flow.proto,
            _pad: [0; 2],
        };
        let now = unsafe { bpf_ktime_get_ns() };
        flow_is_known(&reply, now);
    }
    TCX_NEXT
}
