//! The kernel side as seen from userspace: loading and attaching the programs,
//! keeping their maps current, reading their records.

pub mod event;
pub mod loader;
pub mod reader;
