//! Attempted, reached, blocked, against the real Docker engine, with the outside
//! host's veth as the uplink (XDP). Needs root and Docker.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{docker, *};

fn with_stage<'a>(records: &'a [Value], stage: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["stage"] == stage).collect()
}

#[test]
fn published_ports_are_attempted_then_reached_with_their_exact_host_port() {
    if !docker::ready("published_ports_are_attempted_then_reached_with_their_exact_host_port") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("a");
    let n = outside.n as u16;
    let (p1, p2, unpublished) = (23000 + n, 24000 + n, 25000 + n);
    let web = docker::Container::run(
        &format!("dx-two-{n}"),
        &["-p", &format!("{p1}:80"), "-p", &format!("{p2}:80")],
        &image,
        &["80", "5300"],
    );
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--blocked-after", "2", "--stats-interval", "0"],
        json_path("two"),
    );
    let s1 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p1)).expect("first host port");
    let s2 = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(p2)).expect("second host port");
    assert!(tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(unpublished)).is_err(), "INPUT drops it");
    std::thread::sleep(Duration::from_millis(3500)); // past --blocked-after
    let (records, status, lines) = w.stop();
    let records = outside.own(records);
    assert!(status.success());

    let attempted = with_stage(&records, "attempted");
    let reached = with_stage(&records, "reached");
    assert_eq!((attempted.len(), reached.len()), (2, 2), "{records:#?}");
    assert!(with_stage(&records, "blocked").is_empty(), "reached attempts are not blocked: {records:#?}");
    assert!(
        !records.iter().any(|r| r["dst_port"] == unpublished || r["host_port"] == unpublished),
        "an unpublished port gives no record"
    );
    for (sport, port) in [(s1, p1), (s2, p2)] {
        let a = attempted.iter().find(|r| r["src_port"] == sport).expect("attempt");
        assert_eq!((a["dst_ip"].as_str(), a["dst_port"].as_u64()), (Some(outside.v4(1).as_str()), Some(port as u64)));
        assert_eq!(a["iface"], outside.uplink.as_str());
        assert_eq!(a["container"]["name"], web.name.as_str());
        let r = reached.iter().find(|r| r["src_port"] == sport).expect("reach");
        assert_eq!(r["host_port"], port, "each connection carries its own host port");
        assert_eq!(r["host_ip"], outside.v4(1).as_str());
        assert_eq!(r["dst_port"], 80);
        assert_eq!(r["path"], "bridge");
    }
    let last = lines.iter().find(|l| l.contains("final counters")).unwrap();
    assert!(last.contains("reached_joined=2"), "{last}");
}

#[test]
fn a_docker_user_drop_is_attempted_and_blocked_never_reached() {
    if !docker::ready("a_docker_user_drop_is_attempted_and_blocked_never_reached") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("b");
    let n = outside.n as u16;
    let port = 26000 + n;
    let web = docker::Container::run(&format!("dx-blk-{n}"), &["-p", &format!("{port}:80")], &image, &["80", "5300"]);
    // The rule that really holds: DOCKER-USER, before Docker's accepts (post-DNAT, so
    // matched on the original destination port).
    let port_s = port.to_string();
    let _drop = docker::docker_user_rule(&[
        "-i",
        &outside.uplink,
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctorigdstport",
        &port_s,
        "-j",
        "DROP",
    ]);

    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--blocked-after", "2", "--stats-interval", "0"],
        json_path("blk"),
    );
    let r = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port));
    assert!(r.is_err(), "DOCKER-USER must drop it: {r:?}");
    std::thread::sleep(Duration::from_millis(3500));
    let (records, status, lines) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    assert!(with_stage(&records, "reached").is_empty(), "{records:#?}");
    let attempted = with_stage(&records, "attempted");
    let blocked = with_stage(&records, "blocked");
    assert_eq!(attempted.len(), 1, "SYN retransmits are one attempt: {records:#?}");
    assert_eq!(blocked.len(), 1, "{records:#?}");
    assert_eq!(blocked[0]["src_port"], attempted[0]["src_port"]);
    assert_eq!(blocked[0]["host_port"], port);
    assert_eq!(blocked[0]["container"]["name"], web.name.as_str());
    let alert = format!(
        "BLOCKED {} ({image}) {}:{port} attempted from {}: the firewall held",
        web.name,
        outside.v4(1),
        outside.v4(2)
    );
    assert!(lines.iter().any(|l| l == &alert), "{alert:?} not in {lines:#?}");
}

#[test]
fn ipv6_relayed_by_docker_proxy_is_reached_through_the_proxy_or_blocked() {
    if !docker::ready("ipv6_relayed_by_docker_proxy_is_reached_through_the_proxy_or_blocked") {
        return;
    }
    // Docker's IPv6 is off here: a published port answers IPv6 through docker-proxy on
    // the host (INPUT path), which reaches the container from the bridge gateway.
    let image = docker::echo_image();
    let outside = OutsideHost::new("p");
    let n = outside.n as u16;
    let (open, closed) = (27000 + n, 28000 + n);
    let web = docker::Container::run(
        &format!("dx-px-{n}"),
        &["-p", &format!("{open}:80"), "-p", &format!("{closed}:80")],
        &image,
        &["80", "5300"],
    );
    // The operator allowed `open` on INPUT for IPv6 (ufw allow), not `closed`.
    let chain = format!("DXIp{}", outside.n);
    let open_s = open.to_string();
    sh(&["ip6tables", "-I", &chain, "1", "-p", "tcp", "--dport", &open_s, "-j", "ACCEPT"]);
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--blocked-after", "2", "--stats-interval", "0"],
        json_path("px"),
    );
    let ok =
        tcp_connect(&outside.ns, Some(outside.src6()), outside.host6(open)).expect("docker-proxy answers over IPv6");
    let no = tcp_connect(&outside.ns, Some(outside.src6()), outside.host6(closed));
    assert!(no.is_err(), "INPUT drops the other port: {no:?}");
    std::thread::sleep(Duration::from_millis(3500));
    let (records, status, lines) = w.stop();
    let records = outside.own(records);
    assert!(status.success());
    let reached = with_stage(&records, "reached");
    assert_eq!(reached.len(), 1, "{records:#?}");
    let r = reached[0];
    assert_eq!((r["path"].as_str(), r["family"].as_str()), (Some("proxy"), Some("ipv6")));
    assert_eq!((r["src_port"].as_u64(), r["host_port"].as_u64()), (Some(ok as u64), Some(open as u64)));
    assert_eq!(r["container"]["name"], web.name.as_str());
    let blocked = with_stage(&records, "blocked");
    assert_eq!(blocked.len(), 1, "{records:#?}");
    assert_eq!(blocked[0]["host_port"], closed);
    assert!(lines.iter().any(|l| l.contains("through a proxy on the host")), "{lines:#?}");
}
