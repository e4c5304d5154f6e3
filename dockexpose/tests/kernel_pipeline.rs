//! The kernel pipeline end to end, on real namespaces, bridges, iptables and eBPF:
//! what reaches a container from outside is reported once, with the right fields;
//! what comes from the host, from another container, or from a trusted source is not.
//! Needs root; run one at a time (`cargo xtask test` does).

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::Value;
use support::*;

fn records_matching<'a>(records: &'a [Value], proto: &str, family: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["proto"] == proto && r["family"] == family).collect()
}

#[test]
fn outside_connections_are_reported_once_and_nothing_else_is() {
    if !privileged("outside_connections_are_reported_once_and_nothing_else_is") {
        return;
    }
    let bed = Bed::new("k");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let _c2 = Services::start(&bed.c2_ns, C_TCP, C_UDP);
    let _outside = Services::start(&bed.outside.ns, 5400, 5400);
    let json = json_path("pipeline");
    let trusted4 = format!("{}/32", bed.outside.v4(3));
    let trusted6 = format!("{}/128", bed.outside.v6(3));
    let watcher = Watcher::start(
        &["--bridge", &bed.bridge, "--uplink", &bed.outside.uplink, "--trusted", &trusted4, "--trusted", &trusted6, "--stats-interval", "0"],
        json,
    );
    if let Some(secs) = std::env::var("DOCKEXPOSE_TEST_HOLD").ok().and_then(|s| s.parse().ok()) {
        eprintln!("holding the test bed for {secs}s");
        std::thread::sleep(Duration::from_secs(secs)); // debugging aid
    }
    assert_eq!(tcx_programs(&bed.bridge, true), ["bridge_egress"], "egress program attached while watching");
    assert_eq!(tcx_programs(&bed.bridge, false), ["bridge_ingress"]);
    assert_eq!(tcx_programs(&bed.outside.uplink, true), ["uplink_egress"]);
    assert!(xdp_attached(&bed.outside.uplink), "XDP on the uplink while watching");

    // The firewall holds for the host itself: INPUT drops the outside host...
    let host_listener = std::net::TcpListener::bind((bed.outside.v4(1).as_str(), HOST_INPUT_TCP)).unwrap();
    let input_probe = tcp_connect(&bed.outside.ns, Some(bed.outside.v4(2).parse().unwrap()), SocketAddr::new(bed.outside.v4(1).parse().unwrap(), HOST_INPUT_TCP));
    assert!(input_probe.is_err(), "INPUT should drop the outside host, got {input_probe:?}");
    drop(host_listener);

    // ...but the published ports are reachable through DNAT and FORWARD.
    // The outside host also holds the trusted addresses: pick the source explicitly.
    let (out4, out6): (IpAddr, IpAddr) = (bed.outside.v4(2).parse().unwrap(), bed.outside.v6(2).parse().unwrap());
    let tcp4_port = tcp_connect(&bed.outside.ns, Some(out4), bed.host_tcp_v4()).expect("outside TCP over IPv4");
    let tcp6_port = tcp_connect(&bed.outside.ns, Some(out6), bed.host_tcp_v6()).expect("outside TCP over IPv6");
    let (udp4_port, echoed4) = udp_exchange(&bed.outside.ns, Some(out4), bed.host_udp_v4(), 3);
    let (udp6_port, echoed6) = udp_exchange(&bed.outside.ns, Some(out6), bed.host_udp_v6(), 3);
    assert_eq!((echoed4, echoed6), (3, 3), "UDP flows through DNAT must be answered");

    // None of these may be reported.
    let c1_v4: SocketAddr = SocketAddr::new(bed.bridge_v4(2).parse().unwrap(), C_TCP);
    let c1_v6: SocketAddr = SocketAddr::new(bed.bridge_v6(2).parse().unwrap(), C_TCP);
    tcp_connect_root(c1_v4).expect("host to container, IPv4");
    tcp_connect_root(c1_v6).expect("host to container, IPv6");
    tcp_connect(&bed.c2_ns, None, c1_v4).expect("container to container");
    tcp_connect(&bed.c2_ns, None, c1_v6).expect("container to container, IPv6");
    tcp_connect(&bed.outside.ns, Some(bed.outside.v4(3).parse().unwrap()), bed.host_tcp_v4()).expect("trusted v4");
    tcp_connect(&bed.outside.ns, Some(bed.outside.v6(3).parse().unwrap()), bed.host_tcp_v6()).expect("trusted v6");
    // A container's own UDP flow out: the answer must not look like a new inbound flow.
    let (_, echoed) = udp_exchange(&bed.c1_ns, None, SocketAddr::new(bed.outside.v4(2).parse().unwrap(), 5400), 2);
    assert_eq!(echoed, 2, "container's outbound UDP must be answered");

    std::thread::sleep(Duration::from_millis(500));
    if let Some(secs) = std::env::var("DOCKEXPOSE_TEST_PAUSE").ok().and_then(|s| s.parse().ok()) {
        std::thread::sleep(Duration::from_secs(secs)); // debugging aid: inspect maps meanwhile
    }
    let (records, status, lines) = watcher.stop();
    assert!(status.success(), "watcher exit: {status}");
    assert!(lines.iter().any(|l| l.contains("detached from")), "no detach message: {lines:?}");
    assert_eq!(records.len(), 4, "expected exactly 4 records, got:\n{records:#?}");

    let check = |r: &Value, proto: &str, family: &str, src: String, sport: u16, dst: String, dport: u16| {
        assert_eq!(r["stage"], "reached");
        assert_eq!(r["proto"], proto);
        assert_eq!(r["family"], family);
        assert_eq!(r["src_ip"], src.as_str());
        assert_eq!(r["src_port"], sport);
        assert_eq!(r["dst_ip"], dst.as_str());
        assert_eq!(r["dst_port"], dport);
        assert_eq!(r["iface"], bed.bridge.as_str());
        assert!(r["container"].is_null());
        assert!(r["host_ip"].is_null() && r["host_port"].is_null(), "no uplink program: host side unknown");
        let ts = r["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.starts_with("20"), "ts {ts}");
    };
    let one = |proto: &str, family: &str| {
        let m = records_matching(&records, proto, family);
        assert_eq!(m.len(), 1, "{proto}/{family}: {m:#?}");
        m[0]
    };
    check(one("tcp", "ipv4"), "tcp", "ipv4", bed.outside.v4(2), tcp4_port, bed.bridge_v4(2), C_TCP);
    check(one("tcp", "ipv6"), "tcp", "ipv6", bed.outside.v6(2), tcp6_port, bed.bridge_v6(2), C_TCP);
    check(one("udp", "ipv4"), "udp", "ipv4", bed.outside.v4(2), udp4_port, bed.bridge_v4(2), C_UDP);
    check(one("udp", "ipv6"), "udp", "ipv6", bed.outside.v6(2), udp6_port, bed.bridge_v6(2), C_UDP);

    // Counters at exit agree: 4 emitted, no loss, the repeated UDP packets deduplicated.
    let final_line = lines.iter().find(|l| l.contains("final counters")).expect("final counters line");
    assert!(final_line.contains("reached_emitted=4"), "{final_line}");
    assert!(final_line.contains("ringbuf_full_lost=0") && final_line.contains("reader_lost=0"), "{final_line}");
    let dedup: u64 = counter(final_line, "udp_deduplicated");
    assert!(dedup >= 4, "the 2nd and 3rd datagram of each UDP flow are deduplicated: {final_line}");

    // Nothing stays attached, and a second run right after works.
    assert!(tcx_programs(&bed.bridge, true).is_empty(), "egress still attached after stop");
    assert!(tcx_programs(&bed.bridge, false).is_empty(), "ingress still attached after stop");
    assert!(tcx_programs(&bed.outside.uplink, true).is_empty(), "uplink egress still attached after stop");
    assert!(!xdp_attached(&bed.outside.uplink), "XDP still attached after stop");
    let again = Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks"], std::env::temp_dir().join(format!("dockexpose-test-{}-2.json", bed.n)));
    let (_, status, _) = again.stop();
    assert!(status.success());
    assert!(tcx_programs(&bed.bridge, true).is_empty());
}



#[test]
fn a_bridge_that_disappears_is_dropped_without_a_crash() {
    if !privileged("a_bridge_that_disappears_is_dropped_without_a_crash") {
        return;
    }
    let n = run_id();
    let bridge = format!("dxgone{n}");
    let mut undo = Undo::default();
    sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
    undo.push(&["ip", "link", "del", &bridge]);
    sh(&["ip", "link", "set", &bridge, "up"]);
    let mut w = Watcher::start(&["--bridge", &bridge, "--no-uplinks"], std::env::temp_dir().join(format!("dockexpose-gone-{n}.json")));
    sh(&["ip", "link", "del", &bridge]);
    w.wait_for_line("disappeared", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.is_running(), "watcher must survive a vanished interface");
    let (_, status, _) = w.stop();
    assert!(status.success());
}

#[test]
fn an_interface_that_is_not_a_bridge_gets_a_warning() {
    if !privileged("an_interface_that_is_not_a_bridge_gets_a_warning") {
        return;
    }
    let w = Watcher::start(&["--bridge", "lo", "--no-uplinks"], std::env::temp_dir().join(format!("dockexpose-lo-{}.json", run_id())));
    let (_, status, lines) = w.stop();
    assert!(status.success());
    assert!(lines.iter().any(|l| l.contains("warning: lo is not a Linux bridge")), "{lines:?}");
}

#[test]
fn missing_privileges_are_named() {
    if !privileged("missing_privileges_are_named") {
        return;
    }
    // Drop to nobody, with no capabilities left.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_dockexpose"))
        .args(["watch", "--bridge", "lo"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(err.contains("Fix:"), "{err}");
}

#[test]
fn programs_attached_after_ours_still_run() {
    if !privileged("programs_attached_after_ours_still_run") {
        return;
    }
    // Two watchers on one bridge: TCX runs the second only if the first says
    // "next" (TCX_NEXT). Another monitor or a CNI after us must keep working.
    let bed = Bed::new("t");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let first = Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks", "--no-docker"], json_path("first"));
    let second = Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks", "--no-docker"], json_path("second"));
    assert_eq!(tcx_programs(&bed.bridge, true), ["bridge_egress", "bridge_egress"]);
    let sport = tcp_connect(&bed.outside.ns, Some(bed.outside.src4()), bed.host_tcp_v4()).expect("reachable");
    std::thread::sleep(Duration::from_millis(300));
    for w in [second, first] {
        let (records, status, _) = w.stop();
        assert!(status.success());
        assert_eq!(records.iter().filter(|r| r["src_port"] == sport).count(), 1, "each watcher saw it: {records:#?}");
    }
}
