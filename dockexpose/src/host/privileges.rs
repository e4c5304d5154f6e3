//! Checks the capabilities the kernel side needs before trying, so that the operator
//! gets "run as root / grant CAP_BPF" rather than a bare EPERM from the loader.

use crate::error::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Parses the effective capability mask from the text of /proc/self/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has(mask: u64, cap: u32) -> bool {
    mask & (1u64 << cap) != 0
}

/// What is missing from `mask` to load and attach: CAP_BPF and CAP_PERFMON (or
/// CAP_SYS_ADMIN, which older kernels want instead) and CAP_NET_ADMIN. Without
/// CAP_PERFMON the verifier refuses the programs' pointer arithmetic and their reads
/// of the conntrack entry ("pointer arithmetic ... prohibited for !root").
pub fn missing(mask: u64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !has(mask, CAP_BPF) && !has(mask, CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(mask, CAP_PERFMON) && !has(mask, CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    if !has(mask, CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    out
}

pub fn check() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(mask) = effective_caps(&status) else {
        // Cannot tell (no procfs): let the loader say what failed.
        return Ok(());
    };
    let missing = missing(mask);
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MissingPrivileges { missing: missing.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_mask() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << CAP_NET_ADMIN), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)), vec!["CAP_PERFMON"]);
        // Exactly the three: nothing missing (no CAP_SYS_ADMIN, no CAP_SYS_RESOURCE).
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)), Vec::<&str>::new());
        assert_eq!(
            missing(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN),
            Vec::<&str>::new(),
            "older kernels: CAP_SYS_ADMIN"
        );
    }
}
