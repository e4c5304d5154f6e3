//! The systemd unit (packaging/systemd/dockexpose.service) under a real systemd: a
//! minimal Debian tree (debootstrap, cached under the target directory so that a
//! machine pays for it once) booted with `systemd-nspawn --boot` in the host's network
//! namespace, with the capabilities the unit asks for, bpffs and the Docker socket
//! bound in. The unit as shipped, plus a drop-in that turns on `--verify-every`, is
//! started with `systemctl start`; then:
//! - it reaches active/running, which for Type=notify means READY=1 arrived;
//! - verify's pass at start runs under the unit's sandbox (its AF_PACKET socket, its
//!   private veth, the `verify-sentinel` child, the pins, `ip`, `conntrack`, `nft`):
//!   an EXPOSED and a HELD `verified` record in the audit log, the HELD one naming the
//!   DOCKER-USER rule (read from `nft monitor trace`), the summary line in the journal;
//! - a real connection from an outside namespace to the published port is recorded;
//! - `systemctl stop` leaves no link, nft table, conntrack entry or verify pin behind
//!   (the kernel side stays pinned by design; `dockexpose cleanup` then removes it).
//!
//! This machine has no systemd as PID 1, hence no machined: `machinectl shell` and
//! `systemd-run -M` cannot reach the container; commands run in it through `nsenter`
//! into the namespaces of its PID 1, and the machine is powered off by signalling
//! systemd-nspawn (SIGTERM: a clean poweroff), killed if it does not stop in time.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

const BIN: &str = env!("CARGO_BIN_EXE_dockexpose");

/// What the tree holds beyond minbase: systemd as init, and the programs verify runs.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2,iptables,conntrack,nftables";

fn demanded() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some()
}

/// The program is installed, or the test is skipped (a failure when the run demands it).
fn have(program: &str, package: &str, test: &str) -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file());
    if found {
        return true;
    }
    let why = format!("{test}: SKIPPED: {program} not installed (Debian package {package}; `cargo xtask setup` installs it)");
    assert!(!demanded(), "{why}, and this run demands it");
    eprintln!("{why}");
    false
}

/// The host's Debian codename (the tree's glibc must be at least the one the binary
/// was built against: the same release is) and the mirror that apt uses for it, read
/// from /etc/apt at run time (one-line and deb822 sources).
fn host_release_and_mirror() -> Option<(String, String)> {
    let os = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?
        .trim_matches('"')
        .to_string();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(uri) = mirror_for(&text, &codename) {
            return Some((codename, uri));
        }
    }
    None
}

/// The first URI of a plain `deb` source carrying suite `codename` exactly.
fn mirror_for(sources: &str, codename: &str) -> Option<String> {
    // One-line format: "deb [options] URI SUITE COMPONENTS..."
    for line in sources.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
            rest.drain(..=end);
        }
        if rest.get(1) == Some(&codename) {
            return rest.first().map(|u| u.to_string());
        }
    }
    // deb822: stanzas separated by blank lines, with Types:, URIs:, Suites:.
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        };
        let (Some(types), Some(uris), Some(suites)) =
            (field("Types:"), field("URIs:"), field("Suites:"))
        else {
            continue;
        };
        if types.iter().any(|t| t == "deb") && suites.iter().any(|s| s == codename) {
            return uris.into_iter().next();
        }
    }
    None
}

/// The cached tree: built once (debootstrap into NAME.partial, then renamed, so that an
/// interrupted build is never taken for a tree), rebuilt when INCLUDE changes.
fn debian_tree(test: &str) -> Option<PathBuf> {
    let Some((codename, mirror)) = host_release_and_mirror() else {
        let why = format!("{test}: SKIPPED: no Debian codename in /etc/os-release or no apt source for it in /etc/apt");
        assert!(!demanded(), "{why}, and this run demands it");
        eprintln!("{why}");
        return None;
    };
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nspawn");
    let tree = base.join(format!("debian-{codename}"));
    let stamp = tree.join(".dockexpose-tree");
    let wanted = format!("{codename} minbase {INCLUDE}\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        eprintln!("Debian tree: {} (cached)", tree.display());
        return Some(tree);
    }
    let partial = base.join(format!("debian-{codename}.partial"));
    for dir in [&tree, &partial] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
    }
    std::fs::create_dir_all(&base).unwrap();
    let started = Instant::now();
    eprintln!(
        "Debian tree: debootstrap --variant=minbase --include={INCLUDE} {codename} {} {mirror}",
        partial.display()
    );
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            &codename,
        ])
        .arg(&partial)
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The container shares the host's network namespace and may write its net sysctls
    // (as the daemon does on a host): systemd-sysctl must not apply Debian's defaults
    // (rp_filter, default_qdisc ...) to the host. Nothing in it needs a console.
    for unit in [
        "systemd-sysctl.service",
        "getty.target",
        "console-getty.service",
    ] {
        let link = partial.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    }
    std::fs::write(partial.join(".dockexpose-tree"), &wanted).unwrap();
    std::fs::rename(&partial, &tree).unwrap();
    eprintln!(
        "Debian tree: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Some(tree)
}

/// A booted container, powered off (or killed) on drop.
struct Machine {
    nspawn: Child,
    leader: u32,
    console: PathBuf,
}

impl Machine {
    fn boot(tree: &Path, name: &str, binds: &[(String, String, bool)], console: PathBuf) -> Self {
        let mut cmd = Command::new("systemd-nspawn");
        // --register=no --keep-unit: nspawn asks neither machined nor the host's
        // systemd (neither runs here) and stays in the test's own cgroup.
        // /proc/sys/net writable, as on the host the unit runs on (verify turns IPv6
        // off on its private veth); the rest of /proc/sys and /sys stays read-only.
        cmd.env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network");
        cmd.args([
            "--boot",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--console=read-only",
        ]);
        cmd.arg(format!("--machine={name}"))
            .arg("--directory")
            .arg(tree);
        // The unit's capabilities (its CapabilityBoundingSet); no --private-network.
        cmd.arg("--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_NET_RAW");
        // nspawn's own seccomp filter denies bpf() and perf_event_open() (the map
        // creation fails with EPERM): allow them, so that the unit's SystemCallFilter=
        // is the filter under test.
        cmd.arg("--system-call-filter=bpf perf_event_open");
        for (from, to, ro) in binds {
            cmd.arg(format!(
                "--bind{}={from}:{to}",
                if *ro { "-ro" } else { "" }
            ));
        }
        let log = std::fs::File::create(&console).unwrap();
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn");
        let mut m = Machine {
            nspawn,
            leader: 0,
            console,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.leader == 0 {
            if let Ok(Some(status)) = m.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}): {}", m.console_text());
            }
            assert!(
                Instant::now() < deadline,
                "no PID 1 in the container: {}",
                m.console_text()
            );
            m.leader = container_init(m.nspawn.id()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `args` run inside the container (its mount, PID, UTS and IPC namespaces).
    fn run(&self, args: &[&str]) -> Output {
        let pid = self.leader.to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-p", "-u", "-i", "--"])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in the container failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn journal(&self) -> String {
        text(
            &self
                .run(&[
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "cat",
                    "-u",
                    "dockexpose.service",
                ])
                .stdout,
        )
    }

    fn show(&self, props: &str) -> String {
        self.sh(&["systemctl", "show", "dockexpose.service", "-p", props])
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGTERM to systemd-nspawn: SIGRTMIN+3 to the container's systemd, a poweroff.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("the container did not power off within 30 s: killing it");
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The container's PID 1 as the host sees it: a descendant of systemd-nspawn whose
/// innermost PID is 1.
fn container_init(nspawn: u32) -> Option<u32> {
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(st) = status(pid) else { continue };
        let nspid: Vec<&str> = st
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        if nspid.len() < 2 || nspid.last() != Some(&"1") {
            continue;
        }
        // Walk up to systemd-nspawn.
        let mut p = pid;
        for _ in 0..4 {
            let parent = status(p).and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            });
            // Another container's init (Docker's) leads elsewhere: try the next.
            let Some(ppid) = parent else { break };
            if ppid == nspawn {
                return Some(pid);
            }
            p = ppid;
        }
    }
    None
}

/// What the host holds that a verify pass creates and must remove: links, nftables
/// tables, conntrack entries of the probe source.
fn host_state(probe_src: &str) -> (Vec<String>, Vec<String>, usize) {
    let links: Vec<String> = sh(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect();
    let tables: Vec<String> = sh(&["nft", "list", "tables"])
        .lines()
        .map(str::to_string)
        .collect();
    let out = Command::new("conntrack")
        .args(["-L", "-s", probe_src])
        .output()
        .unwrap();
    let entries = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(probe_src))
        .count();
    (links, tables, entries)
}

fn audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until(limit, f).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// Host paths removed on drop (bpffs directory, logs, unit files), also on failure.
struct Paths(Vec<PathBuf>);

impl Drop for Paths {
    fn drop(&mut self) {
        for p in self.0.drain(..).rev() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

#[test]
fn the_unit_runs_verify_under_a_real_systemd_and_leaves_the_host_as_found() {
    let test = "the_unit_runs_verify_under_a_real_systemd_and_leaves_the_host_as_found";
    if !docker::ready(test)
        || !have("systemd-nspawn", "systemd-container", test)
        || !have("debootstrap", "debootstrap", test)
    {
        return;
    }
    let started = Instant::now();
    let Some(tree) = debian_tree(test) else {
        return;
    };
    let tree_time = started.elapsed();

    // The test bed: an outside host, a published port and one that DOCKER-USER drops.
    let image = docker::echo_image();
    let outside = OutsideHost::new("ns");
    let n = outside.n as u16;
    let base = free_ports(24000 + 10 * n, 2);
    let (open, dropped) = (base, base + 1);
    let name = format!("dx-nspawn-web-{n}");
    let _c = docker::Container::run(
        &name,
        &["-p", &format!("{open}:80"), "-p", &format!("{dropped}:80")],
        &image,
        &["80", "5300"],
    );
    let dropped_s = dropped.to_string();
    let _rule = docker::docker_user_rule(&[
        "-i",
        &outside.uplink,
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctorigdstport",
        &dropped_s,
        "-j",
        "DROP",
    ]);
    let probe_src = outside.v4(77);

    // Host side of the container: its own bpffs directory (the container's /sys/fs/bpf,
    // so the unit's pins and verify's stay apart from any other), its log directory,
    // the unit as shipped and a drop-in that turns verify on.
    let id = std::process::id();
    let bpf_dir = PathBuf::from(format!("/sys/fs/bpf/dx-nspawn-{id}"));
    let work = std::env::temp_dir().join(format!("dx-nspawn-{id}"));
    let logs = work.join("log");
    let dropin = work.join("dockexpose.service.d");
    let mut paths = Paths(vec![work.clone()]);
    // systemd-nspawn's runtime directory, when this test is the first to make it.
    if !Path::new("/run/systemd/nspawn").exists() {
        paths.0.insert(0, PathBuf::from("/run/systemd/nspawn"));
    }
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::create_dir(&bpf_dir).unwrap();
    paths.0.push(bpf_dir.clone());
    let unit =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/dockexpose.service");
    std::fs::write(
        dropin.join("verify.conf"),
        format!(
            "# Written by tests/service_nspawn.rs: verify at start, from the outside host's\n\
             # network, on its uplink only.\n[Service]\n\
             Environment=DOCKEXPOSE_VERIFY_EVERY=1h DOCKEXPOSE_VERIFY_FROM={probe_src}/32 DOCKEXPOSE_UPLINK={} DOCKEXPOSE_STATS_INTERVAL=0\n",
            outside.uplink
        ),
    )
    .unwrap();
    let before = host_state(&probe_src);

    let binds = [
        (
            bpf_dir.display().to_string(),
            "/sys/fs/bpf".to_string(),
            false,
        ),
        (
            "/var/run/docker.sock".to_string(),
            "/run/docker.sock".to_string(),
            false,
        ),
        (
            BIN.to_string(),
            "/usr/local/bin/dockexpose".to_string(),
            true,
        ),
        (
            unit.display().to_string(),
            "/etc/systemd/system/dockexpose.service".to_string(),
            true,
        ),
        (
            dropin.display().to_string(),
            "/etc/systemd/system/dockexpose.service.d".to_string(),
            true,
        ),
        (
            logs.display().to_string(),
            "/var/log/dockexpose".to_string(),
            false,
        ),
    ];
    let boot_at = Instant::now();
    let machine = Machine::boot(
        &tree,
        &format!("dxnspawn{id}"),
        &binds,
        work.join("console.log"),
    );
    let state = wait_for(
        "the container's systemd up",
        Duration::from_secs(60),
        || {
            let out = machine.run(&["systemctl", "is-system-running", "--wait"]);
            let s = text(&out.stdout).trim().to_string();
            (s == "running" || s == "degraded").then_some(s)
        },
    );
    let booted = boot_at.elapsed();
    if state == "degraded" {
        eprintln!(
            "container degraded: {}",
            text(
                &machine
                    .run(&["systemctl", "--failed", "--no-legend"])
                    .stdout
            )
        );
    }

    // Type=notify: `systemctl start` returns once READY=1 arrived (or fails).
    let start_at = Instant::now();
    let out = machine.run(&["systemctl", "start", "dockexpose.service"]);
    assert!(
        out.status.success(),
        "systemctl start: {}{}\n{}",
        text(&out.stderr),
        machine.show("Result,ExecMainStatus"),
        machine.journal()
    );
    let ready = start_at.elapsed();
    let props = machine.show("ActiveState,SubState,Type,NRestarts");
    for want in [
        "ActiveState=active",
        "SubState=running",
        "Type=notify",
        "NRestarts=0",
    ] {
        assert!(
            props.contains(want),
            "{want} not in {props}\n{}",
            machine.journal()
        );
    }
    // The sandbox is really there: seccomp, no new privileges, exactly the unit's four
    // capabilities (NET_ADMIN 12, NET_RAW 13, PERFMON 38, BPF 39).
    let main_pid = machine
        .show("MainPID")
        .trim()
        .trim_start_matches("MainPID=")
        .to_string();
    let status = machine.sh(&["cat", &format!("/proc/{main_pid}/status")]);
    for want in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t000000c000003000"] {
        assert!(
            status.contains(want),
            "{want} not in the daemon's status: {status}"
        );
    }
    assert!(
        !tcx_programs(&outside.uplink, false).is_empty(),
        "nothing attached on {}: {}",
        outside.uplink,
        machine.journal()
    );

    // Verify's pass at start, under the unit's sandbox.
    let json = logs.join("audit.jsonl");
    let verified = |port: u16| {
        let found = wait_until(Duration::from_secs(20), || {
            audit(&json)
                .into_iter()
                .find(|r| r["stage"] == "verified" && r["host_port"] == port)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no verified record for port {port} within 20 s: {:?}\n{}",
                audit(&json),
                machine.journal()
            )
        })
    };
    let (exposed, held) = (verified(open), verified(dropped));
    let verify_time = start_at.elapsed();
    assert_eq!(
        exposed["verdict"],
        "EXPOSED",
        "{exposed}\n{}",
        machine.journal()
    );
    assert_eq!(held["verdict"], "HELD", "{held}\n{}", machine.journal());
    for r in [&exposed, &held] {
        assert_eq!(r["src_ip"], probe_src.as_str(), "{r}");
        assert_eq!(r["container"]["name"], name.as_str(), "{r}");
        assert_eq!(r["iface"], outside.uplink.as_str(), "{r}");
    }
    // nft monitor trace ran under the sandbox: the rule is named.
    assert!(
        held["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("dropped by ip filter DOCKER-USER: ")),
        "{held}\n{}",
        machine.journal()
    );
    let summary = wait_for(
        "the verify summary in the journal",
        Duration::from_secs(10),
        || {
            machine
                .journal()
                .lines()
                .find(|l| l.contains("dockexpose: verify ("))
                .map(str::to_string)
        },
    );
    assert!(
        summary.contains("1 exposed")
            && summary.contains("1 held")
            && summary.contains(" 0 remain"),
        "{summary}"
    );
    let journal = machine.journal();
    assert!(journal.contains("dockexpose: watching"), "{journal}");

    // A real connection from outside.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(open))
        .expect("published port reachable from outside");
    let reached = wait_for(
        "the outsider's connection in the audit log",
        Duration::from_secs(10),
        || {
            audit(&json).into_iter().find(|r| {
                r["stage"] == "reached"
                    && r["src_port"] == sport
                    && r["src_ip"] == outside.v4(2).as_str()
            })
        },
    );
    assert_eq!(reached["container"]["name"], name.as_str(), "{reached}");
    assert_eq!(reached["host_port"], open, "{reached}");

    // Stop: nothing of verify's left; the kernel side stays pinned (the unit's design),
    // until `dockexpose cleanup`.
    let stop_at = Instant::now();
    machine.sh(&["systemctl", "stop", "dockexpose.service"]);
    let stopped = stop_at.elapsed();
    let props = machine.show("ActiveState,Result");
    assert!(
        props.contains("ActiveState=inactive") && props.contains("Result=success"),
        "{props}\n{}",
        machine.journal()
    );
    let journal = machine.journal();
    let after = wait_for(
        "verify's conntrack entries gone",
        Duration::from_secs(10),
        || {
            let s = host_state(&probe_src);
            (s.2 == before.2).then_some(s)
        },
    );
    assert_eq!(after.0, before.0, "links");
    assert_eq!(after.1, before.1, "nftables tables");
    assert!(
        !bpf_dir.join("dockexpose-verify").exists()
            || std::fs::read_dir(bpf_dir.join("dockexpose-verify"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(
        bpf_dir.join("dockexpose").exists(),
        "the kernel side stays pinned across a stop: {journal}"
    );
    let cleanup = machine.sh(&[
        "dockexpose",
        "cleanup",
        "--pin-dir",
        "/sys/fs/bpf/dockexpose",
        "--lock-file",
        "/run/dockexpose/lock",
    ]);
    let detached = wait_until(Duration::from_secs(5), || {
        tcx_programs(&outside.uplink, false)
            .is_empty()
            .then_some(())
    });
    assert!(
        detached.is_some(),
        "cleanup did not detach the uplink: {:?} attached; cleanup said {cleanup}; processes: {}",
        tcx_programs(&outside.uplink, false),
        text(&machine.run(&["ps", "-e", "-o", "pid,args"]).stdout)
    );
    let left: Vec<String> = std::fs::read_dir(&bpf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| n == "dockexpose-verify"),
        "pins left after cleanup: {left:?}"
    );
    // BPF firewalling (IPAddressDeny=) needs cgroup v2: say whether systemd applied it.
    let boot_log = text(
        &machine
            .run(&["journalctl", "-b", "--no-pager", "-o", "cat"])
            .stdout,
    );
    let firewall = boot_log
        .lines()
        .find(|l| l.contains("BPF firewalling"))
        .unwrap_or("no BPF firewalling warning")
        .to_string();
    drop(machine);
    let records = audit(&json);
    let from_probes = records
        .iter()
        .filter(|r| r["src_ip"] == probe_src.as_str() && r["stage"] != "verified")
        .count();
    assert_eq!(
        from_probes, 0,
        "the probes were reported as connections: {records:#?}"
    );
    drop(paths);
    eprintln!(
        "tree {:.1} s, boot {:.1} s, READY=1 {:.1} s, verified {:.1} s after start, stop {:.1} s, whole test {:.1} s; {summary}; {firewall}",
        tree_time.as_secs_f64(),
        booted.as_secs_f64(),
        ready.as_secs_f64(),
        verify_time.as_secs_f64(),
        stopped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_mirror_is_read_from_both_source_formats() {
    let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                  Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
    assert_eq!(
        mirror_for(deb822, "bookworm").as_deref(),
        Some("http://mirror.example/debian")
    );
    assert_eq!(mirror_for(deb822, "trixie"), None);
    let one_line = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://other.example/apt cloud-bookworm main\n\
                    deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n";
    assert_eq!(
        mirror_for(one_line, "bookworm").as_deref(),
        Some("http://mirror.example/debian")
    );
}
