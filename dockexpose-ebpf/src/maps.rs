//! Everything userspace reaches by name: the maps `watch` uses and the settings the
//! loader patches in at load time. Names, types, keys, values and sizes are a contract
//! with userspace and with the pins of a running kernel side (a daemon of another
//! version adopts them): change one and adoption breaks (pins.rs hashes them).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use dockexpose_common::{
    AttemptKey, AttemptValue, ConnEvent, Counter, FlowKey, Opening, PendingKey, ATTEMPTS_MAX, DAEMON_STATE_LEN,
    EVENTS_RING_BYTES, FLOWS_MAX, LOCAL_IFACES_MAX, OPENINGS_LEN, PENDING_MAX, PREFIXES_MAX, PUBLISHED_PORTS_LEN,
};

/// A UDP flow idle for this long is new again, on bridges and uplinks alike. Set by
/// the daemon at load time.
#[no_mangle]
pub static UDP_IDLE_NS: Global<u64> = Global::new(30_000_000_000);

/// A SYN (INIT) with the same tuple and ISN within this window is a retransmit.
#[no_mangle]
pub static RETRANSMIT_WINDOW_NS: Global<u64> = Global::new(180_000_000_000);

// Offsets into `struct nf_conn`, from the running kernel's BTF (set by the loader; the
// verifier checks every access against that BTF, so a wrong offset is a load error).
#[no_mangle]
pub static CT_ENABLED: Global<u32> = Global::new(0);
#[no_mangle]
pub static CT_ORIG_DST_ADDR_OFF: Global<u32> = Global::new(0);
#[no_mangle]
pub static CT_ORIG_DST_PORT_OFF: Global<u32> = Global::new(0);

/// Past this many unread bytes a record wakes the reader; below, the reader's own
/// short timer collects it: one wakeup per batch, not per record.
#[no_mangle]
pub static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Where `struct sk_buff` holds its conntrack entry (`_nfct`).
#[no_mangle]
pub static SKB_NFCT_OFF: Global<u32> = Global::new(0);
/// BTF id of `struct nf_conn` in the running kernel.
#[no_mangle]
pub static NF_CONN_BTF_ID: Global<u32> = Global::new(0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Local and trusted prefixes (value PREFIX_LOCAL or PREFIX_TRUSTED); filled by the daemon.
#[map]
pub static LOCAL_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

#[map]
pub static LOCAL_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PREFIXES_MAX, 0);

/// Interfaces whose packets are the host's own doing: the watched bridges (container
/// to container through the host) and loopback. A local source arriving from anywhere
/// else was spoofed. Filled by the daemon.
#[map]
pub static LOCAL_IFACES: HashMap<u32, u8> = HashMap::with_max_entries(LOCAL_IFACES_MAX, 0);

/// UDP flows seen on a bridge (inbound orientation) -> last packet time (TCP and SCTP
/// repeats are told apart in OPENINGS). Outsiders choose the keys: LRU.
#[map]
pub static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(FLOWS_MAX, 0);

/// The last SYN / INIT per slot, for telling retransmits from new connections without
/// a hash-map update per SYN (see `Opening`).
#[map]
pub static OPENINGS: Array<Opening> = Array::with_max_entries(OPENINGS_LEN, 0);

/// Attempts seen on the uplinks, by their whole pre-DNAT tuple: repeats are told from
/// new attempts, and the host's answer is matched exactly. Outsiders choose the keys: LRU.
#[map]
pub static ATTEMPTS: LruHashMap<AttemptKey, AttemptValue> = LruHashMap::with_max_entries(ATTEMPTS_MAX, 0);

/// Host ports Docker publishes: 1 at `published_port_index(port, proto)` (filled by the
/// daemon from the Docker inventory). An array: the lookup is inlined, no hashing.
/// Per-CPU record sequence number (slot 0): incremented for every record, written or
/// lost, so a gap in a CPU's numbers is a lost record and a repeat is a duplicate.
#[map]
pub static RECORD_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The daemon's bookkeeping, pinned with the other maps (no program reads it).
#[map]
pub static DAEMON_STATE: Array<u64> = Array::with_max_entries(DAEMON_STATE_LEN, 0);

/// Records the daemon holds back for their container's identity (userspace only,
/// pinned: a crash loses none of them though their ring space is released).
#[map]
pub static PENDING: HashMap<PendingKey, ConnEvent> = HashMap::with_max_entries(PENDING_MAX, 0);

#[map]
pub static PUBLISHED_PORTS: Array<u8> = Array::with_max_entries(PUBLISHED_PORTS_LEN, 0);
