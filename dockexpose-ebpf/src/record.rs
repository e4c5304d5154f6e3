//! What the programs report: counters, and records written to the ring buffer with
//! their per-CPU sequence number and a wakeup only once per batch.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_smp_processor_id,
};
use dockexpose_common::{ConnEvent, Counter, DAEMON_STATE_READER_IDLE};

use crate::{
    maps::{COUNTERS, DAEMON_STATE, EVENTS, RECORD_SEQ, WAKEUP_BYTES},
    packet::Flow,
};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *slot += 1 };
    }
}

/// The pre-DNAT destination of a record, and its flags.
pub struct Extra {
    pub orig_addr: [u8; 16],
    pub orig_port: u16,
    pub flags: u8,
}

/// The reader sleeps without a timer: this record wakes it (and clears the flag). Two
/// CPUs may both see the flag: one wakeup too many, never one too few.
#[inline(always)]
fn first_since_idle() -> bool {
    let Some(flag) = DAEMON_STATE.get_ptr_mut(DAEMON_STATE_READER_IDLE) else { return false };
    // SAFETY: an array slot, valid for the program's run; the daemon writes it too.
    unsafe {
        if core::ptr::read_volatile(flag) == 0 {
            return false;
        }
        core::ptr::write_volatile(flag, 0);
    }
    true
}

/// A record's size in the ring buffer: the record and its 8-byte header.
const RECORD_BYTES: u64 = (size_of::<ConnEvent>() + 8) as u64;

/// Writes one record to the ring buffer, or counts it as lost.
#[inline(always)]
pub fn emit(flow: &Flow, stage: u8, ifindex: u32, now: u64, extra: &Extra) -> bool {
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
    // being reserved) is the one that crosses the threshold, or when it is the first
    // since the reader went to sleep without a timer (a quiet host). A wakeup costs
    // microseconds (irq_work); a record without one, nanoseconds.
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = WAKEUP_BYTES.load();
    let woke_idle = first_since_idle();
    let wake = woke_idle || (unread >= threshold && unread < threshold + RECORD_BYTES);
    if wake {
        count(Counter::RingWakeups);
    }
    entry.submit(if wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP } as u64);
    true
}
