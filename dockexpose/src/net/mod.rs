//! Address arithmetic shared by the rest of the daemon.

pub mod prefix;
