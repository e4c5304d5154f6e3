//! Conntrack: the kernel's own view of a bridge packet's connection, whatever the
//! packet's shape.
//!
//! The packet carries its conntrack entry (skb->_nfct: the nf_conn pointer, with the
//! packet's ctinfo in the low 3 bits). Reading it costs a few loads, where a lookup
//! by tuple (bpf_skb_ct_lookup) costs a hash walk and two atomic refcount updates
//! (~125 ns here): `bpf_cast_to_kern_ctx` gives the sk_buff behind the context,
//! `bpf_rdonly_cast` types the entry as `struct nf_conn` for fault-safe reads.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use dockexpose_common::FAMILY_IPV4;

use crate::{
    maps::{CT_ENABLED, CT_ORIG_DST_ADDR_OFF, CT_ORIG_DST_PORT_OFF, NF_CONN_BTF_ID, SKB_NFCT_OFF},
    packet::Flow,
};

/// ctinfo values (enum ip_conntrack_info).
const IP_CT_NEW: u64 = 2;
const IP_CT_IS_REPLY: u64 = 3;
const NFCT_INFOMASK: u64 = 7;

extern "C" {
    // Kernel functions: the loader patches these calls with their BTF ids.
    fn bpf_cast_to_kern_ctx(ctx: *mut __sk_buff) -> *mut u8;
    fn bpf_rdonly_cast(obj: *const u8, btf_id: u32) -> *const u8;
}

/// What conntrack knows of the connection a bridge packet belongs to.
pub enum Conntrack {
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
pub fn conntrack(ctx: &TcContext, flow: &Flow) -> Conntrack {
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
    Conntrack::FromOutside {
        orig_addr: orig,
        orig_port: u16::from_be(orig_port),
        replied: ctinfo != IP_CT_NEW,
        ct: ct_addr,
    }
}
