//! Baselines for `cargo xtask bench`: empty programs whose cost is subtracted from the
//! real ones' (BPF_PROG_TEST_RUN). Never attached.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::TCX_NEXT;

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
