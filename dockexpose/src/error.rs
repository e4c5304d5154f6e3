//! The crate's one error type. Each message says what failed, on what, and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing privileges: dockexpose lacks {missing}, which it needs to load and attach its \
         kernel programs.\n  \
         Fix: run it as root (sudo dockexpose ...), or grant exactly CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN: \
         setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(command -v dockexpose), or the systemd unit \
         (AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_NET_ADMIN), or docker run --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN"
    )]
    MissingPrivileges { missing: String },

    #[error("unknown interface {name:?}: no network interface of that name exists on this host.\n  Fix: pick one from `ip -br link`{hint}")]
    UnknownInterface { name: String, hint: String },

    #[error("invalid CIDR {input:?} for {option}: {reason}.\n  Fix: write an address or a prefix such as 198.51.100.0/24, 10.1.2.3 or 2001:db8::/32")]
    InvalidCidr { option: &'static str, input: String, reason: String },

    #[error("refused trusted network {input:?} ({option}): {reason}.\n  Fix: {fix}")]
    TrustedRefused { option: &'static str, input: String, reason: String, fix: String },

    #[error("cannot write the JSON audit log {path}: {source}.\n  Fix: choose a path in a folder that exists and is writable, or `--json -` for stdout")]
    JsonOutput { path: PathBuf, source: std::io::Error },

    #[error("nothing to watch: {0}")]
    NothingToWatch(String),

    #[error("loading the eBPF object into the kernel failed: {0}.\n  Fix: check that the kernel has BPF and BTF support (5.8 or newer) and that dockexpose runs as root")]
    LoadObject(Box<aya::EbpfError>),

    #[error("preparing the eBPF object failed: {0}.\n  Fix: rebuild dockexpose (cargo xtask build); the embedded object is damaged")]
    Object(String),

    #[error("loading kernel program {program} failed: {source}")]
    LoadProgram { program: &'static str, source: Box<aya::programs::ProgramError> },

    #[error("attaching {program} to {iface} failed: {source}.\n  Fix: check that {iface} is up and that no other tool holds its {hook} hook exclusively")]
    Attach { program: &'static str, iface: String, hook: &'static str, source: Box<aya::programs::ProgramError> },

    #[error("kernel map {map}: {source}")]
    Map { map: &'static str, source: Box<aya::maps::MapError> },

    #[error("kernel map {0} is missing from the eBPF object (built from another version?)")]
    MissingMap(&'static str),

    #[error("reading the host's interfaces failed: {0}")]
    Interfaces(#[source] std::io::Error),

    #[error("setting up signal handling failed: {0}")]
    Signals(#[source] std::io::Error),

    #[error("the ring-buffer reader failed: {0}")]
    RingBuffer(#[source] std::io::Error),

    /// A configuration problem (file, merge, metrics address, sinks); the message
    /// names the key and the fix.
    #[error("{0}")]
    Config(String),

    #[error(
        "{path} is not on a BPF file system (nearest existing folder: {at}); the kernel side cannot be pinned there.\n  \
         Fix: mount bpffs (mount -t bpf bpf /sys/fs/bpf; systemd does it at boot), choose a --pin-dir under it, \
         or run with --no-pin (the kernel side then ends with the daemon)"
    )]
    NotBpffs { path: PathBuf, at: PathBuf },

    #[error(
        "--pin-dir {path} is the root of a {kind} mount: other tools pin there too, and their directories are not \
         dockexpose's to remove or reset.\n  Fix: give a directory of its own under it, such as {suggestion}"
    )]
    PinDirIsMountRoot { path: PathBuf, kind: &'static str, suggestion: PathBuf },

    #[error("pinned kernel state at {path}: {reason}.\n  Fix: check that /sys/fs/bpf is mounted read-write for dockexpose (systemd: ReadWritePaths=/sys/fs/bpf), or remove it with `dockexpose cleanup`")]
    Pins { path: PathBuf, reason: String },

    #[error(
        "another dockexpose (pid {pid}) holds {path}: it reads the same kernel ring buffer, and two readers would \
         each take records from the other.\n  Fix: stop it first (systemctl stop dockexpose, or kill {pid}), or give this one \
         its own --pin-dir and --lock-file"
    )]
    Locked { path: PathBuf, pid: String },

    #[error("cannot take the lock {path}: {source}.\n  Fix: make its folder writable for dockexpose (systemd: RuntimeDirectory=dockexpose), or choose another with --lock-file")]
    Lock { path: PathBuf, source: std::io::Error },

    #[error("invalid setting {name}: {reason}")]
    InvalidSetting { name: &'static str, reason: String },
}

impl From<aya::EbpfError> for Error {
    fn from(e: aya::EbpfError) -> Self {
        // Boxed: aya's error is large, and every Result of this crate would carry it.
        Error::LoadObject(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
