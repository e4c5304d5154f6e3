//! "The ground moved": the signals after which `watch --verify-every` re-verifies
//! before the next tick. Each watcher is a plain thread on a blocking netlink socket
//! (opened here, in the caller's network namespace, before the thread starts) that
//! turns what the kernel announces into `Cause`s on one channel:
//!
//! - ruleset: every committed nftables transaction (host::ruleset_events), kind
//!   "firewalld" when firewalld committed it, else "ruleset";
//! - iptables-legacy hosts: a poll of `iptables-legacy-save` (kind "ruleset", no
//!   process: legacy tables announce nothing);
//! - links and addresses (host::link_events): kinds "link" and "address".
//!
//! dockexpose's own changes are left out, or every verify run would cause the next:
//! - a transaction committed by `own_pid`, or by a live process whose parent is
//!   `own_pid` (/proc/PID/status PPid; the daemon's `nft` and sentinel children);
//! - a transaction whose tables are all verify's trace tables
//!   (`dockexpose_verify_*`, see verify::trace): this one also holds when the `nft`
//!   child has exited before its NEWGEN is read, which is the usual case;
//! - links and addresses of verify's private veth pairs (`dxinj*`, verify::inject).
//!
//! The pinned TC/TCX and XDP programs touch no nftables table: attaching them is no
//! ruleset change.

use std::{io, sync::Arc, thread, time::Duration};

use tokio::sync::mpsc::UnboundedSender;

pub use super::host_refresh::LinkChanges;
pub use crate::verify::drift::Cause;
use crate::{
    host::{
        link_events::{self, LinkEvents},
        ruleset_events::{self, RulesetChange, RulesetEvents},
    },
    verify::inject::VETH_PREFIX,
};

/// How often a reader looks whether anyone still listens.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The iptables-legacy poll period.
pub const LEGACY_POLL: Duration = Duration::from_secs(5);
/// verify's trace tables (verify::trace).
const OWN_TABLE_PREFIX: &str = "dockexpose_verify_";

/// Starts the watchers on their own threads (blocking netlink reads) in the caller's
/// network namespace; each cause goes to `tx`, and every datagram of the link watcher
/// is counted in `links` (the host is read again after one, `host_refresh`). Returns
/// lines to tell the operator (the polling fallback, a watcher that could not start);
/// never fails the daemon. The threads end once `tx`'s receiver is dropped.
pub fn spawn(tx: UnboundedSender<Cause>, own_pid: u32, poll_legacy: bool, links: Arc<LinkChanges>) -> Vec<String> {
    let mut lines = Vec::new();
    match RulesetEvents::subscribe(READ_TIMEOUT) {
        Ok(events) => {
            let tx = tx.clone();
            start(&mut lines, "dx-ruleset", "ruleset changes", move || ruleset_loop(events, tx, own_pid));
        }
        Err(e) => lines.push(format!(
            "ruleset changes are not watched (nftables notifications: {e}); verify runs on its schedule only"
        )),
    }
    // Polling costs two commands every few seconds: only where a change would
    // start a verify run (the intent is read again on its own schedule anyway).
    if poll_legacy && ruleset_events::detect_legacy() {
        let tx = tx.clone();
        let secs = LEGACY_POLL.as_secs();
        if start(&mut lines, "dx-legacy", "iptables-legacy changes", move || legacy_loop(tx)) {
            lines.push(format!("polling every {secs} s: iptables-legacy sends no change notifications"));
        }
    }
    match LinkEvents::subscribe(READ_TIMEOUT) {
        Ok(events) => {
            links.watching();
            let counted = links.clone();
            if !start(&mut lines, "dx-links", "link and address changes", move || link_loop(events, tx, &counted)) {
                links.stopped();
            }
        }
        Err(e) => lines.push(format!("link and address changes are not watched (rtnetlink: {e})")),
    }
    lines
}

/// Starts one watcher thread; a thread that cannot start is a line for the operator.
fn start(lines: &mut Vec<String>, name: &str, what: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match thread::Builder::new().name(name.into()).spawn(f) {
        Ok(_) => true,
        Err(e) => {
            lines.push(format!("{what} are not watched (thread: {e})"));
            false
        }
    }
}

fn ruleset_loop(mut events: RulesetEvents, tx: UnboundedSender<Cause>, own_pid: u32) {
    loop {
        let causes = match events.recv() {
            Ok(ruleset_events::Received::Changes(changes)) => changes
                .into_iter()
                .filter(|c| !is_own(c, own_pid, parent_of))
                .map(|c| ruleset_cause(c, is_firewalld_or_child))
                .collect(),
            // Unknown changes are still changes: verify once more.
            Ok(ruleset_events::Received::Lost) => vec![Cause {
                kind: "ruleset",
                process: None,
                pid: None,
                detail: Some("ruleset notifications were lost (the socket's queue overflowed)".into()),
            }],
            Ok(ruleset_events::Received::Idle) => vec![],
            Err(e) => return stopped("ruleset", &e),
        };
        if !send_all(&tx, causes) {
            return;
        }
    }
}

/// Until nobody listens or the socket fails; then `links` says nobody watches.
fn link_loop(events: LinkEvents, tx: UnboundedSender<Cause>, links: &LinkChanges) {
    link_causes(events, tx, links);
    links.stopped();
}

fn link_causes(mut events: LinkEvents, tx: UnboundedSender<Cause>, links: &LinkChanges) {
    loop {
        let received = events.recv();
        if matches!(received, Ok(link_events::Received::Events(_) | link_events::Received::Lost)) {
            links.received();
        }
        let causes = match received {
            Ok(link_events::Received::Events(evs)) => evs
                .into_iter()
                .filter(|e| !is_own_link(e))
                .map(|e| Cause { kind: e.kind(), process: None, pid: None, detail: Some(e.to_string()) })
                .collect(),
            Ok(link_events::Received::Lost) => vec![Cause {
                kind: "link",
                process: None,
                pid: None,
                detail: Some("link notifications were lost (the socket's queue overflowed)".into()),
            }],
            Ok(link_events::Received::Idle) => vec![],
            Err(e) => return stopped("link", &e),
        };
        if !send_all(&tx, causes) {
            return;
        }
    }
}

fn legacy_loop(tx: UnboundedSender<Cause>) {
    let mut last = ruleset_events::read_legacy_digest().ok();
    while !tx.is_closed() {
        thread::sleep(LEGACY_POLL);
        let now = ruleset_events::read_legacy_digest().ok();
        if now.is_some() && last.is_some() && now != last {
            let cause = Cause {
                kind: "ruleset",
                process: None,
                pid: None,
                detail: Some(format!(
                    "iptables-legacy rules changed (seen by a poll every {} s)",
                    LEGACY_POLL.as_secs()
                )),
            };
            if tx.send(cause).is_err() {
                return;
            }
        }
        last = now.or(last);
    }
}

/// Sends; false once nobody listens (the thread then ends).
fn send_all(tx: &UnboundedSender<Cause>, causes: Vec<Cause>) -> bool {
    causes.into_iter().all(|c| tx.send(c).is_ok()) && !tx.is_closed()
}

/// A socket error other than a timeout or overflow: nothing more will come.
fn stopped(what: &str, e: &io::Error) {
    eprintln!("dockexpose: {what} changes are no longer watched: {e}");
}

/// Whether dockexpose made this change (see the module's comment).
pub fn is_own(change: &RulesetChange, own_pid: u32, parent_of: impl Fn(u32) -> Option<u32>) -> bool {
    let by_us = change.pid.is_some_and(|pid| pid == own_pid || parent_of(pid) == Some(own_pid));
    let only_our_tables = !change.tables.is_empty() && change.tables.iter().all(|t| t.starts_with(OWN_TABLE_PREFIX));
    by_us || only_our_tables
}

/// verify's private veth pair, or one of its addresses.
fn is_own_link(e: &link_events::LinkEvent) -> bool {
    use link_events::LinkEvent::*;
    let name = match e {
        LinkAdded { name } | LinkRemoved { name } | LinkUp { name } | LinkDown { name } => name,
        LinkRenamed { name, .. } => name,
        AddressAdded { name, .. } | AddressRemoved { name, .. } => name,
    };
    name.starts_with(VETH_PREFIX)
}

/// A ruleset change as a cause: "firewalld" when firewalld made it.
pub fn ruleset_cause(change: RulesetChange, is_firewalld_pid: impl Fn(u32) -> bool) -> Cause {
    let firewalld = change.process.as_deref() == Some("firewalld") || change.pid.is_some_and(is_firewalld_pid);
    let detail = (!change.tables.is_empty()).then(|| {
        let names: Vec<&str> = change.tables.iter().map(String::as_str).collect();
        format!("tables: {}", names.join(", "))
    });
    Cause { kind: if firewalld { "firewalld" } else { "ruleset" }, process: change.process, pid: change.pid, detail }
}

/// The parent of a live process (/proc/PID/status PPid); None once it has exited.
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// firewalld itself (nftables backend: libnftables in process) or its
/// `iptables-restore` child (iptables backend).
fn is_firewalld_or_child(pid: u32) -> bool {
    is_firewalld_pid(pid) || parent_of(pid).is_some_and(is_firewalld_pid)
}

/// firewalld is a Python program: its comm may be "python3", its command line names
/// the script.
fn is_firewalld_pid(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline.split(|&b| b == 0).take(2).any(|arg| arg.rsplit(|&b| b == b'/').next() == Some(b"firewalld"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn change(pid: u32, process: &str, tables: &[&str]) -> RulesetChange {
        RulesetChange {
            gen_id: Some(5),
            pid: Some(pid),
            process: Some(process.into()),
            tables: tables.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn own_changes_are_left_out() {
        let no_parent = |_| None;
        assert!(is_own(&change(100, "dockexpose", &["filter"]), 100, no_parent));
        assert!(!is_own(&change(101, "iptables", &["filter"]), 100, no_parent));
        // The trace table, even when the `nft` that made it has exited.
        assert!(is_own(&change(101, "nft", &["dockexpose_verify_4026531836_100"]), 100, no_parent));
        // A transaction touching the trace table and another table is not ours alone.
        assert!(!is_own(&change(101, "nft", &["dockexpose_verify_1_100", "nat"]), 100, no_parent));
        // A live child of ours.
        assert!(is_own(&change(101, "nft", &["x"]), 100, |p| (p == 101).then_some(100)));
        // No tables seen (notifications lost before it) and not ours: reported.
        assert!(!is_own(&change(101, "nft", &[]), 100, no_parent));
    }

    #[test]
    fn parent_of_a_live_child_is_us() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        assert_eq!(parent_of(child.id()), Some(std::process::id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_of(child.id()), None, "a reaped child has no /proc entry");
    }

    #[test]
    fn firewalld_changes_are_named_so() {
        let c = ruleset_cause(change(7, "firewalld", &["firewalld"]), |_| false);
        assert_eq!(c.kind, "firewalld");
        assert_eq!(c.detail.as_deref(), Some("tables: firewalld"));
        assert_eq!(ruleset_cause(change(7, "python3", &[]), |p| p == 7).kind, "firewalld");
        let c = ruleset_cause(change(8, "iptables", &["filter", "nat"]), |_| false);
        assert_eq!(
            (c.kind, c.process.as_deref(), c.pid, c.detail.as_deref()),
            ("ruleset", Some("iptables"), Some(8), Some("tables: filter, nat"))
        );
        // This test's own process is no firewalld.
        assert!(!is_firewalld_pid(std::process::id()));
    }

    #[test]
    fn a_firewalld_script_and_its_child_are_firewalld() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dx-ground-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("firewalld");
        std::fs::write(&script, "#!/bin/sh\nsleep 5\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut fw = std::process::Command::new(&script).spawn().expect("the script");
        let children = format!("/proc/{0}/task/{0}/children", fw.id());
        let mut child = None;
        for _ in 0..200 {
            child =
                std::fs::read_to_string(&children).ok().and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            if child.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let result = (is_firewalld_or_child(fw.id()), child.map(is_firewalld_or_child));
        fw.kill().unwrap();
        fw.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        // The script's command line is "/bin/sh .../firewalld"; its `sleep` child.
        assert_eq!(result, (true, Some(true)));
        assert!(!is_firewalld_or_child(std::process::id()));
    }

    #[test]
    fn verify_veths_are_ours() {
        use link_events::LinkEvent;
        assert!(is_own_link(&LinkEvent::LinkAdded { name: format!("{VETH_PREFIX}0a1b2c3da") }));
        assert!(!is_own_link(&LinkEvent::LinkAdded { name: "eth0".into() }));
    }
}
