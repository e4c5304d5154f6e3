//! Test bed for the root integration tests: network namespaces, bridges, veths,
//! iptables rules and the watcher process, each removed by a guard on drop (also
//! when a test fails). Addresses: 10.251.N.0/24 and fd42:251:N::/64 for the
//! simulated container bridge, 198.18.N.0/24 and fd42:198:N::/64 for outside hosts
//! (N differs per run). Never 192.0.2.0/24 or 203.0.113.0/24 (the machine's own).
//!
//! By subject: `shell` (commands, the undo log, the root check), `netns` (namespaces,
//! echo services, clients), `bed` (run numbers and ports, the outside host, `Bed`),
//! `watcher` (the daemon under test), `hooks` (what is attached to an interface),
//! `load` (floods and benchmark figures), `docker`, `engine` (a second Docker engine),
//! `tun`, `craft` (crafted packets) and `skip` (the skip log). The tests use the
//! re-exports below as `support::NAME`.
#![allow(dead_code, reason = "each test binary uses a different part of the test bed")]

mod bed;
mod hooks;
mod load;
mod netns;
mod shell;
mod watcher;

pub mod clickhouse;
pub mod craft;
pub mod docker;
pub mod engine;
pub mod skip;
pub mod tun;

#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use bed::{
    assert_unrouted, free_ports, run_id, Bed, OutsideHost, C_TCP, C_UDP, HOST_INPUT_TCP, HOST_TCP, HOST_UDP,
};
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use hooks::{tcx_programs, xdp_attached};
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use load::{bench_uplink_hook, connect_loop, peak_rss_kib, spoofed_syn, syn_flood, tx_dropped};
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use netns::{in_netns, spawn_in_netns, tcp_connect, tcp_connect_root, udp_exchange, Services};
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use shell::{privileged, sh, sh_quiet, Undo};
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use skip::skip;
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use watcher::{counter, json_path, Watcher};
