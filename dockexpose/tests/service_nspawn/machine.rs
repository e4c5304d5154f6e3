//! The nspawn machine and what the test reads of it: its init, the host's state before
//! and after, the audit log, waits, and paths removed on drop.

use super::*;

/// A booted container, powered off (or killed) on drop.
pub(super) struct Machine {
    nspawn: Child,
    leader: u32,
    console: PathBuf,
}

impl Machine {
    pub(super) fn boot(tree: &Path, name: &str, binds: &[(String, String, bool)], console: PathBuf) -> Self {
        let mut cmd = Command::new("systemd-nspawn");
        // --register=no --keep-unit: nspawn asks neither machined nor the host's
        // systemd (neither runs here) and stays in the test's own cgroup.
        // /proc/sys/net writable, as on the host the unit runs on (verify turns IPv6
        // off on its private veth); the rest of /proc/sys and /sys stays read-only.
        cmd.env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network");
        cmd.args(["--boot", "--quiet", "--register=no", "--keep-unit", "--volatile=overlay", "--console=read-only"]);
        cmd.arg(format!("--machine={name}")).arg("--directory").arg(tree);
        // The unit's capabilities (its CapabilityBoundingSet); no --private-network.
        cmd.arg("--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_NET_RAW");
        // nspawn's own seccomp filter denies bpf() and perf_event_open() (the map
        // creation fails with EPERM): allow them, so that the unit's SystemCallFilter=
        // is the filter under test.
        cmd.arg("--system-call-filter=bpf perf_event_open");
        for (from, to, ro) in binds {
            cmd.arg(format!("--bind{}={from}:{to}", if *ro { "-ro" } else { "" }));
        }
        let log = std::fs::File::create(&console).unwrap();
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn");
        let mut m = Machine { nspawn, leader: 0, console };
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.leader == 0 {
            if let Ok(Some(status)) = m.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}): {}", m.console_text());
            }
            assert!(Instant::now() < deadline, "no PID 1 in the container: {}", m.console_text());
            m.leader = container_init(m.nspawn.id()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub(super) fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `args` run inside the container (its mount, PID, UTS and IPC namespaces).
    pub(super) fn run(&self, args: &[&str]) -> Output {
        let pid = self.leader.to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-p", "-u", "-i", "--"])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    pub(super) fn sh(&self, args: &[&str]) -> String {
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

    pub(super) fn journal(&self) -> String {
        text(&self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", "dockexpose.service"]).stdout)
    }

    pub(super) fn show(&self, props: &str) -> String {
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

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The container's PID 1 as the host sees it: a descendant of systemd-nspawn whose
/// innermost PID is 1.
pub(super) fn container_init(nspawn: u32) -> Option<u32> {
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
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
                st.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<u32>().ok())
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
pub(super) fn host_state(probe_src: &str) -> (Vec<String>, Vec<String>, usize) {
    let links: Vec<String> = sh(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect();
    let tables: Vec<String> = sh(&["nft", "list", "tables"]).lines().map(str::to_string).collect();
    let out = Command::new("conntrack").args(["-L", "-s", probe_src]).output().unwrap();
    let entries = text(&out.stdout).lines().filter(|l| l.contains(probe_src)).count();
    (links, tables, entries)
}

pub(super) fn audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub(super) fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
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

pub(super) fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until(limit, f).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// Host paths removed on drop (bpffs directory, logs, unit files), also on failure.
pub(super) struct Paths(pub(super) Vec<PathBuf>);

impl Drop for Paths {
    fn drop(&mut self) {
        for p in self.0.drain(..).rev() {
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}
