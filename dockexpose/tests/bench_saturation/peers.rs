//! The peers dockexpose is measured against, each set up the classic way to log new
//! connections to a container: tcpdump writing the bridge's SYNs to a pcap,
//! `conntrack -E -e NEW` to a file, and an NFLOG rule for ctstate NEW in FORWARD with
//! ulogd2 writing JSON. Each runs from a temp dir of its own, is stopped by its pid,
//! and leaves nothing behind (the guards below run on panic too).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    support::{sh, Undo},
    tools::{Stopped, Tool},
};

/// A temp dir of the bench's, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dockexpose-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A peer's process: SIGTERM by pid on stop, SIGKILL on drop if still running; its
/// stderr kept for the figures it prints at exit.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child =
            cmd.stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e} (cargo xtask setup)"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                text.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self { child, stderr }
    }

    /// Waits until `ready` holds, panicking if the process exits first or 10 s pass.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready(&self.stderr.lock().unwrap()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited ({status}) before it was ready:\n{}", self.stderr.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "{what} not ready in 10 s:\n{}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; panics if it had died during the round. Returns its stderr.
    fn stop(mut self, what: &str) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} died during the round ({status}):\n{}", self.stderr.lock().unwrap());
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(Instant::now() < deadline, "{what} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50)); // the stderr reader's last lines
        let text = self.stderr.lock().unwrap().clone();
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `file` that contain `needle`.
fn lines_with(file: &Path, needle: &str) -> u64 {
    std::fs::read_to_string(file).unwrap_or_default().lines().filter(|l| l.contains(needle)).count() as u64
}

fn recorded_something(what: &str, records: u64, complete: u64) {
    assert!(records > 0, "{what} recorded nothing of {complete} connections: no result to compare with");
}

/// `tcpdump -i BRIDGE -w FILE` with a SYN-only filter, default buffering (no -U: the
/// pcap is written in blocks, as a capture left running would be).
// Fields drop in order: the process stops before its dir goes.
pub(crate) struct Tcpdump {
    pub bridge: String,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Tcpdump {
    pub(crate) fn new(bridge: &str) -> Self {
        Self { bridge: bridge.into(), dir: TempDir::new("tcpdump"), proc: None }
    }

    fn pcap(&self) -> PathBuf {
        self.dir.0.join("syn.pcap")
    }
}

/// Packets in a pcap file (the classic format tcpdump writes: a 24-byte header, then
/// per packet a 16-byte header whose third field is the captured length).
fn pcap_packets(file: &Path) -> u64 {
    let data = std::fs::read(file).unwrap_or_default();
    let (mut at, mut n) = (24, 0);
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + caplen;
        n += 1;
    }
    n
}

impl Tool for Tcpdump {
    fn name(&self) -> &'static str {
        "tcpdump (SYNs to a pcap)"
    }

    fn start(&mut self) {
        let pcap = self.pcap();
        let _ = std::fs::remove_file(&pcap);
        // -Z root: Debian's tcpdump would drop to its own user, which cannot write here.
        let mut p = Proc::spawn(
            Command::new("tcpdump")
                .args(["-n", "-Z", "root", "-i", &self.bridge, "-w"])
                .arg(&pcap)
                .arg("tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
                .stdout(Stdio::null()),
        );
        p.wait_until("tcpdump", |e| e.contains("listening on"));
        self.proc = Some(p);
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    fn recorded(&self) -> Option<u64> {
        None // buffered: the pcap is complete only once tcpdump exits
    }

    fn stop(&mut self, complete: u64) -> Stopped {
        // The round's CPU is sampled already. tcpdump reads the kernel's ring by blocks
        // retired after 1 s at most: let the last one reach the pcap before SIGTERM.
        std::thread::sleep(Duration::from_millis(1100));
        let said = self.proc.take().expect("tcpdump started").stop("tcpdump");
        let packets = pcap_packets(&self.pcap());
        if let Some(l) = said.lines().find(|l| l.contains("dropped by kernel")) {
            eprintln!("  [tcpdump] {l}");
        }
        recorded_something("tcpdump", packets, complete);
        Stopped { records: Some(packets), ..Stopped::default() }
    }
}

/// `conntrack -E -e NEW -o timestamp` with its output to a file.
pub(crate) struct Conntrack {
    /// Its events of the load are those with this source.
    pub src: String,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Conntrack {
    pub(crate) fn new(src: &str) -> Self {
        Self { src: src.into(), dir: TempDir::new("conntrack"), proc: None }
    }

    fn file(&self) -> PathBuf {
        self.dir.0.join("events.txt")
    }
}

impl Tool for Conntrack {
    fn name(&self) -> &'static str {
        "conntrack -E -e NEW"
    }

    fn start(&mut self) {
        let out = File::create(self.file()).unwrap();
        let mut p = Proc::spawn(Command::new("conntrack").args(["-E", "-e", "NEW", "-o", "timestamp"]).stdout(out));
        // It says nothing when it listens: give it a moment to subscribe, then check it lives.
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("conntrack -E exited ({status}) at start:\n{}", p.stderr.lock().unwrap());
        }
        self.proc = Some(p);
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    fn recorded(&self) -> Option<u64> {
        Some(lines_with(&self.file(), &format!(" src={} ", self.src)))
    }

    fn stop(&mut self, complete: u64) -> Stopped {
        let said = self.proc.take().expect("conntrack started").stop("conntrack -E");
        if said.contains("ENOBUFS") || said.contains("No buffer space") {
            eprintln!("  [conntrack] lost events: {}", said.trim());
        }
        let events = self.recorded().unwrap();
        recorded_something("conntrack -E", events, complete);
        Stopped { records: Some(events), ..Stopped::default() }
    }
}

/// ulogd2 with JSON output fed by `-I FORWARD -o BRIDGE -m conntrack --ctstate NEW -j
/// NFLOG`: the classic "log new connections" setup.
pub(crate) struct Ulogd {
    pub bridge: String,
    pub src: String,
    group: u16,
    /// Removes the NFLOG rule by its exact spec (first: fields drop in order).
    rule: Option<Undo>,
    proc: Option<Proc>,
    dir: TempDir,
}

impl Ulogd {
    pub(crate) fn new(bridge: &str, src: &str, n: u32) -> Self {
        // A group no other run uses (the daemons of the machine use none).
        let group = 30000 + (n % 30000) as u16;
        Self { bridge: bridge.into(), src: src.into(), group, dir: TempDir::new("ulogd"), proc: None, rule: None }
    }

    fn json(&self) -> PathBuf {
        self.dir.0.join("ulogd.json")
    }

    fn rule(&self) -> Vec<String> {
        let group = self.group.to_string();
        let bridge = self.bridge.as_str();
        ["FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "NEW", "-j", "NFLOG", "--nflog-group", group.as_str()]
            .map(String::from)
            .to_vec()
    }

    /// Debian's NFLOG-to-JSON stack (its ulogd.conf's example), with files of its own.
    fn config(&self) -> String {
        let lib = "/usr/lib/x86_64-linux-gnu/ulogd";
        let plugins =
            ["inppkt_NFLOG", "raw2packet_BASE", "filter_IFINDEX", "filter_IP2STR", "filter_HWHDR", "output_JSON"]
                .map(|p| format!("plugin=\"{lib}/ulogd_{p}.so\"\n"))
                .concat();
        format!(
            "[global]\nlogfile=\"{log}\"\nloglevel=3\n{plugins}\
             stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON\n\
             [log1]\ngroup={group}\n[json1]\nsync=1\nfile=\"{json}\"\n",
            log = self.dir.0.join("ulogd.log").display(),
            group = self.group,
            json = self.json().display(),
        )
    }
}

impl Tool for Ulogd {
    fn name(&self) -> &'static str {
        "ulogd2 (NFLOG, JSON)"
    }

    fn start(&mut self) {
        let conf = self.dir.0.join("ulogd.conf");
        std::fs::write(&conf, self.config()).unwrap();
        let _ = std::fs::remove_file(self.json());
        let _ = std::fs::remove_file(self.dir.0.join("ulogd.log"));
        let mut p = Proc::spawn(
            Command::new("ulogd")
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(self.dir.0.join("ulogd.pid"))
                .stdout(Stdio::null()),
        );
        let log = self.dir.0.join("ulogd.log");
        p.wait_until("ulogd", |_| std::fs::read_to_string(&log).is_ok_and(|l| l.contains("entering main loop")));
        self.proc = Some(p);
        // Docker's FORWARD jumps to DOCKER-USER first; NFLOG does not end the walk, so at
        // the top it sees every new connection into the bridge whatever comes after.
        let rule = self.rule();
        let mut insert = vec!["iptables", "-I"];
        insert.extend(rule.iter().map(String::as_str));
        let mut undo = Undo::default();
        let mut delete = vec!["iptables", "-D"];
        delete.extend(rule.iter().map(String::as_str));
        undo.push(&delete);
        sh(&insert);
        self.rule = Some(undo);
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    fn recorded(&self) -> Option<u64> {
        // The source address as a JSON string (whatever spacing ulogd's encoder uses).
        Some(lines_with(&self.json(), &format!("\"{}\"", self.src)))
    }

    fn stop(&mut self, complete: u64) -> Stopped {
        drop(self.rule.take());
        self.proc.take().expect("ulogd started").stop("ulogd");
        let lines = self.recorded().unwrap();
        if lines == 0 {
            let json = std::fs::read_to_string(self.json()).unwrap_or_default();
            eprintln!("  [ulogd] JSON output (head): {}", json.lines().take(2).collect::<Vec<_>>().join("\n"));
        }
        recorded_something("ulogd2", lines, complete);
        Stopped { records: Some(lines), ..Stopped::default() }
    }
}
