//! The kernel matrix of `cargo xtask test`: Debian's own kernels, unpacked (not
//! installed) under target/, booted in QEMU through virtme-ng with the host's root
//! filesystem shared read-only, running xtask/vm/scenario.sh against the release
//! binary. See /work/shared/docs/older-kernels.md for the route and its traps.
//!
//! Each kernel ends as passed, failed (the scenario's checks, or the VM, failed) or
//! skipped with the reason (no image to be had, no tools): a skip is never a pass.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{find_in_path, run, target_dir, workspace_root};

/// What the VMs need from Debian: QEMU, modprobe/depmod, and what virtme-ng builds its
/// tiny initramfs from.
const VM_DEB_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "cpio"];
/// One boot and the scenario take 1.5-2 min under TCG; past this the VM is stuck.
const VM_TIMEOUT: Duration = Duration::from_secs(360);

/// A kernel series the registries offer, found by `apt-cache search --names-only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// As named in the output: "6.1".
    pub name: &'static str,
    /// The package name is `{prefix}{N}{suffix}`; the newest N is taken.
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian 12's kernel (no TCX, no cast kfuncs) and the backports' 6.12 (both).
pub const SERIES: &[Series] = &[
    Series { name: "6.1", prefix: "linux-image-6.1.0-", suffix: "-amd64" },
    Series { name: "6.12", prefix: "linux-image-6.12.", suffix: "+deb12-amd64" },
];

/// How one kernel fared.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed { kernel: String, checks: u32, secs: u64 },
    Failed { kernel: String, why: String, secs: u64 },
    Skipped { series: &'static str, why: String },
}

/// Boots every series and runs the scenario in each; `bin` is the release binary.
pub fn run_matrix(root: bool, bin: &Path) -> Vec<Outcome> {
    let started = Instant::now();
    let outcomes = match ensure_vm_tools(root) {
        Err(why) => SERIES.iter().map(|s| Outcome::Skipped { series: s.name, why: why.clone() }).collect(),
        Ok(vng) => SERIES.iter().map(|s| one_kernel(&vng, *s, bin)).collect(),
    };
    say!("vm: the kernel matrix took {} s", started.elapsed().as_secs());
    outcomes
}

fn one_kernel(vng: &Path, series: Series, bin: &Path) -> Outcome {
    let image = match fetch_kernel(series) {
        Ok(image) => image,
        Err(why) => {
            say!("vm: {}: SKIPPED: {why:#}", series.name);
            return Outcome::Skipped { series: series.name, why: format!("{why:#}") };
        }
    };
    let started = Instant::now();
    let result = boot_and_check(vng, &image, bin);
    let secs = started.elapsed().as_secs();
    match result {
        Ok(checks) => {
            say!("vm: {}: passed, {checks} checks ({secs} s)", image.version);
            Outcome::Passed { kernel: image.version, checks, secs }
        }
        Err(why) => {
            say!("vm: {}: FAILED ({secs} s): {why:#}", image.version);
            Outcome::Failed { kernel: image.version, why: format!("{why:#}"), secs }
        }
    }
}

/// Installs QEMU and friends (apt) and virtme-ng (pip) when missing; returns `vng`.
fn ensure_vm_tools(root: bool) -> std::result::Result<PathBuf, String> {
    let missing: Vec<&str> = VM_DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !out.is_ok_and(|o| crate::setup::dpkg_installed(&String::from_utf8_lossy(&o.stdout)))
        })
        .collect();
    say!(
        "vm: checking Debian packages {}: {}",
        VM_DEB_PACKAGES.join(" "),
        if missing.is_empty() { "installed".into() } else { format!("MISSING {}", missing.join(" ")) }
    );
    if !missing.is_empty() {
        if !root {
            return Err(format!("not root, and {} are not installed", missing.join(" ")));
        }
        let _ = run(Command::new("apt-get").arg("update"), "check the apt sources");
        let installed = run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
            "check the apt sources",
        );
        installed.map_err(|e| format!("could not install {}: {e:#}", missing.join(" ")))?;
    }
    if let Some(vng) = find_in_path("vng") {
        say!("vm: virtme-ng: {}", vng.display());
        return Ok(vng);
    }
    if !root {
        return Err("not root, and virtme-ng (vng) is not installed".into());
    }
    say!("vm: virtme-ng not found: installing it from PyPI");
    run(
        Command::new("python3").env("PIP_BREAK_SYSTEM_PACKAGES", "1").args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "virtme-ng",
        ]),
        "check access to PyPI",
    )
    .map_err(|e| format!("could not install virtme-ng: {e:#}"))?;
    // pyenv puts new commands on PATH only after a rehash.
    let _ = Command::new("pyenv").arg("rehash").status();
    find_in_path("vng").ok_or_else(|| "virtme-ng was installed but `vng` is not on PATH".into())
}

/// An unpacked kernel: its version and where it lies.
struct Image {
    version: String,
    dir: PathBuf,
}

impl Image {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("boot").join(format!("vmlinuz-{}", self.version))
    }
}

/// The newest image of `series` apt offers, downloaded and unpacked under
/// target/vm-kernels (the guest sees the build directory; /var/cache it does not).
fn fetch_kernel(series: Series) -> Result<Image> {
    let pattern = format!("^{}[0-9]+{}$", regex_escape(series.prefix), regex_escape(series.suffix));
    say!("vm: {}: looking for {pattern}", series.name);
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("could not run apt-cache")?;
    let Some(package) = newest_package(&String::from_utf8_lossy(&out.stdout), series) else {
        bail!("no package matching {pattern} in the apt sources (apt-cache search found none)");
    };
    let version = package.trim_start_matches("linux-image-").to_string();
    let cache = target_dir().join("vm-kernels");
    let image = Image { dir: cache.join(&version), version };
    if image.vmlinuz().is_file() && image.dir.join("lib/modules").join(&image.version).join("modules.dep").is_file() {
        say!("vm: {}: {package} already unpacked in {}", series.name, image.dir.display());
        return Ok(image);
    }
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    run(Command::new("apt-get").args(["download", &package]).current_dir(&cache), "check the apt sources")?;
    let deb = std::fs::read_dir(&cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", cache.display()))?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&image.dir), "is the .deb complete?")?;
    // Without it modprobe in the guest finds nothing.
    run(Command::new("depmod").arg("-b").arg(&image.dir).arg(&image.version), "depmod comes with kmod")?;
    let _ = std::fs::remove_file(&deb);
    // An older image of the series is superseded: ~300 MB each, not kept.
    let stem = series.prefix.trim_start_matches("linux-image-");
    for old in std::fs::read_dir(&cache)?.filter_map(|e| e.ok()) {
        let name = old.file_name().to_string_lossy().into_owned();
        if name != image.version
            && newest_package(&format!("linux-image-{name}"), series).is_some()
            && name.starts_with(stem)
        {
            say!("vm: {}: removing the superseded {name}", series.name);
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    Ok(image)
}

/// Boots `image`, runs the scenario, returns the number of checks passed.
fn boot_and_check(vng: &Path, image: &Image, bin: &Path) -> Result<u32> {
    let script = workspace_root().join("xtask/vm/scenario.sh");
    let mut cmd = Command::new(vng);
    // -v: the script's output on virtio-serial, not mixed into the console.
    cmd.args(["-v", "--run"]).arg(image.vmlinuz());
    cmd.args(["--disable-kvm", "--memory", "2G", "--cpus", "2", "--exec"]);
    cmd.arg(format!("{} {}", script.display(), bin.display()));
    say!("vm: running: {}", crate::describe(&cmd));
    let log_path = target_dir().join("vm-kernels").join(format!("{}.log", image.version));
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("could not start vng")?;
    // Both streams, line by line, through one channel so that a stuck VM can be timed out.
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut output = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if line.starts_with("VM") {
                    println!("  {line}");
                }
                output.push_str(&line);
                output.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    let _ = std::fs::write(&log_path, &output);
    if timed_out {
        bail!("the VM did not finish within {} s (its output: {})", VM_TIMEOUT.as_secs(), log_path.display());
    }
    match parse_result(&output) {
        None => bail!(
            "the scenario printed no VMRESULT line: the VM or the script broke (its output: {})",
            log_path.display()
        ),
        Some(r) if r.fail == 0 && r.pass > 0 => Ok(r.pass),
        Some(r) => bail!(
            "{} of {} checks failed: {} (its output: {})",
            r.fail,
            r.pass + r.fail,
            r.failed.join("; "),
            log_path.display()
        ),
    }
}

// ---------------------------------------------------------------------------------
// Pure helpers (unit-tested)

/// The scenario's verdict: counts from "VMRESULT pass=N fail=M", names from the
/// "VMCHECK FAIL name: detail" lines.
#[derive(Debug, PartialEq, Eq)]
pub struct ScenarioResult {
    pub pass: u32,
    pub fail: u32,
    pub failed: Vec<String>,
}

pub fn parse_result(output: &str) -> Option<ScenarioResult> {
    let last = output.lines().rev().find_map(|l| l.trim().strip_prefix("VMRESULT "))?;
    let field = |key: &str| last.split_whitespace().find_map(|w| w.strip_prefix(key)?.parse::<u32>().ok());
    let failed = output.lines().filter_map(|l| l.trim().strip_prefix("VMCHECK FAIL ")).map(str::to_string).collect();
    Some(ScenarioResult { pass: field("pass=")?, fail: field("fail=")?, failed })
}

/// The package of `series` with the highest number among `apt-cache search` lines
/// ("linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)").
pub fn newest_package(apt_cache_output: &str, series: Series) -> Option<String> {
    apt_cache_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let n: u32 = name.strip_prefix(series.prefix)?.strip_suffix(series.suffix)?.parse().ok()?;
            Some((n, name))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, name)| name.to_string())
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".+*?()[]{}^$|\\".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_a_series() {
        let out = "linux-image-6.1.0-9-amd64 - Linux 6.1\nlinux-image-6.1.0-57-amd64 - Linux 6.1\n\
                   linux-image-6.1.0-56-amd64 - Linux 6.1\nlinux-image-6.1.0-57-cloud-amd64 - cloud\n\
                   linux-image-6.12.118+deb12-amd64 - Linux 6.12\nlinux-image-6.12.118+deb12-rt-amd64 - rt\n\
                   linux-image-6.12.43+deb12-amd64 - Linux 6.12\n";
        assert_eq!(newest_package(out, SERIES[0]).as_deref(), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(newest_package(out, SERIES[1]).as_deref(), Some("linux-image-6.12.118+deb12-amd64"));
        assert_eq!(newest_package("", SERIES[0]), None);
        assert_eq!(newest_package("linux-image-6.1.0-57-cloud-amd64 - cloud\n", SERIES[0]), None);
    }

    #[test]
    fn scenario_verdict() {
        let out = "[ 1.0] boot\nVMCHECK ok start1: x\nVMCHECK FAIL status_hook: status names cls_bpf\n\
                   VMRESULT pass=14 fail=1 kernel=6.1.0-57-amd64\n";
        let r = parse_result(out).unwrap();
        assert_eq!((r.pass, r.fail), (14, 1));
        assert_eq!(r.failed, ["status_hook: status names cls_bpf"]);
        // A VM that died before the end printed no verdict: never a pass.
        assert_eq!(parse_result("VMCHECK ok start1: x\n"), None);
        assert_eq!(parse_result("VMRESULT pass=x fail=0\n"), None);
    }

    #[test]
    fn apt_patterns_are_escaped() {
        assert_eq!(regex_escape("linux-image-6.12."), r"linux-image-6\.12\.");
        assert_eq!(regex_escape("+deb12-amd64"), r"\+deb12-amd64");
    }
}
