//! The daemon under test: a running `dockexpose watch` (its output lines, its audit
//! log), and where a test's audit log goes and how to read a counters line.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::run_id;

/// A running `dockexpose watch`, killed on drop if the test did not stop it.
pub struct Watcher {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    pub json: PathBuf,
}

impl Watcher {
    /// Starts the watcher and waits until it says it is watching.
    pub fn start(args: &[&str], json: PathBuf) -> Self {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_dockexpose")), args, json)
    }

    /// Starts the watcher inside network namespace `ns` (its own interfaces, the
    /// host's Docker socket).
    pub fn start_in_netns(ns: &str, args: &[&str], json: PathBuf) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_dockexpose")]);
        Self::start_with(cmd, args, json)
    }

    /// Starts another watcher appending to the same audit log (a restart).
    pub fn restart(args: &[&str], json: PathBuf) -> Self {
        Self::spawn_command(Command::new(env!("CARGO_BIN_EXE_dockexpose")), args, json)
    }

    fn start_with(cmd: Command, args: &[&str], json: PathBuf) -> Self {
        let _ = std::fs::remove_file(&json);
        Self::spawn_command(cmd, args, json)
    }

    /// Runs `cmd watch ARGS --json JSON` (appending to the log) and waits until it watches.
    pub fn spawn_command(mut cmd: Command, args: &[&str], json: PathBuf) -> Self {
        // Tests that do not test continuity leave nothing behind: no pins, no lock.
        if !args.iter().any(|a| *a == "--pin-dir" || *a == "--no-pin") {
            cmd.arg("watch").arg("--no-pin");
        } else {
            cmd.arg("watch");
        }
        let mut child = cmd
            .args(args)
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dockexpose");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("  [dockexpose] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let mut w = Self { child, stderr, json };
        w.wait_for_line("dockexpose: watching", Duration::from_secs(30));
        w
    }

    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle`; panics with what it printed if none.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("dockexpose exited ({status}) before printing {needle:?}:\n{}", self.lines().join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from dockexpose in {timeout:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (a crash, the OOM killer), then waits; returns what it printed.
    pub fn kill9(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.lines()
    }

    /// SIGTERM, then waits; returns the JSON connection records written and the exit status.
    pub fn stop(mut self) -> (Vec<serde_json::Value>, std::process::ExitStatus, Vec<String>) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "dockexpose did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&self.json).unwrap_or_default();
        // Connection records only: the daemon's own lines (`daemon_start`,
        // `daemon_stop`, `kernel_state_reset`: an `event` key) are not connections.
        let records = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))
            })
            .filter(|r| r.get("event").is_none())
            .collect();
        let lines = self.lines();
        (records, status, lines)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test's watcher writes its audit log (unique per run).
pub fn json_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dockexpose-{tag}-{}.json", run_id()))
}

/// A counter's value from a "counters" line of the watcher.
pub fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {line}"))
}
