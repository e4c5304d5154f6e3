//! Test bed for the root integration tests: network namespaces, bridges, veths,
//! iptables rules and the watcher process, each removed by a guard on drop (also
//! when a test fails). Addresses: 10.251.N.0/24 and fd42:251:N::/64 for the
//! simulated container bridge, 198.18.N.0/24 and fd42:198:N::/64 for outside hosts
//! (N differs per run). Never 192.0.2.0/24 or 203.0.113.0/24 (the machine's own).
#![allow(dead_code, reason = "each test binary uses a different part of the test bed")]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

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

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().expect("netns thread panicked")
}

pub fn spawn_in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A small TCP and UDP echo service inside a namespace, stopped on drop.
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Services {
    /// Listens on [::]:tcp_port and [::]:udp_port (dual stack) in `ns`.
    pub fn start(ns: &str, tcp_port: u16, udp_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let r = ready_tx.clone();
        let tcp = spawn_in_netns(ns, move || {
            let l = TcpListener::bind(("::", tcp_port)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            r.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let s = stop.clone();
        let udp = spawn_in_netns(ns, move || {
            let u = UdpSocket::bind(("::", udp_port)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        });
        for _ in 0..2 {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("service did not start");
        }
        Self { stop, threads: vec![tcp, udp] }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects over TCP from `ns` (optionally from a given source address), reads the
/// greeting. Returns the local port used, or the error.
pub fn tcp_connect(ns: &str, bind: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<u16> {
    in_netns(ns, move || {
        let stream = match bind {
            None => TcpStream::connect_timeout(&dst, Duration::from_secs(2))?,
            Some(src) => {
                // std has no bind-before-connect: go through a raw socket.
                let domain = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
                // SAFETY: plain socket syscalls on an fd we own.
                let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
                assert!(fd >= 0);
                let (sa, len) = sockaddr(SocketAddr::new(src, 0));
                let rc = unsafe { libc::bind(fd, sa.as_ptr().cast(), len) };
                assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
                let (da, dlen) = sockaddr(dst);
                let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
                unsafe {
                    libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32);
                }
                let rc = unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) };
                // SAFETY: fd is a socket we own from here on.
                let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                stream
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let port = stream.local_addr()?.port();
        let mut buf = [0u8; 2];
        (&stream).read_exact(&mut buf)?;
        Ok(port)
    })
}

fn sockaddr(addr: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            let bytes = unsafe { std::slice::from_raw_parts((&sin as *const libc::sockaddr_in).cast::<u8>(), size_of::<libc::sockaddr_in>()) };
            (bytes.to_vec(), size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            let bytes = unsafe { std::slice::from_raw_parts((&sin6 as *const libc::sockaddr_in6).cast::<u8>(), size_of::<libc::sockaddr_in6>()) };
            (bytes.to_vec(), size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Sends `count` datagrams from one socket in `ns` and waits for each echo.
/// Returns the local port and how many echoes came back.
/// `bind` picks the source address (IPv6 source selection may otherwise pick
/// another of the host's addresses).
pub fn udp_exchange(ns: &str, bind: Option<IpAddr>, dst: SocketAddr, count: usize) -> (u16, usize) {
    in_netns(ns, move || {
        let any: IpAddr = if dst.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
        let u = UdpSocket::bind(SocketAddr::new(bind.unwrap_or(any), 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut echoed = 0;
        for i in 0..count {
            u.send_to(format!("ping {i}").as_bytes(), dst).unwrap();
            let mut buf = [0u8; 64];
            if u.recv_from(&mut buf).is_ok() {
                echoed += 1;
            }
        }
        (u.local_addr().unwrap().port(), echoed)
    })
}

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
            assert!(Instant::now() < deadline, "no {needle:?} from dockexpose in {timeout:?}:\n{}", self.lines().join("\n"));
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
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
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

/// A number for this run's names and addresses (two runs never share one).
pub fn run_id() -> u32 {
    20 + std::process::id() % 200
}

/// The first of `count` consecutive host ports, from `hint` on, that nothing holds
/// now (TCP and UDP, IPv4 and IPv6), so a `-p` publish does not fail on a port some
/// other socket took. Keep hints below 32768: the kernel hands out ports above that
/// to outgoing connections at any moment (ip_local_port_range).
pub fn free_ports(hint: u16, count: u16) -> u16 {
    let free = |p: u16| {
        TcpListener::bind(("0.0.0.0", p)).is_ok()
            && UdpSocket::bind(("0.0.0.0", p)).is_ok()
            && (TcpListener::bind(("::", p)).is_ok() || !std::path::Path::new("/proc/net/tcp6").exists())
    };
    let mut first = hint;
    while first.checked_add(count).is_some() {
        match (first..first + count).find(|&p| !free(p)) {
            None => return first,
            Some(taken) => first = taken + 1,
        }
    }
    panic!("no {count} free consecutive host ports from {hint} on: free some or pick another hint")
}

/// Fails clearly when a test prefix would collide with a route the host already has.
pub fn assert_unrouted(prefix: &str) {
    let v6 = prefix.contains(':');
    let fam = if v6 { "-6" } else { "-4" };
    let mut out = sh(&["ip", fam, "route", "show", "match", prefix]);
    out.push_str(&sh(&["ip", fam, "route", "show", "root", prefix]));
    let clash: Vec<&str> = out.lines().filter(|l| !l.starts_with("default")).collect();
    assert!(clash.is_empty(), "test prefix {prefix} overlaps existing routes {clash:?}: pick another range");
}

/// An "outside host": a namespace joined to the host by a veth whose host side (the
/// uplink) holds 198.18.N.1 and fd42:198:N::1; the namespace holds .2 and .3 (::2, ::3).
/// INPUT drops all but SSH and established traffic from it: UFW's effect, scoped to
/// the test's uplink so that a crashed test cannot lock the machine out.
pub struct OutsideHost {
    pub n: u32,
    pub ns: String,
    pub uplink: String,
    /// The veth end in the namespace before it is renamed eth0 there.
    peer: String,
    undo: Undo,
}

impl OutsideHost {
    pub fn new(tag: &str) -> Self {
        Self::with_n(tag, run_id())
    }

    /// As `new`, with the run number (hence 198.18.N.0/24, fd42:198:N::/64) chosen
    /// by the caller: a test confined to a range of its own.
    pub fn with_n(tag: &str, n: u32) -> Self {
        let (ns, uplink, peer) = (format!("dx{tag}o{n}"), format!("dx{tag}u{n}"), format!("dx{tag}x{n}"));
        for prefix in [format!("198.18.{n}.0/24"), format!("fd42:198:{n}::/64")] {
            assert_unrouted(&prefix);
        }
        let mut undo = Undo::default();
        // IPv6 forwarding is off on this host by default; restore what it was.
        let fwd6 = sh(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).trim().to_string();
        undo.push(&["sysctl", "-qw", &format!("net.ipv6.conf.all.forwarding={fwd6}")]);
        sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        sh(&["ip", "netns", "add", &ns]);
        undo.push(&["ip", "netns", "del", &ns]);
        undo.push(&["ip", "link", "del", &uplink]);
        let host = OutsideHost { n, ns: ns.clone(), uplink: uplink.clone(), peer, undo: Undo::default() };
        host.plug();

        for tool in ["iptables", "ip6tables"] {
            let inp = format!("DXI{tag}{n}");
            sh(&[tool, "-N", &inp]);
            undo.push(&[tool, "-X", &inp]);
            undo.push(&[tool, "-F", &inp]);
            sh(&[tool, "-A", &inp, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]);
            sh(&[tool, "-A", &inp, "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
            if tool == "ip6tables" {
                // As UFW's before6.rules: without ICMPv6, neighbour discovery dies.
                sh(&[tool, "-A", &inp, "-p", "ipv6-icmp", "-j", "ACCEPT"]);
            }
            sh(&[tool, "-A", &inp, "-j", "DROP"]);
            sh(&[tool, "-I", "INPUT", "1", "-i", &uplink, "-j", &inp]);
            undo.push(&[tool, "-D", "INPUT", "-i", &uplink, "-j", &inp]);
        }
        OutsideHost { undo, ..host }
    }

    /// The veth pair between the host (the uplink) and the namespace, addressed and
    /// routed. Called again after `unplug` to recreate it under the same names.
    pub fn plug(&self) {
        let (ns, uplink) = (self.ns.as_str(), self.uplink.as_str());
        let peer = self.peer.as_str();
        sh(&["ip", "link", "add", uplink, "type", "veth", "peer", "name", peer]);
        sh(&["ip", "link", "set", peer, "netns", ns]);
        sh(&["ip", "addr", "add", &format!("{}/24", self.v4(1)), "dev", uplink]);
        sh(&["ip", "addr", "add", &format!("{}/64", self.v6(1)), "dev", uplink, "nodad"]);
        sh(&["ip", "link", "set", uplink, "up"]);
        let o = |args: &[&str]| {
            let mut full = vec!["ip", "-n", ns];
            full.extend_from_slice(args);
            sh(&full);
        };
        o(&["link", "set", "lo", "up"]);
        o(&["link", "set", peer, "name", "eth0"]);
        for h in [2, 3] {
            o(&["addr", "add", &format!("{}/24", self.v4(h)), "dev", "eth0"]);
            o(&["addr", "add", &format!("{}/64", self.v6(h)), "dev", "eth0", "nodad"]);
        }
        o(&["link", "set", "eth0", "up"]);
        o(&["route", "add", "default", "via", &self.v4(1)]);
        o(&["-6", "route", "add", "default", "via", &self.v6(1)]);
    }

    /// Deletes the veth pair (both ends), as a restarted VPN or a replugged NIC would.
    pub fn unplug(&self) {
        sh(&["ip", "link", "del", &self.uplink]);
    }

    pub fn v4(&self, host: u32) -> String {
        format!("198.18.{}.{host}", self.n)
    }

    /// The records whose source is this outside host: what this test caused, even
    /// when another run on the machine sends traffic through docker0 meanwhile.
    pub fn own(&self, records: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
        let (v4, v6) = (format!("198.18.{}.", self.n), format!("fd42:198:{}::", self.n));
        records
            .into_iter()
            .filter(|r| r["src_ip"].as_str().is_some_and(|s| s.starts_with(&v4) || s.starts_with(&v6)))
            .collect()
    }
    pub fn v6(&self, host: u32) -> String {
        format!("fd42:198:{}::{host}", self.n)
    }
    /// The outside host's main addresses (it also holds .3 / ::3 for "trusted" tests).
    pub fn src4(&self) -> IpAddr {
        self.v4(2).parse().unwrap()
    }
    pub fn src6(&self) -> IpAddr {
        self.v6(2).parse().unwrap()
    }
    /// The host's address on the uplink, and a port on it.
    pub fn host4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v4(1).parse().unwrap(), port)
    }
    pub fn host6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v6(1).parse().unwrap(), port)
    }
}

/// The seed story on one machine without Docker: a bridge with two "containers",
/// an outside host, DNAT for published ports, FORWARD allowed for the bridge.
pub struct Bed {
    pub n: u32,
    pub bridge: String,
    pub outside: OutsideHost,
    pub c1_ns: String,
    pub c2_ns: String,
    undo: Undo,
}

pub const C_TCP: u16 = 80;
pub const C_UDP: u16 = 5300;
pub const HOST_TCP: u16 = 18080;
pub const HOST_UDP: u16 = 15300;
/// A port the host itself listens on (INPUT path), which the firewall must block.
pub const HOST_INPUT_TCP: u16 = 18081;

impl Bed {
    pub fn bridge_v4(&self, host: u32) -> String {
        format!("10.251.{}.{host}", self.n)
    }
    pub fn bridge_v6(&self, host: u32) -> String {
        format!("fd42:251:{}::{host}", self.n)
    }

    pub fn new(tag: &str) -> Self {
        let outside = OutsideHost::new(tag);
        let n = outside.n;
        let mut undo = Undo::default();
        let bridge = format!("dx{tag}b{n}");
        for prefix in [format!("10.251.{n}.0/24"), format!("fd42:251:{n}::/64")] {
            assert_unrouted(&prefix);
        }
        let mut bed = Bed { n, bridge: bridge.clone(), outside, c1_ns: format!("dx{tag}c1-{n}"), c2_ns: format!("dx{tag}c2-{n}"), undo: Undo::default() };
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        undo.push(&["ip", "link", "del", &bridge]);
        sh(&["ip", "addr", "add", &format!("{}/24", bed.bridge_v4(1)), "dev", &bridge]);
        sh(&["ip", "addr", "add", &format!("{}/64", bed.bridge_v6(1)), "dev", &bridge, "nodad"]);
        sh(&["ip", "link", "set", &bridge, "up"]);

        for (i, ns) in [bed.c1_ns.clone(), bed.c2_ns.clone()].iter().enumerate() {
            let host = 2 + i as u32;
            let (veth, peer) = (format!("dx{tag}v{n}{i}"), format!("dx{tag}p{n}{i}"));
            sh(&["ip", "netns", "add", ns]);
            undo.push(&["ip", "netns", "del", ns]);
            sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer]);
            undo.push(&["ip", "link", "del", &veth]);
            sh(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
            sh(&["ip", "link", "set", &peer, "netns", ns]);
            let ip = |args: &[&str]| {
                let mut full = vec!["ip", "-n", ns.as_str()];
                full.extend_from_slice(args);
                sh(&full);
            };
            ip(&["link", "set", "lo", "up"]);
            ip(&["link", "set", &peer, "name", "eth0"]);
            ip(&["addr", "add", &format!("{}/24", bed.bridge_v4(host)), "dev", "eth0"]);
            ip(&["addr", "add", &format!("{}/64", bed.bridge_v6(host)), "dev", "eth0", "nodad"]);
            ip(&["link", "set", "eth0", "up"]);
            ip(&["route", "add", "default", "via", &bed.bridge_v4(1)]);
            ip(&["-6", "route", "add", "default", "via", &bed.bridge_v6(1)]);
        }

        // DNAT and FORWARD, in chains of our own so that cleanup is exact.
        let uplink = bed.outside.uplink.clone();
        for (tool, c_tcp, c_udp, host_ip) in [
            ("iptables", format!("{}:{C_TCP}", bed.bridge_v4(2)), format!("{}:{C_UDP}", bed.bridge_v4(2)), bed.outside.v4(1)),
            ("ip6tables", format!("[{}]:{C_TCP}", bed.bridge_v6(2)), format!("[{}]:{C_UDP}", bed.bridge_v6(2)), bed.outside.v6(1)),
        ] {
            let (nat, fwd) = (format!("DXN{tag}{n}"), format!("DXF{tag}{n}"));
            sh(&[tool, "-t", "nat", "-N", &nat]);
            undo.push(&[tool, "-t", "nat", "-X", &nat]);
            undo.push(&[tool, "-t", "nat", "-F", &nat]);
            sh(&[tool, "-t", "nat", "-A", &nat, "-d", &host_ip, "-p", "tcp", "--dport", &HOST_TCP.to_string(), "-j", "DNAT", "--to-destination", &c_tcp]);
            sh(&[tool, "-t", "nat", "-A", &nat, "-d", &host_ip, "-p", "udp", "--dport", &HOST_UDP.to_string(), "-j", "DNAT", "--to-destination", &c_udp]);
            sh(&[tool, "-t", "nat", "-I", "PREROUTING", "1", "-i", &uplink, "-j", &nat]);
            undo.push(&[tool, "-t", "nat", "-D", "PREROUTING", "-i", &uplink, "-j", &nat]);

            sh(&[tool, "-N", &fwd]);
            undo.push(&[tool, "-X", &fwd]);
            undo.push(&[tool, "-F", &fwd]);
            sh(&[tool, "-A", &fwd, "-i", &uplink, "-o", &bridge, "-j", "ACCEPT"]);
            sh(&[tool, "-A", &fwd, "-i", &bridge, "-o", &uplink, "-j", "ACCEPT"]);
            sh(&[tool, "-A", &fwd, "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
            sh(&[tool, "-I", "FORWARD", "1", "-j", &fwd]);
            undo.push(&[tool, "-D", "FORWARD", "-j", &fwd]);
        }
        bed.undo = undo;
        bed
    }

    pub fn host_tcp_v4(&self) -> SocketAddr {
        self.outside.host4(HOST_TCP)
    }
    pub fn host_tcp_v6(&self) -> SocketAddr {
        self.outside.host6(HOST_TCP)
    }
    pub fn host_udp_v4(&self) -> SocketAddr {
        self.outside.host4(HOST_UDP)
    }
    pub fn host_udp_v6(&self) -> SocketAddr {
        self.outside.host6(HOST_UDP)
    }
}

/// Programs attached to an interface's TCX hook (egress or ingress), by name.
/// An interface that does not exist (any more) has nothing attached: empty. Any other
/// failure of the query panics: "could not ask" must never read as "nothing attached",
/// or a test asserting a detachment would pass on a broken query.
pub fn tcx_programs(iface: &str, egress: bool) -> Vec<String> {
    use aya::programs::{ProgramError, SchedClassifier, TcAttachType, TcError};
    let kind = if egress { TcAttachType::Egress } else { TcAttachType::Ingress };
    match SchedClassifier::query_tcx(iface, kind) {
        Ok((_, progs)) => progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_string()).collect(),
        Err(e) => {
            // if_nametoindex (in aya, before the query) and BPF_PROG_QUERY (when the
            // interface went away in between) both say ENODEV for "no such interface".
            let os_error = match &e {
                ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
                ProgramError::SyscallError(sys) => sys.io_error.raw_os_error(),
                _ => None,
            };
            if os_error == Some(libc::ENODEV) {
                return Vec::new();
            }
            panic!("querying the TCX {} programs of {iface} failed: {e} ({e:?})", if egress { "egress" } else { "ingress" })
        }
    }
}
pub mod docker;
pub mod skip;
pub use skip::skip;
pub mod craft;
pub mod tun;
pub mod engine;

/// True when an XDP program (native or generic) is attached to `iface`.
pub fn xdp_attached(iface: &str) -> bool {
    let out = sh(&["ip", "-d", "link", "show", "dev", iface]);
    out.contains("xdp")
}

/// Internet checksum (RFC 1071).
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends TCP SYNs from `ns` with spoofed sources (random hosts of `src_net`.0/24 and
/// random ports) to `dst`, through a raw socket, at about `per_second` (faster, the
/// veth's small ring drops part of it before any hook runs). Stops after `count` or
/// `limit`; returns how many were sent.
pub fn syn_flood(ns: &str, src_net: [u8; 3], dst: std::net::SocketAddrV4, count: usize, per_second: u32, limit: Duration) -> usize {
    in_netns(ns, move || {
        // SAFETY: plain socket syscalls on an fd owned here and closed at the end.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let (da, dlen) = sockaddr(SocketAddr::V4(dst));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let start = Instant::now();
        let mut sent = 0;
        while sent < count && start.elapsed() < limit {
            if sent % 256 == 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / f64::from(per_second));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let r = next();
            let src = [src_net[0], src_net[1], src_net[2], (r % 254 + 1) as u8];
            let sport = (1024 + (r >> 8) % 60000) as u16;
            let mut packet = [0u8; 40];
            spoofed_syn(src, sport, dst, (r >> 24) as u32, 0, &mut packet);
            let rc = unsafe { libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, da.as_ptr().cast(), dlen) };
            if rc == packet.len() as isize {
                sent += 1;
            } else {
                // ENOBUFS under load: let the queue drain.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        unsafe { libc::close(fd) };
        sent
    })
}

/// An IPv4 TCP SYN from `src`:`sport` to `dst` with sequence number `seq` and IP id
/// `id`, checksums included: a raw socket (IP_HDRINCL) sends it as it is.
pub fn spoofed_syn(src: [u8; 4], sport: u16, dst: std::net::SocketAddrV4, seq: u32, id: u16, out: &mut [u8; 40]) {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = [&src[..], &dst.ip().octets()[..], &[0, 6, 0, 20][..]].concat();
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out[..20].copy_from_slice(&ip);
    out[20..].copy_from_slice(&tcp);
}

/// Peak resident memory of a process, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens and closes TCP connections from `ns` (source `src`) to `dst` for `length`,
/// one after another; returns how many completed (greeting read). Closed with RST
/// (SO_LINGER 0) so that TIME_WAIT does not exhaust the source ports.
pub fn connect_loop(ns: &str, src: IpAddr, dst: SocketAddr, length: Duration) -> usize {
    in_netns(ns, move || {
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < length {
            let domain = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            // SAFETY: plain socket syscalls on an fd owned by the TcpStream below.
            let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
            let (sa, len) = sockaddr(SocketAddr::new(src, 0));
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            unsafe {
                libc::bind(fd, sa.as_ptr().cast(), len);
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), size_of::<libc::linger>() as u32);
            }
            let (da, dlen) = sockaddr(dst);
            let rc = unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) };
            let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            if rc == 0 {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 2];
                if (&stream).read_exact(&mut buf).is_ok() {
                    done += 1;
                }
            }
        }
        done
    })
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

/// Connects from the host itself (root namespace) and reads the greeting.
pub fn tcp_connect_root(dst: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf)
}

/// Packets an interface dropped on transmit (`ip -s link`), e.g. a veth whose peer's
/// XDP ring was full: lost before any hook of ours could see them.
pub fn tx_dropped(ns: &str, dev: &str) -> u64 {
    let out = sh(&["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// The uplink hook the benchmarks measure (`DOCKEXPOSE_BENCH_UPLINK_HOOK`: xdp or tc;
/// default: dockexpose's own default, tc), printed with their figures.
pub fn bench_uplink_hook() -> String {
    let hook = std::env::var("DOCKEXPOSE_BENCH_UPLINK_HOOK").unwrap_or_else(|_| "tc".into());
    assert!(hook == "xdp" || hook == "tc", "DOCKEXPOSE_BENCH_UPLINK_HOOK must be xdp or tc, not {hook:?}");
    eprintln!("uplink hook measured: {hook} (DOCKEXPOSE_BENCH_UPLINK_HOOK)");
    hook
}
