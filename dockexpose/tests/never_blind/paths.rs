//! Which path a connection took: direct routing told apart from the published path, and
//! a spoofed trusted source.

use super::*;

#[test]
fn direct_routing_and_the_published_path_are_told_apart() {
    let test = "direct_routing_and_the_published_path_are_told_apart";
    if !docker::ready(test) {
        return;
    }
    let (outside, web, port) = published_echo("r", 21000);
    let ip = web.ip("bridge");
    // A neighbour routes to the container itself; Docker before 28 accepts it in FORWARD.
    sh(&["ip", "-n", &outside.ns, "route", "add", &format!("{ip}/32"), "via", &outside.v4(1)]);
    let w = Watcher::start(&["--uplink", &outside.uplink, "--stats-interval", "0"], json_path("routed"));
    let published = tcp_connect(&outside.ns, Some(outside.src4()), outside.host4(port)).expect("published path");
    let direct =
        tcp_connect(&outside.ns, Some(outside.src4()), SocketAddr::new(ip.parse().unwrap(), 80)).expect("direct path");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let p = reached(&records, published);
    let d = reached(&records, direct);
    eprintln!("{test}: published {p:?}\ndirect {d:?}");
    assert_eq!(p.len(), 1);
    assert_eq!((p[0]["exposure"].as_str(), p[0]["host_port"].as_u64()), (Some("published"), Some(u64::from(port))));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["exposure"], "direct", "routed straight to the container: {}", d[0]);
    assert!(d[0]["host_port"].is_null() && d[0]["host_ip"].is_null(), "no host port was used: {}", d[0]);
    assert_eq!(d[0]["container"]["name"], web.name.as_str());
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("EXPOSED DIRECTLY ROUTED PORT {}", web.name))),
        "alerted as exposure without publishing: {lines:#?}"
    );
}

#[test]
fn a_spoofed_trusted_source_is_reported_and_a_real_one_is_not() {
    let test = "a_spoofed_trusted_source_is_reported_and_a_real_one_is_not";
    if !docker::ready(test) {
        return;
    }
    if sh(&["sysctl", "-n", "net.ipv4.conf.all.rp_filter"]).trim() == "1" {
        panic!("{test}: net.ipv4.conf.all.rp_filter=1 drops the spoofed packet before any container: the test needs 0 or 2");
    }
    let image = docker::echo_image();
    // The admin network (trusted) behind one uplink; the internet behind another.
    let admin = OutsideHost::new("a");
    let internet = OutsideHost::with_n("i", (admin.n + 101) % 200 + 20);
    let n = admin.n;
    let udp_port = 23000 + n as u16;
    let _svc = docker::Container::run(
        &format!("dx-trusted-{n}"),
        &["-p", &format!("{udp_port}:5300/udp")],
        &image,
        &["80", "5300"],
    );
    let trusted = format!("198.18.{n}.0/24");
    let w = Watcher::start(
        &["--uplink", &admin.uplink, "--uplink", &internet.uplink, "--trusted", &trusted, "--stats-interval", "0"],
        json_path("trusted"),
    );
    // The admin host itself: trusted, never reported.
    let (real_port, _) = udp_exchange(&admin.ns, Some(admin.src4()), admin.host4(udp_port), 1);
    // From the internet, with the admin host's address: a one-packet UDP exploit.
    let spoof_port = 42000 + n as u16;
    let target = SocketAddr::new(internet.v4(1).parse().unwrap(), udp_port);
    craft(&internet.ns, "udp4-plain", admin.src4(), target, spoof_port, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let last = lines.iter().find(|l| l.contains("final counters")).expect("final counters");
    eprintln!("{test}: {last}");
    assert!(reached(&records, real_port).is_empty(), "the real admin host is trusted");
    let spoofed = reached(&records, spoof_port);
    assert_eq!(spoofed.len(), 1, "the spoofed trusted source is reported: {records:?}");
    assert_eq!(spoofed[0]["src_ip"], admin.v4(2).as_str());
    assert_eq!(spoofed[0]["spoofed_trusted"], true);
    assert!(lines.iter().any(|l| l.contains("SPOOFED TRUSTED SOURCE")), "{lines:#?}");
}
