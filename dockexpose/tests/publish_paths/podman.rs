//! Podman's netavark bridges, watched with `--bridge`, identity from Podman's socket.

use super::*;

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
            panic!(
                "podman system service did not come up: {}",
                std::fs::read_to_string(s.dir.join("service.log")).unwrap_or_default()
            );
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
    let (net, br, subnet, name) =
        (format!("dx11mn{n}"), format!("dx11mb{n}"), format!("10.251.{n}.0/24"), format!("dx11m-web-{n}"));
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
            let args: Vec<&str> = cmd
                .split(' ')
                .map(|a| if a == "netavark_firewall_plugin_rules" { "netavark firewall plugin rules" } else { a })
                .collect();
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
    let pimage = loaded
        .lines()
        .find_map(|l| l.split_once(": ").map(|(_, i)| i.trim().to_string()))
        .unwrap_or_else(|| panic!("podman load: {loaded}"));
    undo.push(&["podman", "rmi", "-f", &pimage]);
    undo.push(&["podman", "rm", "-f", "-t", "0", &name]);
    let podman = PodmanService::start(n, undo);
    sh_quiet(&["podman", "rm", "-f", "-t", "0", &name]);
    sh(&[
        "podman",
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &net,
        "-p",
        &format!("{port}:80"),
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &pimage,
        "80",
        "5300",
    ]);
    let id = sh(&["podman", "inspect", "-f", "{{.Id}}", &name]).trim().to_string();
    let cip = sh(&["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &name])
        .trim()
        .to_string();
    assert!(cip.starts_with(&format!("10.251.{n}.")), "{cip}");
    assert!(sh(&["ip", "-o", "link", "show", "dev", &br]).contains(&br), "netavark made bridge {br}");

    let mut w = Watcher::start(
        &["--docker-host", &podman.endpoint, "--bridge", &br, "--uplink", &outside.uplink, "--stats-interval", "0"],
        json_path("11podman"),
    );
    w.wait_for_line("Docker inventory: ", Duration::from_secs(10));
    assert!(
        within(Duration::from_secs(5), || tcx_programs(&br, true) == ["bridge_egress"]),
        "{br} not watched: {:?}",
        w.lines()
    );
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
    let rule = [
        "FORWARD",
        "-o",
        br.as_str(),
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-m",
        "comment",
        "--comment",
        "dx11 podman test",
        "-j",
        "ACCEPT",
    ];
    sh(&[&["iptables", "-I"][..], &rule[..]].concat());
    let mut accept = Undo::default();
    accept.push(&[&["iptables", "-D"][..], &rule[..]].concat());
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port))
        .expect("Podman's published port reachable from outside");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    drop(accept);
    assert!(status.success());
    let records = outside.own(records);
    let blocked: Vec<&Value> = records.iter().filter(|r| r["stage"] == "blocked").collect();
    assert_eq!(blocked.is_empty(), !policy_drop, "{records:#?}");
    for b in blocked {
        assert_eq!(
            (b["host_port"].as_u64(), b["container"]["name"].as_str()),
            (Some(port as u64), Some(name.as_str())),
            "{b:#}"
        );
    }
    let r = one(&records, "reached", "tcp", sport);
    assert_eq!(
        (r["iface"].as_str(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
        (Some(br.as_str()), Some(cip.as_str()), Some(80)),
        "{r:#}"
    );
    // The host side from the DNAT'd original destination (conntrack), exactly.
    assert_eq!(
        (r["host_ip"].as_str(), r["host_port"].as_u64()),
        (Some(outside.v4(1).as_str()), Some(port as u64)),
        "{r:#}"
    );
    assert_eq!(r["exposure"], "published", "{r:#}");
    assert_eq!(
        (r["container"]["id"].as_str(), r["container"]["name"].as_str()),
        (Some(id.as_str()), Some(name.as_str())),
        "{r:#}"
    );
    let a = one(&records, "attempted", "tcp", sport);
    assert_eq!((a["host_port"].as_u64(), a["container"]["name"].as_str()), (Some(port as u64), Some(name.as_str())));
    drop(podman);
}
