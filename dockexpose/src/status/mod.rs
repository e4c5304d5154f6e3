//! Asking the running daemon: `dockexpose status` over a unix socket, and Prometheus
//! metrics over TCP. The daemon's loop owns the state; the servers pass each question
//! to it (`Query`) and serve its answer, so no lock sits on the per-record path.
//!
//! - `report`: the status report (exposures and health), and its table for people;
//! - `metrics`: the report as Prometheus metrics;
//! - `server`: the HTTP/1.1 servers (unix socket, TCP);
//! - `client`: `dockexpose status`.

pub mod client;
pub mod metrics;
pub mod report;
pub mod server;

use tokio::sync::oneshot;

pub use report::StatusReport;

/// Where the daemon listens for `dockexpose status` (mode 0600: root only).
pub const DEFAULT_SOCKET: &str = "/run/dockexpose/dockexpose.sock";

/// A question for the daemon's loop.
pub enum Query {
    /// The status report.
    Status(oneshot::Sender<StatusReport>),
    /// The Prometheus exposition text.
    Metrics(oneshot::Sender<String>),
}
