//! End to end, as an attacker with a packet-crafting library would try it: each
//! crafted first-packet shape is sent from an outside namespace, the container is
//! seen to answer it, and dockexpose must have written one `reached` record for it,
//! with the exact host port (from conntrack), whatever the shape. Needs root, scapy
//! (installed by `cargo xtask setup`) and, for the last test, Docker.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::Value;
use support::{
    craft::*,
    docker,
    engine::{Proxy, SecondEngine},
    *,
};

const TIMEOUT: Duration = Duration::from_secs(3);
const C_SCTP: u16 = 3868;
const HOST_SCTP: u16 = 13868;

/// A crafted first packet sent, and what its record must say.
struct Sent {
    shape: &'static str,
    src: IpAddr,
    sport: u16,
    proto: &'static str,
    host: SocketAddr,
    /// Words the record's `shape` must hold.
    marks: &'static [&'static str],
}

fn marks_of(shape: &str) -> &'static [&'static str] {
    match shape {
        "tcp4-tiny-frags" => &["fragment", "flags_hidden"],
        "tcp6-frag" | "udp4-frags" => &["fragment"],
        "tcp6-chain" => &["fragment", "ip_options"],
        "tcp4-options" | "tcp6-hbh" | "tcp6-dstopts" | "tcp6-routing" | "udp6-dstopts" => &["ip_options"],
        _ => &[],
    }
}

fn reached_for(records: &[Value], src: IpAddr, sport: u16) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["stage"] == "reached" && r["src_ip"] == src.to_string().as_str() && r["src_port"] == sport)
        .collect()
}

#[test]
fn crafted_first_packets_that_reach_a_container_are_each_reported_with_the_exact_host_port() {
    if !privileged("crafted_first_packets_that_reach_a_container_are_each_reported_with_the_exact_host_port") {
        return;
    }
    let bed = Bed::new("ce");
    let _c1 = Services::start(&bed.c1_ns, C_TCP, C_UDP);
    let ns = bed.outside.ns.clone();
    let (src4, src6) = (bed.outside.src4(), bed.outside.src6());
    let mut undo = Undo::default();
    // SCTP published too (Docker's rule shape): DNAT only; the bed's FORWARD accepts.
    for (tool, host, to) in [
        ("iptables", bed.outside.v4(1), format!("{}:{C_SCTP}", bed.bridge_v4(2))),
        ("ip6tables", bed.outside.v6(1), format!("[{}]:{C_SCTP}", bed.bridge_v6(2))),
    ] {
        let rule = [
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "1",
            "-d",
            &host,
            "-p",
            "sctp",
            "--dport",
            &HOST_SCTP.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        let mut add = vec![tool];
        add.extend_from_slice(&rule);
        sh(&add);
        let mut del: Vec<&str> = add.clone();
        del[3] = "-D";
        del.remove(5);
        undo.push(&del);
    }
    // Loose reverse-path filtering on the uplink, so a spoofed bridge-subnet source
    // gets through (as it does on hosts with rp_filter 0 or 2; IPv6 has none at all).
    let rp = format!("net.ipv4.conf.{}.rp_filter", bed.outside.uplink);
    sh(&["sysctl", "-qw", &format!("{rp}=2")]);

    let w = Watcher::start(&["--bridge", &bed.bridge, "--no-uplinks", "--stats-interval", "0"], json_path("crafted"));
    let mut sent = Vec::new();
    let mut wrong = Vec::new();
    let mut sport = 43100;
    let mut send = |shape: &'static str,
                    src: IpAddr,
                    host: SocketAddr,
                    proto: &'static str,
                    want: Option<&str>,
                    wrong: &mut Vec<String>| {
        sport += 1;
        let got = craft(&ns, shape, src, host, sport, TIMEOUT);
        eprintln!("  {shape:<16} {src} -> {host} sport {sport}: {got:?}");
        if let Some(want) = want {
            if got.answer.as_deref() != Some(want) {
                wrong.push(format!("{shape}: the container did not answer ({got:?}): the test bed is broken"));
            }
        }
        sent.push(Sent { shape, src, sport, proto, host, marks: marks_of(shape) });
    };
    for shape in TCP4_SHAPES {
        send(shape, src4, bed.host_tcp_v4(), "tcp", Some("SA"), &mut wrong);
    }
    for shape in TCP6_SHAPES {
        send(shape, src6, bed.host_tcp_v6(), "tcp", Some("SA"), &mut wrong);
    }
    for shape in UDP4_SHAPES {
        send(shape, src4, bed.host_udp_v4(), "udp", Some("udp"), &mut wrong);
    }
    for shape in UDP6_SHAPES {
        send(shape, src6, bed.host_udp_v6(), "udp", Some("udp"), &mut wrong);
    }
    // SCTP: nothing answers an INIT on this kernel (no SCTP sockets); the container's
    // stack returns "protocol unreachable", which proves the INIT got there.
    send("sctp4-init", src4, bed.outside.host4(HOST_SCTP), "sctp", None, &mut wrong);
    send("sctp6-init", src6, bed.outside.host6(HOST_SCTP), "sctp", None, &mut wrong);
    // Spoofed: a source inside the container bridge's own subnet, from outside.
    // (The answer goes to the bridge, not back to us: only the record is checked.)
    let spoof4: IpAddr = bed.bridge_v4(77).parse().unwrap();
    let spoof6: IpAddr = bed.bridge_v6(77).parse().unwrap();
    send("tcp4-plain", spoof4, bed.host_tcp_v4(), "tcp", None, &mut wrong);
    send("tcp6-plain", spoof6, bed.host_tcp_v6(), "tcp", None, &mut wrong);
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, lines) = w.stop();
    sh(&["sysctl", "-qw", &format!("{rp}=0")]);
    drop(undo);
    assert!(status.success());

    for s in &sent {
        let got = reached_for(&records, s.src, s.sport);
        if got.len() != 1 {
            wrong.push(format!("{} from {}:{}: {} reached records, wanted 1", s.shape, s.src, s.sport, got.len()));
            continue;
        }
        let r = got[0];
        let spoofed = s.src == spoof4 || s.src == spoof6;
        if r["proto"] != s.proto || r["spoofed_local"] != spoofed {
            wrong.push(format!("{}: proto/spoofed_local wrong in {r}", s.shape));
        }
        // Conntrack gives every protocol its exact host side (no uplink program here).
        let host: (Value, Value) = (s.host.ip().to_string().into(), s.host.port().into());
        if (r["host_ip"].clone(), r["host_port"].clone()) != host {
            wrong.push(format!("{}: host side {:?} wanted {host:?}", s.shape, (&r["host_ip"], &r["host_port"])));
        }
        let shape: Vec<&str> =
            r["shape"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for m in s.marks {
            if !shape.contains(m) {
                wrong.push(format!("{}: shape {shape:?} lacks {m}", s.shape));
            }
        }
    }
    assert!(wrong.is_empty(), "{} problems:\n{}", wrong.len(), wrong.join("\n"));
    let last = lines.iter().find(|l| l.contains("final counters")).expect("final counters");
    assert_eq!(counter(last, "bridge_uninspected"), 0, "{last}");
}

#[test]
fn a_syn_in_8_byte_fragments_is_reported_on_the_real_engine() {
    if !docker::ready("a_syn_in_8_byte_fragments_is_reported_on_the_real_engine") {
        return;
    }
    let image = docker::echo_image();
    let outside = OutsideHost::new("fr");
    let tcp_port = 27000 + outside.n as u16;
    let c = docker::Container::run(
        &format!("dx-frag-{}", outside.n),
        &["-p", &format!("{tcp_port}:80")],
        &image,
        &["80", "5300"],
    );
    let w = Watcher::start(
        &["--uplink", &outside.uplink, "--blocked-after", "2", "--stats-interval", "0"],
        json_path("frag"),
    );
    let frags = craft(&outside.ns, "tcp4-tiny-frags", outside.src4(), outside.host4(tcp_port), 44002, TIMEOUT);
    assert_eq!(frags.answer.as_deref(), Some("SA"), "the container answered the fragmented SYN");
    std::thread::sleep(Duration::from_millis(2500)); // past --blocked-after
    let (records, status, lines) = w.stop();
    assert!(status.success());
    let records = outside.own(records);
    // The uplink cannot see the flags of an 8-byte first fragment (counted, no
    // attempt); the bridge asks conntrack, which names the connection and its host port.
    let reached: Vec<&Value> = records.iter().filter(|r| r["src_port"] == 44002 && r["stage"] == "reached").collect();
    assert_eq!(reached.len(), 1, "{records:#?}");
    assert_eq!(reached[0]["host_port"], tcp_port);
    assert_eq!(reached[0]["container"]["name"], c.name.as_str());
    assert!(reached[0]["shape"].as_array().unwrap().iter().any(|s| s == "flags_hidden"), "{}", reached[0]);
    assert!(
        !records.iter().any(|r| r["src_port"] == 44002 && r["stage"] == "blocked"),
        "never called blocked: {records:#?}"
    );
    let last = lines.iter().find(|l| l.contains("final counters")).unwrap();
    assert!(counter(last, "conntrack_first_packets") >= 1, "{last}");
    assert!(counter(last, "unparsed") >= 1, "the uplink counted what it could not inspect: {last}");
}

#[test]
fn sctp_published_ports_are_attempted_and_reached_on_a_real_engine() {
    if !docker::ready("sctp_published_ports_are_attempted_and_reached_on_a_real_engine") {
        return;
    }
    // This kernel has SCTP conntrack and NAT but no SCTP sockets, so the machine's
    // engine cannot publish an SCTP port (its proxy, or the socket it holds to reserve
    // the port, fails). A second engine in its own namespace with a stand-in proxy
    // gets Docker's real SCTP DNAT and FORWARD rules.
    let engine = SecondEngine::start_with("sc", Proxy::SctpStub, &[]);
    let port = 26100;
    let c = engine.run(
        &format!("dx-sctp-{}", engine.n),
        &["-p", &format!("{port}:{C_SCTP}/sctp")],
        &engine.image,
        &["80", "5300"],
    );
    let w = engine.watch(&["--blocked-after", "2", "--stats-interval", "0"], json_path("sctp"));
    let src: IpAddr = engine.outside_v4().parse().unwrap();
    let before = c.snmp("Ip", "InUnknownProtos");
    craft(&engine.outside_ns, "sctp4-init", src, engine.host4(port), 44001, TIMEOUT);
    assert_eq!(c.snmp("Ip", "InUnknownProtos"), before + 1, "the INIT was DNAT'd into the container");
    std::thread::sleep(Duration::from_millis(2500)); // past --blocked-after
    let (records, status, _) = w.stop();
    assert!(status.success());
    let of = |stage: &str| -> Vec<Value> {
        records.iter().filter(|r| r["src_port"] == 44001 && r["stage"] == stage).cloned().collect()
    };
    let (attempted, reached) = (of("attempted"), of("reached"));
    assert_eq!((attempted.len(), reached.len()), (1, 1), "{records:#?}");
    assert!(of("blocked").is_empty(), "reached, so never blocked: {records:#?}");
    assert_eq!((attempted[0]["proto"].as_str(), attempted[0]["dst_port"].as_u64()), (Some("sctp"), Some(port as u64)));
    assert_eq!(attempted[0]["container"]["name"], c.name.as_str());
    assert_eq!(reached[0]["proto"], "sctp");
    assert_eq!(reached[0]["dst_port"], C_SCTP);
    assert_eq!(reached[0]["host_port"], port, "from the conntrack entry");
    assert_eq!(reached[0]["container"]["name"], c.name.as_str());
    assert_eq!(reached[0]["exposure"], "published");

    // `verify` probes the SCTP port with an INIT of its own (CRC32c checksummed, or
    // conntrack would refuse it): it reaches the container.
    let probe_source = format!("{}.77/32", engine.engine_v4().rsplit_once('.').unwrap().0);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &engine.ns, env!("CARGO_BIN_EXE_dockexpose"), "verify"])
        .args(["--docker-host", &engine.socket, "--uplink", &engine.uplink, "--from", &probe_source])
        .args(["--expect-exposed", &format!("{port}/sctp")])
        .output()
        .expect("run dockexpose verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.lines().any(|l| l.starts_with("EXPOSED") && l.contains("sctp") && l.contains(&format!(":{port} "))),
        "an EXPOSED line for {port}/sctp:\n{stdout}"
    );
    assert_eq!(out.status.code(), Some(0), "the only exposure was expected");
    assert!(stdout.contains(" 0 remain"), "no conntrack entry of the probe remains:\n{stdout}");
}
