//! The kernel side as seen from userspace: loading and attaching the programs,
//! keeping their maps current, reading their records.

pub mod btf;
pub mod cls_bpf;
pub mod event;
pub mod features;
pub mod kfunc;
pub mod loader;
pub mod pin_root;
pub mod pins;
pub mod reader;
pub mod ring;
