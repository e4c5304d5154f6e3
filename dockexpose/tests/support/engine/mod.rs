//! A second Docker host on this machine, for tests that need an engine configured
//! otherwise than the machine's own (userland proxy off, SCTP publishing, later IPv6
//! and swarm), which they must leave alone.
//!
//! The shape: a network namespace `dxe{tag}{n}` holding its own `dockerd` (own
//! iptables, docker0 bridge, `--data-root`, `--exec-root`, `--pidfile` and unix
//! socket under a temp dir), joined by a veth pair to an "outside" namespace
//! `dxe{tag}o{n}`. The engine side of the veth (`uplink`) holds 198.18.(250+n%5).1/24
//! and fd42:199:{n}::1/64, the outside side .2 / ::2 with default routes via the
//! engine: traffic from the outside namespace to the uplink address and a published
//! port takes the path of internet traffic on a real host.
//!
//! Nothing is created in the root namespace: the veth is created inside the engine
//! namespace with its peer sent straight to the outside one, so the machine's own
//! iptables, routes and interfaces stay as they were.
//!
//! Findings that shaped it (dockerd 20.10.24, containerd 1.6.20, this kernel):
//! - `ip netns exec` cannot start dockerd: it remounts /sys in a new mount namespace,
//!   the cgroup mounts vanish ("failed to start daemon: Devices cgroup isn't
//!   mounted"). `nsenter --net=/run/netns/NS` keeps the root mount namespace.
//! - Without `--containerd`, and with no /run/containerd/containerd.sock on the
//!   machine, dockerd runs a containerd of its own (socket, state and root under its
//!   exec-root and data-root): nothing is shared with the machine's engine. The
//!   containerd namespaces are set to the engine's name as well
//!   (`--containerd-namespace`, `--containerd-plugins-namespace`), so that even a
//!   shared containerd would keep the two engines apart.
//! - `--config-file` points to an empty file of ours: the machine's
//!   /etc/docker/daemon.json sets data-root, which dockerd refuses to have both as a
//!   flag and in the file.
//! - Storage driver `vfs`: no overlay or fuse-overlayfs mounts or helper processes
//!   to leak; the test image is a few MB.
//! - SCTP: with `--userland-proxy=false`, dockerd still reserves a published port by
//!   listening on it ("dummy proxy"); a kernel without SCTP sockets makes
//!   `-p H:C/sctp` fail with "protocol not supported", exactly as with the proxy on.
//!   [`Proxy::SctpStub`] turns the userland proxy on with a stand-in
//!   (`--userland-proxy-path`) that reports success for SCTP and runs the real
//!   docker-proxy for TCP and UDP: Docker then installs its DNAT and FORWARD rules for
//!   the SCTP port as on any host.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{assert_unrouted, run_id, sh, sh_quiet, Undo, Watcher};

mod container;
mod sctp;

#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use container::EngineContainer;
#[allow(unused_imports, reason = "each test binary uses a different part of the test bed")]
pub use sctp::kernel_has_sctp_sockets;
use sctp::SCTP_PROXY_STUB;

/// How the engine publishes ports besides its iptables rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// `--userland-proxy=false`: iptables only (dockerd still holds a listening
    /// socket per published port to reserve it; none for SCTP on this kernel).
    Off,
    /// `--userland-proxy=true` with a stand-in proxy that pretends to listen on SCTP
    /// ports (this kernel has no SCTP sockets) and runs the real docker-proxy for
    /// TCP and UDP. The only way for dockerd 20.10 here to publish an SCTP port.
    SctpStub,
}

/// Names and addresses of a SecondEngine: namespaces `{prefix}{n}` (engine),
/// `{prefix}o{n}` (outside), uplink `{prefix}u{n}`; the uplink's /24 (`uplink_v4`,
/// "198.18.85") and /64 (`uplink_v6`, "fd42:198:85:", completed with ":1"), and
/// docker0's `--bip`.
pub struct Place {
    pub prefix: String,
    pub n: u32,
    pub uplink_v4: String,
    pub uplink_v6: String,
    pub bip: String,
}

/// A dockerd in a namespace of its own, with an outside namespace in front of it.
/// Everything is removed on drop (containers, dockerd and its children, mounts,
/// namespaces, the temp dir).
pub struct SecondEngine {
    pub n: u32,
    /// The uplink's /24 without its last octet ("198.18.252"), and its /64 up to
    /// the "::" ("fd42:199:23:").
    uplink_v4: String,
    uplink_v6: String,
    /// The engine's network namespace (dockerd, its iptables, docker0, uplink).
    pub ns: String,
    /// `unix:///…/docker.sock` of this engine.
    pub socket: String,
    /// The interface in `ns` facing the outside namespace.
    pub uplink: String,
    /// The "internet": a namespace whose eth0 holds .2 / ::2, default route via the engine.
    pub outside_ns: String,
    /// The temp dir holding data-root, exec-root, pidfile, socket, config and log.
    pub dir: PathBuf,
    /// dockerd's log.
    pub log: PathBuf,
    /// The test image (support::docker::echo_image()), loaded into this engine.
    pub image: String,
    /// How long dockerd took to answer `docker info`, and the image to load.
    pub startup: Duration,
    pub image_load: Duration,
    dockerd: Option<Child>,
    /// nsenter's arguments that start this dockerd (for `restart_dockerd`).
    dockerd_args: Vec<String>,
    undo: Undo,
}

impl SecondEngine {
    /// Starts an engine with the userland proxy off, plus `extra_dockerd_args`
    /// (later ones win over the defaults, e.g. another `--bip`).
    pub fn start(tag: &str, extra_dockerd_args: &[&str]) -> SecondEngine {
        Self::start_with(tag, Proxy::Off, extra_dockerd_args)
    }

    pub fn start_with(tag: &str, proxy: Proxy, extra_dockerd_args: &[&str]) -> SecondEngine {
        let n = run_id();
        let place = Place {
            prefix: format!("dxe{tag}"),
            n,
            uplink_v4: format!("198.18.{}", 250 + n % 5),
            uplink_v6: format!("fd42:199:{n}:"),
            bip: format!("10.252.{n}.1/24"),
        };
        Self::start_at(place, proxy, extra_dockerd_args)
    }

    /// As `start_with`, with names and addresses chosen by the caller (a test confined
    /// to ranges of its own).
    pub fn start_at(place: Place, proxy: Proxy, extra_dockerd_args: &[&str]) -> SecondEngine {
        let Place { prefix, n, uplink_v4, uplink_v6, bip } = place;
        let (ns, outside_ns, uplink) = (format!("{prefix}{n}"), format!("{prefix}o{n}"), format!("{prefix}u{n}"));
        assert!(uplink.len() <= 15, "prefix {prefix:?} too long: interface name {uplink} exceeds 15 characters");
        let bip_net =
            bip.rsplit_once('.').map(|(net, _)| format!("{net}.0/{}", bip.rsplit('/').next().unwrap())).unwrap();
        // The prefixes live only inside our namespaces, but must not shadow anything
        // the machine routes either (testbed rule).
        for prefix in [format!("{uplink_v4}.0/24"), format!("{uplink_v6}:/64"), bip_net] {
            assert_unrouted(&prefix);
        }
        let dir = std::env::temp_dir().join(&ns);
        let socket = format!("unix://{}/docker.sock", dir.display());
        let log = dir.join("dockerd.log");
        let mut engine = SecondEngine {
            n,
            uplink_v4,
            uplink_v6,
            ns: ns.clone(),
            socket,
            uplink: uplink.clone(),
            outside_ns: outside_ns.clone(),
            dir: dir.clone(),
            log: log.clone(),
            image: String::new(),
            startup: Duration::ZERO,
            image_load: Duration::ZERO,
            dockerd: None,
            dockerd_args: Vec::new(),
            undo: Undo::default(),
        };

        // Namespaces and the veth, never touching the root namespace.
        for name in [&ns, &outside_ns] {
            sh_quiet(&["ip", "netns", "del", name]); // a stale one of a dead run with this pid
            sh(&["ip", "netns", "add", name]);
            engine.undo.push(&["ip", "netns", "del", name]);
        }
        let e = |args: &[&str]| {
            let mut full = vec!["ip", "-n", ns.as_str()];
            full.extend_from_slice(args);
            sh(&full);
        };
        let o = |args: &[&str]| {
            let mut full = vec!["ip", "-n", outside_ns.as_str()];
            full.extend_from_slice(args);
            sh(&full);
        };
        e(&["link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns", &outside_ns]);
        e(&["link", "set", "lo", "up"]);
        e(&["addr", "add", &format!("{}/24", engine.engine_v4()), "dev", &uplink]);
        e(&["addr", "add", &format!("{}/64", engine.engine_v6()), "dev", &uplink, "nodad"]);
        e(&["link", "set", &uplink, "up"]);
        o(&["link", "set", "lo", "up"]);
        o(&["addr", "add", &format!("{}/24", engine.outside_v4()), "dev", "eth0"]);
        o(&["addr", "add", &format!("{}/64", engine.outside_v6()), "dev", "eth0", "nodad"]);
        o(&["link", "set", "eth0", "up"]);
        o(&["route", "add", "default", "via", &engine.engine_v4()]);
        o(&["-6", "route", "add", "default", "via", &engine.engine_v6()]);
        // Forwarding on inside the engine namespace. Docker, when it turns IPv4
        // forwarding on itself (as on the machine), also sets FORWARD's policy to
        // DROP; it leaves the policy alone when forwarding is already on, so set it
        // here to keep the same firewall as the machine's engine.
        engine.in_ns(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        engine.in_ns(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        if !extra_dockerd_args.iter().any(|a| a.starts_with("--iptables=false")) {
            engine.in_ns(&["iptables", "-P", "FORWARD", "DROP"]);
        }

        // dockerd's files.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::create_dir_all(dir.join("exec")).unwrap();
        fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let d = |name: &str| dir.join(name).display().to_string();
        let mut args: Vec<String> = vec![
            format!("--net=/run/netns/{ns}"),
            "dockerd".into(),
            format!("--config-file={}", d("daemon.json")),
            format!("--data-root={}", d("data")),
            format!("--exec-root={}", d("exec")),
            format!("--pidfile={}", d("dockerd.pid")),
            format!("--host={}", engine.socket),
            format!("--containerd-namespace={ns}"),
            format!("--containerd-plugins-namespace={ns}-plugins"),
            "--storage-driver=vfs".into(),
            format!("--bip={bip}"),
        ];
        match proxy {
            Proxy::Off => args.push("--userland-proxy=false".into()),
            Proxy::SctpStub => {
                let stub = dir.join("docker-proxy-sctp-stub");
                fs::write(&stub, SCTP_PROXY_STUB).unwrap();
                sh(&["chmod", "755", stub.to_str().unwrap()]);
                args.push("--userland-proxy=true".into());
                args.push(format!("--userland-proxy-path={}", stub.display()));
            }
        }
        args.extend(extra_dockerd_args.iter().map(|s| s.to_string()));
        engine.dockerd_args = args;
        let start = Instant::now();
        engine.spawn_dockerd();
        engine.startup = start.elapsed();

        // The test image, from the machine's engine.
        let t = Instant::now();
        engine.image = super::docker::echo_image();
        engine.load_image(&engine.image.clone());
        engine.image_load = t.elapsed();
        eprintln!(
            "second engine {ns}: dockerd ready in {:?}, image loaded in {:?} (socket {}, uplink {uplink} {}, outside {outside_ns} {})",
            engine.startup,
            engine.image_load,
            engine.socket,
            engine.engine_v4(),
            engine.outside_v4()
        );
        engine
    }

    /// Stops this engine's dockerd and starts it again (as a host's boot order
    /// would, after a firewall that flushes its rules): Docker makes its chains anew.
    /// Containers are stopped by it.
    /// Other processes in the namespace (a firewall daemon) are left running.
    pub fn restart_dockerd(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            // SAFETY: signalling the dockerd we spawned (nsenter execs it: same pid).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.spawn_dockerd();
    }

    /// Starts dockerd and waits until its API answers.
    fn spawn_dockerd(&mut self) {
        let (ns, args) = (self.ns.clone(), self.dockerd_args.clone());
        let logfile = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let start = Instant::now();
        let child = Command::new("nsenter")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .unwrap_or_else(|e| panic!("starting dockerd (nsenter {args:?}): {e}"));
        self.dockerd = Some(child);
        let engine = self;

        // Bounded wait for the API.
        let deadline = start + Duration::from_secs(30);
        loop {
            let out =
                Command::new("docker").args(["-H", &engine.socket, "info", "--format", "{{.ServerVersion}}"]).output();
            if out.is_ok_and(|o| o.status.success()) {
                break;
            }
            if let Some(status) = engine.dockerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("second engine {ns}: dockerd exited ({status}) before answering:\n{}", engine.log_tail(40));
            }
            if Instant::now() > deadline {
                panic!(
                    "second engine {ns}: dockerd did not answer on {} within 30 s:\n{}",
                    engine.socket,
                    engine.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Copies an image of the machine's engine into this one (`docker save | docker load`).
    pub fn load_image(&self, image: &str) {
        let mut save =
            Command::new("docker").args(["save", image]).stdout(Stdio::piped()).spawn().expect("docker save");
        let pipe = save.stdout.take().unwrap();
        let load =
            Command::new("docker").args(["-H", &self.socket, "load", "-q"]).stdin(pipe).output().expect("docker load");
        let saved = save.wait().unwrap();
        assert!(
            saved.success() && load.status.success(),
            "copying {image} into {}: save {saved}, load {}: {}{}",
            self.ns,
            load.status,
            String::from_utf8_lossy(&load.stdout),
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// The uplink's addresses (the "public" address of this Docker host).
    pub fn engine_v4(&self) -> String {
        format!("{}.1", self.uplink_v4)
    }
    pub fn engine_v6(&self) -> String {
        format!("{}:1", self.uplink_v6)
    }
    /// The outside namespace's addresses.
    pub fn outside_v4(&self) -> String {
        format!("{}.2", self.uplink_v4)
    }
    pub fn outside_v6(&self) -> String {
        format!("{}:2", self.uplink_v6)
    }
    /// The engine's uplink address and a port, as seen from outside.
    pub fn host4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.engine_v4().parse().unwrap(), port)
    }
    pub fn host6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.engine_v6().parse().unwrap(), port)
    }

    /// Runs the docker CLI against this engine; panics with its output on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        let mut full = vec!["docker", "-H", self.socket.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs the docker CLI against this engine; Err(stderr) on failure.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker").args(["-H", &self.socket]).args(args).output().expect("docker CLI");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a command inside the engine's network namespace (root mount namespace):
    /// `iptables -S`, `ip addr`... Panics with its output on failure.
    pub fn in_ns(&self, args: &[&str]) -> String {
        let net = format!("--net=/run/netns/{}", self.ns);
        let mut full = vec!["nsenter", net.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `docker run -d --name NAME ARGS... IMAGE CMD...` on this engine; the guard
    /// removes the container. Panics with Docker's error if it does not start.
    pub fn run(&self, name: &str, args: &[&str], image: &str, cmd: &[&str]) -> EngineContainer<'_> {
        self.try_run(name, args, image, cmd).unwrap_or_else(|e| panic!("docker run {name} on {}: {e}", self.ns))
    }

    /// As `run`, with Docker's error as Err (the half-created container removed).
    pub fn try_run(&self, name: &str, args: &[&str], image: &str, cmd: &[&str]) -> Result<EngineContainer<'_>, String> {
        let _ = self.try_docker(&["rm", "-f", name]);
        let mut full = vec!["run", "-d", "--name", name];
        full.extend_from_slice(args);
        full.push(image);
        full.extend_from_slice(cmd);
        match self.try_docker(&full) {
            Ok(_) => Ok(EngineContainer { engine: self, name: name.to_string() }),
            Err(e) => {
                // `docker run` creates before it starts: a failed start leaves one behind.
                let _ = self.try_docker(&["rm", "-f", name]);
                Err(e.trim().to_string())
            }
        }
    }

    /// The last `lines` lines of dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `dockexpose watch` inside the engine's namespace against this engine
    /// (`--docker-host` and `--uplink` given here) and waits until it watches.
    pub fn watch(&self, args: &[&str], json: PathBuf) -> Watcher {
        let mut full = vec!["--docker-host", self.socket.as_str(), "--uplink", self.uplink.as_str()];
        full.extend_from_slice(args);
        Watcher::start_in_netns(&self.ns, &full, json)
    }

    fn stop_dockerd(&mut self) {
        let Some(mut child) = self.dockerd.take() else { return };
        if let Ok(None) = child.try_wait() {
            // SAFETY: signalling the dockerd we spawned (nsenter execs it: same pid).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("second engine {}: dockerd ignored SIGTERM for 15 s, killing it", self.ns);
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        // What dockerd leaves when it dies hard: containerd, shims, proxies, all in
        // the engine namespace and all ours.
        for _ in 0..2 {
            let pids = Command::new("ip")
                .args(["netns", "pids", &self.ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let pids: Vec<i32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: a process inside the namespace this engine created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Unmounts whatever dockerd left mounted under its dir (the data-root bind
    /// mount, container netns files), deepest first.
    fn unmount_leftovers(&self) {
        let prefix = format!("{}/", self.dir.display());
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix) || *p == prefix.trim_end_matches('/'))
            .map(str::to_string)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        for p in points {
            sh_quiet(&["umount", "-l", &p]);
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            if let Ok(ids) = self.try_docker(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut rm = vec!["rm", "-f"];
                    rm.extend(ids);
                    let _ = self.try_docker(&rm);
                }
            }
        }
        self.stop_dockerd();
        self.unmount_leftovers();
        // Namespaces (and with them the veth, docker0 and the engine's iptables).
        drop(std::mem::take(&mut self.undo));
        let _ = fs::remove_dir_all(&self.dir);
    }
}
