//! The Docker inventory against Podman's Docker-compatible API (`podman system
//! service`), through the very calls the daemon makes (`inventory::docker::connect`,
//! `snapshot`, `run`). Needs root and podman (`cargo xtask setup` installs Debian's
//! podman and netavark). Without podman (or when its service cannot be started) every
//! test here prints "SKIPPED" and why, and passes; but when the run demands the
//! privileged tests (DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS, as `cargo xtask test` sets
//! in CI) or these in particular (DOCKEXPOSE_REQUIRE_PODMAN_TESTS), it fails instead.
//!
//! Each test starts its own `podman system service` on a private socket under /tmp,
//! imports a one-file image (Debian's static busybox, `busybox-static`) and removes
//! every container, network and image it made, and stops the service, in guards.
//! Addresses: podman's default network (10.88.0.0/16), and 10.253.N.0/24 with
//! fd42:253:N::/64 for a network of the test's own (N differs per run).

mod support;

use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use dockexpose::{
    inventory::{
        docker::{self, DockerState},
        model::{Inventory, PublishedPort},
    },
    kernel::event::Proto,
};
use support::{assert_unrouted, privileged, run_id, sh, sh_quiet, Undo};

/// Podman (and the host's networking it changes) is shared: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Prints why a test is skipped, or panics when the run demands the privileged tests
/// (CI: DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS, the same switch as `support::privileged`)
/// or the podman tests (DOCKEXPOSE_REQUIRE_PODMAN_TESTS): a CI runner without podman
/// must not pass by skipping.
fn skip(test: &str, why: &str) -> Option<Podman> {
    for var in ["DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS", "DOCKEXPOSE_REQUIRE_PODMAN_TESTS"] {
        if std::env::var_os(var).is_some() {
            panic!("{test}: cannot run: {why}, and {var} is set, so this is a failure, not a skip");
        }
    }
    support::skip(test, why);
    None
}

/// A rootful `podman system service` on a private socket, with the containers,
/// networks and image a test made; all removed, and the service stopped, on drop.
struct Podman {
    n: u32,
    tag: &'static str,
    endpoint: String,
    socket: PathBuf,
    image: String,
    service: Option<Child>,
    undo: Undo,
    _serial: MutexGuard<'static, ()>,
}

impl Podman {
    fn start(test: &str, tag: &'static str) -> Option<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !privileged(test) {
            return None;
        }
        match Command::new("podman").arg("--version").output() {
            Ok(o) if o.status.success() => eprintln!("{test}: {}", String::from_utf8_lossy(&o.stdout).trim()),
            Ok(o) => {
                return skip(test, &format!("`podman --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim()))
            }
            Err(e) => {
                return skip(
                    test,
                    &format!(
                        "podman is not installed (running `podman --version`: {e}); `cargo xtask setup` installs it"
                    ),
                )
            }
        }
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.exists() {
            return skip(test, "no /bin/busybox for the test image (install busybox-static)");
        }

        let n = run_id();
        let mut undo = Undo::default();
        // netavark turns forwarding on (IPv6 too, for a network with an IPv6 subnet):
        // put back what it was, after everything else is gone.
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            let was = sh(&["sysctl", "-n", key]).trim().to_string();
            undo.push(&["sysctl", "-qw", &format!("{key}={was}")]);
        }
        // netavark's base chains stay after its last container; remove them when they
        // were not there before (a podman already in use keeps its own).
        let had_netavark = Command::new("iptables")
            .args(["-S", "NETAVARK_FORWARD"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !had_netavark.map(|s| s.success()).unwrap_or(false) {
            forget_netavark_chains(&mut undo);
        }

        let dir = std::env::temp_dir().join(format!("dockexpose-podman-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("podman.sock");
        let endpoint = format!("unix://{}", socket.display());
        let log = dir.join("service.log");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &endpoint])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return skip(test, &format!("cannot start `podman system service`: {e}")),
        };
        let mut podman = Podman {
            n,
            tag,
            endpoint,
            socket: socket.clone(),
            image: format!("localhost/dockexpose-test/busybox:{tag}{}", std::process::id()),
            service: Some(child),
            undo,
            _serial: serial,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            let exited = podman.service.as_mut().unwrap().try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => "no socket after 20 s".into(),
                };
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return skip(test, &format!("`podman system service` did not come up: {why}: {}", text.trim()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{test}: podman service at {}", podman.endpoint);

        // The image: one static file, so that no registry is needed.
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
        let tar = dir.join("rootfs.tar");
        sh(&["tar", "-C", rootfs.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
        let image = podman.image.clone();
        podman.undo.push(&["podman", "rmi", "-f", &image]);
        sh(&["podman", "import", "--quiet", tar.to_str().unwrap(), &image]);
        Some(podman)
    }

    /// `podman run -d` of busybox httpd on port 80; returns the container's id.
    fn run(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("dxpm-{}-{name}-{}", self.tag, self.n);
        sh_quiet(&["podman", "rm", "-f", "-t", "0", &name]);
        self.undo.push(&["podman", "rm", "-f", "-t", "0", &name]);
        // Podman's default limits (nofile 1048576, nproc 4194304) need
        // CAP_SYS_RESOURCE to be raised to, which a sandboxed root may lack.
        let mut full =
            vec!["podman", "run", "-d", "--name", &name, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[&self.image, "/bin/busybox", "httpd", "-f", "-p", "80"]);
        sh(&full).trim().to_string()
    }

    fn rm(&self, id: &str) {
        sh(&["podman", "rm", "-f", "-t", "0", id]);
    }

    /// A bridge network of the test's own, dual stack.
    fn network(&mut self) -> String {
        let name = format!("dxpm-{}-net-{}", self.tag, self.n);
        let (v4, v6) = (format!("10.253.{}.0/24", self.n), format!("fd42:253:{}::/64", self.n));
        assert_unrouted(&v4);
        assert_unrouted(&v6);
        sh_quiet(&["podman", "network", "rm", "-f", &name]);
        self.undo.push(&["podman", "network", "rm", "-f", &name]);
        sh(&["podman", "network", "create", "--subnet", &v4, "--ipv6", "--subnet", &v6, &name]);
        name
    }

    /// The addresses podman itself gives a container.
    fn addresses(&self, id: &str) -> BTreeSet<IpAddr> {
        let fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$v.IPAddress}} {{$v.GlobalIPv6Address}} {{end}}";
        sh(&["podman", "inspect", "-f", fmt, id]).split_whitespace().map(|s| s.parse().unwrap()).collect()
    }

    /// The Linux bridge of a network, as podman knows it (`podman network inspect`).
    fn interface(&self, network_id: &str) -> String {
        sh(&["podman", "network", "inspect", "-f", "{{.NetworkInterface}}", network_id]).trim().to_string()
    }

    fn port(&self, i: u16) -> u16 {
        19_000 + (self.n as u16 % 200) * 4 + i
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.undo));
        if let Some(mut child) = self.service.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Undo entries that remove the chains and jumps netavark leaves behind.
fn forget_netavark_chains(undo: &mut Undo) {
    let mut cmds: Vec<Vec<&str>> = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let comment = "netavark firewall plugin rules";
        cmds.push(vec![tool, "-D", "FORWARD", "-m", "comment", "--comment", comment, "-j", "NETAVARK_FORWARD"]);
        cmds.push(vec![tool, "-F", "NETAVARK_FORWARD"]);
        cmds.push(vec![tool, "-X", "NETAVARK_FORWARD"]);
        for hook in ["PREROUTING", "OUTPUT"] {
            cmds.push(vec![
                tool,
                "-t",
                "nat",
                "-D",
                hook,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                "NETAVARK-HOSTPORT-DNAT",
            ]);
        }
        cmds.push(vec![tool, "-t", "nat", "-D", "POSTROUTING", "-j", "NETAVARK-HOSTPORT-MASQ"]);
        for chain in ["NETAVARK-HOSTPORT-DNAT", "NETAVARK-HOSTPORT-MASQ", "NETAVARK-HOSTPORT-SETMARK"] {
            cmds.push(vec![tool, "-t", "nat", "-F", chain]);
        }
        for chain in ["NETAVARK-HOSTPORT-DNAT", "NETAVARK-HOSTPORT-MASQ", "NETAVARK-HOSTPORT-SETMARK"] {
            cmds.push(vec![tool, "-t", "nat", "-X", chain]);
        }
    }
    // Undo runs its entries last-pushed first.
    for cmd in cmds.iter().rev() {
        undo.push(cmd);
    }
}

fn container<'a>(inv: &'a Inventory, id: &str) -> &'a dockexpose::inventory::model::Container {
    inv.containers
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("container {id} not in the inventory: {inv:#?}"))
}

fn port(host_ip: &str, host_port: u16, container_port: u16, proto: Proto) -> PublishedPort {
    PublishedPort { host_ip: host_ip.parse().unwrap(), host_port, container_port, proto }
}

/// An HTTP request to busybox httpd through the published port: it answers (404).
fn http_answers(dst: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&dst, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_come_with_their_addresses_and_published_ports() {
    let test = "podman_containers_come_with_their_addresses_and_published_ports";
    let Some(mut podman) = Podman::start(test, "ct") else { return };
    let net = podman.network();
    let (p_web, p_local, p_udp) = (podman.port(0), podman.port(1), podman.port(2));
    let web = podman.run("web", &["-p", &format!("{p_web}:80")]);
    let db = podman
        .run("db", &["--network", &net, "-p", &format!("127.0.0.1:{p_local}:80"), "-p", &format!("{p_udp}:5353/udp")]);
    assert!(http_answers(SocketAddr::from(([127, 0, 0, 1], p_web))), "busybox httpd does not answer on {p_web}");

    // The daemon's own calls: negotiate_version + ping, list_networks, list_containers.
    let client = docker::connect(&podman.endpoint).await.unwrap_or_else(|e| panic!("connect: {e}"));
    assert!(client.is_podman(), "Podman's engine is told apart from Docker's");
    let inv = docker::snapshot(&client).await.unwrap_or_else(|e| panic!("snapshot through Podman's API: {e}"));
    eprintln!("{test}: inventory: {inv:#?}");

    let w = container(&inv, &web);
    assert_eq!(w.name, format!("dxpm-ct-web-{}", podman.n));
    assert_eq!(w.image, podman.image);
    assert_eq!(w.addresses.iter().map(|(_, ip)| *ip).collect::<BTreeSet<_>>(), podman.addresses(&web));
    // Bound to every address: Podman leaves "IP" out, which means 0.0.0.0.
    assert_eq!(w.ports, vec![port("0.0.0.0", p_web, 80, Proto::Tcp)]);

    let d = container(&inv, &db);
    let want = podman.addresses(&db);
    assert_eq!(want.len(), 2, "an IPv4 and an IPv6 address on {net}: {want:?}");
    assert_eq!(d.addresses.iter().map(|(_, ip)| *ip).collect::<BTreeSet<_>>(), want);
    let mut ports = vec![port("127.0.0.1", p_local, 80, Proto::Tcp), port("0.0.0.0", p_udp, 5353, Proto::Udp)];
    ports.sort();
    assert_eq!(d.ports, ports);
    assert!(d.ports[0].loopback_only() || d.ports[1].loopback_only());
    // Podman gives the network *name* where Docker gives the network id
    // (podman#24910); nothing joins on it today, but it is not a network id.
    eprintln!("{test}: endpoint network keys: {:?} / {:?}", w.addresses, d.addresses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_networks_name_their_real_bridge() {
    let test = "podman_networks_name_their_real_bridge";
    let Some(mut podman) = Podman::start(test, "br") else { return };
    let net = podman.network();
    // netavark creates a network's bridge with its first running container.
    podman.run("default", &["-p", &format!("{}:80", podman.port(0))]);
    podman.run("own", &["--network", &net]);

    let client = docker::connect(&podman.endpoint).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let inv = docker::snapshot(&client).await.unwrap_or_else(|e| panic!("snapshot through Podman's API: {e}"));
    let mut wrong = Vec::new();
    let mut seen = 0;
    for n in &inv.networks {
        let real = podman.interface(&n.id);
        assert!(
            PathBuf::from("/sys/class/net").join(&real).exists(),
            "podman says {} is on {real}, which does not exist",
            n.id
        );
        // The bridge that holds an address of the network's subnet: what would work.
        let by_subnet: BTreeSet<String> = n
            .subnets
            .iter()
            .flat_map(|p| {
                sh(&["ip", "-o", "addr", "show", "to", &p.to_string()])
                    .lines()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        eprintln!(
            "{test}: network {:?} id {} subnets {:?}: dockexpose says bridge {:?}, podman's interface is {real:?}, interface(s) holding the subnet: {by_subnet:?}",
            n.name,
            &n.id[..12],
            n.subnets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            n.bridge
        );
        assert_eq!(by_subnet, BTreeSet::from([real.clone()]), "the subnet rule finds podman's bridge");
        seen += 1;
        if n.bridge != real {
            wrong.push(format!("{:?} (id {}): {:?} instead of {real:?}", n.name, &n.id[..12], n.bridge));
        }
    }
    assert_eq!(seen, 2, "podman's default network and the test's own: {:#?}", inv.networks);
    assert!(wrong.is_empty(), "bridge names that are not the real interface (Podman's compat API has no com.docker.network.bridge.name): {wrong:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_events_keep_the_inventory_current() {
    let test = "podman_events_keep_the_inventory_current";
    let Some(mut podman) = Podman::start(test, "ev") else { return };
    let (tx, mut rx) = tokio::sync::watch::channel(DockerState::Starting);
    let follow = tokio::spawn(docker::run(podman.endpoint.clone(), tx));

    async fn wait_for(
        rx: &mut tokio::sync::watch::Receiver<DockerState>,
        limit: Duration,
        what: &str,
        f: impl Fn(&Inventory) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if let DockerState::Connected(inv) = &*rx.borrow_and_update() {
                if f(inv) {
                    return start.elapsed();
                }
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                panic!("{what}: not within {limit:?}; last state {:?}", *rx.borrow());
            }
        }
    }

    wait_for(&mut rx, Duration::from_secs(15), "connected to podman", |_| true).await;
    // Settle: the first re-list comes right after the first listing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Well under the 30 s resync: only an event explains it.
    let limit = Duration::from_secs(10);
    let id = podman.run("late", &["-p", &format!("{}:80", podman.port(3))]);
    let took =
        wait_for(&mut rx, limit, "a started container appears", |inv| inv.containers.iter().any(|c| c.id == id)).await;
    eprintln!("{test}: started container listed after {took:?}");
    podman.rm(&id);
    let took =
        wait_for(&mut rx, limit, "a removed container disappears", |inv| inv.containers.iter().all(|c| c.id != id))
            .await;
    eprintln!("{test}: removed container gone after {took:?}");
    follow.abort();
}
