//! Telling new flows from repeats: UDP flows by their last packet (FLOWS), TCP and
//! SCTP openings by tuple, ISN and conntrack entry (OPENINGS), so that a retransmit is
//! not reported twice and a reused tuple is.

use dockexpose_common::{Counter, FlowKey, OPENINGS_LEN};

use crate::{
    maps::{FLOWS, OPENINGS, RETRANSMIT_WINDOW_NS, UDP_IDLE_NS},
    packet::Flow,
    record::count,
};

pub fn flow_key(flow: &Flow) -> FlowKey {
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
pub fn flow_is_known(key: &FlowKey, now: u64) -> bool {
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
pub fn opening_slot(key: &FlowKey) -> u32 {
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
pub enum Opened {
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
pub fn opening(key: &FlowKey, seq: u32, ct: u64, replied: bool, now: u64) -> Opened {
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
pub fn opening_answered(answer: &Flow) {
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
