//! `IntentBook::read` against the real tools (root): UFW, ipset with iptables, and
//! fail2ban, each in a network namespace of its own, with private copies of their
//! configuration, so that the root namespace's firewall and /etc are never touched.
//! Addresses: 198.18.7.0/24 only.

#[path = "../support/mod.rs"]
mod support;

mod fail2ban;
mod firewalld;
mod iptables;
mod ufw;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dockexpose::{
    intent::{Action, Dumps, IntentBook, Source},
    kernel::event::Proto,
};
use support::{sh, sh_quiet, skip};

/// A namespace and a scratch directory, removed on drop (also when a test fails); a
/// fail2ban server started in it is stopped first.
struct Bed {
    ns: String,
    dir: PathBuf,
    f2b_sock: Option<PathBuf>,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let ns = format!("dxi-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["ip", "netns", "add", &ns]);
        Bed { ns, dir, f2b_sock: None }
    }

    /// Runs a command inside the namespace, panicking on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.ns];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// `IntentBook::read(root)` on a thread inside the namespace: the tools it runs
    /// (iptables-save, ipset, nft) see the namespace's tables.
    fn read(&self, root: &Path) -> IntentBook {
        let root = root.to_path_buf();
        support::in_netns(&self.ns, move || IntentBook::read(&root))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(sock) = &self.f2b_sock {
            sh_quiet(&["fail2ban-client", "-s", &sock.to_string_lossy(), "stop"]);
            // A server that did not answer: by its own pid file, never by name.
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("f2b.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        sh_quiet(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// A `ufw status numbered` line with its column padding collapsed, as the book shows it.
fn collapse(line: &str) -> String {
    let (n, r) = line.trim_end().split_at(5);
    format!("{n}{}", r.split_whitespace().collect::<Vec<_>>().join(" "))
}
