//! verify's host-state operations over netlink (src/host/{routes,conntrack}.rs and
//! src/verify/host_state.rs), against the real kernel and the real `ip` and
//! `conntrack` programs as the reference: route lookups, temporary neighbour
//! entries, and conntrack entries of real connections (through DNAT, and from the
//! host) deleted by their exact original tuple and counted. Root; everything the
//! tests make (namespaces, veths, routes, rules, neighbour entries) goes on drop.

mod support;

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::Mutex,
    time::Duration,
};

use dockexpose::{
    host::{conntrack, conntrack::FlowTuple, routes},
    kernel::event::Proto,
    verify::{frame::PROBE_SRC_MAC, host_state, plan::Probe},
};
use support::*;

/// The tests share one address range: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// An outside host (namespace `o`, 198.18.N.2 and fd42:198:N::2, the host's side
/// 198.18.N.1 and fd42:198:N::1 on veth `uplink`) and a container (namespace `c`,
/// 10.251.N.2, behind veth `bridge` at 10.251.N.1). Removed on drop.
struct Bed {
    n: u32,
    outside: String,
    container: String,
    uplink: String,
    bridge: String,
    undo: Undo,
}

impl Bed {
    fn new() -> Self {
        let n = run_id();
        for prefix in [
            format!("198.18.{n}.0/24"),
            format!("fd42:198:{n}::/64"),
            format!("10.251.{n}.0/24"),
        ] {
            assert_unrouted(&prefix);
        }
        let (outside, container) = (format!("dxnlo{n}"), format!("dxnlc{n}"));
        let (uplink, bridge) = (format!("dxnlu{n}"), format!("dxnlb{n}"));
        let mut undo = Undo::default();
        // Last undone: the conntrack entries of the test's flows, also when it failed
        // before deleting them (by the `conntrack` program, not the code under test).
        undo.push(&["conntrack", "-D", "-s", &format!("198.18.{n}.2")]);
        undo.push(&[
            "conntrack",
            "-D",
            "-f",
            "ipv6",
            "-s",
            &format!("fd42:198:{n}::1"),
        ]);
        for (ns, host_end, addr4, addr6) in [
            (
                &outside,
                &uplink,
                format!("198.18.{n}"),
                Some(format!("fd42:198:{n}:")),
            ),
            (&container, &bridge, format!("10.251.{n}"), None),
        ] {
            sh(&["ip", "netns", "add", ns]);
            undo.push(&["ip", "netns", "del", ns]);
            let peer = format!("{host_end}p");
            sh(&[
                "ip", "link", "add", host_end, "type", "veth", "peer", "name", &peer,
            ]);
            undo.push(&["ip", "link", "del", host_end]);
            sh(&["ip", "link", "set", &peer, "netns", ns]);
            sh(&[
                "ip",
                "addr",
                "add",
                &format!("{addr4}.1/24"),
                "dev",
                host_end,
            ]);
            sh(&["ip", "link", "set", host_end, "up"]);
            let o = |args: &[&str]| sh(&[&["ip", "-n", ns.as_str()], args].concat());
            o(&["link", "set", "lo", "up"]);
            o(&["link", "set", &peer, "name", "eth0"]);
            o(&["addr", "add", &format!("{addr4}.2/24"), "dev", "eth0"]);
            if let Some(v6) = &addr6 {
                sh(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{v6}:1/64"),
                    "dev",
                    host_end,
                    "nodad",
                ]);
                o(&["addr", "add", &format!("{v6}:2/64"), "dev", "eth0", "nodad"]);
            }
            o(&["link", "set", "eth0", "up"]);
            o(&["route", "add", "default", "via", &format!("{addr4}.1")]);
        }
        Bed {
            n,
            outside,
            container,
            uplink,
            bridge,
            undo,
        }
    }

    fn v4(&self, host: u32) -> IpAddr {
        format!("198.18.{}.{host}", self.n).parse().unwrap()
    }
    fn v6(&self, host: u32) -> IpAddr {
        format!("fd42:198:{}::{host:x}", self.n).parse().unwrap()
    }

    /// Runs `args`, undone on drop by `undo_args`.
    fn with(&mut self, args: &[&str], undo_args: &[&str]) {
        sh(args);
        self.undo.push(undo_args);
    }
}

/// `ip route get ADDR`, read as the old verify read it: (dev, on link, via).
fn ip_route_get(addr: IpAddr) -> Option<(String, bool, Option<IpAddr>)> {
    let out = std::process::Command::new("ip")
        .args(["route", "get", &addr.to_string()])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .map(|w| w[1].to_string())
    };
    let via = after("via").map(|v| v.parse().unwrap());
    Some((after("dev")?, via.is_none(), via))
}

#[test]
fn route_lookups_agree_with_ip_route_get() {
    if !privileged("route_lookups_agree_with_ip_route_get") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    let (n, up) = (bed.n, bed.uplink.clone());
    // More specific routes inside the test's own ranges: via the outside host, and
    // unreachable.
    let via4 = format!("198.18.{n}.64/28");
    let via6 = format!("fd42:198:{n}::100/124");
    let (gw4, gw6) = (bed.v4(2).to_string(), bed.v6(2).to_string());
    bed.with(
        &["ip", "route", "add", &via4, "via", &gw4, "dev", &up],
        &["ip", "route", "del", &via4],
    );
    bed.with(
        &["ip", "-6", "route", "add", &via6, "via", &gw6, "dev", &up],
        &["ip", "-6", "route", "del", &via6],
    );
    let (unr4, unr6) = (
        format!("198.18.{n}.96/28"),
        format!("fd42:198:{n}::200/124"),
    );
    bed.with(
        &["ip", "route", "add", "unreachable", &unr4],
        &["ip", "route", "del", "unreachable", &unr4],
    );
    bed.with(
        &["ip", "-6", "route", "add", "unreachable", &unr6],
        &["ip", "-6", "route", "del", "unreachable", &unr6],
    );

    // (address, expected dev, expected on link): on the link, via a gateway, local.
    let cases = [
        (bed.v4(2), up.as_str(), true),
        (bed.v4(70), up.as_str(), false),
        (bed.v4(1), "lo", true),
        (bed.v6(2), up.as_str(), true),
        (bed.v6(0x105), up.as_str(), false),
        (bed.v6(1), "lo", true),
        (
            format!("10.251.{n}.2").parse().unwrap(),
            bed.bridge.as_str(),
            true,
        ),
    ];
    for (addr, dev, on_link) in cases {
        let (ip_dev, ip_on_link, ip_via) =
            ip_route_get(addr).unwrap_or_else(|| panic!("ip route get {addr} failed"));
        let route = routes::route_get(addr).unwrap_or_else(|e| panic!("route_get {addr}: {e}"));
        eprintln!("{addr}: netlink {route:?}; ip route get: dev {ip_dev} via {ip_via:?}");
        assert_eq!(
            (route.dev.as_str(), route.on_link(), route.gateway),
            (ip_dev.as_str(), ip_on_link, ip_via),
            "{addr}"
        );
        assert_eq!(
            (ip_dev.as_str(), ip_on_link),
            (dev, on_link),
            "{addr}: the bed is not what the test thinks"
        );
        assert_eq!(
            host_state::route_to(addr),
            Some((dev.to_string(), on_link)),
            "{addr}"
        );
    }
    for addr in [bed.v4(100), bed.v6(0x205)] {
        assert!(ip_route_get(addr).is_none(), "{addr} should be unreachable");
        let err = routes::route_get(addr).expect_err("no route, so an error");
        eprintln!("{addr}: {err}");
        assert_eq!(host_state::route_to(addr), None);
    }
}

/// `ip neigh show ADDR dev DEV`, trimmed.
fn ip_neigh(addr: IpAddr, dev: &str) -> String {
    sh(&["ip", "neigh", "show", &addr.to_string(), "dev", dev])
        .trim()
        .to_string()
}

#[test]
fn temporary_neighbours_are_added_and_removed_and_the_hosts_own_are_kept() {
    if !privileged("temporary_neighbours_are_added_and_removed_and_the_hosts_own_are_kept") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    let up = bed.uplink.clone();
    let ifindex = nix::net::if_::if_nametoindex(up.as_str()).unwrap();
    // An entry the host already has: verify must neither change nor remove it.
    let (own, own_mac) = (bed.v4(88), "02:00:00:00:00:88");
    bed.with(
        &[
            "ip",
            "neigh",
            "add",
            &own.to_string(),
            "lladdr",
            own_mac,
            "dev",
            &up,
            "nud",
            "permanent",
        ],
        &["ip", "neigh", "del", &own.to_string(), "dev", &up],
    );
    let (a4, a6) = (bed.v4(77), bed.v6(0x77));
    let probe_mac = "02:d0:c4:5e:70:01";
    assert_eq!(PROBE_SRC_MAC, [0x02, 0xd0, 0xc4, 0x5e, 0x70, 0x01]);
    {
        let mut neighbours = host_state::Neighbours::default();
        for addr in [a4, a6, own] {
            neighbours.add(addr, &up);
        }
        neighbours.add(bed.v4(78), "dxnl-nosuchdev");
        assert_eq!(
            neighbours.0,
            [(a4, up.clone()), (a6, up.clone())],
            "only the absent ones, on a real interface"
        );
        for addr in [a4, a6] {
            let shown = ip_neigh(addr, &up);
            assert!(
                shown.contains(probe_mac) && shown.contains("REACHABLE"),
                "{addr}: {shown:?}"
            );
            let got = routes::neighbour_get(addr, ifindex).unwrap();
            assert_eq!(
                got,
                Some((
                    netlink_packet_route::neighbour::NeighbourState::Reachable,
                    PROBE_SRC_MAC.to_vec()
                ))
            );
        }
        let shown = ip_neigh(own, &up);
        assert!(
            shown.contains(own_mac) && shown.contains("PERMANENT"),
            "the host's entry changed: {shown:?}"
        );
    }
    for addr in [a4, a6] {
        assert_eq!(ip_neigh(addr, &up), "", "{addr} left behind");
        assert_eq!(routes::neighbour_get(addr, ifindex).unwrap(), None);
    }
    let shown = ip_neigh(own, &up);
    assert!(
        shown.contains(own_mac) && shown.contains("PERMANENT"),
        "the host's entry was removed: {shown:?}"
    );
    // Adding twice is refused by the kernel (EXCL): the second add reports "not mine".
    assert!(routes::neighbour_add(a4, ifindex, PROBE_SRC_MAC).unwrap());
    assert!(!routes::neighbour_add(a4, ifindex, PROBE_SRC_MAC).unwrap());
    routes::neighbour_del(a4, ifindex).unwrap();
    assert_eq!(ip_neigh(a4, &up), "");
}

/// Lines of `conntrack -L -f FAMILY -s ADDR` (the reference count).
fn conntrack_cli_count(addr: IpAddr) -> usize {
    let fam = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    sh(&["conntrack", "-L", "-f", fam, "-s", &addr.to_string()])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A probe as verify plans it, for `host_state::delete_conntrack`.
fn probe(t: &FlowTuple) -> Probe {
    let proto = if t.proto == 6 { Proto::Tcp } else { Proto::Udp };
    Probe {
        target: 0,
        uplink: 0,
        source: t.src,
        dst: t.dst,
        dst_port: t.dport,
        proto,
    }
}

#[test]
fn conntrack_entries_of_real_flows_are_counted_and_deleted_by_their_exact_original_tuple() {
    let test =
        "conntrack_entries_of_real_flows_are_counted_and_deleted_by_their_exact_original_tuple";
    if !privileged(test) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut bed = Bed::new();
    let n = bed.n;
    let (up, br) = (bed.uplink.clone(), bed.bridge.clone());
    let (host4, outside4) = (bed.v4(1), bed.v4(2));
    let (host6, outside6) = (bed.v6(1), bed.v6(2));
    let container4: IpAddr = format!("10.251.{n}.2").parse().unwrap();
    // A published port: DNAT from the host's uplink address to the container, and the
    // FORWARD rules Docker would add (the host's FORWARD policy is DROP).
    let (published, inside) = (18_500 + n as u16 % 100, 8080u16);
    let to = format!("{container4}:{inside}");
    for proto in ["tcp", "udp"] {
        let rule = [
            "-d",
            &host4.to_string(),
            "-p",
            proto,
            "--dport",
            &published.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]
        .map(str::to_string);
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        bed.with(
            &[
                &["iptables", "-t", "nat", "-I", "PREROUTING", "1"],
                &rule[..],
            ]
            .concat(),
            &[&["iptables", "-t", "nat", "-D", "PREROUTING"], &rule[..]].concat(),
        );
    }
    for (i, o) in [(&up, &br), (&br, &up)] {
        bed.with(
            &[
                "iptables", "-I", "FORWARD", "1", "-i", i, "-o", o, "-j", "ACCEPT",
            ],
            &[
                "iptables", "-D", "FORWARD", "-i", i, "-o", o, "-j", "ACCEPT",
            ],
        );
    }
    // IPv6 conntrack runs in a namespace only once a rule needs it: this one does.
    let track6 = [
        "-o",
        up.as_str(),
        "-m",
        "conntrack",
        "--ctstate",
        "NEW,ESTABLISHED",
        "-j",
        "ACCEPT",
    ];
    bed.with(
        &[&["ip6tables", "-I", "OUTPUT", "1"], &track6[..]].concat(),
        &[&["ip6tables", "-D", "OUTPUT"], &track6[..]].concat(),
    );
    let _container = Services::start(&bed.container, inside, inside);
    let _outside = Services::start(&bed.outside, inside, inside);

    // An earlier test binary whose pid gave the same run id (20 + pid % 200) may have
    // left entries from these addresses (TIME_WAIT lasts two minutes): not this test's
    // flows, so they go first.
    for (fam, addr) in [("ipv4", outside4), ("ipv6", host6)] {
        let _ = std::process::Command::new("conntrack").args(["-D", "-f", fam, "-s", &addr.to_string()]).output();
    }

    // Real flows: TCP and UDP from outside through the DNAT (a probe's path), and TCP
    // and UDP from the host to the outside host over IPv6.
    let tcp4 = tcp_connect(
        &bed.outside,
        Some(outside4),
        SocketAddr::new(host4, published),
    )
    .expect("TCP through the DNAT");
    let (udp4, echoed) = udp_exchange(
        &bed.outside,
        Some(outside4),
        SocketAddr::new(host4, published),
        1,
    );
    assert_eq!(echoed, 1, "UDP through the DNAT");
    let tcp6 = {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(outside6, inside), Duration::from_secs(2))
                .expect("TCP over IPv6");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut [0u8; 2]).unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), host6);
        s.local_addr().unwrap().port()
    };
    let udp6 = {
        let u = UdpSocket::bind(SocketAddr::new(host6, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(b"ping", SocketAddr::new(outside6, inside))
            .unwrap();
        u.recv_from(&mut [0u8; 16]).expect("UDP echo over IPv6");
        u.local_addr().unwrap().port()
    };
    // Let the TCP closes finish: a late ACK would make a new (loose) entry after the delete.
    std::thread::sleep(Duration::from_millis(500));
    let flows = [
        FlowTuple {
            proto: 6,
            src: outside4,
            dst: host4,
            sport: tcp4,
            dport: published,
        },
        FlowTuple {
            proto: 17,
            src: outside4,
            dst: host4,
            sport: udp4,
            dport: published,
        },
        FlowTuple {
            proto: 6,
            src: host6,
            dst: outside6,
            sport: tcp6,
            dport: inside,
        },
        FlowTuple {
            proto: 17,
            src: host6,
            dst: outside6,
            sport: udp6,
            dport: inside,
        },
    ];
    let sources = [outside4, host6];

    // Listed as `conntrack -L` lists them, each flow by its original tuple.
    let listed = conntrack::list().expect("conntrack dump over netlink");
    for f in &flows {
        assert!(
            listed.iter().any(|e| e.original == Some(*f)),
            "{f:?} not in the dump"
        );
    }
    let cli: usize = sources.iter().map(|s| conntrack_cli_count(*s)).sum();
    assert_eq!(
        conntrack::count_from(&sources).unwrap(),
        cli,
        "netlink and `conntrack -L -s` disagree"
    );
    assert_eq!(cli, flows.len(), "one entry per flow from these sources");

    // Only the exact original tuple deletes: not the reply direction of the DNAT'd
    // entry (the kernel would find the entry by it), not another port.
    let reply = FlowTuple {
        proto: 6,
        src: container4,
        dst: outside4,
        sport: inside,
        dport: tcp4,
    };
    assert!(
        conntrack::get(&reply).unwrap().is_some(),
        "the kernel finds an entry by its reply tuple"
    );
    assert_eq!(conntrack::delete(&reply).unwrap(), 0);
    let other_port = FlowTuple {
        sport: tcp4.wrapping_add(1),
        ..flows[0]
    };
    assert_eq!(conntrack::delete(&other_port).unwrap(), 0);
    assert_eq!(
        conntrack::count_from(&sources).unwrap(),
        flows.len(),
        "nothing deleted yet"
    );

    // verify's cleanup: each probe's entry by its tuple, then what remains.
    let probes: Vec<(Probe, u16)> = flows.iter().map(|f| (probe(f), f.sport)).collect();
    let mut warnings = Vec::new();
    let (deleted, remaining) =
        host_state::delete_conntrack(probes.iter().map(|(p, s)| (p, *s)), &sources, &mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((deleted, remaining), (flows.len(), 0));
    for s in sources {
        assert_eq!(
            conntrack_cli_count(s),
            0,
            "`conntrack -L -s {s}` still lists entries"
        );
    }
    assert!(conntrack::list()
        .unwrap()
        .iter()
        .all(|e| !flows.iter().any(|f| e.original == Some(*f))));
    // A second cleanup finds nothing: the count is of deletions, not of requests.
    assert_eq!(
        host_state::delete_conntrack(probes.iter().map(|(p, s)| (p, *s)), &sources, &mut warnings),
        (0, 0)
    );
    assert_eq!(host_state::remaining_conntrack(&sources), 0);
}
