//! What is attached to an interface: the TCX programs of a hook and XDP.

use super::sh;

/// Programs attached to an interface's TCX hook (egress or ingress), by name.
/// An interface that does not exist (any more) has nothing attached: empty. Any other
/// failure of the query panics: "could not ask" must never read as "nothing attached",
/// or a test asserting a detachment would pass on a broken query.
pub fn tcx_programs(iface: &str, egress: bool) -> Vec<String> {
    use aya::programs::{ProgramError, SchedClassifier, TcAttachType, TcError};
    let kind = if egress { TcAttachType::Egress } else { TcAttachType::Ingress };
    match SchedClassifier::query_tcx(iface, kind) {
        Ok((_, progs)) => progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_string()).collect(),
        Err(e) => {
            // if_nametoindex (in aya, before the query) and BPF_PROG_QUERY (when the
            // interface went away in between) both say ENODEV for "no such interface".
            let os_error = match &e {
                ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
                ProgramError::SyscallError(sys) => sys.io_error.raw_os_error(),
                _ => None,
            };
            if os_error == Some(libc::ENODEV) {
                return Vec::new();
            }
            panic!(
                "querying the TCX {} programs of {iface} failed: {e} ({e:?})",
                if egress { "egress" } else { "ingress" }
            )
        }
    }
}

/// True when an XDP program (native or generic) is attached to `iface`.
pub fn xdp_attached(iface: &str) -> bool {
    let out = sh(&["ip", "-d", "link", "show", "dev", iface]);
    out.contains("xdp")
}
