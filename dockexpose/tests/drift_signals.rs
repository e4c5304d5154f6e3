//! The drift signals (src/watch/ground.rs) against the real kernel: in a network
//! namespace of each test's own, `nft`, iptables-nft and `ip` change the ruleset,
//! links and addresses, and the watchers must name each change (kind, process, pid,
//! interface) within a second. Also: a burst of 40 rule edits gives at most 2 verify
//! runs through `verify::drift::Debounce`. Root; the root namespace's firewall is
//! never touched; addresses only from 198.18.0.0/15 and fd42:198::/32.

mod support;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use dockexpose::{
    verify::drift::Debounce,
    watch::ground::{self, Cause, LinkChanges},
};
use support::*;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How long a change may take to be announced.
const ANNOUNCE: Duration = Duration::from_secs(3);

/// A network namespace, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("dxd-{}-{tag}", std::process::id());
        sh_quiet(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        sh(&["ip", "netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh_quiet(&["ip", "netns", "del", &self.0]);
    }
}

/// True when the test can run: root, and the programs it drives.
fn ready(test: &str, programs: &[&str]) -> bool {
    if !privileged(test) {
        return false;
    }
    for p in programs {
        if Command::new(p).arg("--version").output().is_err() {
            return skip(test, &format!("needs `{p}`"));
        }
    }
    true
}

/// The causes received, with when each arrived.
struct Causes {
    rx: UnboundedReceiver<Cause>,
    seen: Vec<(Cause, Instant)>,
}

impl Causes {
    /// Reads until a cause matches `want`; panics with everything seen after ANNOUNCE.
    fn expect(&mut self, what: &str, want: impl Fn(&Cause) -> bool) -> (Cause, Instant) {
        self.expect_within(ANNOUNCE, what, want)
    }

    fn expect_within(&mut self, limit: Duration, what: &str, want: impl Fn(&Cause) -> bool) -> (Cause, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(c) = self.rx.try_recv() {
                self.seen.push((c, Instant::now()));
            }
            if let Some(i) = self.seen.iter().position(|(c, _)| want(c)) {
                return self.seen.remove(i);
            }
            assert!(Instant::now() < deadline, "no cause for {what} within {limit:?}; seen: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Everything that arrives until nothing has for `quiet`.
    fn drain(&mut self, quiet: Duration) -> Vec<(Cause, Instant)> {
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            while let Ok(c) = self.rx.try_recv() {
                self.seen.push((c, Instant::now()));
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::mem::take(&mut self.seen)
    }
}

/// Starts the watchers on this (namespace) thread; own_pid 1 so that this test's
/// children are not taken for dockexpose's own.
fn watch() -> (Causes, Vec<String>) {
    let (causes, lines, _) = watch_counting();
    (causes, lines)
}

/// `watch`, with what the link watcher receives counted.
fn watch_counting() -> (Causes, Vec<String>, Arc<LinkChanges>) {
    let (tx, rx) = unbounded_channel();
    let links = Arc::new(LinkChanges::default());
    let lines = ground::spawn(tx, 1, true, links.clone());
    eprintln!("ground::spawn said: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("not watched")), "a watcher did not start: {lines:?}");
    (Causes { rx, seen: Vec::new() }, lines, links)
}

/// Runs `args` in namespace `ns`; its pid (ip netns exec execs the program in place,
/// so the child's pid is the program's) and when it was started.
fn run(ns: &str, args: &[&str]) -> (u32, Instant) {
    let started = Instant::now();
    let mut child = Command::new("ip").args(["netns", "exec", ns]).args(args).spawn().expect("ip netns exec");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{args:?}: {status}");
    (pid, started)
}

#[test]
fn ruleset_changes_name_the_committing_process() {
    const TEST: &str = "ruleset_changes_name_the_committing_process";
    if !ready(TEST, &["nft", "iptables", "ip"]) {
        return;
    }
    let ns = Netns::new("rs");
    let name = ns.0.clone();
    in_netns(&ns.0, move || {
        let (mut causes, _) = watch();
        std::thread::sleep(Duration::from_millis(100));

        let (pid, t) = run(&name, &["nft", "add", "table", "inet", "dxd_t"]);
        let (c, at) = causes.expect("nft add table", |c| c.pid == Some(pid));
        eprintln!("nft add table -> {c:?} after {:?}", at - t);
        assert_eq!(c.kind, "ruleset");
        assert_eq!(c.process.as_deref(), Some("nft"));
        assert_eq!(c.detail.as_deref(), Some("tables: dxd_t"));

        // iptables is a link to xtables-nft-multi; the kernel names the committing
        // task by its comm, which is the name it was exec'd by: "iptables".
        let (pid, t) = run(&name, &["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"]);
        let (c, at) = causes.expect("iptables -A", |c| c.pid == Some(pid));
        eprintln!("iptables -A -> {c:?} after {:?}", at - t);
        assert_eq!((c.kind, c.process.as_deref()), ("ruleset", Some("iptables")));
        assert_eq!(c.detail.as_deref(), Some("tables: filter"));

        // verify's trace table is dockexpose's own change: nothing for it, while the
        // change after it is reported.
        let (own, _) = run(&name, &["nft", "add", "table", "inet", "dockexpose_verify_0_1"]);
        run(&name, &["nft", "delete", "table", "inet", "dockexpose_verify_0_1"]);
        let (pid, _) = run(&name, &["nft", "add", "table", "inet", "dxd_t2"]);
        causes.expect("nft add table dxd_t2", |c| c.pid == Some(pid));
        let rest = causes.drain(Duration::from_millis(500));
        assert!(
            !rest.iter().any(
                |(c, _)| c.pid == Some(own) || c.detail.as_deref().is_some_and(|d| d.contains("dockexpose_verify"))
            ),
            "verify's own table was reported: {rest:?}"
        );
    });
}

#[test]
fn a_burst_of_40_rule_edits_gives_at_most_2_runs() {
    const TEST: &str = "a_burst_of_40_rule_edits_gives_at_most_2_runs";
    if !ready(TEST, &["iptables", "ip"]) {
        return;
    }
    let ns = Netns::new("burst");
    let name = ns.0.clone();
    in_netns(&ns.0, move || {
        let (mut causes, _) = watch();
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        let mut pids = Vec::new();
        for i in 0..40u16 {
            let port = (9000 + i).to_string();
            pids.push(run(&name, &["iptables", "-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]).0);
        }
        let burst = start.elapsed();
        let seen = causes.drain(Duration::from_millis(1500));
        let ours: Vec<_> = seen.iter().filter(|(c, _)| c.pid.is_some_and(|p| pids.contains(&p))).collect();
        eprintln!("40 edits in {burst:?}: {} causes ({} of them from the 40 commands)", seen.len(), ours.len());
        // Every edit is one committed transaction, and each is announced.
        for pid in &pids {
            assert!(ours.iter().any(|(c, _)| c.pid == Some(*pid)), "edit by pid {pid} not announced: {seen:?}");
        }
        // The daemon's loop: a run whenever the debounce is due before the next cause.
        let mut d = Debounce::default();
        let mut runs = 0;
        for (c, at) in seen {
            if d.due().is_some_and(|due| due <= at) {
                runs += usize::from(!d.take().is_empty());
            }
            d.push(c, at);
        }
        runs += usize::from(!d.take().is_empty());
        eprintln!("verify runs for the burst: {runs}");
        // 40 edits within 2 s: at most 2 runs. On a machine too loaded to make them
        // that fast, one more run per MAX_WAIT (3 s) of burst.
        let allowed = if burst <= Duration::from_secs(2) { 2 } else { 2 + burst.as_secs() as usize / 3 };
        assert!((1..=allowed).contains(&runs), "{runs} runs for 40 edits in {burst:?}");
    });
}

#[test]
fn links_and_addresses_name_the_interface() {
    const TEST: &str = "links_and_addresses_name_the_interface";
    if !ready(TEST, &["ip"]) {
        return;
    }
    let ns = Netns::new("link");
    let name = ns.0.clone();
    let n = run_id();
    in_netns(&ns.0, move || {
        let (mut causes, _) = watch();
        std::thread::sleep(Duration::from_millis(100));
        let mut step = |what: &str, args: &[&str], kind: &'static str, detail: String| {
            let (_, t) = run(&name, args);
            let (c, at) = causes.expect(what, |c| c.kind == kind && c.detail.as_deref() == Some(detail.as_str()));
            eprintln!("{what} -> {c:?} after {:?}", at - t);
            assert_eq!((c.process, c.pid), (None, None));
        };
        step(
            "veth add",
            &["ip", "link", "add", "dxd0", "type", "veth", "peer", "name", "dxd1"],
            "link",
            "dxd0 added".into(),
        );
        let v4 = format!("198.18.{n}.1");
        step(
            "address add",
            &["ip", "addr", "add", &format!("{v4}/24"), "dev", "dxd0"],
            "address",
            format!("{v4}/24 added on dxd0"),
        );
        run(&name, &["ip", "link", "set", "dxd1", "up"]);
        step("link up", &["ip", "link", "set", "dxd0", "up"], "link", "dxd0 up".into());
        let v6 = format!("fd42:198:{n}::1");
        step(
            "v6 address add",
            &["ip", "addr", "add", &format!("{v6}/64"), "dev", "dxd0", "nodad"],
            "address",
            format!("{v6}/64 added on dxd0"),
        );
        step(
            "address del",
            &["ip", "addr", "del", &format!("{v4}/24"), "dev", "dxd0"],
            "address",
            format!("{v4}/24 removed from dxd0"),
        );
        step("link down", &["ip", "link", "set", "dxd0", "down"], "link", "dxd0 down".into());
        step("veth del", &["ip", "link", "del", "dxd0"], "link", "dxd0 removed".into());
        // The peer went with it, and was announced too.
        causes.expect("peer removed", |c| c.detail.as_deref() == Some("dxd1 removed"));
    });
}

/// The daemon reads the host's interfaces again only after the link watcher received
/// something (watch::host_refresh): a port joining or leaving a bridge makes no cause
/// (nothing verify needs), yet it decides which interfaces are uplinks, so it must be
/// counted.
#[test]
fn a_port_joining_or_leaving_a_bridge_is_counted_though_it_makes_no_cause() {
    const TEST: &str = "a_port_joining_or_leaving_a_bridge_is_counted_though_it_makes_no_cause";
    if !ready(TEST, &["ip"]) {
        return;
    }
    let ns = Netns::new("port");
    let name = ns.0.clone();
    in_netns(&ns.0, move || {
        let (mut causes, _, links) = watch_counting();
        assert!(links.count().is_some(), "the link watcher runs");
        run(&name, &["ip", "link", "add", "dxdbr", "type", "bridge"]);
        run(&name, &["ip", "link", "add", "dxd0", "type", "veth", "peer", "name", "dxd1"]);
        causes.expect("veth add", |c| c.detail.as_deref() == Some("dxd0 added"));
        causes.drain(Duration::from_millis(300));
        for (what, args) in [
            ("joining", &["ip", "link", "set", "dxd0", "master", "dxdbr"][..]),
            ("leaving", &["ip", "link", "set", "dxd0", "nomaster"][..]),
        ] {
            let before = links.count().expect("watching");
            let (_, t) = run(&name, args);
            while links.count() == Some(before) {
                assert!(t.elapsed() < ANNOUNCE, "a port {what} its bridge was not counted within {ANNOUNCE:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
            eprintln!("port {what} the bridge: counted after {:?}", t.elapsed());
            let said = causes.drain(Duration::from_millis(300));
            assert!(
                said.iter().all(|(c, _)| c.kind == "link"),
                "only link causes, if any, for a port {what} its bridge: {said:?}"
            );
        }
    });
}

#[test]
fn iptables_legacy_changes_are_polled() {
    const TEST: &str = "iptables_legacy_changes_are_polled";
    if !ready(TEST, &["iptables-legacy", "iptables-legacy-save", "ip"]) {
        return;
    }
    let ns = Netns::new("legacy");
    let name = ns.0.clone();
    // A legacy table in use in the namespace before the watchers start.
    run(&ns.0, &["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "7000", "-j", "DROP"]);
    in_netns(&ns.0, move || {
        let (mut causes, lines) = watch();
        let secs = ground::LEGACY_POLL.as_secs();
        assert!(
            lines.contains(&format!("polling every {secs} s: iptables-legacy sends no change notifications")),
            "{lines:?}"
        );
        // Let the poller take its first digest, then change the rules.
        std::thread::sleep(Duration::from_millis(500));
        let (_, t) = run(&name, &["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "7001", "-j", "DROP"]);
        let (c, at) = causes.expect_within(ground::LEGACY_POLL + ANNOUNCE, "iptables-legacy -A", |c| {
            c.detail.as_deref().is_some_and(|d| d.contains("iptables-legacy"))
        });
        eprintln!("iptables-legacy -A -> {c:?} after {:?}", at - t);
        assert_eq!((c.kind, c.process, c.pid), ("ruleset", None, None));
        // Nothing more while the rules stay as they are (counters move, rules do not).
        let rest = causes.drain(ground::LEGACY_POLL + Duration::from_secs(1));
        assert!(rest.is_empty(), "unchanged legacy rules were reported: {rest:?}");
    });
}
