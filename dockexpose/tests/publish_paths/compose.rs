//! Docker's own publishing: a docker-compose project on two networks, and `docker run -P`
//! with a second container sharing the first one's network namespace.

use super::*;

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
        sh(&["docker-compose", "-p", &self.project, "-f", self.file.to_str().unwrap(), "ps", "-q", service])
            .trim()
            .to_string()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        sh_quiet(&[
            "docker-compose",
            "-p",
            &self.project,
            "-f",
            self.file.to_str().unwrap(),
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "0",
        ]);
        let _ = std::fs::remove_file(&self.file);
    }
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
        assert!(
            within(Duration::from_secs(5), || tcx_programs(br, true) == ["bridge_egress"]),
            "{br} not watched: {:?}",
            w.lines()
        );
    }
    // The published port, from outside: the firewall-bypass story of a compose project.
    let sport = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(web_port))
        .expect("compose port reachable from outside");
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
    assert_eq!(
        r["dst_ip"],
        inspect(&web, &format!("{{{{(index .NetworkSettings.Networks \"{project}_{net}\").IPAddress}}}}")).as_str()
    );
    let c = &r["container"];
    assert_eq!((c["id"].as_str(), c["name"].as_str()), (Some(web.as_str()), Some(web_name.as_str())));
    assert_eq!((c["compose_project"].as_str(), c["compose_service"].as_str()), (Some(project.as_str()), Some("web")));
    let a = one(&records, "attempted", "tcp", sport);
    assert_eq!(
        (a["host_port"].as_u64(), a["container"]["compose_service"].as_str()),
        (Some(web_port as u64), Some("web"))
    );

    let d = one(&records, "reached", "tcp", db_sport);
    assert_eq!(
        (d["exposure"].as_str(), d["iface"].as_str(), d["dst_ip"].as_str()),
        (Some("unpublished"), Some(back_br.as_str()), Some(db_ip.as_str()))
    );
    assert!(d["host_port"].is_null() && d["published"].as_array().unwrap().is_empty(), "{d:#}");
    let c = &d["container"];
    assert_eq!(
        (c["id"].as_str(), c["compose_project"].as_str(), c["compose_service"].as_str()),
        (Some(db.as_str()), Some(project.as_str()), Some("db"))
    );
    // Nothing was attempted at a published port for the database: no attempt, no block.
    assert!(!records.iter().any(|r| r["src_port"] == db_sport && r["stage"] != "reached"), "{records:#?}");
    assert!(!records.iter().any(|r| r["stage"] == "blocked"), "{records:#?}");
    let alert =
        format!("EXPOSED {web_name} ({image}) {}:{web_port} -> 80/tcp reached from {}", outside.v4(1), outside.v4(2));
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
        let out = Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", &image])
            .arg(&dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "docker build {image}: {}", String::from_utf8_lossy(&out.stderr));
    }
    image
}

/// The host port Docker gave `port` ("80/tcp") of `container` on 0.0.0.0.
fn docker_port(container: &str, port: &str) -> u16 {
    let out = sh(&["docker", "port", container, port]);
    let line = out
        .lines()
        .find(|l| l.starts_with("0.0.0.0:"))
        .unwrap_or_else(|| panic!("{container} {port} not published on 0.0.0.0: {out}"));
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
    let (p80, p8443, p5300) = (
        docker_port(&owner.name, "80/tcp"),
        docker_port(&owner.name, "8443/tcp"),
        docker_port(&owner.name, "5300/udp"),
    );
    assert!(p80 != p8443 && p80 != p5300, "three host ports: {p80} {p8443} {p5300}");
    let owner_ip = owner.ip("bridge");

    let w = Watcher::start(&["--stats-interval", "0", "--uplink", &outside.uplink], json_path("11publishall"));
    let s80 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p80)).expect("-P port of 80 reachable");
    let s8443 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p8443))
        .expect("-P port of 8443 reaches the sidecar");
    let (s5300, echoed) = udp_exchange(&outside.ns, Some(outside.src4()), outside.host4(p5300), 1);
    assert_eq!(echoed, 1, "-P port of 5300/udp echoes");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let records = outside.own(records);

    for (proto, sport, host_port, container_port) in
        [("tcp", s80, p80, 80), ("tcp", s8443, p8443, 8443), ("udp", s5300, p5300, 5300)]
    {
        let r = one(&records, "reached", proto, sport);
        assert_eq!(
            (r["host_ip"].as_str(), r["host_port"].as_u64(), r["dst_ip"].as_str(), r["dst_port"].as_u64()),
            (Some(outside.v4(1).as_str()), Some(host_port as u64), Some(owner_ip.as_str()), Some(container_port)),
            "{r:#}"
        );
        assert_eq!(r["exposure"], "published", "{r:#}");
        // The published port belongs to the owner, even where the sidecar answered.
        assert_eq!(
            (r["container"]["id"].as_str(), r["container"]["name"].as_str()),
            (Some(owner.id().as_str()), Some(owner.name.as_str())),
            "{r:#}"
        );
        let a = one(&records, "attempted", proto, sport);
        assert_eq!(
            (a["host_port"].as_u64(), a["container"]["name"].as_str()),
            (Some(host_port as u64), Some(owner.name.as_str()))
        );
    }
    assert!(!records.iter().any(|r| r["container"]["name"] == side.name.as_str()), "{records:#?}");
}
