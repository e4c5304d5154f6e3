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

#[path = "../support/mod.rs"]
mod support;

mod drift;
mod firewalld;
mod ufw;

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
        sh(&["cp", "-a", "/etc/ufw", root.join("etc/ufw").to_str().unwrap()]);
        // The machine's copy may carry rules of its own: start from none.
        for f in ["user.rules", "user6.rules"] {
            let path = root.join("etc/ufw").join(f);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: Vec<&str> =
                text.lines().filter(|l| !l.starts_with("### tuple") && !l.starts_with("-A ufw")).collect();
            std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        }
        let defaults = std::fs::read_to_string("/etc/default/ufw").unwrap();
        // No sysctl changes from this UFW (some are not per namespace).
        let empty = root.join("etc/ufw/no-sysctl.conf");
        std::fs::write(&empty, "").unwrap();
        let defaults: String =
            defaults
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
        Self { root, ns: ns.to_string() }
    }

    /// Runs `ufw ARGS` in the namespace, against the private files.
    fn run(&self, args: &[&str]) -> String {
        let script = format!(
            "mount --bind {r}/etc/ufw /etc/ufw && mount --bind {r}/etc/default/ufw /etc/default/ufw && exec nsenter --net=/run/netns/{ns} ufw \"$@\"",
            r = self.root.display(),
            ns = self.ns
        );
        let mut full = vec!["unshare", "-m", "--propagation", "private", "sh", "-c", script.as_str(), "ufw"];
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
            .find(|l| l.starts_with('[') && l.contains(&format!("] {what} ")) && l.contains("(v6)") == v6)
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
        return skip(test, "ufw is not installed (Debian's ufw; `cargo xtask setup` installs it)");
    }
    true
}

/// An engine with IPv6 published through ip6tables, as a user turns it on.
fn engine(tag: &str) -> SecondEngine {
    let n = run_id() % 200;
    SecondEngine::start_with(
        tag,
        Proxy::Off,
        &["--experimental", "--ipv6", &format!("--fixed-cidr-v6=fd42:251:{n}::/64"), "--ip6tables"],
    )
}

/// `dockexpose explain ARGS` in the engine's namespace, probing from the outside
/// host's addresses, reading the private UFW under `root`.
fn explain_cmd(e: &SecondEngine, root: &Path, args: &[&str]) -> std::process::Output {
    let (from4, from6) = (format!("{}/32", e.outside_v4()), format!("{}/128", e.outside_v6()));
    // `ip netns exec`: /sys of the namespace too (verify reads the uplink's MAC there).
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            e.ns.as_str(),
            env!("CARGO_BIN_EXE_dockexpose"),
            "explain",
            "--docker-host",
            &e.socket,
            "--uplink",
            &e.uplink,
        ])
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
