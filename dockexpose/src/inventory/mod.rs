//! What Docker runs on this host, from its Engine API, kept current.

pub mod docker;
pub mod model;
