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
//!
//! The modules, in the order a packet meets them: `packet` parses it, `source` and
//! `conntrack` say whose it is, `flows` tells new from repeated, `record` counts and
//! emits; `bridge` and `uplink` are the programs `watch` attaches, `verify` and `bench`
//! the ones only those commands load; `maps` is everything userspace reaches by name.
#![no_std]
#![no_main]

mod bench;
mod bridge;
mod conntrack;
mod flows;
mod maps;
mod packet;
mod record;
mod source;
mod uplink;
mod verify;

use aya_ebpf::bindings::TC_ACT_UNSPEC;

/// "Continue with the next program" on TCX; "default action" on legacy tc.
pub const TCX_NEXT: i32 = TC_ACT_UNSPEC;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
