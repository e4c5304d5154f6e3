//! Running commands for the test bed: `sh` and `sh_quiet`, the undo log that removes
//! what a test set up (also when it fails), and the root check of privileged tests.

use std::process::{Command, Stdio};

use super::skip;

/// True when privileged tests can run. Otherwise records why they are skipped, or
/// panics when the run demands them (CI sets DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS).
pub fn privileged(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let why = "needs root (network namespaces, iptables, eBPF)";
    if std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
        panic!("{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set");
    }
    skip(test, why)
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (for cleanup).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Commands run in reverse order on drop: the undo log of a test bed.
#[derive(Default)]
pub struct Undo(Vec<Vec<String>>);

impl Undo {
    pub fn push(&mut self, args: &[&str]) {
        self.0.push(args.iter().map(|s| s.to_string()).collect());
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(cmd) = self.0.pop() {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            sh_quiet(&args);
        }
    }
}
