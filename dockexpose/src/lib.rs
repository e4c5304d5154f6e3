//! dockexpose: which Docker published ports the outside world really reaches.
//!
//! Layout (see README "Architecture"):
//! - `kernel/`: loading and attaching the eBPF programs, their maps, the ring-buffer reader;
//! - `host/`: the host's interfaces, addresses and privileges;
//! - `inventory/`: what Docker runs (bridge networks, containers, published ports), live;
//! - `correlate`: kernel observation + inventory -> connection record;
//! - `verdict`: attempted -> reached / reached through a proxy / blocked;
//! - `net/`: prefixes and source classification;
//! - `output/`: the JSON audit record and its formats (native, ECS, OCSF), human lines
//!   and alerts, the audit log and the alert sinks;
//! - `intent/`: the firewall's word (UFW, firewalld, iptables, nftables, bans);
//! - `explain`: `dockexpose explain`, the firewall's word against the probes;
//! - `state/`: the daemon as a service: pinned kernel side adopted across restarts,
//!   records at least once, the one-daemon lock, sd_notify;
//! - `watch`: the daemon loop that ties them together;
//! - `verify`: the one-shot `verify` command: probes injected on the uplinks, verdicts;
//! - `config`: the configuration file, and how it meets the command line;
//! - `status`: `dockexpose status` (unix socket) and Prometheus metrics.
//!
//! The kernel-program benchmark is a bench target (benches/kernel_programs.rs).
//!
//! No `unwrap()` outside tests: what the world controls is an error with its fix, and an
//! invariant that cannot fail says why in an `expect("...")`.

#![deny(clippy::unwrap_used)]

pub mod cli;
pub mod config;
pub mod correlate;
pub mod error;
pub mod explain;
pub mod fleet;
pub mod host;
pub mod intent;
pub mod inventory;
pub mod kernel;
pub mod net;
pub mod output;
pub mod state;
pub mod stats;
pub mod status;
pub mod verdict;
pub mod verify;
pub mod watch;
