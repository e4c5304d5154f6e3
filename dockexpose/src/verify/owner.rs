//! Who made a verify run's host objects (its trace table, its veth, its guard pins),
//! so that a later run removes those of runs that are gone, and only those. A pid
//! alone is not enough: a daemon in a container (pid 1 in its own pid namespace)
//! shares the host's network and bpffs, and a pid of another namespace is no process
//! of ours. An owner is the pid with its pid namespace; one of another namespace is
//! never judged gone from here.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The inode of the pid namespace (`readlink /proc/self/ns/pid`: `pid:[N]`).
    pub pidns: u64,
    pub pid: u32,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        Owner { pidns: pidns_of("self").unwrap_or(0), pid: std::process::id() }
    }

    /// `PIDNS_PID`, usable in table names, paths and interface aliases.
    pub fn tag(&self) -> String {
        format!("{}_{}", self.pidns, self.pid)
    }

    pub fn parse(tag: &str) -> Option<Owner> {
        let (ns, pid) = tag.split_once('_')?;
        Some(Owner { pidns: ns.parse().ok()?, pid: pid.parse().ok()? })
    }

    /// True only when the owner is of our pid namespace and its process is gone.
    pub fn is_gone(&self) -> bool {
        let me = Owner::me();
        self.pidns == me.pidns && me.pidns != 0 && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn pidns_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_and_only_our_namespace_is_judged() {
        let me = Owner::me();
        assert!(me.pidns != 0, "this process has a pid namespace");
        assert_eq!(Owner::parse(&me.tag()), Some(me));
        assert!(!me.is_gone(), "we are alive");
        // A pid that no process of ours holds, in our namespace: gone.
        assert!(Owner { pid: u32::MAX - 1, ..me }.is_gone());
        // The same pid in another namespace: not ours to judge.
        assert!(!Owner { pidns: me.pidns + 1, pid: u32::MAX - 1 }.is_gone());
        assert_eq!(Owner::parse("12"), None);
        assert_eq!(Owner::parse("x_12"), None);
    }
}
