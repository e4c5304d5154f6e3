//! Every way a port gets published (issue 11), each end to end: traffic from an
//! outside namespace through the publish path, and what dockexpose writes for it
//! (stage, exact host port, identity where the runtime offers one).
//! - compose: a real docker-compose (v1) project, two services on two networks;
//! - `docker run -P` with several EXPOSEd ports, and a second container sharing the
//!   first one's network namespace (`--network container:X`);
//! - the nftables backend: Docker 28's `ip docker-bridges` layout, no iptables rule;
//! - Podman's netavark bridges watched with `--bridge`, identity from its socket.
//!
//! Needs root and Docker (podman, docker-compose and nft: `cargo xtask setup`); a
//! missing tool is a failure when the run demands the privileged tests (CI).
//! Names start with `dx11`; addresses: 198.18.N.0/24 and fd42:198:N::/64 outside,
//! 10.251.N.0/24 and fd42:251:N::/64 for bridges, N in 80..=99.
//! One at a time: `flock /tmp/dockexpose-root-tests.lock cargo test --release -p dockexpose --test publish_paths -- --test-threads=1`

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

/// This file's run number: 80..=99 (the ranges given to these tests).
fn n11() -> u32 {
    80 + std::process::id() % 20
}

/// True when `tool` runs (`tool --version`); otherwise prints why the test is
/// skipped, or panics when the run demands the privileged tests.
fn have(test: &str, tool: &str) -> bool {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = format!("`{tool} --version` failed ({:?}); `cargo xtask setup` installs it", other.map(|o| o.status));
            if std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
                panic!("{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set");
            }
            skip(test, &why)
        }
    }
}

/// Polls `f` until it returns true or `limit` passes.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The one record of `stage` with this source port (panics with all records if
/// there is not exactly one).
fn one<'a>(records: &'a [Value], stage: &str, proto: &str, src_port: u16) -> &'a Value {
    let found: Vec<&Value> =
        records.iter().filter(|r| r["stage"] == stage && r["proto"] == proto && r["src_port"] == src_port).collect();
    assert_eq!(found.len(), 1, "exactly one {stage} {proto} record from source port {src_port}:\n{records:#?}");
    found[0]
}

/// Opens a TCP connection from `ns` (source address `src`) to `dst` and returns its
/// local port: the handshake completed (for servers that do not speak first).
fn tcp_open(ns: &str, src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<u16> {
    let any: IpAddr = if dst.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
    let bind = SocketAddr::new(src.unwrap_or(any), 0);
    in_netns(ns, move || {
        let domain = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: a socket owned by the TcpStream made from it right away.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let (sa, len) = raw_sockaddr(bind);
        // SAFETY: binding and connecting our own fd with valid sockaddrs.
        if unsafe { libc::bind(fd, sa.as_ptr().cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32) };
        let (da, dlen) = raw_sockaddr(dst);
        if unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream.local_addr()?.port())
    })
}

fn raw_sockaddr(addr: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    // SAFETY: plain-old-data socket address structures, viewed as bytes.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                let b = std::slice::from_raw_parts((&sin as *const libc::sockaddr_in).cast::<u8>(), size_of::<libc::sockaddr_in>());
                (b.to_vec(), b.len() as u32)
            }
            SocketAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                let b = std::slice::from_raw_parts((&sin6 as *const libc::sockaddr_in6).cast::<u8>(), size_of::<libc::sockaddr_in6>());
                (b.to_vec(), b.len() as u32)
            }
        }
    }
}

/// A docker-compose (v1) project, brought down (containers, networks) on drop.
struct Compose {
    project: String,
    file: PathBuf,
}

impl Compose {
    fn up(project: &str, yaml: &str) -> Self {
        let file = std::env::temp_dir().join(format!("{project}.yml"));
        std::fs::write(&file, yaml).unwrap();
        let c = Compose { project: project.into(), file };
        sh_quiet(&["docker-compose", "-p", project, "-f", c.file.to_str().unwrap(), "down", "-v", "--remove-orphans"]);
        sh(&["docker-compose", "--no-ansi", "-p", project, "-f", c.file.to_str().unwrap(), "up", "-d"]);
        c
    }

    /// The id of the container of `service` (`docker-compose ps -q`).
    fn id(&self, service: &str) -> String {
        sh(&["docker-compose", "-p", &self.project, "-f", self.file.to_str().unwrap(), "ps", "-q", service]).trim().to_string()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        sh_quiet(&["docker-compose", "-p", &self.project, "-f", self.file.to_str().unwrap(), "down", "-v", "--remove-orphans", "-t", "0"]);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    sh(&["docker", "inspect", "-f", format, id]).trim().to_string()
}

#[test]
fn compose_project_is_named_and_its_unpublished_database_flagged() {
    let test = "compose_project_is_named_and_its_unpublished_database_flagged";
    if !docker::ready(test) || !have(test, "docker-compose") {
        return;
    }
    let image = docker::echo_image();
    let n = n11();
    let outside = OutsideHost::with_n("11c", n);
    let (front_net, back_net) = (format!("10.251.{n}.0/25"), format!("10.251.{n}.128/25"));
    let (front_br, back_br) = (format!("dx11cf{n}"), format!("dx11cb{n}"));
    let project = format!("dx11c{n}");
    let web_port = 18_100 + n as u16;
    // Two services on two networks: web (front and back) publishes a port and is
    // linked to db (back only), which publishes nothing. The bridges are named, as
    // a compose file may (`com.docker.network.bridge.name`).
    let yaml = format!(
        r#"version: "2.4"
services:
  web:
    image: "{image}"
    command: ["80", "5300"]
    ports: ["{web_port}:80"]
    networks: [front, back]
    links: [db]
  db:
    image: "{image}"
    command: ["5432", "5300"]
    networks: [back]
networks:
  front:
    driver_opts: {{com.docker.network.bridge.name: "{front_br}"}}
    ipam: {{config: [{{subnet: "{front_net}"}}]}}
  back:
    driver_opts: {{com.docker.network.bridge.name: "{back_br}"}}
    ipam: {{config: [{{subnet: "{back_net}"}}]}}
"#
    );
    let compose = Compose::up(&project, &yaml);
    let (web, db) = (compose.id("web"), compose.id("db"));
    let web_name = inspect(&web, "{{.Name}}").trim_start_matches('/').to_string();
    let db_name = inspect(&db, "{{.Name}}").trim_start_matches('/').to_string();
    let db_ip = inspect(&db, &format!("{{{{(index .NetworkSettings.Networks \"{project}_back\").IPAddress}}}}"));
    assert!(db_ip.starts_with(&format!("10.251.{n}.")), "db on the back network: {db_ip}");

    let mut w = Watcher::start(&["--stats-interval", "0", "--uplink", &outside.uplink], json_path("11compose"));
    for br in [&front_br, &back_br] {
        assert!(within(Duration::from_secs(5), || tcx_programs(br, true) == ["bridge_egress"]), "{br} not watched: {:?}", w.lines());
    }
    // The published port, from outside: the firewall-bypass story of a compose project.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(web_port)).expect("compose port reachable from outside");
    // The database publishes nothing; a careless DOCKER-USER accept routes to it.
    let _accept = docker::docker_user_rule(&["-i", outside.uplink.as_str(), "-o", back_br.as_str(), "-j", "ACCEPT"]);
    let db_sport = tcp_connect(&outside.ns, Some(outside.src4()), SocketAddr::new(db_ip.parse().unwrap(), 5432))
        .expect("the unpublished database, routed to directly");
    w.wait_for_line(&format!("EXPOSED UNPUBLISHED PORT {db_name}"), Duration::from_secs(5));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let records = outside.own(records);

    let r = one(&records, "reached", "tcp", sport);
    assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64()), (Some(outside.v4(1).as_str()), Some(web_port as u64)));
    assert_eq!((r["dst_port"].as_u64(), r["exposure"].as_str()), (Some(80), Some("published")));
    // Docker DNATs to the container's address on one of its networks: that bridge.
    let iface = r["iface"].as_str().unwrap();
    let net = if iface == front_br { "front" } else { "back" };
    assert!(iface == front_br || iface == back_br, "{r:#}");
    assert_eq!(r["dst_ip"], inspect(&web, &format!("{{{{(index .NetworkSettings.Networks \"{project}_{net}\").IPAddress}}}}")).as_str());
    let c = &r["container"];
    assert_eq!((c["id"].as_str(), c["name"].as_str()), (Some(web.as_str()), Some(web_name.as_str())));
    assert_eq!((c["compose_project"].as_str(), c["compose_service"].as_str()), (Some(project.as_str()), Some("web")));
    let a = one(&records, "attempted", "tcp", sport);
    assert_eq!((a["host_port"].as_u64(), a["container"]["compose_service"].as_str()), (Some(web_port as u64), Some("web")));

    let d = one(&records, "reached", "tcp", db_sport);
    assert_eq!((d["exposure"].as_str(), d["iface"].as_str(), d["dst_ip"].as_str()), (Some("unpublished"), Some(back_br.as_str()), Some(db_ip.as_str())));
    assert!(d["host_port"].is_null() && d["published"].as_array().unwrap().is_empty(), "{d:#}");
    let c = &d["container"];
    assert_eq!((c["id"].as_str(), c["compose_project"].as_str(), c["compose_service"].as_str()), (Some(db.as_str()), Some(project.as_str()), Some("db")));
    // Nothing was attempted at a published port for the database: no attempt, no block.
    assert!(!records.iter().any(|r| r["src_port"] == db_sport && r["stage"] != "reached"), "{records:#?}");
    assert!(!records.iter().any(|r| r["stage"] == "blocked"), "{records:#?}");
    let alert = format!("EXPOSED {web_name} ({image}) {}:{web_port} -> 80/tcp reached from {}", outside.v4(1), outside.v4(2));
    assert!(lines.iter().any(|l| l == &alert), "alert {alert:?} missing: {lines:#?}");
}

/// The echo image with several EXPOSEd ports (80/tcp, 8443/tcp, 5300/udp), built
/// from it locally (no registry: FROM a local image pulls nothing).
fn expose_image() -> String {
    let base = docker::echo_image();
    let image = format!("dockexpose-test/expose:{}", base.rsplit(':').next().unwrap());
    let exists = Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    if !exists {
        let dir = std::env::temp_dir().join(format!("dx11-expose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), format!("FROM {base}\nEXPOSE 80 8443 5300/udp\n")).unwrap();
        let out = Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", &image]).arg(&dir).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "docker build {image}: {}", String::from_utf8_lossy(&out.stderr));
    }
    image
}

/// The host port Docker gave `port` ("80/tcp") of `container` on 0.0.0.0.
fn docker_port(container: &str, port: &str) -> u16 {
    let out = sh(&["docker", "port", container, port]);
    let line = out.lines().find(|l| l.starts_with("0.0.0.0:")).unwrap_or_else(|| panic!("{container} {port} not published on 0.0.0.0: {out}"));
    line.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn publish_all_ports_and_a_shared_network_namespace_name_the_owner() {
    let test = "publish_all_ports_and_a_shared_network_namespace_name_the_owner";
    if !docker::ready(test) {
        return;
    }
    let image = expose_image();
    let n = n11();
    let outside = OutsideHost::with_n("11p", n);
    // The owner: `-P` publishes every EXPOSEd port on a random host port; it serves
    // 80/tcp and 5300/udp. The sidecar shares its network namespace and serves 8443,
    // a port the owner publishes: the sidecar has no address or port of its own.
    let owner = docker::Container::run(&format!("dx11p-owner-{n}"), &["-P"], &image, &["80", "5300"]);
    let side = docker::Container::run(
        &format!("dx11p-side-{n}"),
        &["--network", &format!("container:{}", owner.name)],
        &image,
        &["8443", "5301"],
    );
    let (p80, p8443, p5300) = (docker_port(&owner.name, "80/tcp"), docker_port(&owner.name, "8443/tcp"), docker_port(&owner.name, "5300/udp"));
    assert!(p80 != p8443 && p80 != p5300, "three host ports: {p80} {p8443} {p5300}");
    let owner_ip = owner.ip("bridge");

    let w = Watcher::start(&["--stats-interval", "0", "--uplink", &outside.uplink], json_path("11publishall"));
    let s80 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p80)).expect("-P port of 80 reachable");
    let s8443 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p8443)).expect("-P port of 8443 reaches the sidecar");
    let (s5300, echoed) = udp_exchange(&outside.ns, Some(outside.src4()), outside.host4(p5300), 1);
    assert_eq!(echoed, 1, "-P port of 5300/udp echoes");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let records = outside.own(records);

    for (proto, sport, host_port, container_port) in [("tcp", s80, p80, 80), ("tcp", s8443, p8443, 8443), ("udp", s5300, p5300, 5300)] {
        let r = one(&records, "reached", proto, sport);
        assert_eq!(
            (r["host_ip"].as_str(), r["host_port"].as_u64(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
            (Some(outside.v4(1).as_str()), Some(host_port as u64), Some(owner_ip.as_str()), Some(container_port)),
            "{r:#}"
        );
        assert_eq!(r["exposure"], "published", "{r:#}");
        // The published port belongs to the owner, even where the sidecar answered.
        assert_eq!((r["container"]["id"].as_str(), r["container"]["name"].as_str()), (Some(owner.id().as_str()), Some(owner.name.as_str())), "{r:#}");
        let a = one(&records, "attempted", proto, sport);
        assert_eq!((a["host_port"].as_u64(), a["container"]["name"].as_str()), (Some(host_port as u64), Some(owner.name.as_str())));
    }
    assert!(!records.iter().any(|r| r["container"]["name"] == side.name.as_str()), "{records:#?}");
}

/// Runs `ip -n NS ARGS...`.
fn ip_n(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// Runs a command inside network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// The rules Docker 28's nftables firewall backend writes for one bridge network
/// with one container publishing ports, userland proxy off: the layout of
/// moby/moby integration/network/bridge/nftablesdoc/generated/usernet-portmap-noproxy.md
/// (table `ip docker-bridges`, and `ip6 docker-bridges` alike): base chains
/// `filter-FORWARD`, `nat-PREROUTING`, `nat-OUTPUT`, `nat-POSTROUTING` and
/// `raw-PREROUTING`; per bridge `filter-forward-in__BR` / `filter-forward-out__BR`
/// reached through the verdict maps `filter-forward-in-jumps` / `-out-jumps` keyed by
/// interface name, `nat-postrouting-in__BR` / `-out__BR` likewise; the DNAT of every
/// published port in `nat-prerouting-and-output`, jumped to for local destinations
/// (`fib daddr type local`); a "DROP DIRECT ACCESS" in raw-PREROUTING and an
/// "UNPUBLISHED PORT DROP" at the end of filter-forward-in__BR. There is no
/// DOCKER-USER in it: nftables has no such chain. (nat-OUTPUT's priority is written
/// -100, as moby's usernet-portmap.md shows it: nft 1.0.6 accepts `dstnat` only on
/// the prerouting hook.)
fn docker_bridges_table(family: &str, br: &str, subnet: &str, container: &str, ports: &[(&str, u16, u16)]) -> String {
    let addr = if family == "ip" { "ip" } else { "ip6" };
    let dnat_to = |port: u16| if family == "ip" { format!("{container}:{port}") } else { format!("[{container}]:{port}") };
    let dnat: String = ports
        .iter()
        .map(|(proto, host, cport)| format!("\t\t{proto} dport {host} counter dnat to {} comment \"DNAT\"\n", dnat_to(*cport)))
        .collect();
    let accept: String =
        ports.iter().map(|(proto, _, cport)| format!("\t\t{addr} daddr {container} {proto} dport {cport} counter accept\n")).collect();
    format!(
        r#"table {family} docker-bridges {{
	map filter-forward-in-jumps {{
		type ifname : verdict
		elements = {{ "{br}" : jump filter-forward-in__{br} }}
	}}
	map filter-forward-out-jumps {{
		type ifname : verdict
		elements = {{ "{br}" : jump filter-forward-out__{br} }}
	}}
	map nat-postrouting-in-jumps {{
		type ifname : verdict
		elements = {{ "{br}" : jump nat-postrouting-in__{br} }}
	}}
	map nat-postrouting-out-jumps {{
		type ifname : verdict
		elements = {{ "{br}" : jump nat-postrouting-out__{br} }}
	}}
	chain filter-forward-in__{br} {{
		ct state established,related counter accept
		iifname "{br}" counter accept comment "ICC"
{accept}		counter drop comment "UNPUBLISHED PORT DROP"
	}}
	chain filter-forward-out__{br} {{
		ct state established,related counter accept
		counter accept comment "OUTGOING"
	}}
	chain nat-postrouting-in__{br} {{
		fib saddr type local counter masquerade comment "MASQUERADE FROM HOST"
	}}
	chain nat-postrouting-out__{br} {{
		oifname != "{br}" {addr} saddr {subnet} counter masquerade comment "MASQUERADE"
	}}
	chain nat-prerouting-and-output {{
{dnat}	}}
	chain filter-FORWARD {{
		type filter hook forward priority filter; policy accept;
		oifname vmap @filter-forward-in-jumps
		iifname vmap @filter-forward-out-jumps
	}}
	chain nat-PREROUTING {{
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-OUTPUT {{
		type nat hook output priority -100; policy accept;
		fib daddr type local counter jump nat-prerouting-and-output
	}}
	chain nat-POSTROUTING {{
		type nat hook postrouting priority srcnat; policy accept;
		iifname vmap @nat-postrouting-out-jumps
		oifname vmap @nat-postrouting-in-jumps
	}}
	chain raw-PREROUTING {{
		type filter hook prerouting priority raw; policy accept;
		{addr} daddr {container} iifname != "{br}" counter drop comment "DROP DIRECT ACCESS"
	}}
}}
"#
    )
}

#[test]
fn nftables_backend_bypass_is_reported_without_any_iptables_rule() {
    let test = "nftables_backend_bypass_is_reported_without_any_iptables_rule";
    if !privileged(test) || !have(test, "nft") {
        return;
    }
    let n = n11();
    // A host of our own (a namespace: its netfilter has no iptables rule at all, and
    // the machine's Docker chains are not in it), a container and an outside host.
    let (host, ctr, out) = (format!("dx11nh{n}"), format!("dx11nc{n}"), format!("dx11no{n}"));
    let (br, uplink, cveth) = (format!("dx11nb{n}"), format!("dx11nu{n}"), format!("dx11nv{n}"));
    let (c4, c6) = (format!("10.251.{n}.2"), format!("fd42:251:{n}::2"));
    let (h4, h6) = (format!("198.18.{n}.1"), format!("fd42:198:{n}::1"));
    let (o4, o6) = (format!("198.18.{n}.2"), format!("fd42:198:{n}::2"));
    for prefix in [format!("10.251.{n}.0/24"), format!("fd42:251:{n}::/64"), format!("198.18.{n}.0/24"), format!("fd42:198:{n}::/64")] {
        assert_unrouted(&prefix);
    }
    let mut undo = Undo::default();
    for ns in [&host, &ctr, &out] {
        sh_quiet(&["ip", "netns", "del", ns]);
        sh(&["ip", "netns", "add", ns]);
        undo.push(&["ip", "netns", "del", ns]);
        ip_n(ns, &["link", "set", "lo", "up"]);
    }
    ip_n(&host, &["link", "add", &br, "type", "bridge"]);
    ip_n(&host, &["addr", "add", &format!("10.251.{n}.1/24"), "dev", &br]);
    ip_n(&host, &["addr", "add", &format!("fd42:251:{n}::1/64"), "dev", &br, "nodad"]);
    ip_n(&host, &["link", "set", &br, "up"]);
    ip_n(&host, &["link", "add", &cveth, "type", "veth", "peer", "name", "eth0", "netns", &ctr]);
    ip_n(&host, &["link", "set", &cveth, "master", &br, "up"]);
    ip_n(&ctr, &["addr", "add", &format!("{c4}/24"), "dev", "eth0"]);
    ip_n(&ctr, &["addr", "add", &format!("{c6}/64"), "dev", "eth0", "nodad"]);
    ip_n(&ctr, &["link", "set", "eth0", "up"]);
    ip_n(&ctr, &["route", "add", "default", "via", &format!("10.251.{n}.1")]);
    ip_n(&ctr, &["-6", "route", "add", "default", "via", &format!("fd42:251:{n}::1")]);
    ip_n(&host, &["link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns", &out]);
    ip_n(&host, &["addr", "add", &format!("{h4}/24"), "dev", &uplink]);
    ip_n(&host, &["addr", "add", &format!("{h6}/64"), "dev", &uplink, "nodad"]);
    ip_n(&host, &["link", "set", &uplink, "up"]);
    ip_n(&out, &["addr", "add", &format!("{o4}/24"), "dev", "eth0"]);
    ip_n(&out, &["addr", "add", &format!("{o6}/64"), "dev", "eth0", "nodad"]);
    ip_n(&out, &["link", "set", "eth0", "up"]);
    ip_n(&out, &["route", "add", "default", "via", &h4]);
    ip_n(&out, &["-6", "route", "add", "default", "via", &h6]);
    in_ns(&host, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    in_ns(&host, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    // Docker 28's tables, and a host firewall in nftables too: an input chain that
    // drops all but SSH (UFW's effect), ICMPv6 kept for neighbour discovery.
    let (tcp_port, udp_port, own_port) = (18_200 + n as u16, 18_300 + n as u16, 18_400 + n as u16);
    let mut rules = docker_bridges_table("ip", &br, &format!("10.251.{n}.0/24"), &c4, &[("tcp", tcp_port, 80), ("udp", udp_port, 5300)]);
    rules.push_str(&docker_bridges_table("ip6", &br, &format!("fd42:251:{n}::/64"), &c6, &[("tcp", tcp_port, 80)]));
    rules.push_str(
        "table inet dx11-host-firewall {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n\t\tiifname \"lo\" accept\n\t\tmeta l4proto ipv6-icmp accept\n\t\ttcp dport 22 accept\n\t}\n}\n",
    );
    let file = std::env::temp_dir().join(format!("dx11-nft-{n}.nft"));
    std::fs::write(&file, &rules).unwrap();
    undo.push(&["rm", "-f", file.to_str().unwrap()]);
    in_ns(&host, &["nft", "-f", file.to_str().unwrap()]);
    // No iptables rule anywhere in this host: the bypass is nftables' alone.
    for tool in ["iptables-save", "ip6tables-save"] {
        let saved = in_ns(&host, &[tool]);
        assert!(!saved.lines().any(|l| l.starts_with("-A")), "{tool} in {host} must show no rule:\n{saved}");
    }
    assert!(in_ns(&host, &["nft", "list", "chain", "ip", "docker-bridges", "nat-prerouting-and-output"]).contains(&format!("dnat to {c4}:80")));

    let _services = Services::start(&ctr, 80, 5300);
    let _own = Services::start(&host, own_port, own_port);
    let mut w = Watcher::start_in_netns(&host, &["--no-docker", "--bridge", &br, "--stats-interval", "0"], json_path("11nft"));
    w.wait_for_line(&format!("watching {br}"), Duration::from_secs(5));

    let src4: IpAddr = o4.parse().unwrap();
    let src6: IpAddr = o6.parse().unwrap();
    // The host's own service: held by the nftables input chain.
    let held = tcp_connect(&out, Some(src4), SocketAddr::new(h4.parse().unwrap(), own_port));
    assert!(held.is_err(), "the host firewall must hold the host's own port: {held:?}");
    // Direct access to the container address: Docker's raw-table drop holds it.
    let direct = tcp_connect(&out, Some(src4), SocketAddr::new(c4.parse().unwrap(), 80));
    assert!(direct.is_err(), "DROP DIRECT ACCESS must hold: {direct:?}");
    // The published ports: reached, the input chain never consulted.
    let t4 = tcp_connect(&out, Some(src4), SocketAddr::new(h4.parse().unwrap(), tcp_port)).expect("published TCP port through nftables DNAT");
    let t6 = tcp_connect(&out, Some(src6), SocketAddr::new(h6.parse().unwrap(), tcp_port)).expect("published TCP port over IPv6");
    let (u4, echoed) = udp_exchange(&out, Some(src4), SocketAddr::new(h4.parse().unwrap(), udp_port), 2);
    assert_eq!(echoed, 2, "published UDP port answers");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> = records.into_iter().filter(|r| r["src_ip"] == o4.as_str() || r["src_ip"] == o6.as_str()).collect();
    assert_eq!(ours.len(), 3, "one record per connection through a published port, none for the held ones:\n{ours:#?}");
    for (proto, sport, family, host_ip, dst_ip, host_port, dport) in [
        ("tcp", t4, "ipv4", &h4, &c4, tcp_port, 80),
        ("tcp", t6, "ipv6", &h6, &c6, tcp_port, 80),
        ("udp", u4, "ipv4", &h4, &c4, udp_port, 5300),
    ] {
        let r = one(&ours, "reached", proto, sport);
        assert_eq!(
            (r["family"].as_str(), r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
            (Some(family), Some(br.as_str()), Some(dst_ip.as_str()), Some(dport)),
            "{r:#}"
        );
        // The exact host side, from the conntrack entry nftables' DNAT made.
        assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64()), (Some(host_ip.as_str()), Some(host_port as u64)), "{r:#}");
        assert!(r["container"].is_null(), "no runtime here, no identity: {r:#}");
    }
    drop(undo);
}

/// A rootful `podman system service` on a private socket, stopped on drop after the
/// undo log (containers, network, image, netavark's chains when new) has run.
struct PodmanService {
    endpoint: String,
    dir: PathBuf,
    child: std::process::Child,
    undo: Undo,
}

impl PodmanService {
    fn start(n: u32, undo: Undo) -> Self {
        let dir = std::env::temp_dir().join(format!("dx11-podman-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("unix://{}/podman.sock", dir.display());
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &endpoint])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("service.log")).unwrap())
            .spawn()
            .expect("podman system service");
        let mut s = PodmanService { endpoint, dir, child, undo };
        let sock = s.dir.join("podman.sock");
        let up = within(Duration::from_secs(20), || std::os::unix::net::UnixStream::connect(&sock).is_ok());
        if !up {
            let _ = s.child.kill();
            panic!("podman system service did not come up: {}", std::fs::read_to_string(s.dir.join("service.log")).unwrap_or_default());
        }
        s
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.undo));
        // SAFETY: signalling the service this test spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !within(Duration::from_secs(5), || self.child.try_wait().ok().flatten().is_some()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn podman_netavark_bridge_is_watched_with_its_published_port_and_identity() {
    let test = "podman_netavark_bridge_is_watched_with_its_published_port_and_identity";
    if !docker::ready(test) || !have(test, "podman") {
        return;
    }
    let image = docker::echo_image();
    let n = n11();
    let outside = OutsideHost::with_n("11m", n);
    let (net, br, subnet, name) = (format!("dx11mn{n}"), format!("dx11mb{n}"), format!("10.251.{n}.0/24"), format!("dx11m-web-{n}"));
    assert_unrouted(&subnet);
    let port = 18_500 + n as u16;

    let mut undo = Undo::default();
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        let was = sh(&["sysctl", "-n", key]).trim().to_string();
        undo.push(&["sysctl", "-qw", &format!("{key}={was}")]);
    }
    // netavark leaves its base chains behind its last container: remove them if new.
    let had = Command::new("iptables").args(["-S", "NETAVARK_FORWARD"]).output().is_ok_and(|o| o.status.success());
    if !had {
        for cmd in [
            "iptables -t nat -X NETAVARK-HOSTPORT-SETMARK",
            "iptables -t nat -X NETAVARK-HOSTPORT-MASQ",
            "iptables -t nat -X NETAVARK-HOSTPORT-DNAT",
            "iptables -t nat -F NETAVARK-HOSTPORT-SETMARK",
            "iptables -t nat -F NETAVARK-HOSTPORT-MASQ",
            "iptables -t nat -F NETAVARK-HOSTPORT-DNAT",
            "iptables -t nat -D POSTROUTING -j NETAVARK-HOSTPORT-MASQ",
            "iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT",
            "iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT",
            "iptables -X NETAVARK_FORWARD",
            "iptables -F NETAVARK_FORWARD",
            "iptables -D FORWARD -m comment --comment netavark_firewall_plugin_rules -j NETAVARK_FORWARD",
        ] {
            let args: Vec<&str> = cmd.split(' ').map(|a| if a == "netavark_firewall_plugin_rules" { "netavark firewall plugin rules" } else { a }).collect();
            undo.push(&args);
        }
    }
    // A rootful netavark network whose bridge carries our name: Podman 4.3's CLI has
    // no option for it, its network file (/etc/containers/networks) has.
    let netfile = PathBuf::from(format!("/etc/containers/networks/{net}.json"));
    std::fs::create_dir_all(netfile.parent().unwrap()).unwrap();
    std::fs::write(
        &netfile,
        format!(
            r#"{{"name": "{net}", "id": "{:064x}", "driver": "bridge", "network_interface": "{br}",
"created": "2026-11-29T00:00:00Z", "subnets": [{{"subnet": "{subnet}", "gateway": "10.251.{n}.1"}}],
"ipv6_enabled": false, "internal": false, "dns_enabled": false, "ipam_options": {{"driver": "host-local"}}}}
"#,
            0xd11_0000u64 + u64::from(n)
        ),
    )
    .unwrap();
    undo.push(&["rm", "-f", netfile.to_str().unwrap()]);
    undo.push(&["podman", "network", "rm", "-f", &net]);
    // The test image, from Docker's store into Podman's.
    let loaded = sh(&["sh", "-c", &format!("docker save {image} | podman load -q")]);
    let pimage = loaded.lines().find_map(|l| l.split_once(": ").map(|(_, i)| i.trim().to_string())).unwrap_or_else(|| panic!("podman load: {loaded}"));
    undo.push(&["podman", "rmi", "-f", &pimage]);
    undo.push(&["podman", "rm", "-f", "-t", "0", &name]);
    let podman = PodmanService::start(n, undo);
    sh_quiet(&["podman", "rm", "-f", "-t", "0", &name]);
    sh(&[
        "podman", "run", "-d", "--name", &name, "--network", &net, "-p", &format!("{port}:80"),
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", &pimage, "80", "5300",
    ]);
    let id = sh(&["podman", "inspect", "-f", "{{.Id}}", &name]).trim().to_string();
    let cip = sh(&["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &name]).trim().to_string();
    assert!(cip.starts_with(&format!("10.251.{n}.")), "{cip}");
    assert!(sh(&["ip", "-o", "link", "show", "dev", &br]).contains(&br), "netavark made bridge {br}");

    let mut w = Watcher::start(
        &["--docker-host", &podman.endpoint, "--bridge", &br, "--uplink", &outside.uplink, "--stats-interval", "0"],
        json_path("11podman"),
    );
    w.wait_for_line("Docker inventory: ", Duration::from_secs(10));
    assert!(within(Duration::from_secs(5), || tcx_programs(&br, true) == ["bridge_egress"]), "{br} not watched: {:?}", w.lines());
    // On a host where Docker runs, FORWARD's policy is DROP, and netavark 1.4 accepts
    // only replies and what its containers open: Docker's policy holds Podman's
    // published port. dockexpose says so: attempted, then blocked.
    // (Docker leaves the policy alone when forwarding was already on at its start.)
    let policy_drop = sh(&["iptables", "-S", "FORWARD"]).lines().any(|l| l == "-P FORWARD DROP");
    if policy_drop {
        let held = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port));
        assert!(held.is_err(), "Docker's FORWARD policy (DROP) holds netavark's DNAT'd connections: {held:?}");
        w.wait_for_line(&format!("BLOCKED {name} "), Duration::from_secs(8));
    }
    // A host without Docker's policy (or an operator's accept) lets it through.
    let rule = ["FORWARD", "-o", br.as_str(), "-m", "conntrack", "--ctstate", "DNAT", "-m", "comment", "--comment", "dx11 podman test", "-j", "ACCEPT"];
    sh(&[&["iptables", "-I"][..], &rule[..]].concat());
    let mut accept = Undo::default();
    accept.push(&[&["iptables", "-D"][..], &rule[..]].concat());
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("Podman's published port reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    drop(accept);
    assert!(status.success());
    let records = outside.own(records);
    let blocked: Vec<&Value> = records.iter().filter(|r| r["stage"] == "blocked").collect();
    assert_eq!(blocked.is_empty(), !policy_drop, "{records:#?}");
    for b in blocked {
        assert_eq!((b["host_port"].as_u64(), b["container"]["name"].as_str()), (Some(port as u64), Some(name.as_str())), "{b:#}");
    }
    let r = one(&records, "reached", "tcp", sport);
    assert_eq!((r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()), (Some(br.as_str()), Some(cip.as_str()), Some(80)), "{r:#}");
    // The host side from the DNAT'd original destination (conntrack), exactly.
    assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64()), (Some(outside.v4(1).as_str()), Some(port as u64)), "{r:#}");
    assert_eq!(r["exposure"], "published", "{r:#}");
    assert_eq!((r["container"]["id"].as_str(), r["container"]["name"].as_str()), (Some(id.as_str()), Some(name.as_str())), "{r:#}");
    let a = one(&records, "attempted", "tcp", sport);
    assert_eq!((a["host_port"].as_u64(), a["container"]["name"].as_str()), (Some(port as u64), Some(name.as_str())));
    drop(podman);
}

/// A second engine (support::engine) confined to this file's ranges: namespaces
/// `dx11{tag}N`, uplink 198.18.N.1 / fd42:198:N::1, docker0 10.251.N.1/25.
fn second_engine(tag: &str, extra: &[&str]) -> support::engine::SecondEngine {
    let n = n11();
    let place = support::engine::Place {
        prefix: format!("dx11{tag}"),
        n,
        uplink_v4: format!("198.18.{n}"),
        uplink_v6: format!("fd42:198:{n}:"),
        bip: format!("10.251.{n}.1/25"),
    };
    support::engine::SecondEngine::start_at(place, support::engine::Proxy::Off, extra)
}

#[test]
fn docker_ipv6_with_ip6tables_dnat_is_reached_with_host_port_and_identity() {
    let test = "docker_ipv6_with_ip6tables_dnat_is_reached_with_host_port_and_identity";
    if !docker::ready(test) {
        return;
    }
    let n = n11();
    // The way a user turns it on (daemon.json "ipv6", "ip6tables", "fixed-cidr-v6";
    // dockerd 20.10 wants "experimental" for ip6tables), on an engine of its own.
    let v6net = format!("fd42:251:{n}::/64");
    assert_unrouted(&v6net);
    let engine = second_engine("v", &["--experimental", "--ipv6", &format!("--fixed-cidr-v6={v6net}"), "--ip6tables"]);
    let port = 18_600 + n as u16;
    // busybox httpd listens on [::] (the echo image's server is IPv4-only).
    let http = docker::http_image();
    engine.load_image(&http);
    let c = engine.run(&format!("dx11v-web-{n}"), &["-p", &format!("{port}:80")], &http, &[]);
    let cip6 = c.inspect("{{.NetworkSettings.Networks.bridge.GlobalIPv6Address}}");
    assert!(cip6.starts_with(&format!("fd42:251:{n}:")), "container IPv6 address from fixed-cidr-v6: {cip6:?}");
    let nat6 = engine.in_ns(&["ip6tables", "-t", "nat", "-S", "DOCKER"]);
    assert!(nat6.contains(&format!("--dport {port} -j DNAT --to-destination [{cip6}]:80")), "Docker's ip6tables DNAT: {nat6}");

    let mut w = engine.watch(&["--stats-interval", "0"], json_path("11ipv6"));
    w.wait_for_line("Docker inventory: 1 running containers", Duration::from_secs(20));
    let src6: IpAddr = engine.outside_v6().parse().unwrap();
    // The container's IPv6 address may still be tentative (duplicate address
    // detection) for a moment after it starts: its first answers can be lost, so try
    // again for a few seconds (each try is its own connection and its own record).
    let sport = (0..10)
        .find_map(|_| tcp_open(&engine.outside_ns, Some(src6), engine.host6(port)).map_err(|_| std::thread::sleep(Duration::from_millis(500))).ok())
        .expect("IPv6 published port reached through ip6tables DNAT");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> = records.into_iter().filter(|r| r["src_ip"] == engine.outside_v6().as_str()).collect();
    let r = one(&ours, "reached", "tcp", sport);
    assert_eq!((r["family"].as_str(), r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()), (Some("ipv6"), Some("docker0"), Some(cip6.as_str()), Some(80)), "{r:#}");
    assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64(), r["path"].as_str()), (Some(engine.engine_v6().as_str()), Some(port as u64), Some("bridge")), "{r:#}");
    assert_eq!((r["container"]["name"].as_str(), r["container"]["id"].as_str(), r["exposure"].as_str()), (Some(c.name.as_str()), Some(c.id().as_str()), Some("published")), "{r:#}");
    let a = one(&ours, "attempted", "tcp", sport);
    assert_eq!((a["host_ip"].as_str(), a["host_port"].as_u64(), a["container"]["name"].as_str()), (Some(engine.engine_v6().as_str()), Some(port as u64), Some(c.name.as_str())));
    assert!(!ours.iter().any(|r| r["stage"] == "blocked"), "{ours:#?}");
}

/// Waits for the one running task container of swarm service `service` on `engine`;
/// panics with the service's task states and dockerd's log if none runs.
fn swarm_task(engine: &support::engine::SecondEngine, service: &str) -> String {
    let filter = format!("label=com.docker.swarm.service.name={service}");
    let mut id = String::new();
    let found = within(Duration::from_secs(40), || {
        id = engine.try_docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).unwrap_or_default().trim().to_string();
        !id.is_empty()
    });
    if !found {
        let tasks = engine.try_docker(&["service", "ps", "--no-trunc", service]).unwrap_or_else(|e| e);
        panic!("no running task of swarm service {service}:\n{tasks}\ndockerd:\n{}", engine.log_tail(30));
    }
    id
}

/// True when the kernel has IPVS, which the routing mesh's ingress-sbox balances with.
fn kernel_has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

#[test]
fn swarm_services_are_named_by_service_and_task() {
    let test = "swarm_services_are_named_by_service_and_task";
    if !docker::ready(test) {
        return;
    }
    let n = n11();
    let engine = second_engine("s", &[]);
    // docker_gwbridge and the overlay pool in our ranges (Docker's documented way to
    // choose them: create docker_gwbridge before swarm init).
    engine.docker(&[
        "network", "create", "--subnet", &format!("10.251.{n}.128/26"),
        "--opt", "com.docker.network.bridge.name=docker_gwbridge", "--opt", "com.docker.network.bridge.enable_icc=false",
        "--opt", "com.docker.network.bridge.enable_ip_masquerade=true", "docker_gwbridge",
    ]);
    engine.docker(&[
        "swarm", "init", "--advertise-addr", &engine.engine_v4(),
        "--default-addr-pool", &format!("10.251.{n}.192/26"), "--default-addr-pool-mask-length", "27",
    ]);
    let (host_port, mesh_port) = (18_700 + n as u16, 18_800 + n as u16);
    let (host_svc, mesh_svc) = (format!("dx11s-host-{n}"), format!("dx11s-mesh-{n}"));
    // Published in host mode: Docker's own DNAT on this node to the task container.
    engine.docker(&[
        "service", "create", "--detach", "--name", &host_svc, "--no-resolve-image",
        "--publish", &format!("mode=host,published={host_port},target=80"), &engine.image, "80", "5300",
    ]);
    // Published through the routing mesh (ingress mode, the default).
    engine.docker(&[
        "service", "create", "--detach", "--name", &mesh_svc, "--no-resolve-image",
        "--publish", &format!("published={mesh_port},target=80"), &engine.image, "80", "5300",
    ]);
    let task = swarm_task(&engine, &host_svc);
    let mesh_task = swarm_task(&engine, &mesh_svc);
    let task_name = |id: &str| engine.docker(&["inspect", "-f", "{{index .Config.Labels \"com.docker.swarm.task.name\"}}", id]).trim().to_string();
    let (host_task_name, mesh_task_name) = (task_name(&task), task_name(&mesh_task));
    let sbox = engine.docker(&["network", "inspect", "-f", "{{(index .Containers \"ingress-sbox\").IPv4Address}}", "docker_gwbridge"]);
    let sbox = sbox.trim().split('/').next().unwrap().to_string();
    assert!(sbox.starts_with(&format!("10.251.{n}.")), "ingress-sbox on our docker_gwbridge: {sbox:?}");
    let ipvs = kernel_has_ipvs();
    if !ipvs {
        eprintln!(
            "{test}: this kernel has no IPVS (CONFIG_IP_VS is not set; dockerd: \"Could not get ipvs family information \
             from the kernel\"): Docker installs no DOCKER-INGRESS and the mesh carries nothing. The test writes \
             DOCKER-INGRESS as Docker does (libnetwork's service_linux.go), so that connections take the mesh's hop \
             into ingress-sbox, where nothing balances them on"
        );
        assert!(!engine.in_ns(&["iptables", "-t", "nat", "-S"]).contains("DOCKER-INGRESS"), "no IPVS, yet DOCKER-INGRESS exists");
        let (p, to) = (mesh_port.to_string(), format!("{sbox}:{mesh_port}"));
        for rule in [
            &["-t", "nat", "-N", "DOCKER-INGRESS"][..],
            &["-t", "nat", "-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", &p, "-j", "DNAT", "--to-destination", &to],
            &["-t", "nat", "-A", "DOCKER-INGRESS", "-j", "RETURN"],
            &["-t", "nat", "-I", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER-INGRESS"],
            &["-N", "DOCKER-INGRESS"],
            &["-A", "DOCKER-INGRESS", "-p", "tcp", "--dport", &p, "-j", "ACCEPT"],
            &["-A", "DOCKER-INGRESS", "-p", "tcp", "-m", "state", "--state", "ESTABLISHED,RELATED", "--sport", &p, "-j", "ACCEPT"],
            &["-A", "DOCKER-INGRESS", "-j", "RETURN"],
            &["-I", "FORWARD", "-j", "DOCKER-INGRESS"],
        ] {
            engine.in_ns(&[&["iptables"][..], rule].concat());
        }
    }

    let mut w = engine.watch(&["--stats-interval", "0"], json_path("11swarm"));
    w.wait_for_line("Docker inventory: ", Duration::from_secs(20));
    let src: IpAddr = engine.outside_v4().parse().unwrap();
    let sport = tcp_connect(&engine.outside_ns, Some(src), engine.host4(host_port)).expect("host-mode published port of a swarm task");
    // Through the mesh: the attempt at least is seen before any firewall table.
    let mesh_try = in_netns(&engine.outside_ns, {
        let dst = engine.host4(mesh_port);
        move || {
            let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(2));
            let _ = s.as_ref().map(|s| s.set_read_timeout(Some(Duration::from_secs(2))));
            s.map(|s| s.local_addr().unwrap().port())
        }
    });
    eprintln!("through the routing mesh: {mesh_try:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> = records.into_iter().filter(|r| r["src_ip"] == engine.outside_v4().as_str()).collect();

    let r = one(&ours, "reached", "tcp", sport);
    assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64()), (Some(engine.engine_v4().as_str()), Some(host_port as u64)), "{r:#}");
    let c = &r["container"];
    assert_eq!(
        (c["id"].as_str(), c["swarm_service"].as_str(), c["swarm_task"].as_str()),
        (Some(task.as_str()), Some(host_svc.as_str()), Some(host_task_name.as_str())),
        "{r:#}"
    );
    // The mesh's attempt carries the exact published port, and names the service
    // (and its one task on this node).
    let attempts: Vec<&Value> = ours.iter().filter(|r| r["stage"] == "attempted" && r["host_port"] == mesh_port).collect();
    assert_eq!(attempts.len(), 1, "one attempt at the mesh port {mesh_port}:\n{ours:#?}");
    let a = attempts[0];
    assert_eq!((a["host_ip"].as_str(), a["dst_port"].as_u64()), (Some(engine.engine_v4().as_str()), Some(mesh_port as u64)), "{a:#}");
    assert_eq!((a["container"]["swarm_service"].as_str(), a["container"]["swarm_task"].as_str()), (Some(mesh_svc.as_str()), Some(mesh_task_name.as_str())), "{a:#}");
    // The hop into ingress-sbox, seen entering docker_gwbridge: named by the service
    // of the published port (and its one local task), never taken for a container.
    let mesh_reached: Vec<&Value> = ours.iter().filter(|r| r["stage"] == "reached" && r["src_port"] == a["src_port"]).collect();
    assert_eq!(mesh_reached.len(), 1, "one reach through the mesh:\n{ours:#?}");
    let m = mesh_reached[0];
    assert_eq!((m["iface"].as_str(), m["dst_ip"].as_str(), m["dst_port"].as_u64()), (Some("docker_gwbridge"), Some(sbox.as_str()), Some(mesh_port as u64)), "{m:#}");
    assert_eq!((m["host_ip"].as_str(), m["host_port"].as_u64(), m["exposure"].as_str()), (Some(engine.engine_v4().as_str()), Some(mesh_port as u64), Some("published")), "{m:#}");
    assert_eq!((m["container"]["swarm_service"].as_str(), m["container"]["swarm_task"].as_str()), (Some(mesh_svc.as_str()), Some(mesh_task_name.as_str())), "{m:#}");
    if ipvs {
        mesh_try.expect("the routing mesh answers");
    }
    engine.docker(&["swarm", "leave", "--force"]);
}

/// Runs CNI plugin `plugin` (from /usr/lib/cni) as a container runtime does: the
/// command and the container in the environment, the network configuration on
/// stdin. Returns its result (JSON); panics with its error.
fn cni(command: &str, plugin: &str, container: &str, netns: &str, config: &Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(format!("/usr/lib/cni/{plugin}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("CNI plugin {plugin}: {e} (install containernetworking-plugins: `cargo xtask setup`)"));
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CNI {command} {plugin}: {text}{}", String::from_utf8_lossy(&out.stderr));
    if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
}

#[test]
fn cni_portmap_hostport_is_reported_from_the_dnat_original_destination() {
    let test = "cni_portmap_hostport_is_reported_from_the_dnat_original_destination";
    if !docker::ready(test) {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/portmap").exists() {
        let why = "no CNI plugins in /usr/lib/cni (install containernetworking-plugins: `cargo xtask setup`)";
        assert!(std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_none(), "{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set");
        skip(test, why);
        return;
    }
    let n = n11();
    let outside = OutsideHost::with_n("11k", n);
    let (net, br, ctr, id) = (format!("dx11k{n}"), format!("dx11kb{n}"), format!("dx11kc{n}"), format!("dx11k-pod-{n}"));
    let subnet = format!("10.251.{n}.0/24");
    assert_unrouted(&subnet);
    let port = 18_900 + n as u16;
    let dir = std::env::temp_dir().join(format!("dx11-cni-{n}"));
    let mut undo = Undo::default();
    undo.push(&["rm", "-rf", dir.to_str().unwrap()]);
    // portmap's and bridge's top chains stay after the last container: remove them if new.
    let had = Command::new("iptables").args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]).output().is_ok_and(|o| o.status.success());
    if !had {
        for cmd in [
            "-t nat -X CNI-HOSTPORT-SETMARK",
            "-t nat -X CNI-HOSTPORT-MASQ",
            "-t nat -X CNI-HOSTPORT-DNAT",
            "-t nat -F CNI-HOSTPORT-SETMARK",
            "-t nat -F CNI-HOSTPORT-MASQ",
            "-t nat -F CNI-HOSTPORT-DNAT",
            "-t nat -D POSTROUTING -m comment --comment CNI_portfwd_requiring_masquerade -j CNI-HOSTPORT-MASQ",
            "-t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
            "-t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        ] {
            let mut args = vec!["iptables"];
            args.extend(cmd.split(' ').map(|a| if a == "CNI_portfwd_requiring_masquerade" { "CNI portfwd requiring masquerade" } else { a }));
            undo.push(&args);
        }
    }
    let had = Command::new("iptables").args(["-S", "CNI-FORWARD"]).output().is_ok_and(|o| o.status.success());
    if !had {
        for cmd in ["-X CNI-ADMIN", "-X CNI-FORWARD", "-F CNI-ADMIN", "-F CNI-FORWARD", "-D FORWARD -m comment --comment CNI_firewall_plugin_rules -j CNI-FORWARD"] {
            let mut args = vec!["iptables"];
            args.extend(cmd.split(' ').map(|a| if a == "CNI_firewall_plugin_rules" { "CNI firewall plugin rules" } else { a }));
            undo.push(&args);
        }
    }
    undo.push(&["ip", "link", "del", &br]);
    sh_quiet(&["ip", "netns", "del", &ctr]);
    sh(&["ip", "netns", "add", &ctr]);
    undo.push(&["ip", "netns", "del", &ctr]);

    // The pod's network, as kubelet's runtime sets it up for a hostPort: the bridge
    // plugin, then portmap with the runtime's portMappings, then firewall (its
    // FORWARD accepts for the pod), each given the result before it.
    let bridge_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": br, "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.join("ipam")},
    });
    let portmap_conf = |prev: &Value| serde_json::json!({
        "cniVersion": "1.0.0", "name": net, "type": "portmap", "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": prev,
    });
    let result = cni("ADD", "bridge", &id, &ctr, &bridge_conf);
    let mut cni_undo = CniUndo { steps: vec![("bridge", bridge_conf.clone())], id: id.clone(), ctr: ctr.clone() };
    let result = cni("ADD", "portmap", &id, &ctr, &portmap_conf(&result));
    cni_undo.steps.push(("portmap", portmap_conf(&result)));
    let firewall_conf = serde_json::json!({"cniVersion": "1.0.0", "name": net, "type": "firewall", "backend": "iptables", "prevResult": result});
    cni("ADD", "firewall", &id, &ctr, &firewall_conf);
    cni_undo.steps.push(("firewall", firewall_conf));
    let cip = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(sh(&["iptables", "-t", "nat", "-S"]).contains(&format!("--to-destination {cip}:80")), "portmap's DNAT");
    let _services = Services::start(&ctr, 80, 5300);
    // On a host where Docker runs, FORWARD's policy is DROP and the firewall plugin
    // accepts only the pod's own traffic and replies to it: a Kubernetes node's own
    // forward rules let the hostPort through.
    let rule = ["FORWARD", "-o", br.as_str(), "-m", "conntrack", "--ctstate", "DNAT", "-m", "comment", "--comment", "dx11 cni test", "-j", "ACCEPT"];
    sh(&[&["iptables", "-I"][..], &rule[..]].concat());
    let mut accept = Undo::default();
    accept.push(&[&["iptables", "-D"][..], &rule[..]].concat());

    let mut w = Watcher::start(&["--bridge", &br, "--uplink", &outside.uplink, "--stats-interval", "0"], json_path("11cni"));
    w.wait_for_line(&format!("bridge {br} watched"), Duration::from_secs(5));
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("the hostPort reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let records = outside.own(records);
    let r = one(&records, "reached", "tcp", sport);
    assert_eq!((r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()), (Some(br.as_str()), Some(cip.as_str()), Some(80)), "{r:#}");
    // The hostPort from the DNAT'd original destination: no runtime told it.
    assert_eq!((r["host_ip"].as_str(), r["host_port"].as_u64()), (Some(outside.v4(1).as_str()), Some(port as u64)), "{r:#}");
    assert!(r["container"].is_null() && r["exposure"] == "unknown", "no runtime API here: {r:#}");
    drop(accept);
    drop(cni_undo);
    drop(undo);
}

/// CNI DEL of the plugins added, last first (as a runtime tears a pod down).
struct CniUndo {
    steps: Vec<(&'static str, Value)>,
    id: String,
    ctr: String,
}

impl Drop for CniUndo {
    fn drop(&mut self) {
        while let Some((plugin, conf)) = self.steps.pop() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cni("DEL", plugin, &self.id, &self.ctr, &conf)));
        }
    }
}
