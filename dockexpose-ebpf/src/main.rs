//! dockexpose kernel programs.
//!
//! Thin by design: parse, look up, count, emit. Every decision that can be taken in
//! userspace is taken there. The watching programs fail open: they never drop or redirect a
//! packet, whatever happens inside them. Classifiers return TCX_NEXT (TC_ACT_UNSPEC,
//! -1): on a TCX hook any other verdict ends the chain, and the programs of other
//! tools attached after ours (another monitor, a CNI) would never run.
//!
//! - `bridge_egress` (TCX egress on a container bridge): a new inbound flow that has
//!   survived every firewall table and DNAT, i.e. it *reached* a container. The
//!   conntrack entry the packet carries (read through kfuncs) gives its pre-DNAT
//!   destination exactly, whichever uplink it came through, and tells a first fragment
//!   cut before the TCP flags from a later segment.
//! - `bridge_ingress` (TCX ingress on a container bridge): UDP flows that containers
//!   open themselves, remembered so their replies are not taken for new inbound flows
//!   where conntrack cannot be asked.
//! - `uplink_xdp` / `uplink_xdp_l3` (XDP on an Ethernet / L3 uplink): a new flow to a
//!   published host port, before any firewall: it was *attempted*. Remembered by its
//!   whole tuple, so that repeats are told from new attempts and the host's answer
//!   (`uplink_egress` / `uplink_egress_l3`, TCX egress) is matched exactly.
#![no_std]
#![no_main]

mod packet;

use core::mem::size_of;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_fib_lookup, xdp_action, BPF_F_INGRESS, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC},
    helpers::{bpf_fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
    Global,
};
use dockexpose_common::{
    published_port_index, AttemptKey, DAEMON_STATE_LEN, AttemptValue, ConnEvent, Counter, FlowKey, Opening, ATTEMPTS_MAX,
    OPENINGS_LEN, PendingKey, PENDING_MAX, FLAG_DIRECT, FLAG_SPOOFED_TRUSTED,
    EVENTS_RING_BYTES, FAMILY_IPV4, FLAG_BY_CONNTRACK, FLAG_HAS_ORIG_DST, FLAG_SPOOFED_LOCAL, FLOWS_MAX,
    LOCAL_IFACES_MAX, PREFIXES_MAX, PREFIX_HOST, PREFIX_TRUSTED, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PUBLISHED_PORTS_LEN, STAGE_ANSWERED,
    STAGE_ATTEMPTED, STAGE_REACHED,
};
use dockexpose_common::{
    ProbeAnswer, FAMILY_IPV6, PROBE_FRAME_MARK, PROBE_COUNTERS_LEN, PROBE_COUNTER_DROPPED, PROBE_COUNTER_LOST, PROBE_EVENTS_RING_BYTES, PROBE_SOURCES_MAX,
};
use packet::{parse, Flow, Parsed, TCP_SYN, TCP_SYN_ACK};

/// Address families of `bpf_fib_lookup`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Drop the packet (a TC verdict: used only by the probe guard).
const TC_ACT_SHOT: i32 = 2;

/// "Continue with the next program" on TCX; "default action" on legacy tc.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;

/// A UDP flow idle for this long is new again, on bridges and uplinks alike. Set by
/// the daemon at load time.
#[no_mangle]
static UDP_IDLE_NS: Global<u64> = Global::new(30_000_000_000);

/// A SYN (INIT) with the same tuple and ISN within this window is a retransmit.
#[no_mangle]
static RETRANSMIT_WINDOW_NS: Global<u64> = Global::new(180_000_000_000);

// Offsets into `struct nf_conn`, from the running kernel's BTF (set by the loader; the
// verifier checks every access against that BTF, so a wrong offset is a load error).
#[no_mangle]
static CT_ENABLED: Global<u32> = Global::new(0);
#[no_mangle]
static CT_ORIG_DST_ADDR_OFF: Global<u32> = Global::new(0);
#[no_mangle]
static CT_ORIG_DST_PORT_OFF: Global<u32> = Global::new(0);

/// Past this many unread bytes a record wakes the reader; below, the reader's own
/// short timer collects it: one wakeup per batch, not per record.
#[no_mangle]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Local and trusted prefixes (value PREFIX_LOCAL or PREFIX_TRUSTED); filled by the daemon.
#[map]
static LOCAL_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

#[map]
static LOCAL_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

/// Interfaces whose packets are the host's own doing: the watched bridges (container
/// to container through the host) and loopback. A local source arriving from anywhere
/// else was spoofed. Filled by the daemon.
#[map]
static LOCAL_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(LOCAL_IFACES_MAX, 0);

/// UDP flows seen on a bridge (inbound orientation) -> last packet time (TCP and SCTP
/// repeats are told apart in OPENINGS). Outsiders choose the keys: LRU.
#[map]
static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

/// The last SYN / INIT per slot, for telling retransmits from new connections without
/// a hash-map update per SYN (see `Opening`).
#[map]
static OPENINGS: Array<Opening> = Array::with_max_entries(OPENINGS_LEN, 0);

/// Attempts seen on the uplinks, by their whole pre-DNAT tuple: repeats are told from
/// new attempts, and the host's answer is matched exactly. Outsiders choose the keys: LRU.
#[map]
static ATTEMPTS: LruHashMap<AttemptKey, AttemptValue> = LruHashMap::with_max_entries(ATTEMPTS_MAX, 0);

/// Host ports Docker publishes: 1 at `published_port_index(port, proto)` (filled by the
/// daemon from the Docker inventory). An array: the lookup is inlined, no hashing.
/// Per-CPU record sequence number (slot 0): incremented for every record, written or
/// lost, so a gap in a CPU's numbers is a lost record and a repeat is a duplicate.
#[map]
static RECORD_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The daemon's bookkeeping, pinned with the other maps (no program reads it).
#[map]
static DAEMON_STATE: Array<u64> = Array::with_max_entries(DAEMON_STATE_LEN, 0);

/// Records the daemon holds back for their container's identity (userspace only,
/// pinned: a crash loses none of them though their ring space is released).
#[map]
static PENDING: HashMap<PendingKey, ConnEvent> = HashMap::with_max_entries(PENDING_MAX, 0);

#[map]
static PUBLISHED_PORTS: Array<u8> = Array::with_max_entries(PUBLISHED_PORTS_LEN, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

/// PREFIX_LOCAL, PREFIX_HOST, PREFIX_TRUSTED, or None for an outside address.
#[inline(always)]
fn prefix_kind(family: u8, addr: &[u8; 16]) -> Option<u8> {
    let kind = if family == FAMILY_IPV4 {
        LOCAL_V4.get(Key::new(32, [addr[0], addr[1], addr[2], addr[3]]))
    } else {
        LOCAL_V6.get(Key::new(128, *addr))
    };
    kind.copied()
}

#[inline(always)]
fn source_kind(flow: &Flow) -> Option<u8> {
    prefix_kind(flow.family, &flow.src)
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

/// Remembers a UDP flow; returns true when it was already known and still fresh
/// (a packet within the idle time).
#[inline(always)]
fn flow_is_known(key: &FlowKey, now: u64) -> bool {
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

/// Slot of a tuple in OPENINGS: a multiplicative hash of its 40 bytes.
#[inline(always)]
fn opening_slot(key: &FlowKey) -> u32 {
    // SAFETY: FlowKey is 40 bytes of plain data on our stack.
    let words: [u64; 5] = unsafe { core::ptr::read_unaligned((key as *const FlowKey).cast()) };
    let mut h: u64 = 0;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    ((h >> 40) as u32) & (OPENINGS_LEN - 1)
}

/// What the OPENINGS cache says of a SYN / INIT.
#[derive(PartialEq, Eq)]
enum Opened {
    /// It repeats the last one of its slot (same tuple, ISN and conntrack entry, not
    /// yet answered, within the window): a retransmit.
    Retransmit,
    /// The same tuple and ISN as a connection the container answered, or on another
    /// conntrack entry: a new connection reusing them.
    Reused,
    New,
}

/// Tells a retransmit from a new connection; a new one takes the slot. `ct` is the
/// conntrack entry's address (0: not read), `replied` whether that entry has seen the
/// container's answer. A retransmit belongs to the same entry. The address alone
/// cannot tell: the kernel reuses a freed entry's memory at once, so a connection
/// answered, reset and opened again with the same ISN may get the same address; the
/// container's answer, marked by `bridge_ingress`, tells it: a SYN after that answer
/// is a retransmit only on an entry that has seen it (the SYN-ACK was lost), a new
/// connection on a new entry.
#[inline(always)]
fn opening(key: &FlowKey, seq: u32, ct: u64, replied: bool, now: u64) -> Opened {
    let Some(slot) = OPENINGS.get_ptr_mut(opening_slot(key)) else {
        return Opened::New;
    };
    // SAFETY: an array slot; a concurrent writer can at worst make us miss a repeat.
    let slot = unsafe { &mut *slot };
    let mut opened = Opened::New;
    if slot.key == *key && slot.seq == seq && now.wrapping_sub(slot.ktime_ns) < RETRANSMIT_WINDOW_NS.load() {
        if slot.ct == ct && (slot.answered == 0 || replied) {
            return Opened::Retransmit;
        }
        opened = Opened::Reused;
    }
    slot.key = *key;
    slot.seq = seq;
    slot.ktime_ns = now;
    slot.ct = ct;
    slot.answered = 0;
    opened
}

/// The container answered a SYN / INIT (`answer` as it leaves the container): marks
/// the opening it answers, so that the tuple and ISN used again are a new connection.
#[inline(always)]
fn opening_answered(answer: &Flow) {
    let key = FlowKey {
        src_addr: answer.dst,
        dst_addr: answer.src,
        src_port: answer.dst_port,
        dst_port: answer.src_port,
        family: answer.family,
        proto: answer.proto,
        _pad: [0; 2],
    };
    let Some(slot) = OPENINGS.get_ptr_mut(opening_slot(&key)) else {
        return;
    };
    // SAFETY: an array slot, as in `opening`.
    let slot = unsafe { &mut *slot };
    if slot.key == key {
        slot.answered = 1;
    }
}

/// The pre-DNAT destination of a record, and its flags.
struct Extra {
    orig_addr: [u8; 16],
    orig_port: u16,
    flags: u8,
}

/// A record's size in the ring buffer: the record and its 8-byte header.
const RECORD_BYTES: u64 = (size_of::<ConnEvent>() + 8) as u64;

/// Writes one record to the ring buffer, or counts it as lost.
#[inline(always)]
fn emit(flow: &Flow, stage: u8, ifindex: u32, now: u64, extra: &Extra) -> bool {
    let rec_seq = match RECORD_SEQ.get_ptr_mut(0) {
        // Per-CPU slot: no other writer.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    };
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
    ev.orig_dst_addr = extra.orig_addr;
    ev.orig_dst_port = extra.orig_port;
    ev.flags = extra.flags;
    ev.seq = flow.seq;
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    ev.rec_seq = rec_seq;
    entry.write(ev);
    // Wake the reader once per batch: when this record (counted in the unread bytes,
    // being reserved) is the one that crosses the threshold. A wakeup costs
    // microseconds (irq_work); a record without one, nanoseconds.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = WAKEUP_BYTES.load();
    let wake = unread >= threshold && unread < threshold + RECORD_BYTES;
    if wake {
        count(Counter::RingWakeups);
    }
    entry.submit(if wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP } as u64);
    true
}

// ---------------------------------------------------------------------------------
// Conntrack: the kernel's own view of the connection, whatever the packet's shape.
//
// The packet carries its conntrack entry (skb->_nfct: the nf_conn pointer, with the
// packet's ctinfo in the low 3 bits). Reading it costs a few loads, where a lookup
// by tuple (bpf_skb_ct_lookup) costs a hash walk and two atomic refcount updates
// (~125 ns here): `bpf_cast_to_kern_ctx` gives the sk_buff behind the context,
// `bpf_rdonly_cast` types the entry as `struct nf_conn` for fault-safe reads.

/// ctinfo values (enum ip_conntrack_info).
const IP_CT_NEW: u64 = 2;
const IP_CT_IS_REPLY: u64 = 3;
const NFCT_INFOMASK: u64 = 7;

#[no_mangle]
static SKB_NFCT_OFF: Global<u32> = Global::new(0);
/// BTF id of `struct nf_conn` in the running kernel.
#[no_mangle]
static NF_CONN_BTF_ID: Global<u32> = Global::new(0);

extern "C" {
    // Kernel functions: the loader patches these calls with their BTF ids.
    fn bpf_cast_to_kern_ctx(ctx: *mut __sk_buff) -> *mut u8;
    fn bpf_rdonly_cast(obj: *const u8, btf_id: u32) -> *const u8;
}

/// What conntrack knows of the connection a bridge packet belongs to.
enum Conntrack {
    /// No entry (conntrack not consulted, untracked): judge by the packet.
    Unknown,
    /// The container opened it (a reply leaving towards it).
    FromInside,
    /// An outside end opened it, to `orig` before DNAT; `replied` once the container answered.
    FromOutside { orig_addr: [u8; 16], orig_port: u16, replied: bool, ct: u64 },
}

#[inline(always)]
unsafe fn ct_read_u32(ct: *const u8, off: u32) -> u32 {
    core::ptr::read_volatile(ct.add(off as usize) as *const u32)
}

/// The conntrack entry the packet carries, read in place (see above).
#[inline(always)]
fn conntrack(ctx: &TcContext, flow: &Flow) -> Conntrack {
    if CT_ENABLED.load() == 0 {
        return Conntrack::Unknown;
    }
    // SAFETY: the kfuncs return a trusted sk_buff and a read-only, fault-safe nf_conn
    // view; offsets come from the kernel's BTF, and the verifier checks each read.
    let (ctinfo, orig_addr, orig_port, ct_addr) = unsafe {
        let skb = bpf_cast_to_kern_ctx(ctx.skb.skb);
        let nfct = core::ptr::read_volatile(skb.add(SKB_NFCT_OFF.load() as usize) as *const u64);
        // No entry, or an untracked packet (NOTRACK: ctinfo IP_CT_UNTRACKED, no
        // pointer): judge by the packet, never take it for a reply.
        if nfct & !NFCT_INFOMASK == 0 {
            return Conntrack::Unknown;
        }
        let ct = bpf_rdonly_cast((nfct & !NFCT_INFOMASK) as *const u8, NF_CONN_BTF_ID.load());
        let d0 = CT_ORIG_DST_ADDR_OFF.load();
        let d = [ct_read_u32(ct, d0), ct_read_u32(ct, d0 + 4), ct_read_u32(ct, d0 + 8), ct_read_u32(ct, d0 + 12)];
        let dp = core::ptr::read_volatile(ct.add(CT_ORIG_DST_PORT_OFF.load() as usize) as *const u16);
        (nfct & NFCT_INFOMASK, d, dp, nfct & !NFCT_INFOMASK)
    };
    if ctinfo >= IP_CT_IS_REPLY {
        return Conntrack::FromInside;
    }
    let mut orig = [0u8; 16];
    let words = if flow.family == FAMILY_IPV4 { 1 } else { 4 };
    for i in 0..4 {
        if i < words {
            orig[i * 4..i * 4 + 4].copy_from_slice(&orig_addr[i].to_ne_bytes());
        }
    }
    Conntrack::FromOutside { orig_addr: orig, orig_port: u16::from_be(orig_port), replied: ctinfo != IP_CT_NEW, ct: ct_addr }
}

/// True when the packet is the host's own doing: sent by the host itself, or routed
/// from a watched bridge or loopback.
#[inline(always)]
fn arrived_from_inside(ingress_ifindex: u32) -> bool {
    ingress_ifindex == 0 || unsafe { LOCAL_IFACES.get(&ingress_ifindex) }.is_some()
}

/// True when the route back to the flow's source leaves by `ingress`, the interface
/// the packet arrived on (the reverse-path check of rp_filter, for trusted sources:
/// one that arrives elsewhere, say from the internet with the admin VPN's address,
/// was spoofed). A lookup that cannot answer (an error, forwarding off) keeps the
/// source trusted, as before; no route back at all, or another interface, does not.
#[inline(always)]
fn route_back_is(ctx: *mut core::ffi::c_void, flow: &Flow, ingress: u32) -> bool {
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

// ---------------------------------------------------------------------------------
// Programs

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

// ---------------------------------------------------------------------------------
// `dockexpose verify`: probes injected as if they arrived on an uplink, and a guard
// that keeps every answer to them inside the host.

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
    unsafe { bpf_redirect(target, BPF_F_INGRESS as u64) as i32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
