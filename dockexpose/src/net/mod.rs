//! Network plumbing shared by the rest of the daemon: address arithmetic, an HTTP client.

pub mod http;
pub mod prefix;
