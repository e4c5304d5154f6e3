//! Facts about the host: interfaces, addresses, privileges, and its routing,
//! neighbour and conntrack tables (over netlink).

pub mod conntrack;
pub mod interfaces;
pub mod link_events;
pub mod local;
pub mod netlink;
pub mod privileges;
pub mod routes;
pub mod ruleset_events;
