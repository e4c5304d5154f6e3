//! Types shared by the kernel programs (dockexpose-ebpf) and the daemon (dockexpose).
//!
//! Every type here is `#[repr(C)]` with its padding spelled out (no `bool`, no implicit
//! holes), so that both sides agree byte for byte. Sizes are checked by tests on the
//! userspace side and by `const` assertions here, which the kernel build evaluates too.
//! Ports are in host byte order everywhere; addresses are in network byte order, IPv4
//! in the first four bytes of a 16-byte array and the rest zero.
#![no_std]

/// Names of the maps in the eBPF object, used by the daemon to find them.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const LOCAL_V4: &str = "LOCAL_V4";
    pub const LOCAL_V6: &str = "LOCAL_V6";
    pub const FLOWS: &str = "FLOWS";
    pub const ATTEMPTS: &str = "ATTEMPTS";
    pub const PUBLISHED_PORTS: &str = "PUBLISHED_PORTS";
    pub const LOCAL_IFACES: &str = "LOCAL_IFACES";
    pub const OPENINGS: &str = "OPENINGS";
    /// Per-CPU sequence number of the records (one u64 slot): with the CPU and the boot
    /// id it names a record uniquely, so a duplicate written after a crash is told.
    pub const RECORD_SEQ: &str = "RECORD_SEQ";
    /// Userspace only (no program touches it): the daemon's bookkeeping that must
    /// outlive it with the pinned maps (`DAEMON_STATE_*` slots).
    pub const DAEMON_STATE: &str = "DAEMON_STATE";
    /// Userspace only: records the daemon holds back while it waits for their
    /// container's identity, kept here (pinned) so that a crash loses none of them
    /// although their ring space is released (`PendingKey` -> `ConnEvent`).
    pub const PENDING: &str = "PENDING";
    /// `verify`: probe source addresses, whose packets the guard keeps inside.
    pub const PROBE_SOURCES: &str = "PROBE_SOURCES";
    /// `verify`: interfaces (ifindex) where the guard sees bare IP.
    pub const PROBE_GUARD_L3: &str = "PROBE_GUARD_L3";
    /// `verify`: the guard's counters (`PROBE_COUNTER_*`), per CPU.
    pub const PROBE_COUNTERS: &str = "PROBE_COUNTERS";
    /// `verify`: answers to probes the guard stopped (`ProbeAnswer`).
    pub const PROBE_EVENTS: &str = "PROBE_EVENTS";
    /// `verify` on kernels without XDP live frames: the uplink (ifindex, slot 0) that
    /// `probe_redirect` hands the next probes to.
    pub const PROBE_REDIRECT: &str = "PROBE_REDIRECT";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TCX egress on a container bridge: what reached a container.
    pub const BRIDGE_EGRESS: &str = "bridge_egress";
    /// TCX ingress on a container bridge: flows containers open, so that replies to
    /// them (a DNS answer, say) are not taken for new inbound UDP flows.
    pub const BRIDGE_INGRESS: &str = "bridge_ingress";
    /// XDP on an uplink: what was attempted, before any firewall.
    pub const UPLINK_XDP: &str = "uplink_xdp";
    /// XDP on an L3 uplink (wg, tun, ipip, gre: no Ethernet header).
    pub const UPLINK_XDP_L3: &str = "uplink_xdp_l3";
    /// The same on TCX ingress (`--uplink-hook tc`), Ethernet and L3.
    pub const UPLINK_INGRESS: &str = "uplink_ingress";
    pub const UPLINK_INGRESS_L3: &str = "uplink_ingress_l3";
    /// TCX egress on an uplink: the host answered an attempt (SYN-ACK, UDP reply),
    /// whether through DNAT or through a proxy on the host (docker-proxy).
    pub const UPLINK_EGRESS: &str = "uplink_egress";
    /// TCX egress on an L3 uplink.
    pub const UPLINK_EGRESS_L3: &str = "uplink_egress_l3";
    /// Baselines of the benchmark (`dockexpose bench`): empty programs, never attached.
    pub const BENCH_EMPTY_CLASSIFIER: &str = "bench_empty_classifier";
    pub const BENCH_EMPTY_XDP: &str = "bench_empty_xdp";
    /// `verify`: returns XDP_PASS; run with BPF_F_TEST_XDP_LIVE_FRAMES to inject a
    /// probe into an uplink's receive path. Never attached.
    pub const PROBE_INJECT: &str = "probe_inject";
    /// `verify`: TCX egress guard, drops every packet to a probe source.
    pub const UPLINK_PROBE_GUARD: &str = "uplink_probe_guard";
    /// `verify` where XDP live frames are refused (before 5.18, hardened kernels): TC
    /// ingress on the far end of a private veth; hands each probe frame, sent into
    /// the veth by the daemon, to an uplink's receive path (bpf_redirect, ingress).
    pub const PROBE_REDIRECT: &str = "probe_redirect";
}

/// The mark (SO_MARK) of probe frames sent into the private veth: `probe_redirect`
/// passes on those alone, so nothing else the veth carries reaches an uplink.
pub const PROBE_FRAME_MARK: u32 = 0x6478_7072;

/// Names of the read-only globals the daemon sets at load time.
pub mod global_names {
    /// A UDP flow idle for this long counts as new again (nanoseconds), on the
    /// bridges and on the uplinks alike.
    pub const UDP_IDLE_NS: &str = "UDP_IDLE_NS";
    /// A TCP SYN or SCTP INIT with the same tuple and initial sequence number (or
    /// initiate tag) within this window is a retransmit, not a new connection.
    pub const RETRANSMIT_WINDOW_NS: &str = "RETRANSMIT_WINDOW_NS";
    /// Offsets into the running kernel's `struct sk_buff` and `struct nf_conn`, and the
    /// latter's BTF id, from its BTF (Rust cannot emit CO-RE relocations).
    /// `CT_ENABLED` 0: conntrack is not consulted.
    pub const CT_ENABLED: &str = "CT_ENABLED";
    pub const SKB_NFCT_OFF: &str = "SKB_NFCT_OFF";
    pub const NF_CONN_BTF_ID: &str = "NF_CONN_BTF_ID";
    pub const CT_ORIG_DST_ADDR_OFF: &str = "CT_ORIG_DST_ADDR_OFF";
    pub const CT_ORIG_DST_PORT_OFF: &str = "CT_ORIG_DST_PORT_OFF";
    /// Past this many unread bytes in the ring buffer a record wakes the reader; below,
    /// the reader's own short timer collects it (batched wakeups).
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

/// Kernel functions (kfuncs) the bridge program calls; the loader patches their calls
/// with the running kernel's BTF ids (aya 0.14 has no kfunc support).
pub mod kfunc_names {
    /// The `struct sk_buff` behind a TC program's context (kernel 6.3+).
    pub const CAST_TO_KERN_CTX: &str = "bpf_cast_to_kern_ctx";
    /// A read-only, fault-safe typed view of a kernel pointer (kernel 6.3+).
    pub const RDONLY_CAST: &str = "bpf_rdonly_cast";
    pub const ALL: [&str; 2] = [CAST_TO_KERN_CTX, RDONLY_CAST];
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// `ConnEvent::stage`: where in the path the connection was seen.
pub const STAGE_ATTEMPTED: u8 = 1;
pub const STAGE_REACHED: u8 = 2;
/// An attempt the host answered (not a record of its own: it decides between
/// "reached through a proxy" and "blocked" in userspace).
pub const STAGE_ANSWERED: u8 = 3;

/// `ConnEvent::flags`: `orig_dst_addr`/`orig_dst_port` hold the pre-DNAT destination,
/// read from the connection's conntrack entry (the kernel's own NAT state).
pub const FLAG_HAS_ORIG_DST: u8 = 1;
/// The source lies in a local prefix (a host address, a watched bridge's subnet), yet
/// the packet arrived from outside (an uplink, not the host or a container bridge).
pub const FLAG_SPOOFED_LOCAL: u8 = 2;
/// The packet was an IP fragment (the first one: it carries the ports).
pub const FLAG_FRAGMENT: u8 = 4;
/// IPv6 extension headers or IPv4 options stood before the transport header.
pub const FLAG_IP_OPTIONS: u8 = 8;
/// The transport flags were not in the packet (a first fragment cut before them):
/// conntrack said it is the first packet of an unanswered connection from outside.
pub const FLAG_BY_CONNTRACK: u8 = 16;
/// The frame carried one or two VLAN tags.
pub const FLAG_VLAN: u8 = 32;
/// Conntrack says an outside end opened the connection and no DNAT rewrote it: it was
/// routed straight to the container's address, not through a published port.
pub const FLAG_DIRECT: u8 = 64;
/// The source lies in a `--trusted` network, yet the route back to it leaves by
/// another interface than the one the packet arrived on: a spoofed trusted source.
pub const FLAG_SPOOFED_TRUSTED: u8 = 128;

/// Values in the LOCAL_V4/LOCAL_V6 prefix tries.
pub const PREFIX_LOCAL: u8 = 1;
pub const PREFIX_TRUSTED: u8 = 2;
/// One of the host's own addresses (local as a source; the destination of attempts).
pub const PREFIX_HOST: u8 = 3;

/// Capacities of the kernel maps. Every map an outsider can fill is LRU and bounded.
pub const EVENTS_RING_BYTES: u32 = 1 << 22;
pub const FLOWS_MAX: u32 = 65_536;
pub const ATTEMPTS_MAX: u32 = 65_536;
/// Ifindexes whose traffic is the host's own (the watched bridges, loopback).
pub const LOCAL_IFACES_MAX: u32 = 1_024;
/// Per address family. LPM tries allocate on insert, so the bound costs nothing unused;
/// past it the daemon leaves prefixes out and says so (status degraded).
pub const PREFIXES_MAX: u32 = 16_384;
/// PUBLISHED_PORTS is an array indexed by `published_port_index` (TCP ports, then UDP,
/// then SCTP): an array lookup is inlined by the verifier, a hash lookup is a call.
pub const PUBLISHED_PORTS_LEN: u32 = 3 * 65_536;

/// DAEMON_STATE slots (u64 each).
/// RingbufFull (summed over CPUs) when the last daemon last wrote its position: what
/// was lost since then is the counter now minus this.
pub const DAEMON_STATE_LOST_AT_STOP: u32 = 0;
/// 1 while a daemon reads the ring, 0 once it stopped cleanly (1 at start: a crash).
pub const DAEMON_STATE_RUNNING: u32 = 1;
/// Reserved (reset to 0 on a fresh start; not kept up to date yet).
pub const DAEMON_STATE_RECORDS: u32 = 2;
/// Unix time (seconds) when these maps were created (a fresh start).
pub const DAEMON_STATE_CREATED: u32 = 3;
/// Non-zero while the reader sleeps without a timer (it found the ring quiet): the
/// next record clears it and wakes the reader. A quiet host then costs no wakeups.
pub const DAEMON_STATE_READER_IDLE: u32 = 4;
pub const DAEMON_STATE_LEN: u32 = 8;

/// Index of (port, protocol) in the PUBLISHED_PORTS array.
#[inline(always)]
pub const fn published_port_index(port: u16, proto: u8) -> u32 {
    (match proto {
        PROTO_UDP => 65_536,
        PROTO_SCTP => 2 * 65_536,
        _ => 0,
    }) + port as u32
}

/// One new inbound connection seen by a kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// `bpf_ktime_get_ns()` when seen (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub src_addr: [u8; 16],
    /// Destination as seen at the hook: the container side for `reached`.
    pub dst_addr: [u8; 16],
    /// Pre-DNAT destination (host side) when `flags & FLAG_HAS_ORIG_DST`.
    pub orig_dst_addr: [u8; 16],
    pub ifindex: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub orig_dst_port: u16,
    pub family: u8,
    pub proto: u8,
    pub stage: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// TCP initial sequence number / SCTP initiate tag (0 for UDP): ties an attempt,
    /// its reach and its answer to one connection, not just to one source port.
    pub seq: u32,
    /// The CPU that wrote the record (`bpf_get_smp_processor_id`).
    pub cpu: u32,
    /// That CPU's record sequence number (RECORD_SEQ): (boot id, cpu, rec_seq) names
    /// a record uniquely; a gap is a record the ring had no room for.
    pub rec_seq: u64,
}

impl ConnEvent {
    pub const fn zeroed() -> Self {
        Self {
            ktime_ns: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            orig_dst_addr: [0; 16],
            ifindex: 0,
            src_port: 0,
            dst_port: 0,
            orig_dst_port: 0,
            family: 0,
            proto: 0,
            stage: 0,
            flags: 0,
            _pad: [0; 2],
            seq: 0,
            cpu: 0,
            rec_seq: 0,
        }
    }
}

/// Key of the FLOWS map: a flow as it looks inbound (source = the remote end,
/// destination = the container or host side).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
}

/// A slot of the OPENINGS cache: the last TCP SYN / SCTP INIT seen on a bridge whose
/// tuple hashes there. Direct-mapped (an array, no helper call, no lock): a collision
/// evicts, and the worst it can cause is a retransmit reported twice, never a new
/// connection missed (the whole tuple and the ISN must match).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    pub key: FlowKey,
    pub seq: u32,
    /// 1 once the container answered it (SYN-ACK / INIT-ACK seen leaving the
    /// container): a later SYN with the same tuple and ISN starts a new connection.
    pub answered: u8,
    pub _pad: [u8; 3],
    pub ktime_ns: u64,
    /// The conntrack entry of that SYN (its address; 0 when conntrack was not read):
    /// a retransmit belongs to the same entry, a new connection has a new one.
    pub ct: u64,
}

/// Key of the PENDING map: (cpu, rec_seq) of the record, which name it uniquely.
pub type PendingKey = [u64; 2];
/// Capacity of the PENDING map: records awaiting identity at once.
pub const PENDING_MAX: u32 = 1_024;

/// Slots of the OPENINGS cache (a power of two).
pub const OPENINGS_LEN: u32 = 8_192;

/// Key of the ATTEMPTS map: the whole pre-DNAT tuple, as the uplink saw it. Two
/// attempts from one source port to two host ports (a scanner's) are two entries.
pub type AttemptKey = FlowKey;

/// Value of the ATTEMPTS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptValue {
    pub ktime_ns: u64,
    /// The SYN's initial sequence number (0 for UDP).
    pub seq: u32,
    /// 1 once the host answered it (reported once).
    pub answered: u8,
    /// 1 once a bridge saw it reach a container (its conntrack entry named this
    /// attempt): the host's answer then decides nothing and is not reported.
    pub reached: u8,
    pub _pad: [u8; 2],
}

/// A host port Docker publishes (userspace's view of PUBLISHED_PORTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Indexes of the per-CPU COUNTERS array. Stable: the daemon names them by index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the bridge egress program saw.
    BridgePackets = 0,
    /// New inbound flows (TCP SYN, new UDP flow) on a bridge, before the source check.
    BridgeNewFlows = 1,
    /// New flows dropped from reporting because the source is local or trusted.
    BridgeLocalOrTrusted = 2,
    /// `reached` records written to the ring buffer.
    ReachedEmitted = 3,
    /// UDP packets of a flow already known (deduplicated, or replies to container flows).
    UdpDeduplicated = 4,
    /// Records lost because the ring buffer was full.
    RingbufFull = 5,
    /// Packets the uplink XDP program saw.
    UplinkPackets = 6,
    /// `attempted` records written to the ring buffer.
    AttemptsEmitted = 7,
    /// Repeated attempts (SYN retransmits, later UDP packets) not reported again.
    AttemptsDeduplicated = 8,
    /// Uplink packets whose transport header could not be inspected (a chain of
    /// extension headers too long, a truncated frame, a first fragment cut before the
    /// TCP flags): no attempt recorded; what reaches a container is still reported by
    /// the bridge program.
    Unparsed = 9,
    /// `reached` records that carry the pre-DNAT destination.
    ReachedJoined = 10,
    /// Flows that could not be remembered (map update failed).
    MapUpdateFailed = 11,
    /// Packets the uplink egress program saw.
    UplinkEgressPackets = 12,
    /// Attempts the host answered (SYN-ACK or UDP reply seen leaving the uplink).
    AttemptsAnswered = 13,
    /// Packets on a container bridge from a non-local path whose transport header
    /// could not be inspected (an extension-header chain too long, a truncated
    /// header): they may have started a connection nobody saw. Raises a warning.
    BridgeUninspected = 14,
    /// New flows whose conntrack entry gave the exact pre-DNAT destination.
    ConntrackJoined = 15,
    /// First fragments without transport flags, told new by conntrack and reported.
    ConntrackFirstPackets = 16,
    /// Reported flows whose local source arrived from outside (spoofed).
    SpoofedLocal = 17,
    /// TCP SYN / SCTP INIT retransmits on a bridge (same tuple and ISN): not reported twice.
    RetransmitsDeduplicated = 18,
    /// Host answers to attempts already seen reaching a container: no record needed.
    AnswersOfReached = 19,
    /// Records that woke the reader (the ring held more than WAKEUP_BYTES).
    RingWakeups = 20,
    /// Reported flows whose trusted source arrived where the route back to it does
    /// not go (spoofed).
    SpoofedTrusted = 21,
    /// SYNs that reused the tuple and ISN of a connection the container had answered:
    /// new connections (a new conntrack entry), reported.
    TupleReused = 22,
}

impl Counter {
    pub const COUNT: u32 = 23;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::BridgePackets,
        Counter::BridgeNewFlows,
        Counter::BridgeLocalOrTrusted,
        Counter::ReachedEmitted,
        Counter::UdpDeduplicated,
        Counter::RingbufFull,
        Counter::UplinkPackets,
        Counter::AttemptsEmitted,
        Counter::AttemptsDeduplicated,
        Counter::Unparsed,
        Counter::ReachedJoined,
        Counter::MapUpdateFailed,
        Counter::UplinkEgressPackets,
        Counter::AttemptsAnswered,
        Counter::BridgeUninspected,
        Counter::ConntrackJoined,
        Counter::ConntrackFirstPackets,
        Counter::SpoofedLocal,
        Counter::RetransmitsDeduplicated,
        Counter::AnswersOfReached,
        Counter::RingWakeups,
        Counter::SpoofedTrusted,
        Counter::TupleReused,
    ];

    /// Name used in reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::BridgePackets => "bridge_packets",
            Counter::BridgeNewFlows => "bridge_new_flows",
            Counter::BridgeLocalOrTrusted => "bridge_local_or_trusted",
            Counter::ReachedEmitted => "reached_emitted",
            Counter::UdpDeduplicated => "udp_deduplicated",
            Counter::RingbufFull => "ringbuf_full_lost",
            Counter::UplinkPackets => "uplink_packets",
            Counter::AttemptsEmitted => "attempts_emitted",
            Counter::AttemptsDeduplicated => "attempts_deduplicated",
            Counter::Unparsed => "unparsed",
            Counter::ReachedJoined => "reached_joined",
            Counter::MapUpdateFailed => "map_update_failed",
            Counter::UplinkEgressPackets => "uplink_egress_packets",
            Counter::AttemptsAnswered => "attempts_answered",
            Counter::BridgeUninspected => "bridge_uninspected",
            Counter::ConntrackJoined => "conntrack_joined",
            Counter::ConntrackFirstPackets => "conntrack_first_packets",
            Counter::SpoofedLocal => "spoofed_local",
            Counter::RetransmitsDeduplicated => "retransmits_deduplicated",
            Counter::AnswersOfReached => "answers_of_reached",
            Counter::RingWakeups => "ring_forced_wakeups",
            Counter::SpoofedTrusted => "spoofed_trusted",
            Counter::TupleReused => "tuple_reused",
        }
    }
}

// Layouts are a contract between two compilers: fail the build if they drift.
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 88);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Opening>() == 64);
const _: () = assert!(OPENINGS_LEN.is_power_of_two());
const _: () = assert!(core::mem::size_of::<AttemptValue>() == 16);
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all fields are integers or integer arrays, `#[repr(C)]`, no implicit padding
    // (the size assertions above prove it), so every bit pattern is valid.
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::AttemptValue {}
    unsafe impl aya::Pod for super::PortKey {}
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

/// `verify`: capacity of PROBE_SOURCES (one source per `--from`, v4 and v6 defaults).
pub const PROBE_SOURCES_MAX: u32 = 256;
/// `verify`: PROBE_COUNTERS indexes.
pub const PROBE_COUNTER_DROPPED: u32 = 0;
pub const PROBE_COUNTER_LOST: u32 = 1;
pub const PROBE_COUNTERS_LEN: u32 = 2;
pub const PROBE_EVENTS_RING_BYTES: u32 = 1 << 18;

/// `verify`: a packet to a probe source, stopped by the guard on its way out: the
/// host's (or a container's, through DNAT) answer to a probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub ktime_ns: u64,
    /// The answering side (the host address after un-DNAT).
    pub src_addr: [u8; 16],
    /// The probe source.
    pub dst_addr: [u8; 16],
    pub ifindex: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub proto: u8,
    /// TCP flags; for SCTP the first chunk's type (0 otherwise).
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

impl ProbeAnswer {
    pub const fn zeroed() -> Self {
        Self {
            ktime_ns: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            ifindex: 0,
            src_port: 0,
            dst_port: 0,
            family: 0,
            proto: 0,
            tcp_flags: 0,
            _pad: [0; 5],
        }
    }
}

const _: () = assert!(core::mem::size_of::<ProbeAnswer>() == 56);
