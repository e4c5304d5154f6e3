//! Project tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! Plain `std::process::Command` calls, each printed before it runs, so that a fresh
//! machine needs nothing but cargo to get from a clone to a running detector, and so
//! that a CI log shows exactly what was done. See /work/shared/docs/toolchain.md for
//! why the toolchain is put together this way.

use std::{
    env,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod totals;
use totals::{TestTotals, SKIP_LOG_VAR};

macro_rules! say {
    ($($arg:tt)*) => { println!("xtask: {}", format_args!($($arg)*)) };
}

mod setup;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Build, run, test and bench dockexpose")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this machine lacks (Debian packages, Python modules, bpf-linker) and mount bpffs.
    Setup,
    /// Setup, then build target/release/dockexpose.
    Build,
    /// Build, then run dockexpose as root with ARGS (default: `watch`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then run the tests one at a time; ARGS go to the test binaries.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then boot Debian's kernels in QEMU and run the kernel-pipeline scenario
    /// in each (also the last step of `test`; see xtask/src/vm.rs).
    TestVm,
    /// Build, then run the kernel-program benchmark (benches/kernel_programs.rs) as root
    /// with ARGS, the record path (benches/record_path.rs), then the daemon benchmarks (tests bench_rate, bench_saturation with its
    /// peers table, and bench_flood; they need root and Docker), and bench_fleet (no
    /// root: real nats-server and ClickHouse on 127.0.0.1).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run_task(Cli::parse().task) {
        eprintln!("xtask: error: {e:?}");
        std::process::exit(1);
    }
}

fn run_task(task: Task) -> Result<()> {
    let root = is_root()?;
    match task {
        Task::Setup => setup::install(root),
        Task::Build => build(root).map(drop),
        Task::Run { mut args } => {
            let bin = build(root)?;
            if args.is_empty() {
                args.push("watch".into());
            }
            exec_privileged(root, &bin, &args)
        }
        Task::Test { args } => test(root, &args),
        Task::TestVm => {
            let bin = build(root)?;
            let outcomes = vm::run_matrix(root, &bin);
            let mut total = TestTotals::default();
            total.add_vm(&outcomes);
            println!("vm: {} passed, {} failed, {} skipped", total.passed, total.failed, total.ignored);
            if total.failed > 0 {
                bail!("the kernel matrix failed\n  Fix: see the VMCHECK FAIL lines above");
            }
            Ok(())
        }
        Task::Bench { args } => {
            build(root)?;
            let bin = build_kernel_bench()?;
            let mut kernel = privileged(root, &bin, &args)?;
            run(&mut kernel, "the kernel-program benchmark failed")?;
            say!("the daemon's loop per connection, without the kernel (benches/record_path.rs; no root; about 10 s)");
            run(
                cargo().args(["bench", "--package", "dockexpose", "--bench", "record_path"]),
                "the record-path benchmark failed",
            )?;
            // The daemon-side benchmarks are ignored tests, so that they share the
            // namespace and Docker test bed with the tests; one after the other.
            for (test, what) in [
                (
                    "bench_rate",
                    "connection rate of one sequential client, attached vs detached (latency-bound; about 30 s)",
                ),
                (
                    "bench_saturation",
                    "at saturation: ApacheBench through a published port, each tool (dockexpose, tcpdump, conntrack -E, ulogd2 with NFLOG, the empty program) attached vs detached, then the peers table (about 4 min)",
                ),
                ("bench_flood", "a SYN flood from 1M+ spoofed sources at the highest rate (about 90 s)"),
                (
                    "bench_fleet",
                    "a simulated fleet: 1 000 hosts x 10 records/s into two ClickHouse shards, directly and through NATS and `fleet bridge`, then `fleet exposures` over 1 M records (about 2 min; no root)",
                ),
            ] {
                say!("{what}");
                run(
                    cargo().args(["test", "--release", "--package", "dockexpose", "--test", test]).args([
                        "--",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ]),
                    &format!("the {test} benchmark failed (it needs root and Docker)"),
                )?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------
// Tasks

fn build(root: bool) -> Result<PathBuf> {
    setup::install(root)?;
    run(
        cargo().args(["build", "--release", "--package", "dockexpose"]),
        "see the compiler errors above; `cargo xtask setup` installs the prerequisites",
    )?;
    let bin = target_dir().join("release").join("dockexpose");
    say!("built {}", bin.display());
    Ok(bin)
}

/// Builds the kernel-program benchmark (a bench target of dockexpose, outside the
/// product's source) and returns its executable, which runs as root.
fn build_kernel_bench() -> Result<PathBuf> {
    let out = cargo()
        .args([
            "bench",
            "--package",
            "dockexpose",
            "--bench",
            "kernel_programs",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the kernel-program benchmark failed\n  Fix: see the compiler errors above");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"name\":\"kernel_programs\""))
        .find_map(|l| {
            let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[at..].find('"')?;
            Some(PathBuf::from(&l[at..at + end]))
        })
        .context("cargo bench --no-run named no kernel_programs executable")
}

fn test(root: bool, args: &[String]) -> Result<()> {
    setup::install(root)?;
    // The tools every Rust project uses, first; a failure is said at the end, after
    // the tests, so that it never hides their results.
    let lint_failures = lint();
    let mut cmd = cargo();
    // One test at a time: the integration tests share kernel state (bpffs, TCX links,
    // iptables rules, network namespaces).
    cmd.args(["test", "--release", "--no-fail-fast", "--package", "dockexpose-common", "--package", "dockexpose"])
        .args(["--package", "xtask", "--", "--test-threads=1"])
        .args(args);
    if env::var_os("CI").is_some() {
        // In CI a skipped privileged test would hide a broken runner: make it fail.
        say!("CI is set: tests that need root or Docker fail instead of skipping");
        cmd.env("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS", "1");
    }
    if !root {
        say!("note: not root, so the integration tests that need root will skip");
    }
    // Tests that skip themselves write why here (tests/support/skip.rs); a fresh file
    // per run, so that only this run's skips are counted.
    let skip_log = target_dir().join("dockexpose-skips.log");
    fs::create_dir_all(target_dir()).with_context(|| format!("creating {}", target_dir().display()))?;
    fs::write(&skip_log, "").with_context(|| format!("could not empty the skip log {}", skip_log.display()))?;
    cmd.env(SKIP_LOG_VAR, &skip_log);
    // cargo prints one "test result" line per test binary; add them up into one
    // closing line, so that the last word of a run is the whole run's count.
    say!("running: {}", describe(&cmd));
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("could not start cargo test")?;
    let mut total = TestTotals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        total.add_line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    // The kernel matrix: only for a whole run (a filter asks for particular tests).
    let mut vm_failed = false;
    if args.is_empty() {
        // cargo test built it for the integration tests; a build with other features
        // unified would recompile half the dependencies.
        let bin = target_dir().join("release").join("dockexpose");
        if !bin.is_file() {
            run(cargo().args(["build", "--release", "--package", "dockexpose"]), "see the compiler errors above")?;
        }
        let outcomes = vm::run_matrix(root, &bin);
        vm_failed = outcomes.iter().any(|o| matches!(o, vm::Outcome::Failed { .. }));
        total.add_vm(&outcomes);
    } else {
        say!("vm: SKIPPED: test arguments were given; `cargo xtask test-vm` runs the kernel matrix alone");
        total.ignored += vm::SERIES.len() as u64;
    }
    let log = fs::read_to_string(&skip_log).with_context(|| format!("reading the skip log {}", skip_log.display()))?;
    for line in totals::summary(&total, &totals::parse_skips(&log)) {
        println!("{line}");
    }
    if !status.success() {
        bail!("`cargo test` failed ({status})\n  Fix: see the failures above");
    }
    if vm_failed {
        bail!("the kernel matrix failed\n  Fix: see the VMCHECK FAIL lines above");
    }
    if !lint_failures.is_empty() {
        bail!("{} failed\n  Fix: see its output near the start of this run", lint_failures.join(" and "));
    }
    Ok(())
}

/// rustfmt over the whole workspace (the eBPF crate included) and clippy over the
/// userspace crates, warnings denied. Returns what failed, by name.
fn lint() -> Vec<&'static str> {
    let mut failed = Vec::new();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "dockexpose-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    for (name, cmd, fix) in [
        ("rustfmt", &mut fmt, "run `cargo fmt --all` and commit the result"),
        ("clippy", &mut clippy, "mend what clippy names above"),
    ] {
        say!("lint: running: {}", describe(cmd));
        match cmd.status() {
            Ok(status) if status.success() => say!("lint: {name}: clean"),
            Ok(status) => {
                say!("lint: {name}: FAILED ({status}); fix: {fix}");
                failed.push(name);
            }
            Err(e) => {
                say!("lint: {name}: could not run ({e}); fix: rustup component add {name}");
                failed.push(name);
            }
        }
    }
    failed
}

/// Replaces xtask with dockexpose, so that its signals and exit code are its own. Not
/// root: only dockexpose goes through `sudo -E`, not cargo, so that target/ does not
/// fill with files owned by root.
fn exec_privileged(root: bool, bin: &Path, args: &[String]) -> Result<()> {
    let mut cmd = privileged(root, bin, args)?;
    say!("running: {}", describe(&cmd));
    let err = cmd.exec(); // returns only if the exec failed
    Err(err)
        .with_context(|| format!("could not start `{}`; run `cargo xtask build` and check the path", describe(&cmd)))
}

/// `bin ARGS` as root: directly when root, else through `sudo -E`.
fn privileged(root: bool, bin: &Path, args: &[String]) -> Result<Command> {
    let mut cmd = if root {
        Command::new(bin)
    } else if let Some(sudo) = find_in_path("sudo") {
        say!("not root: loading eBPF programs needs root, so dockexpose runs through sudo");
        let mut c = Command::new(sudo);
        c.arg("-E").arg(bin);
        c
    } else {
        bail!(
            "dockexpose needs root (or CAP_BPF + CAP_NET_ADMIN) to load its eBPF programs, \
             and sudo was not found.\n  Fix: run `cargo xtask` as root, or run {} as root.",
            bin.display()
        );
    };
    cmd.args(args);
    Ok(cmd)
}

// ---------------------------------------------------------------------------------
// Setup steps

// ---------------------------------------------------------------------------------
// Helpers

/// The workspace root: xtask/ sits directly in it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// The cargo that runs us (cargo sets CARGO), working in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// CARGO_TARGET_DIR, if set, is relative to the workspace root where cargo runs.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output().context("could not run `id -u` (coreutils)")?;
    let uid = String::from_utf8_lossy(&out.stdout);
    let uid: u32 = uid.trim().parse().with_context(|| format!("`id -u` printed {uid:?}, not a user id"))?;
    Ok(uid == 0)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH").unwrap_or_default()).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Prints the command, runs it, and fails with `fix` unless it exits 0.
fn run(cmd: &mut Command, fix: &str) -> Result<()> {
    let shown = describe(cmd);
    say!("running: {shown}");
    let status = cmd.status().with_context(|| format!("could not start `{shown}`; is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})\n  Fix: {fix}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Pure helpers (unit-tested)

/// A command as one could paste it into a shell: `cd DIR && VAR=value prog args`.
fn describe(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.extend(["cd".to_string(), quote(dir.as_os_str()), "&&".to_string()]);
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{bpffs_mounted, dpkg_installed, is_wanted_bpf_linker};

    #[test]
    fn dpkg_status() {
        assert!(dpkg_installed("install ok installed"));
        assert!(!dpkg_installed(""));
        assert!(!dpkg_installed("deinstall ok config-files"));
        assert!(!dpkg_installed("install ok half-configured"));
    }

    #[test]
    fn bpf_linker_version() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.0\n"));
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.2"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.12.4"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.130.0"));
        assert!(!is_wanted_bpf_linker("bpf-linker 10.13.0"));
        assert!(!is_wanted_bpf_linker(""));
    }

    #[test]
    fn bpffs_in_proc_mounts() {
        let without = "sysfs /sys sysfs rw,nosuid 0 0\nproc /proc proc rw 0 0\n";
        assert!(!bpffs_mounted(without));
        assert!(bpffs_mounted(&format!("{without}bpf /sys/fs/bpf bpf rw,relatime 0 0\n")));
        // Something else mounted on the path is not bpffs.
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    }

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}", "it's"]).env("LLVM_PREFIX", "/usr/lib/llvm-22").current_dir("/w");
        assert_eq!(describe(&cmd), r"cd /w && LLVM_PREFIX=/usr/lib/llvm-22 dpkg-query -W '-f=${Status}' 'it'\''s'");
    }

    #[test]
    fn trailing_args_reach_the_task() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).unwrap().task;
        let Task::Run { args } = parse(&["run", "--", "watch", "--json", "-"]) else { panic!() };
        assert_eq!(args, ["watch", "--json", "-"]);
        let Task::Run { args } = parse(&["run"]) else { panic!() };
        assert!(args.is_empty());
        let Task::Test { args } = parse(&["test", "--", "--exact", "some_test"]) else { panic!() };
        assert_eq!(args, ["--exact", "some_test"]);
        let Task::Bench { args } = parse(&["bench", "--iterations", "10"]) else { panic!() };
        assert_eq!(args, ["--iterations", "10"]);
    }

    #[test]
    fn a_kernel_that_cannot_be_had_counts_as_skipped_never_passed() {
        let mut t = totals::TestTotals::default();
        t.add_vm(&[
            vm::Outcome::Passed { kernel: "6.1.0-57-amd64".into(), checks: 29, secs: 54 },
            vm::Outcome::Failed {
                kernel: "6.12.118+deb12-amd64".into(),
                why: "2 of 22 checks failed".into(),
                secs: 64,
            },
            vm::Outcome::Skipped { series: "6.12", why: "no package matching".into() },
        ]);
        assert_eq!(t, totals::TestTotals { passed: 1, failed: 1, ignored: 1 });
    }
}
