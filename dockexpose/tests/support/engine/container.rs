//! A container of a second engine: what a test reads of it (address, pid, its
//! network stack's counters), removed on drop.

use std::fs;

use super::SecondEngine;

/// A container of a SecondEngine, removed (with force) on drop.
pub struct EngineContainer<'a> {
    pub engine: &'a SecondEngine,
    pub name: String,
}

impl EngineContainer<'_> {
    pub fn inspect(&self, format: &str) -> String {
        self.engine.docker(&["inspect", "-f", format, &self.name]).trim().to_string()
    }
    pub fn id(&self) -> String {
        self.inspect("{{.Id}}")
    }
    /// The container's address on `network` ("bridge" for the default one).
    pub fn ip(&self, network: &str) -> String {
        self.inspect(&format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"))
    }
    /// The pid of its init process (in the root pid namespace).
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().expect("container pid")
    }
    /// A counter of the container's network stack from /proc/PID/net/snmp, e.g.
    /// ("Ip", "InUnknownProtos"): packets for a protocol it has no handler for.
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/net/snmp", self.pid())).expect("container snmp");
        let mut rows = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
        let (names, values) = (rows.next().expect("snmp names"), rows.next().expect("snmp values"));
        let i =
            names.split_whitespace().position(|n| n == field).unwrap_or_else(|| panic!("no {group} {field} in snmp"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

impl Drop for EngineContainer<'_> {
    fn drop(&mut self) {
        let _ = self.engine.try_docker(&["rm", "-f", &self.name]);
    }
}
