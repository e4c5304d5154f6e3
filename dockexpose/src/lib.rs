//! dockexpose: which Docker published ports the outside world really reaches.
//!
//! Layout (see README "Architecture"):
//! - `kernel/`: loading and attaching the eBPF programs, their maps, the ring-buffer reader;
//! - `host/`: the host's interfaces, addresses and privileges;
//! - `net/`: prefixes and source classification;
//! - `output/`: the JSON audit record, human lines, the audit-log sink;
//! - `watch`: the daemon loop that ties them together.

pub mod cli;
pub mod error;
pub mod host;
pub mod kernel;
pub mod net;
pub mod output;
pub mod stats;
pub mod watch;
