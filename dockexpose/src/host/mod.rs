//! Facts about the host: interfaces, addresses, privileges.

pub mod interfaces;
pub mod local;
pub mod privileges;
