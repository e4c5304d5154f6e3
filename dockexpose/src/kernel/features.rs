//! What the running kernel offers, probed once at start, and the tier that follows.
//!
//! Each mechanism is chosen from what is there, never from a version number alone:
//! TCX from the kernel's own UAPI enum (BTF), the conntrack kfuncs from the functions
//! its BTF names, the ring buffer by creating one. A kernel without a ring buffer is
//! refused (every record goes through one); anything else lowers the tier, and what a
//! tier cannot give is said in the start line, `status`, the metrics and `daemon_start`.

use dockexpose_common::kfunc_names;
use serde::{Deserialize, Serialize};

use super::btf::{self, Btf};

/// What was found. `Default` is a kernel that offers nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// `uname -r`.
    pub kernel: String,
    /// /sys/kernel/btf/vmlinux could be read.
    pub btf: bool,
    /// BPF_MAP_TYPE_RINGBUF maps can be created (5.8).
    pub ring_buffer: bool,
    /// TCX hooks (6.6): BPF_TCX_INGRESS in the kernel's `enum bpf_attach_type`.
    pub tcx: bool,
    /// The kfuncs the bridge program reads conntrack with (`kfunc_names::ALL`: the
    /// casts of 6.2/6.3) and `struct nf_conn` in BTF.
    pub conntrack_kfuncs: bool,
    /// BPF_F_TEST_XDP_LIVE_FRAMES (5.18): `struct xdp_test_data` in BTF. Only that
    /// the kernel has it: whether this host lets a program use it is not tried here.
    pub xdp_live_frames: bool,
}

/// How the tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMechanism {
    /// BPF links on TCX hooks: pinned, adopted by the next daemon.
    Tcx,
    /// Netlink cls_bpf filters under a clsact qdisc, at our own priority and handle
    /// (see cls_bpf.rs).
    ClsBpf,
}

impl TcMechanism {
    /// As `status` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::ClsBpf => "cls_bpf",
        }
    }
}

impl Features {
    /// Probes the running kernel.
    pub fn probe() -> Self {
        let kernel = release();
        let ring_buffer = aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false);
        match Btf::from_sys_fs() {
            Ok(b) => Self::from_btf(kernel, &b, ring_buffer),
            // Without BTF nothing can be asked of the kernel's types: TCX as aya decides
            // it (by version), no kfuncs.
            Err(_) => Self { tcx: version_at_least(&kernel, 6, 6), kernel, btf: false, ring_buffer, ..Self::default() },
        }
    }

    /// What `btf` (the kernel's) says is there.
    pub fn from_btf(kernel: String, b: &Btf, ring_buffer: bool) -> Self {
        Self {
            kernel,
            btf: true,
            ring_buffer,
            tcx: b.has_enum_value("bpf_attach_type", "BPF_TCX_INGRESS"),
            conntrack_kfuncs: kfunc_names::ALL.iter().all(|f| b.id_of(f, btf::KIND_FUNC).is_some())
                && b.id_of("nf_conn", btf::KIND_STRUCT).is_some(),
            xdp_live_frames: b.id_of("xdp_test_data", btf::KIND_STRUCT).is_some(),
        }
    }

    pub fn tc_mechanism(&self) -> TcMechanism {
        if self.tcx {
            TcMechanism::Tcx
        } else {
            TcMechanism::ClsBpf
        }
    }

    /// "full" (TCX and conntrack), "no-tcx", "no-conntrack", or "basic" (neither).
    pub fn tier(&self) -> &'static str {
        match (self.tcx, self.conntrack_kfuncs) {
            (true, true) => "full",
            (false, true) => "no-tcx",
            (true, false) => "no-conntrack",
            (false, false) => "basic",
        }
    }

    /// Why this kernel cannot run dockexpose at all (None: it can).
    pub fn refusal(&self) -> Option<String> {
        (!self.ring_buffer).then(|| {
            format!(
                "kernel {} has no BPF ring buffer (Linux 5.8): dockexpose records every connection through one; \
                 the oldest kernel it was tested on is 6.1",
                self.kernel
            )
        })
    }

    /// The one line said at start and shown by `status`.
    pub fn line(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "kernel {}: tier {}: hooks {}; conntrack kfuncs {}; ring buffer {}; BTF {}; XDP live frames {}",
            self.kernel,
            self.tier(),
            self.tc_mechanism().name(),
            yes(self.conntrack_kfuncs),
            yes(self.ring_buffer),
            yes(self.btf),
            if self.xdp_live_frames { "in the kernel" } else { "no" },
        )
    }

    /// What this tier cannot give, one sentence each with the missing feature's name
    /// (empty on the full tier).
    pub fn limits(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.tcx {
            out.push((
                "tcx",
                "no TCX (Linux 6.6): programs are attached as cls_bpf filters of our own (found again by name, \
                 priority and handle); a restart replaces their program in place, but another tc user's \
                 filters at a higher priority run first and may drop a packet before ours see it"
                    .to_string(),
            ));
        }
        if !self.conntrack_kfuncs {
            out.push((
                "conntrack_kfuncs",
                "no conntrack kfuncs (bpf_cast_to_kern_ctx, bpf_rdonly_cast): host_port is null where the published bindings do not name it, \
                 and a first fragment cut before the TCP flags is counted as bridge_uninspected"
                    .to_string(),
            ));
        }
        out
    }
}

/// `uname -r`.
fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether `release` ("6.1.0-57-amd64") is at least `major.minor`.
fn version_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts =
        release.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(tcx: bool, ct: bool) -> Features {
        Features {
            kernel: "6.1.0-57-amd64".into(),
            btf: true,
            ring_buffer: true,
            tcx,
            conntrack_kfuncs: ct,
            xdp_live_frames: true,
        }
    }

    #[test]
    fn tiers_follow_tcx_and_conntrack() {
        assert_eq!(with(true, true).tier(), "full");
        assert_eq!(with(false, true).tier(), "no-tcx");
        assert_eq!(with(true, false).tier(), "no-conntrack");
        assert_eq!(with(false, false).tier(), "basic");
        assert_eq!(with(false, false).tc_mechanism(), TcMechanism::ClsBpf);
        assert_eq!(with(true, false).tc_mechanism(), TcMechanism::Tcx);
        assert!(with(true, true).limits().is_empty());
        let limits = with(false, false).limits();
        assert_eq!(limits.len(), 2);
        assert_eq!((limits[0].0, limits[1].0), ("tcx", "conntrack_kfuncs"));
        assert!(limits[0].1.contains("cls_bpf") && limits[1].1.contains("host_port is null"), "{limits:?}");
    }

    #[test]
    fn the_line_names_kernel_tier_and_hooks() {
        let line = with(false, false).line();
        assert_eq!(
            line,
            "kernel 6.1.0-57-amd64: tier basic: hooks cls_bpf; conntrack kfuncs no; ring buffer yes; BTF yes; XDP live frames in the kernel"
        );
    }

    #[test]
    fn no_ring_buffer_is_refused_with_the_kernel_named() {
        assert_eq!(with(false, false).refusal(), None);
        let old = Features { ring_buffer: false, kernel: "5.4.0-1-amd64".into(), ..with(false, false) };
        let why = old.refusal().expect("refused");
        assert!(why.contains("5.4.0-1-amd64") && why.contains("ring buffer"), "{why}");
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(version_at_least("6.6.0", 6, 6));
        assert!(version_at_least("6.12.118+deb12-amd64", 6, 6));
        assert!(!version_at_least("6.1.0-57-amd64", 6, 6));
        assert!(!version_at_least("5.15.0-91-generic", 6, 6));
        assert!(version_at_least("7.0", 6, 6));
        assert!(!version_at_least("", 6, 6));
    }

    /// The running kernel, read for real: its BTF must agree with what loading found.
    #[test]
    fn probes_the_running_kernel() {
        let Ok(b) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux");
            return;
        };
        let f = Features::from_btf("running".into(), &b, true);
        // BPF_TCX_INGRESS came with TCX in 6.6; the UAPI enum is in every BTF'd kernel.
        assert!(b.has_enum_value("bpf_attach_type", "BPF_CGROUP_INET_INGRESS"), "the UAPI enum is readable");
        assert!(!b.has_enum_value("bpf_attach_type", "NO_SUCH_VALUE"));
        let release = release();
        assert_eq!(f.tcx, version_at_least(&release, 6, 6), "TCX in BTF iff the kernel is 6.6 or later ({release})");
    }
}
