//! dockexpose kernel programs.
//!
//! Thin by design: parse, look up, count, emit. Every decision that can be taken in
//! userspace is taken there. All programs fail open: they never drop or redirect a
//! packet, whatever happens inside them. Classifiers return TCX_NEXT (TC_ACT_UNSPEC,
//! -1): on a TCX hook any other verdict ends the chain, and the programs of other
//! tools attached after ours (another monitor, a CNI) would never run.
//!
//! - `bridge_egress` (TCX egress on a container bridge): a new inbound flow that has
//!   survived every firewall table and DNAT, i.e. it *reached* a container.
//! - `bridge_ingress` (TCX ingress on a container bridge): UDP flows that containers
//!   open themselves, remembered so their replies are not taken for new inbound flows.
//! - `uplink_xdp` (XDP on an uplink): a new flow to a published host port, before any
//!   firewall: it was *attempted*. Remembered by (source, port, protocol) so that the
//!   bridge program can attach the pre-DNAT host address and port to the reach.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
    Global,
};
use dockexpose_common::{
    published_port_index, AttemptKey, AttemptValue, ConnEvent, Counter, FlowKey, ATTEMPTS_MAX,
    EVENTS_RING_BYTES, FAMILY_IPV4, FLAG_HAS_ORIG_DST, FLOWS_MAX, PREFIXES_MAX, PROTO_UDP,
    PUBLISHED_PORTS_LEN, STAGE_ANSWERED, STAGE_ATTEMPTED, STAGE_REACHED,
};
use packet::{parse, Flow, Parsed, TCP_SYN, TCP_SYN_ACK};

/// A UDP flow idle for this long is new again. Set by the daemon at load time.
/// "Continue with the next program" on TCX; "default action" on legacy tc.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;

#[no_mangle]
static UDP_IDLE_NS: Global<u64> = Global::new(30_000_000_000);

/// How long an attempt stays joinable and suppresses repeats (SYN retransmits).
#[no_mangle]
static ATTEMPT_DEDUP_NS: Global<u64> = Global::new(10_000_000_000);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Local and trusted prefixes (value PREFIX_LOCAL or PREFIX_TRUSTED); filled by the daemon.
#[map]
static LOCAL_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

#[map]
static LOCAL_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

/// UDP flows seen (inbound orientation) -> last packet time. Outsiders choose the keys: LRU.
#[map]
static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

/// Attempts seen on the uplinks, for the bridge join. Outsiders choose the keys: LRU.
#[map]
static ATTEMPTS: LruHashMap<AttemptKey, AttemptValue> =
    LruHashMap::with_max_entries(ATTEMPTS_MAX, 0);

/// Host ports Docker publishes: 1 at `published_port_index(port, proto)` (filled by the
/// daemon from the Docker inventory). An array: the lookup is inlined, no hashing.
#[map]
static PUBLISHED_PORTS: Array<u8> = Array::with_max_entries(PUBLISHED_PORTS_LEN, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

/// True when the source is one of the host's own prefixes or a trusted one.
#[inline(always)]
fn source_is_local_or_trusted(flow: &Flow) -> bool {
    if flow.family == FAMILY_IPV4 {
        let addr = [flow.src[0], flow.src[1], flow.src[2], flow.src[3]];
        LOCAL_V4.get(Key::new(32, addr)).is_some()
    } else {
        LOCAL_V6.get(Key::new(128, flow.src)).is_some()
    }
}

fn flow_key(flow: &Flow) -> FlowKey {
    FlowKey {
        src_addr: flow.src,
        dst_addr: flow.dst,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        family: flow.family,
        proto: flow.proto,
        _pad: [0; 2],
    }
}

fn attempt_key(flow: &Flow) -> AttemptKey {
    AttemptKey {
        src_addr: flow.src,
        src_port: flow.src_port,
        family: flow.family,
        proto: flow.proto,
    }
}

/// Remembers a UDP flow; returns true when it was already known and still fresh.
#[inline(always)]
fn udp_flow_is_known(key: &FlowKey, now: u64) -> bool {
    if let Some(last) = FLOWS.get_ptr_mut(key) {
        let last = unsafe { &mut *last };
        let fresh = now.wrapping_sub(*last) < UDP_IDLE_NS.load();
        *last = now;
        return fresh;
    }
    if FLOWS.insert(key, now, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    false
}

/// Writes one record to the ring buffer, or counts it as lost.
#[inline(always)]
fn emit(flow: &Flow, stage: u8, ifindex: u32, now: u64, orig: Option<&AttemptValue>) -> bool {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::RingbufFull);
        return false;
    };
    let mut ev = ConnEvent::zeroed();
    ev.ktime_ns = now;
    ev.src_addr = flow.src;
    ev.dst_addr = flow.dst;
    ev.src_port = flow.src_port;
    ev.dst_port = flow.dst_port;
    ev.family = flow.family;
    ev.proto = flow.proto;
    ev.stage = stage;
    ev.ifindex = ifindex;
    if let Some(orig) = orig {
        ev.orig_dst_addr = orig.orig_dst_addr;
        ev.orig_dst_port = orig.orig_dst_port;
        ev.flags = FLAG_HAS_ORIG_DST;
    }
    entry.write(ev);
    entry.submit(0);
    true
}

#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    count(Counter::BridgePackets);
    let Parsed::NewFlow(flow) = parse::<false, TCP_SYN>(ctx.data(), ctx.data_end()) else {
        // Not a new flow (the fast path), or not inspectable (counted in parse).
        return TCX_NEXT;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if flow.proto == PROTO_UDP && udp_flow_is_known(&flow_key(&flow), now) {
        count(Counter::UdpDeduplicated);
        return TCX_NEXT;
    }
    count(Counter::BridgeNewFlows);
    if source_is_local_or_trusted(&flow) {
        count(Counter::BridgeLocalOrTrusted);
        return TCX_NEXT;
    }
    // The join: the uplink program saw this (source, port) before DNAT?
    let attempt = unsafe { ATTEMPTS.get(attempt_key(&flow)) }
        .filter(|a| now.wrapping_sub(a.ktime_ns) < ATTEMPT_DEDUP_NS.load());
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if emit(&flow, STAGE_REACHED, ifindex, now, attempt) {
        count(Counter::ReachedEmitted);
        if attempt.is_some() {
            count(Counter::ReachedJoined);
        }
    }
    TCX_NEXT
}

#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    // A container sends: remember its UDP flow the way its replies will look inbound.
    if let Parsed::NewFlow(flow) = parse::<true, TCP_SYN>(ctx.data(), ctx.data_end()) {
        {
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
            udp_flow_is_known(&reply, now);
        }
    }
    TCX_NEXT
}

#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    count(Counter::UplinkPackets);
    let Parsed::NewFlow(flow) = parse::<false, TCP_SYN>(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_PASS;
    };
    let published = PUBLISHED_PORTS.get(published_port_index(flow.dst_port, flow.proto));
    if published.is_none_or(|p| *p == 0) || source_is_local_or_trusted(&flow) {
        return xdp_action::XDP_PASS;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = attempt_key(&flow);
    if let Some(seen) = ATTEMPTS.get_ptr_mut(key) {
        let seen = unsafe { &mut *seen };
        if now.wrapping_sub(seen.ktime_ns) < ATTEMPT_DEDUP_NS.load()
            && seen.tcp_seq == flow.seq
            && seen.orig_dst_port == flow.dst_port
            && seen.orig_dst_addr == flow.dst
        {
            // A retransmit or a later packet of the same UDP flow: keep it alive.
            seen.ktime_ns = now;
            count(Counter::AttemptsDeduplicated);
            return xdp_action::XDP_PASS;
        }
    }
    let value = AttemptValue {
        ktime_ns: now,
        orig_dst_addr: flow.dst,
        tcp_seq: flow.seq,
        orig_dst_port: flow.dst_port,
        answered: 0,
        _pad: 0,
    };
    if ATTEMPTS.insert(key, value, 0).is_err() {
        count(Counter::MapUpdateFailed);
    }
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if emit(&flow, STAGE_ATTEMPTED, ifindex, now, None) {
        count(Counter::AttemptsEmitted);
    }
    xdp_action::XDP_PASS
}

#[classifier]
pub fn uplink_egress(ctx: TcContext) -> i32 {
    count(Counter::UplinkEgressPackets);
    // A SYN-ACK or a UDP datagram leaving towards an outside host: does it answer an
    // attempt, from the very host address and port the attempt was made to?
    let Parsed::NewFlow(reply) = parse::<false, TCP_SYN_ACK>(ctx.data(), ctx.data_end()) else {
        return TCX_NEXT;
    };
    let key = AttemptKey {
        src_addr: reply.dst,
        src_port: reply.dst_port,
        family: reply.family,
        proto: reply.proto,
    };
    let Some(attempt) = ATTEMPTS.get_ptr_mut(key) else {
        return TCX_NEXT;
    };
    let attempt = unsafe { &mut *attempt };
    if attempt.answered != 0
        || attempt.orig_dst_port != reply.src_port
        || attempt.orig_dst_addr != reply.src
    {
        return TCX_NEXT;
    }
    attempt.answered = 1;
    count(Counter::AttemptsAnswered);
    // Reported the way the attempt was: from the outside host to the host side.
    let inbound = Flow {
        src: reply.dst,
        dst: reply.src,
        seq: 0,
        src_port: reply.dst_port,
        dst_port: reply.src_port,
        family: reply.family,
        proto: reply.proto,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    emit(&inbound, STAGE_ANSWERED, ifindex, now, None);
    TCX_NEXT
}

/// Baseline for `cargo xtask bench` / `dockexpose bench` (BPF_PROG_TEST_RUN): the cost of
/// running an empty classifier. Exists only for the benchmark; never attached.
#[classifier]
pub fn bench_empty_classifier(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// Baseline for `cargo xtask bench` / `dockexpose bench` (BPF_PROG_TEST_RUN): the cost of
/// running an empty XDP program. Exists only for the benchmark; never attached.
#[xdp]
pub fn bench_empty_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
