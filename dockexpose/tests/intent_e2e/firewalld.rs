//! firewalld's zones as the intent, and its reload as drift named firewalld.

use super::*;

/// firewalld's daemon confined to the engine's namespace: a mount namespace of its
/// own holds a private system bus (/run/dbus), /run/firewalld and a copy of
/// /etc/firewalld; `firewall-cmd` runs in it (nsenter into firewalld's namespaces).
/// The machine's own bus, files and firewall are never touched. `root` is what
/// --intent-root reads (its etc/firewalld is the copy; run/firewalld says it runs).
struct PrivateFirewalld {
    root: PathBuf,
    child: std::process::Child,
    made: Vec<PathBuf>,
}

impl PrivateFirewalld {
    fn start(ns: &str) -> Option<Self> {
        let root = std::env::temp_dir().join(format!("dx-fwd-root-{}", run_id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/firewalld")).unwrap();
        // The zone and service definitions firewalld ships, as on the host.
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/firewalld", root.join("usr/lib/firewalld")).unwrap();
        sh(&["cp", "-a", "/etc/firewalld", root.join("etc/firewalld").to_str().unwrap()]);
        // A reload must not flush the namespace's other rules (Docker's chains): the
        // setting Docker hosts run firewalld with.
        let conf = root.join("etc/firewalld/firewalld.conf");
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        let text: String =
            text.lines().filter(|l| !l.starts_with("FlushAllOnReload=")).map(|l| format!("{l}\n")).collect();
        std::fs::write(&conf, text + "FlushAllOnReload=no\n").unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run/dbus && mount --bind {r}/etc/firewalld /etc/firewalld && mount --bind {r}/run/firewalld /run/firewalld \
             && dbus-daemon --system --fork --nopidfile --print-pid > {r}/dbus.pid && exec ip netns exec {ns} firewalld --nofork --nopid --log-target console",
            r = root.display()
        );
        // Mount points: made if missing, removed again by the guard (a stale
        // /run/firewalld must not outlive the test).
        let made: Vec<PathBuf> = ["/run/dbus", "/run/firewalld"]
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .inspect(|d| std::fs::create_dir_all(d).unwrap())
            .collect();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            made.iter().for_each(|d| drop(std::fs::remove_dir(d)));
            return None;
        };
        let mut fw = Self { root, child, made };
        let deadline = Instant::now() + Duration::from_secs(20);
        while fw.try_cmd(&["--state"]).is_none_or(|s| s.trim() != "running") {
            if Instant::now() > deadline || fw.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(fw)
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let pid = self.child.id().to_string();
        let out = Command::new("nsenter").args(["-t", &pid, "-m", "-n", "firewall-cmd"]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap_or_else(|| panic!("firewall-cmd {args:?} failed"))
    }
}

impl Drop for PrivateFirewalld {
    fn drop(&mut self) {
        // firewalld (the exec'd shell); the bus dies with its mount namespace's last user.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) =
            std::fs::read_to_string(self.root.join("dbus.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: the private bus this guard started (its pid, printed by itself).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_dir_all(&self.root);
        for d in &self.made {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn firewalld_zones_are_the_intent_and_its_reload_is_drift_named_firewalld() {
    let test = "firewalld_zones_are_the_intent_and_its_reload_is_drift_named_firewalld";
    if !docker::ready(test) {
        return;
    }
    if Command::new("firewalld").arg("--help").output().is_err()
        || Command::new("dbus-daemon").arg("--version").output().is_err()
    {
        skip(test, "firewalld or dbus-daemon is not installed (Debian's firewalld; `cargo xtask setup` installs it)");
        return;
    }
    let mut e = engine("uw");
    let Some(fw) = PrivateFirewalld::start(&e.ns) else {
        skip(test, "firewalld did not start in a namespace of its own with a private system bus");
        return;
    };
    // firewalld's start flushed Docker's chains; on a host, Docker starts after it
    // (and hears its reloads on the system bus, which this dockerd cannot).
    e.restart_dockerd();
    // Permanent (what dockexpose reads) and at once (no reload before Docker's rules).
    fw.cmd(&["--permanent", "--add-port=9090/tcp"]);
    fw.cmd(&["--add-port=9090/tcp"]);
    let _web = e.run(&format!("dxe-web-{}", e.n), &["-p", "8080:80"], &e.image, &[]);
    let _api = e.run(&format!("dxe-api-{}", e.n), &["-p", "9090:80"], &e.image, &[]);
    let (code, rows) = explain(&e, &fw.root);
    for (port, action) in [(8080, "deny"), (9090, "allow")] {
        let r = row(&rows, port, "ipv4");
        assert_eq!(r["intent"]["source"], "firewalld", "{r}");
        assert_eq!(r["intent"]["action"], action, "{r}");
        let reachable = r["reality"] != "HELD";
        let contradicts = if action == "deny" {
            reachable
        } else {
            !reachable && !r["intent"]["rule"].as_str().unwrap().contains("target")
        };
        assert_eq!(r["contradiction"], contradicts, "{r}");
    }
    assert!(row(&rows, 9090, "ipv4")["intent"]["rule"].as_str().unwrap().contains("9090/tcp"), "{rows:#?}");
    assert_eq!(code, i32::from(rows.iter().any(|r| r["contradiction"] == true)));

    // A reload is drift named after firewalld.
    let json = std::env::temp_dir().join(format!("dx-intent-fwd-{}.jsonl", run_id()));
    let from = format!("{}/32", e.outside_v4());
    let root = fw.root.to_str().unwrap().to_string();
    let mut w = e.watch(&["--verify-every", "1h", "--verify-from", &from, "--intent-root", &root], json.clone());
    w.wait_for_line("firewall intent: firewalld", Duration::from_secs(10));
    w.wait_for_line("verify (scheduled)", Duration::from_secs(30));
    fw.cmd(&["--reload"]);
    let line = w.wait_for_line("dockexpose: verify (after a firewalld change", Duration::from_secs(20));
    eprintln!("firewalld reload: {line}");
    // The reload flushed Docker's chains (a known trap: Docker re-adds them when it
    // hears the reload on the system bus): the verdicts moved, and the cause is named.
    let deadline = Instant::now() + Duration::from_secs(10);
    let changed = loop {
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        let found: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "exposure_changed")
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("firewalld reload: {changed:#?}");
    assert!(!changed.is_empty(), "the reload changed verdicts: an exposure_changed line");
    assert!(
        changed.iter().all(|c| c["cause"]["kind"] == "firewalld" && c["cause"]["process"] == "firewalld"),
        "{changed:#?}"
    );
    assert!(
        !w.lines().iter().any(|l| l.contains("service ssh (zone public) not found")),
        "services read from the host's /usr/lib/firewalld"
    );
    let (_, _, _) = w.stop();
    let _ = std::fs::remove_file(&json);
}
