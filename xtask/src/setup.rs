//! `cargo xtask setup`: what a fresh Debian machine lacks, installed and said as it
//! goes (Debian packages, PyPI modules the tests drive, bpf-linker, the bpffs mount).

use std::{
    env, fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{cargo, cargo_home, find_in_path, run};

/// What a fresh Debian 12 machine lacks: Debian's rustc with its library source (for
/// `-Z build-std=core`), LLVM 22 and friends (to build bpf-linker), and the tools the
/// integration tests drive (ip, iptables, busybox for a tiny container side, bpftool,
/// podman for tests/podman_compat.rs, pip for scapy, rsyslog, journald and openssl for
/// the alert sinks).
pub(crate) const DEB_PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "cargo-web",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "busybox-static",
    "bpftool",
    // The Docker-compatible API of tests/podman_compat.rs. Named with netavark: without
    // recommends apt satisfies podman's "container-network-stack" with the CNI plugins
    // instead, and the tests are written against netavark's bridges and chains.
    "podman",
    "netavark",
    // `python3 -m pip`, for scapy (see ensure_python_modules) when python3 is Debian's.
    "python3-pip",
    // ApacheBench (`ab`): the load of tests/bench_saturation/; ulogd2 with its JSON
    // output is one of the peers it measures dockexpose against (tcpdump and
    // conntrack, the others, are below).
    "apache2-utils",
    "ulogd2",
    "ulogd2-json",
    // `dockexpose verify`: conntrack is the tests' reference for the probes' entries
    // (verify itself deletes them over netlink); nmap is what tests/verify/ compares
    // its verdicts with; tcpdump watches that none leaks; nft reads back the netfilter
    // trace that names the rule dropping a probe.
    "nmap",
    "conntrack",
    "nftables",
    "tcpdump",
    // A real compose project in tests/publish_paths/ (Debian's docker-compose v1:
    // the same Engine API and com.docker.compose.* labels as compose v2).
    "docker-compose",
    // CNI's bridge and portmap plugins (Kubernetes hostPort), driven as a container
    // runtime drives them, in tests/publish_paths/.
    "containernetworking-plugins",
    // tests/operator_surfaces/: a real Prometheus server scrapes the daemon, and the
    // real logrotate rotates the audit log with packaging/logrotate/dockexpose.
    "prometheus",
    "logrotate",
    // The alert sinks' tests: a real rsyslogd (tests/sink_syslog.rs), the real
    // systemd-journald and journalctl (tests/sink_journald.rs), openssl for the test
    // certificates of tests/sink_webhook.rs.
    "rsyslog",
    "systemd",
    "openssl",
    // `dockexpose explain` and the contradictions in the record read the firewall's
    // word: tests/intent_*.rs run real UFW, ipset and fail2ban in namespaces of their
    // own and read real firewalld zone files (its daemon needs a system bus and is
    // never started). Debian's policy-rc.d keeps fail2ban's service from starting.
    "ufw",
    "ipset",
    "fail2ban",
    "firewalld",
    // tests/least_privilege.rs drops capabilities with setpriv; tests/service.rs checks
    // packaging/systemd/dockexpose.service with `systemd-analyze verify` (systemd above).
    "util-linux",
    // tests/service_nspawn/ starts that unit under a real systemd: a minimal Debian
    // tree made by debootstrap (once, cached under target/tmp/nspawn), booted with
    // systemd-nspawn.
    "systemd-container",
    "debootstrap",
    // The fleet store: tests/fleet_*.rs start real ClickHouse shards and a NATS
    // JetStream server on 127.0.0.1 as plain processes (installing them starts none).
    "clickhouse-server",
    "nats-server",
    // The fleet tests talk to ClickHouse's HTTP interface with curl (its status code checked).
    "curl",
    // tests/slow_disk.rs puts the audit log on a FUSE filesystem whose writes sleep
    // (tests/support/slowfs.py, on fusepy, which loads libfuse2; fuse3: the fuse tools).
    "libfuse2",
    "fuse3",
];

/// Python modules the tests drive, as (module to import, PyPI package): scapy crafts
/// packets from an outside namespace; communityid is the reference Community ID
/// implementation (tests/community_id_reference.rs); ocsf-json-schema builds OCSF's JSON
/// Schema offline and jsonschema checks events against it (tests/formats_reference.rs);
/// fusepy serves the slow disk of tests/slow_disk.rs.
pub(crate) const PYTHON_MODULES: &[(&str, &str)] = &[
    ("scapy", "scapy"),
    ("communityid", "communityid"),
    ("ocsf_json_schema", "ocsf-json-schema"),
    ("jsonschema", "jsonschema"),
    ("fuse", "fusepy"),
];

pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) const BPF_LINKER_SERIES: &str = "0.13";

/// Without it bpf-linker's build looks for LLVM under /usr and fails on `-lLLVM`.
pub(crate) const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub(crate) const BPFFS: &str = "/sys/fs/bpf";

pub(crate) fn install(root: bool) -> Result<()> {
    say!("setup: checking this machine (running as {})", if root { "root" } else { "a normal user" });
    ensure_debian_packages(root)?;
    ensure_python_modules(root)?;
    ensure_bpf_linker()?;
    ensure_lint_tools()?;
    report_ebpf_compiler();
    ensure_bpffs(root);
    say!("setup: done");
    Ok(())
}

pub(crate) fn ensure_debian_packages(root: bool) -> Result<()> {
    say!("checking Debian packages: {}", DEB_PACKAGES.join(" "));
    let mut missing = Vec::new();
    for &pkg in DEB_PACKAGES {
        let out = match Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]).output() {
            Ok(out) => out,
            // Not Debian: the build still says which prerequisite it misses.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                say!("warning: dpkg-query not found (not a Debian system?): skipping the package check");
                say!("warning: install the equivalents of these yourself: {}", DEB_PACKAGES.join(" "));
                return Ok(());
            }
            Err(e) => return Err(e).context("could not run dpkg-query"),
        };
        // dpkg-query exits non-zero for a package it never heard of: that is missing too.
        let installed = dpkg_installed(&String::from_utf8_lossy(&out.stdout));
        say!("  {pkg}: {}", if installed { "installed" } else { "MISSING" });
        if !installed {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!(
            "missing Debian packages: {list}\n  Fix: sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends {list}\n  (or run `cargo xtask setup` as root)"
        );
    }
    say!("installing the missing Debian packages: {list}");
    let apt_fix = "check the network and the sources in /etc/apt/sources.list(.d)";
    run(Command::new("apt-get").arg("update"), apt_fix)?;
    // Packages such as fail2ban start their service on installation, which would put
    // their rules into this host's firewall: Debian's policy-rc.d (exit 101) forbids
    // that for the length of the install, unless the machine already has one.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        say!("writing {} (exit 101) so that no package starts its service during the install", policy.display());
        std::fs::write(
            policy,
            "#!/bin/sh\n# dockexpose xtask: no service starts during package installation\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
            .context("chmod policy-rc.d")?;
    }
    let result = run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        apt_fix,
    );
    if ours {
        say!("removing {}", policy.display());
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// Each of PYTHON_MODULES that `python3 -c 'import MODULE'` cannot import is installed
/// with `python3 -m pip install` (the python3 found first on PATH: the one the tests run).
pub(crate) fn ensure_python_modules(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &(module, package) in PYTHON_MODULES {
        let probe = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let found = match probe {
            Ok(status) => status.success(),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!("python3 not found, needed for the Python module {module}\n  Fix: apt-get install python3 python3-pip")
            }
            Err(e) => return Err(e).context("could not run python3"),
        };
        say!(
            "checking Python module {module} (`python3 -c 'import {module}'`): {}",
            if found { "found" } else { "MISSING" }
        );
        if !found {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        // Only the root integration tests use them, and those skip for a normal user.
        say!("warning: missing Python packages: {list}; as root run: python3 -m pip install {list}");
        return Ok(());
    }
    say!("installing the missing Python packages from PyPI: {list}");
    run(
        Command::new("python3")
            // Debian's own python3 refuses pip installs (PEP 668, "externally managed"):
            // on a test machine, install anyway. A pip that predates the setting ignores it.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
            .args(&missing),
        "check access to PyPI and that `python3 -m pip --version` works (Debian: apt-get install python3-pip)",
    )?;
    for &(module, _) in PYTHON_MODULES {
        let ok = Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
        if !ok {
            bail!("`python3 -c 'import {module}'` still fails after the install\n  Fix: see pip's output above");
        }
    }
    Ok(())
}

/// The build script (dockexpose/build.rs) takes the first bpf-linker found on PATH, then
/// in $CARGO_HOME/bin, then in ~/.cargo/bin: check that same one.
pub(crate) fn ensure_bpf_linker() -> Result<()> {
    say!("checking bpf-linker {BPF_LINKER_SERIES}.x (on PATH, then in $CARGO_HOME/bin or ~/.cargo/bin)");
    match first_bpf_linker() {
        Some((path, version)) if is_wanted_bpf_linker(&version) => {
            say!("  {}: {}", path.display(), version.trim());
            return Ok(());
        }
        Some((path, version)) => say!("  {}: {:?}, not {BPF_LINKER_SERIES}.x", path.display(), version.trim()),
        None => say!("  not found"),
    }
    say!("installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (takes about a minute)");
    run(
        cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--locked"])
            // --force: replaces a bpf-linker of another version or not installed by cargo.
            .arg("--force"),
        "check access to crates.io and that llvm-22-dev, libpolly-22-dev, zlib1g-dev, libzstd-dev are installed",
    )?;
    match first_bpf_linker() {
        Some((_, version)) if is_wanted_bpf_linker(&version) => Ok(()),
        Some((path, version)) => bail!(
            "{} ({}) comes before the bpf-linker just installed in {}.\n  Fix: remove it, or put {} first in PATH.",
            path.display(),
            version.trim(),
            cargo_home().join("bin").display(),
            cargo_home().join("bin").display()
        ),
        None => bail!("bpf-linker was installed but is not found in {}", cargo_home().join("bin").display()),
    }
}

/// Which compiler dockexpose/build.rs will use for the eBPF crate (it decides the same way).
pub(crate) fn report_ebpf_compiler() {
    if env::var("DOCKEXPOSE_EBPF_ROUTE").as_deref() == Ok("debian") {
        say!("DOCKEXPOSE_EBPF_ROUTE=debian: the eBPF crate will be built with Debian's /usr/bin/rustc");
    } else if let Some(sysroot) = nightly_with_rust_src() {
        say!("rustup nightly with rust-src found ({sysroot}): the eBPF crate will be built with it");
        return;
    } else {
        say!("no rustup nightly with rust-src: the eBPF crate will be built with Debian's /usr/bin/rustc");
    }
    for needed in ["/usr/bin/rustc", "/usr/lib/rustlib/src/rust/library/core"] {
        if !Path::new(needed).exists() {
            say!("warning: {needed} is missing: install rustc-web and rust-web-src");
        }
    }
}

pub(crate) fn nightly_with_rust_src() -> Option<String> {
    let out = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output().ok()?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let has_src = out.status.success() && Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists();
    has_src.then_some(sysroot)
}

/// Best effort: only pinning needs bpffs, and it is not mounted at boot on these machines.
pub(crate) fn ensure_bpffs(root: bool) {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if bpffs_mounted(&mounts) {
        say!("bpffs: mounted at {BPFFS}");
        return;
    }
    if !root {
        say!("warning: bpffs is not mounted at {BPFFS}; as root run: mount -t bpf bpf {BPFFS}");
        return;
    }
    say!("bpffs: not mounted at {BPFFS}; mounting it");
    if let Err(e) = run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]), "is bpffs in this kernel?") {
        say!("warning: could not mount bpffs: {e:#}");
    }
}

/// The first bpf-linker in the order dockexpose/build.rs looks, with its `--version`.
pub(crate) fn first_bpf_linker() -> Option<(PathBuf, String)> {
    let mut dirs: Vec<PathBuf> = env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    dirs.push(cargo_home().join("bin"));
    dirs.push(PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo/bin"));
    let path = dirs.into_iter().map(|d| d.join("bpf-linker")).find(|p| p.is_file())?;
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    Some((path, version))
}

/// `dpkg-query -W -f='${Status}'` prints e.g. "install ok installed"; anything else
/// (nothing, "deinstall ok config-files", "install ok half-configured") is not usable.
pub(crate) fn dpkg_installed(status: &str) -> bool {
    status.contains("install ok installed")
}

/// `bpf-linker --version` prints "bpf-linker 0.13.0": want the 0.13 series.
pub(crate) fn is_wanted_bpf_linker(version_output: &str) -> bool {
    version_output
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v == BPF_LINKER_SERIES || v.starts_with(&format!("{BPF_LINKER_SERIES}.")))
}

/// /proc/mounts lines are "device mountpoint fstype options 0 0".
pub(crate) fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    })
}

/// rustfmt and clippy, which `cargo xtask test` runs first: rustup's components of the
/// toolchain in use (a minimal rustup profile lacks them).
pub(crate) fn ensure_lint_tools() -> Result<()> {
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let present = cargo()
            .args([probe, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            say!("setup: {component} present");
            continue;
        }
        if find_in_path("rustup").is_none() {
            // Debian's cargo (the CI script's fallback) has no components to add: the
            // test command's lint step will say that it could not run.
            say!("setup: {component} missing and no rustup to add it: `cargo xtask test` will fail its lint step");
            continue;
        }
        run(Command::new("rustup").args(["component", "add", component]), "install rustup, or the component by hand")?;
    }
    Ok(())
}
