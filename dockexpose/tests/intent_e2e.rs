//! The seed's story, end to end: UFW says deny, reality says open. A second Docker
//! engine in a namespace of its own, with real UFW enabled in that namespace only
//! (a private copy of /etc/ufw bind-mounted in a mount namespace of its own), an
//! outside host in front. `explain` says EXPOSED, why, and the rule that makes it
//! hold; the live records carry the contradiction; the suggested rule, applied, makes
//! explain agree while the allowed port stays reachable; a ban in INPUT that a
//! container's traffic goes past is a `ban_bypassed`; and drift (a rule added, then
//! removed) is an `exposure_changed` line naming the process, within seconds.
//! Root and a Docker engine; run one at a time:
//! `flock /tmp/dockexpose-root-tests.lock cargo test --release -p dockexpose --test intent_e2e -- --test-threads=1`

mod support;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    docker,
    engine::{EngineContainer, Proxy, SecondEngine},
    run_id, sh, skip, tcp_connect,
};

/// UFW confined to one network namespace, with its configuration in a temp dir:
/// `/etc/ufw` and `/etc/default/ufw` are bind-mounted from there in a private mount
/// namespace for each command, so the machine's own UFW files and firewall are never
/// touched. `root` is what dockexpose's --intent-root reads.
struct PrivateUfw {
    root: PathBuf,
    ns: String,
}

impl PrivateUfw {
    fn new(ns: &str) -> Self {
        let root = std::env::temp_dir().join(format!("dx-ufw-root-{}", run_id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc/default")).unwrap();
        sh(&[
            "cp",
            "-a",
            "/etc/ufw",
            root.join("etc/ufw").to_str().unwrap(),
        ]);
        // The machine's copy may carry rules of its own: start from none.
        for f in ["user.rules", "user6.rules"] {
            let path = root.join("etc/ufw").join(f);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("### tuple") && !l.starts_with("-A ufw"))
                .collect();
            std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        }
        let defaults = std::fs::read_to_string("/etc/default/ufw").unwrap();
        // No sysctl changes from this UFW (some are not per namespace).
        let empty = root.join("etc/ufw/no-sysctl.conf");
        std::fs::write(&empty, "").unwrap();
        let defaults: String = defaults
            .lines()
            .map(|l| {
                if l.starts_with("IPT_SYSCTL=") {
                    format!("IPT_SYSCTL={}", empty.display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(root.join("etc/default/ufw"), defaults + "\n").unwrap();
        Self {
            root,
            ns: ns.to_string(),
        }
    }

    /// Runs `ufw ARGS` in the namespace, against the private files.
    fn run(&self, args: &[&str]) -> String {
        let script = format!(
            "mount --bind {r}/etc/ufw /etc/ufw && mount --bind {r}/etc/default/ufw /etc/default/ufw && exec nsenter --net=/run/netns/{ns} ufw \"$@\"",
            r = self.root.display(),
            ns = self.ns
        );
        let mut full = vec![
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script.as_str(),
            "ufw",
        ];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// The line of `ufw status numbered` for `what` ("8080/tcp", "8080/tcp (v6)"),
    /// whitespace collapsed: "[ 1] 8080/tcp DENY IN Anywhere".
    fn status_line(&self, what: &str, v6: bool) -> String {
        let status = self.run(&["status", "numbered"]);
        status
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| {
                l.starts_with('[') && l.contains(&format!("] {what} ")) && l.contains("(v6)") == v6
            })
            .unwrap_or_else(|| panic!("no line for {what} (v6: {v6}) in:\n{status}"))
    }
}

impl Drop for PrivateUfw {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn ready(test: &str) -> bool {
    if !docker::ready(test) {
        return false;
    }
    if Command::new("ufw").arg("--version").output().is_err() {
        return skip(
            test,
            "ufw is not installed (Debian's ufw; `cargo xtask setup` installs it)",
        );
    }
    true
}

/// An engine with IPv6 published through ip6tables, as a user turns it on.
fn engine(tag: &str) -> SecondEngine {
    let n = run_id() % 200;
    SecondEngine::start_with(
        tag,
        Proxy::Off,
        &[
            "--experimental",
            "--ipv6",
            &format!("--fixed-cidr-v6=fd42:251:{n}::/64"),
            "--ip6tables",
        ],
    )
}

/// `dockexpose explain ARGS` in the engine's namespace, probing from the outside
/// host's addresses, reading the private UFW under `root`.
fn explain_cmd(e: &SecondEngine, root: &Path, args: &[&str]) -> std::process::Output {
    let (from4, from6) = (format!("{}/32", e.outside_v4()), format!("{}/128", e.outside_v6()));
    // `ip netns exec`: /sys of the namespace too (verify reads the uplink's MAC there).
    let out = Command::new("ip")
        .args(["netns", "exec", e.ns.as_str(), env!("CARGO_BIN_EXE_dockexpose"), "explain", "--docker-host", &e.socket, "--uplink", &e.uplink])
        .args(["--from", &from4, "--from", &from6, "--intent-root", root.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run dockexpose explain");
    eprintln!("explain stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `dockexpose explain --json`: (exit code, rows).
fn explain(e: &SecondEngine, root: &Path) -> (i32, Vec<Value>) {
    let out = explain_cmd(e, root, &["--json"]);
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .inspect(|l| eprintln!("explain: {l}"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), rows)
}

/// The story's host: UFW enabled, denying 8080/tcp and allowing 9090/tcp, and a
/// container published on each.
fn story(e: &SecondEngine) -> (PrivateUfw, [EngineContainer<'_>; 2]) {
    let ufw = PrivateUfw::new(&e.ns);
    ufw.run(&["--force", "enable"]);
    ufw.run(&["deny", "8080/tcp"]);
    ufw.run(&["allow", "9090/tcp"]);
    let web = e.run(&format!("dxe-web-{}", e.n), &["-p", "8080:80"], &e.image, &[]);
    let api = e.run(&format!("dxe-api-{}", e.n), &["-p", "9090:80"], &e.image, &[]);
    (ufw, [web, api])
}

/// Whether a connection reached the container: it answered, or (the test image
/// listens on IPv4 only) it refused with its own RST. A port held times out.
fn reaches(result: std::io::Result<u16>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

fn row<'a>(rows: &'a [Value], port: u16, family: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["host_port"] == port && r["family"] == family)
        .unwrap_or_else(|| panic!("no row for {port} {family} in {rows:#?}"))
}

#[test]
fn ufw_denies_8080_yet_it_is_exposed_explain_says_why_and_its_rule_makes_it_hold() {
    let test = "ufw_denies_8080_yet_it_is_exposed_explain_says_why_and_its_rule_makes_it_hold";
    if !ready(test) {
        return;
    }
    let e = engine("uf");
    let (ufw, _containers) = story(&e);
    let outside: IpAddr = e.outside_v4().parse().unwrap();
    assert!(
        tcp_connect(&e.outside_ns, Some(outside), e.host4(8080)).is_ok(),
        "the story: UFW denies 8080, the outside reaches it"
    );

    // A container's IPv6 address answers once its duplicate address detection is
    // over (a second or two after it starts): explain probes a settled host. (The
    // test image listens on IPv4 only: over IPv6 the container answers with a RST.)
    let outside6: IpAddr = e.outside_v6().parse().unwrap();
    let settle = Instant::now() + Duration::from_secs(10);
    while [8080, 9090].iter().any(|&p| !reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(p)))) {
        if Instant::now() > settle {
            let errs: Vec<String> = [8080, 9090].iter().map(|&p| format!("{p}: {:?}", tcp_connect(&e.outside_ns, Some(outside6), e.host6(p)))).collect();
            panic!(
                "IPv6 published ports never answered from outside: {errs:?}\n{}\n{}\n{}",
                e.in_ns(&["ip6tables", "-S"]),
                e.in_ns(&["ip6tables", "-t", "nat", "-S"]),
                e.in_ns(&["ip", "-6", "addr"])
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // explain: the contradiction, why, and the fix; the allowed port agrees.
    let (code, rows) = explain(&e, &ufw.root);
    assert_eq!(code, 1, "a contradiction exists");
    for (family, v6) in [("ipv4", false), ("ipv6", true)] {
        let r = row(&rows, 8080, family);
        assert_eq!(r["reality"], "EXPOSED", "{r}");
        assert_eq!(r["contradiction"], true, "{r}");
        assert_eq!(r["intent"]["source"], "ufw");
        assert_eq!(r["intent"]["action"], "deny");
        let shown = ufw.status_line(if v6 { "8080/tcp (v6)" } else { "8080/tcp" }, v6);
        assert_eq!(
            r["intent"]["rule"],
            shown.as_str(),
            "the rule as `ufw status numbered` shows it"
        );
        assert_eq!(r["uplink"], e.uplink.as_str());
        let why = r["why"].as_str().unwrap();
        assert!(
            why.to_lowercase().contains("dnat to ") && why.contains("accepted by ") && why.contains("INPUT, where UFW lives, never saw it"),
            "{why}"
        );
        let fix = r["suggested_rule"].as_str().unwrap();
        assert!(
            fix.starts_with(if v6 { "ip6tables " } else { "iptables " })
                && fix.contains("--ctorigdstport 8080"),
            "{fix}"
        );
        let allowed = row(&rows, 9090, family);
        assert_eq!(
            (
                allowed["reality"].as_str(),
                allowed["contradiction"].as_bool()
            ),
            (Some("EXPOSED"), Some(false)),
            "{allowed}"
        );
        assert!(allowed["suggested_rule"].is_null());
    }

    // As people read it, for one port: the story in one line per family.
    let out = explain_cmd(&e, &ufw.root, &["8080/tcp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("explain 8080/tcp:\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text.lines().find(|l| l.starts_with("8080/tcp ipv4 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(": CONTRADICTION: UFW says deny ([ 1] 8080/tcp DENY IN Anywhere); reality EXPOSED; why: "), "{line}");
    assert!(line.contains("; fix: iptables -I DOCKER-USER "), "{line}");
    assert!(!text.contains("9090/tcp"), "only the port asked about: {text}");
    assert!(text.lines().any(|l| l == "2 contradictions in 2 rows"), "{text}");

    // The fixes, run as printed: explain agrees, the allowed port is still reachable.
    for family in ["ipv4", "ipv6"] {
        let fix = row(&rows, 8080, family)["suggested_rule"]
            .as_str()
            .unwrap()
            .to_string();
        e.in_ns(&["sh", "-c", &fix]);
    }
    let (code, rows) = explain(&e, &ufw.root);
    assert_eq!(code, 0, "no contradiction left: {rows:#?}");
    for family in ["ipv4", "ipv6"] {
        assert_eq!(row(&rows, 8080, family)["reality"], "HELD");
        assert_eq!(row(&rows, 8080, family)["contradiction"], false);
        assert_eq!(row(&rows, 9090, family)["reality"], "EXPOSED");
    }
    assert!(
        tcp_connect(&e.outside_ns, Some(outside), e.host4(9090)).is_ok(),
        "the allowed port still answers"
    );
    assert!(
        tcp_connect(&e.outside_ns, Some(outside), e.host4(8080)).is_err(),
        "8080 holds now"
    );
    assert!(reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(9090))), "IPv6: the allowed port still reaches the container");
    assert!(!reaches(tcp_connect(&e.outside_ns, Some(outside6), e.host6(8080))), "IPv6: 8080 holds now");
}

#[test]
fn live_records_carry_the_contradiction_and_a_bypassed_ban_and_alert_once() {
    let test = "live_records_carry_the_contradiction_and_a_bypassed_ban_and_alert_once";
    if !ready(test) {
        return;
    }
    if Command::new("ipset").arg("--version").output().is_err() {
        skip(test, "ipset is not installed: the ban part is not run");
        return;
    }
    let e = engine("ul");
    let (ufw, _containers) = story(&e);
    // A ban as fail2ban's ipset action makes it: a set, dropped in INPUT.
    let banned = format!("{}.9", e.outside_v4().rsplit_once('.').unwrap().0);
    e.in_ns(&["ipset", "create", "dxban", "hash:ip"]);
    e.in_ns(&["ipset", "add", "dxban", &banned]);
    e.in_ns(&[
        "iptables",
        "-I",
        "INPUT",
        "-m",
        "set",
        "--match-set",
        "dxban",
        "src",
        "-j",
        "DROP",
    ]);
    sh(&[
        "ip",
        "-n",
        &e.outside_ns,
        "addr",
        "add",
        &format!("{banned}/24"),
        "dev",
        "eth0",
    ]);

    let json = std::env::temp_dir().join(format!("dx-intent-live-{}.jsonl", run_id()));
    let root = ufw.root.to_str().unwrap().to_string();
    let mut w = e.watch(&["--intent-root", &root], json.clone());
    w.wait_for_line("firewall intent: ufw", Duration::from_secs(10));
    let outside: IpAddr = e.outside_v4().parse().unwrap();
    for _ in 0..2 {
        tcp_connect(&e.outside_ns, Some(outside), e.host4(8080))
            .expect("8080 reached from outside");
    }
    tcp_connect(&e.outside_ns, Some(outside), e.host4(9090)).expect("9090 reached from outside");
    tcp_connect(&e.outside_ns, Some(banned.parse().unwrap()), e.host4(9090))
        .expect("the banned source reaches 9090 all the same");
    std::thread::sleep(Duration::from_secs(1));
    let (records, _, stderr) = w.stop();
    let _ = std::fs::remove_file(&json);
    let reached: Vec<&Value> = records.iter().filter(|r| r["stage"] == "reached").collect();
    let denied: Vec<&&Value> = reached.iter().filter(|r| r["host_port"] == 8080).collect();
    assert_eq!(denied.len(), 2, "{reached:#?}");
    for r in &denied {
        assert_eq!(r["contradiction"], true, "{r}");
        assert_eq!(r["intent"]["source"], "ufw");
        assert_eq!(
            r["intent"]["rule"],
            ufw.status_line("8080/tcp", false).as_str()
        );
    }
    let allowed = reached
        .iter()
        .find(|r| r["host_port"] == 9090 && r["src_ip"] == e.outside_v4().as_str())
        .expect("9090 record");
    assert_eq!(
        (
            allowed["contradiction"].as_bool(),
            allowed["intent"]["action"].as_str()
        ),
        (Some(false), Some("allow")),
        "{allowed}"
    );
    assert!(allowed.get("ban_bypassed").is_none());
    let bypass = reached
        .iter()
        .find(|r| r["src_ip"] == banned.as_str())
        .expect("the banned source's record");
    assert_eq!(bypass["ban_bypassed"], "ipset dxban", "{bypass}");
    assert_eq!(bypass["contradiction"], true);
    let alerts: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("CONTRADICTION:"))
        .collect();
    let port_alerts: Vec<&&String> = alerts
        .iter()
        .filter(|l| l.contains("UFW denies 8080/tcp"))
        .collect();
    assert_eq!(port_alerts.len(), 1, "once per port and rule: {alerts:#?}");
    let expected = format!(
        "yet {} reached container dxe-web-{} through 8080",
        e.outside_v4(),
        e.n
    );
    assert!(port_alerts[0].contains(&expected), "{}", port_alerts[0]);
    assert!(
        alerts
            .iter()
            .any(|l| l.contains("ipset dxban bans") && l.contains("(ban_bypassed)")),
        "{alerts:#?}"
    );
}

/// A rule in DOCKER-USER that holds new connections to host port 8080.
const HOLD_8080: [&str; 9] = ["DOCKER-USER", "-p", "tcp", "-m", "conntrack", "--ctorigdstport", "8080", "-j", "DROP"];

#[test]
fn drift_both_ways_is_an_exposure_changed_line_naming_the_process_within_seconds() {
    let test = "drift_both_ways_is_an_exposure_changed_line_naming_the_process_within_seconds";
    if !docker::ready(test) {
        return;
    }
    let e = engine("ud");
    let _web = e.run(
        &format!("dxe-web-{}", e.n),
        &["-p", "8080:80"],
        &e.image,
        &[],
    );
    let json = std::env::temp_dir().join(format!("dx-intent-drift-{}.jsonl", run_id()));
    let from = format!("{}/32", e.outside_v4());
    // An hour between scheduled runs: any run within the test is drift's.
    let mut w = e.watch(
        &["--verify-every", "1h", "--verify-from", &from],
        json.clone(),
    );
    w.wait_for_line("verify (scheduled)", Duration::from_secs(30));

    let changed = |json: &Path, n: usize, timeout: Duration| -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines: Vec<Value> = std::fs::read_to_string(json)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "exposure_changed")
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Held by a rule in DOCKER-USER: EXPOSED -> HELD, caused by iptables.
    let t0 = Instant::now();
    let mut child = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{}", e.ns), "iptables", "-I"])
        .args(HOLD_8080)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let lines = changed(&json, 1, Duration::from_secs(30));
    let held_after = t0.elapsed();
    assert_eq!(
        lines.len(),
        1,
        "one line for the one port and family that changed: {lines:#?}"
    );
    let l = &lines[0];
    assert_eq!(
        (
            l["host_port"].as_u64(),
            l["proto"].as_str(),
            l["family"].as_str()
        ),
        (Some(8080), Some("tcp"), Some("ipv4")),
        "{l}"
    );
    assert_eq!(
        (l["from"].as_str(), l["to"].as_str()),
        (Some("EXPOSED"), Some("HELD")),
        "{l}"
    );
    assert_eq!(l["uplink"], e.uplink.as_str());
    assert_eq!(l["cause"]["kind"], "ruleset", "{l}");
    assert_eq!(l["cause"]["process"], "iptables", "{l}");
    assert_eq!(
        l["cause"]["pid"], pid,
        "the pid of the process that changed the ruleset: {l}"
    );
    assert!(l["ts"].is_string());

    // Removed again: HELD -> EXPOSED.
    let t1 = Instant::now();
    e.in_ns(&[&["iptables", "-D"][..], &HOLD_8080[..]].concat());
    let lines = changed(&json, 2, Duration::from_secs(30));
    let open_after = t1.elapsed();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        (lines[1]["from"].as_str(), lines[1]["to"].as_str()),
        (Some("HELD"), Some("EXPOSED"))
    );
    assert_eq!(lines[1]["cause"]["process"], "iptables");
    eprintln!("drift: change to record {held_after:?} (EXPOSED -> HELD), {open_after:?} (HELD -> EXPOSED)");

    // A burst of 40 rule edits in a few seconds: a few verification runs at most.
    let runs_before = w
        .lines()
        .iter()
        .filter(|l| l.contains("dockexpose: verify (after"))
        .count();
    for i in 0..20 {
        let port = (40000 + i).to_string();
        e.in_ns(&[
            "iptables",
            "-A",
            "DOCKER-USER",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ]);
        e.in_ns(&[
            "iptables",
            "-D",
            "DOCKER-USER",
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ]);
    }
    std::thread::sleep(Duration::from_secs(6));
    let runs = w
        .lines()
        .iter()
        .filter(|l| l.contains("dockexpose: verify (after"))
        .count()
        - runs_before;
    eprintln!("drift: 40 rule edits gave {runs} verify runs");
    assert!((1..=3).contains(&runs), "40 edits: {runs} runs");
    let alerts = w
        .lines()
        .iter()
        .filter(|l| l.contains("EXPOSURE CHANGED: 8080/tcp"))
        .count();
    assert_eq!(alerts, 2, "one alert per change");
    let (_, _, _) = w.stop();
    let _ = std::fs::remove_file(&json);
}

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
        let text: String = text.lines().filter(|l| !l.starts_with("FlushAllOnReload=")).map(|l| format!("{l}\n")).collect();
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
        if let Some(pid) = std::fs::read_to_string(self.root.join("dbus.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
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
    if Command::new("firewalld").arg("--help").output().is_err() || Command::new("dbus-daemon").arg("--version").output().is_err() {
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
        let contradicts = if action == "deny" { reachable } else { !reachable && !r["intent"]["rule"].as_str().unwrap().contains("target") };
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
        let found: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["event"] == "exposure_changed").collect();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("firewalld reload: {changed:#?}");
    assert!(!changed.is_empty(), "the reload changed verdicts: an exposure_changed line");
    assert!(changed.iter().all(|c| c["cause"]["kind"] == "firewalld" && c["cause"]["process"] == "firewalld"), "{changed:#?}");
    assert!(!w.lines().iter().any(|l| l.contains("service ssh (zone public) not found")), "services read from the host's /usr/lib/firewalld");
    let (_, _, _) = w.stop();
    let _ = std::fs::remove_file(&json);
}
