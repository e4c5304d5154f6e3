//! The kernel pipeline end to end, on real namespaces, bridges, iptables and eBPF:
//! what reaches a container from outside is reported once, with the right fields;
//! what comes from the host, from another container, or from a trusted source is not.
//! Needs root; run one at a time (`cargo xtask test` does).
//!
//! Where a "not reported" claim depends on the packet crossing the bridge's egress
//! hook at all, the test reads the kernel counters of the attached program
//! (`bridge_counters`) to show that it did: a packet the hook never sees is not
//! reported whatever the program does, so "no record" alone would prove nothing.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use dockexpose_common::{map_names, Counter};
use serde_json::Value;
use support::*;

fn records_matching<'a>(records: &'a [Value], proto: &str, family: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["proto"] == proto && r["family"] == family).collect()
}

/// The kernel counters (summed over CPUs, by `Counter` index) of the one
/// `bridge_egress` program attached to `bridge`, read from its own COUNTERS map:
/// only what that bridge's hooks counted. Panics when it cannot be read.
fn bridge_counters(bridge: &str) -> [u64; Counter::COUNT as usize] {
    use aya::{
        maps::{Map, MapData, MapInfo, PerCpuArray},
        programs::{SchedClassifier, TcAttachType},
    };
    let (_, progs) = SchedClassifier::query_tcx(bridge, TcAttachType::Egress)
        .unwrap_or_else(|e| panic!("TCX egress query of {bridge}: {e}"));
    assert_eq!(progs.len(), 1, "one program on {bridge}'s egress");
    let map_ids = progs[0]
        .map_ids()
        .unwrap_or_else(|e| panic!("map ids of bridge_egress: {e}"))
        .expect("map ids (kernel >= 4.15)");
    let id = map_ids
        .into_iter()
        .find(|id| MapInfo::from_id(*id).is_ok_and(|info| info.name_as_str() == Some(map_names::COUNTERS)))
        .expect("bridge_egress uses a COUNTERS map");
    let map = MapData::from_id(id).unwrap_or_else(|e| panic!("COUNTERS map {id}: {e}"));
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(map)).expect("COUNTERS is a per-CPU array");
    Counter::ALL
        .map(|c| counters.get(&(c as u32), 0).unwrap_or_else(|e| panic!("reading {}: {e}", c.name())).iter().sum())
}

/// How counter `c` grew from `before` to `after`.
fn grew(before: &[u64; Counter::COUNT as usize], after: &[u64; Counter::COUNT as usize], c: Counter) -> u64 {
    after[c as usize] - before[c as usize]
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
        // XDP explicitly: the default TCX ingress hook is covered by the Docker tests.
        &[
            "--bridge",
            &bed.bridge,
            "--uplink",
            &bed.outside.uplink,
            "--uplink-hook",
            "xdp",
            "--trusted",
            &trusted4,
            "--trusted",
            &trusted6,
            "--stats-interval",
            "0",
        ],
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
    let input_probe = tcp_connect(
        &bed.outside.ns,
        Some(bed.outside.v4(2).parse().unwrap()),
        SocketAddr::new(bed.outside.v4(1).parse().unwrap(), HOST_INPUT_TCP),
    );
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

    // Container to container on one bridge: switched from port to port, it never
    // passes the bridge device's own egress (TCX there sees only what the host sends
    // into the bridge), so not being reported says nothing about the program. The
    // counters show that the hook saw no new flow at all.
    let before = bridge_counters(&bed.bridge);
    tcp_connect(&bed.c2_ns, None, c1_v4).expect("container to container, switched");
    tcp_connect(&bed.c2_ns, None, c1_v6).expect("container to container, switched, IPv6");
    let after = bridge_counters(&bed.bridge);
    assert_eq!(
        grew(&before, &after, Counter::BridgeNewFlows),
        0,
        "switched traffic between two ports of the bridge does not cross its egress hook"
    );

    // Container to container through the host: c2 reaches c1 by way of the gateway
    // (the host routes it back into the bridge, as between two networks of one host),
    // so it DOES cross the egress hook, with c2's address as the source: a watched
    // bridge's subnet is local, so the program drops it from reporting
    // (bridge_local_or_trusted) and no record follows. No NAT on the way, so
    // br_netfilter's short cut for DNAT within one bridge does not apply.
    let (c1_host4, c1_host6) = (format!("{}/32", bed.bridge_v4(2)), format!("{}/128", bed.bridge_v6(2)));
    sh(&["ip", "-n", &bed.c2_ns, "route", "add", &c1_host4, "via", &bed.bridge_v4(1)]);
    sh(&["ip", "-n", &bed.c2_ns, "-6", "route", "add", &c1_host6, "via", &bed.bridge_v6(1)]);
    // The host's ICMP redirect ("c1 is on your link") must not shorten the path.
    for key in [
        "net.ipv4.conf.all.accept_redirects",
        "net.ipv4.conf.eth0.accept_redirects",
        "net.ipv6.conf.all.accept_redirects",
        "net.ipv6.conf.eth0.accept_redirects",
    ] {
        sh(&["ip", "netns", "exec", &bed.c2_ns, "sysctl", "-qw", &format!("{key}=0")]);
    }
    for (family, dst) in [("IPv4", c1_v4), ("IPv6", c1_v6)] {
        let before = bridge_counters(&bed.bridge);
        tcp_connect(&bed.c2_ns, None, dst)
            .unwrap_or_else(|e| panic!("container to container through the host, {family}: {e}"));
        let after = bridge_counters(&bed.bridge);
        let (new, local, emitted) = (
            grew(&before, &after, Counter::BridgeNewFlows),
            grew(&before, &after, Counter::BridgeLocalOrTrusted),
            grew(&before, &after, Counter::ReachedEmitted),
        );
        eprintln!("container to container through the host, {family}: bridge_new_flows +{new}, bridge_local_or_trusted +{local}, reached_emitted +{emitted}");
        assert!(local >= 1, "{family}: c2 -> c1 routed by the host must cross the bridge's egress hook as a local source (bridge_new_flows +{new}, bridge_local_or_trusted +{local})");
        assert_eq!((new, emitted), (local, 0), "{family}: every new flow the hook saw was local, and none was emitted");
    }
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
    for c2 in [bed.bridge_v4(3), bed.bridge_v6(3)] {
        assert!(records.iter().all(|r| r["src_ip"] != c2.as_str()), "container c2 ({c2}) reported:\n{records:#?}");
    }

    let check =
        |r: &Value, proto: &str, family: &str, src: String, sport: u16, dst: String, dport: u16, host: SocketAddr| {
            assert_eq!(r["stage"], "reached");
            assert_eq!(r["proto"], proto);
            assert_eq!(r["family"], family);
            assert_eq!(r["src_ip"], src.as_str());
            assert_eq!(r["src_port"], sport);
            assert_eq!(r["dst_ip"], dst.as_str());
            assert_eq!(r["dst_port"], dport);
            assert_eq!(r["iface"], bed.bridge.as_str());
            assert!(r["container"].is_null());
            // No uplink program here: the exact host side comes from conntrack's NAT state.
            assert_eq!(
                (r["host_ip"].as_str(), r["host_port"].as_u64()),
                (Some(host.ip().to_string().as_str()), Some(host.port() as u64))
            );
            let ts = r["ts"].as_str().unwrap();
            assert!(ts.ends_with('Z') && ts.starts_with("20"), "ts {ts}");
        };
    let one = |proto: &str, family: &str| {
        let m = records_matching(&records, proto, family);
        assert_eq!(m.len(), 1, "{proto}/{family}: {m:#?}");
        m[0]
    };
    check(one("tcp", "ipv4"), "tcp", "ipv4", bed.outside.v4(2), tcp4_port, bed.bridge_v4(2), C_TCP, bed.host_tcp_v4());
    check(one("tcp", "ipv6"), "tcp", "ipv6", bed.outside.v6(2), tcp6_port, bed.bridge_v6(2), C_TCP, bed.host_tcp_v6());
    check(one("udp", "ipv4"), "udp", "ipv4", bed.outside.v4(2), udp4_port, bed.bridge_v4(2), C_UDP, bed.host_udp_v4());
    check(one("udp", "ipv6"), "udp", "ipv6", bed.outside.v6(2), udp6_port, bed.bridge_v6(2), C_UDP, bed.host_udp_v6());

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
    let again = Watcher::start(
        &["--bridge", &bed.bridge, "--no-uplinks"],
        std::env::temp_dir().join(format!("dockexpose-test-{}-2.json", bed.n)),
    );
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
    let mut w = Watcher::start(
        &["--bridge", &bridge, "--no-uplinks"],
        std::env::temp_dir().join(format!("dockexpose-gone-{n}.json")),
    );
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
    let w = Watcher::start(
        &["--bridge", "lo", "--no-uplinks"],
        std::env::temp_dir().join(format!("dockexpose-lo-{}.json", run_id())),
    );
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

#[test]
fn a_failed_tcx_query_is_not_read_as_nothing_attached() {
    if !privileged("a_failed_tcx_query_is_not_read_as_nothing_attached") {
        return;
    }
    // An interface that does not exist has nothing attached...
    assert!(tcx_programs(&format!("dxnone{}", run_id()), true).is_empty());
    // ...an existing one answers (whatever is on it)...
    let _ = tcx_programs("lo", false);
    // ...and any other failure (here a name the kernel cannot even be asked about)
    // panics rather than passing a detachment check.
    let failed = std::panic::catch_unwind(|| tcx_programs("no\0such", true));
    let msg = failed.expect_err("a failed query must panic");
    let msg = msg.downcast_ref::<String>().map(String::as_str).unwrap_or("");
    assert!(msg.contains("querying the TCX egress programs of"), "{msg}");
}

#[test]
fn connections_right_before_sigterm_are_in_the_log() {
    if !privileged("connections_right_before_sigterm_are_in_the_log") {
        return;
    }
    // Records wait in the ring for the reader's timer (batched wakeups): stopping must
    // take them out first, or the last connections before a restart are lost.
    let bed = Bed::new("st");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let watcher =
        Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0"], json_path("sigterm"));
    // A burst right up to the signal: the last ~20 ms of it are still in the ring.
    let made = connect_loop(&bed.outside.ns, bed.outside.src4(), bed.host_tcp_v4(), Duration::from_millis(400));
    let (records, status, _) = watcher.stop();
    assert!(status.success());
    let src = bed.outside.v4(2);
    let logged = records.iter().filter(|r| r["stage"] == "reached" && r["src_ip"] == src.as_str()).count();
    assert!(made > 20, "the burst was too small to mean anything: {made}");
    assert!(logged >= made, "{made} connections made before SIGTERM, {logged} in the log");
}

#[test]
fn an_untracked_udp_flow_from_outside_is_still_reported() {
    if !privileged("an_untracked_udp_flow_from_outside_is_still_reported") {
        return;
    }
    // A NOTRACK rule (an operator's, for a busy UDP service) leaves the packet without
    // a conntrack entry: the bridge program must judge it by the packet, not take it
    // for the reply to a flow the container opened.
    let bed = Bed::new("nt");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let mut undo = Undo::default();
    let src = bed.outside.v4(2);
    sh(&["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-s", &src, "-p", "udp", "-j", "NOTRACK"]);
    undo.push(&["iptables", "-t", "raw", "-D", "PREROUTING", "-s", &src, "-p", "udp", "-j", "NOTRACK"]);
    let watcher =
        Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0"], json_path("notrack"));
    // Straight to the container's address (no DNAT without conntrack).
    let dst = SocketAddr::new(bed.bridge_v4(2).parse().unwrap(), C_UDP);
    let (sport, echoed) = udp_exchange(&bed.outside.ns, Some(bed.outside.src4()), dst, 2);
    assert_eq!(echoed, 2, "the container answered the untracked datagrams");
    std::thread::sleep(Duration::from_millis(300));
    let (records, status, _) = watcher.stop();
    drop(undo);
    assert!(status.success());
    let ours: Vec<&Value> = records.iter().filter(|r| r["src_ip"] == src.as_str() && r["src_port"] == sport).collect();
    assert_eq!(ours.len(), 1, "one reached record for the untracked flow: {records:#?}");
    assert_eq!(ours[0]["proto"], "udp");
}
