//! Conntrack entries of real flows, counted and deleted by their exact original tuple.

use super::*;

/// Lines of `conntrack -L -f FAMILY -s ADDR` (the reference count).
fn conntrack_cli_count(addr: IpAddr) -> usize {
    let fam = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    sh(&["conntrack", "-L", "-f", fam, "-s", &addr.to_string()]).lines().filter(|l| !l.trim().is_empty()).count()
}

/// A probe as verify plans it, for `host_state::delete_conntrack`.
fn probe(t: &FlowTuple) -> Probe {
    let proto = if t.proto == 6 { Proto::Tcp } else { Proto::Udp };
    Probe { target: 0, uplink: 0, source: t.src, dst: t.dst, dst_port: t.dport, proto }
}

#[test]
fn conntrack_entries_of_real_flows_are_counted_and_deleted_by_their_exact_original_tuple() {
    let test = "conntrack_entries_of_real_flows_are_counted_and_deleted_by_their_exact_original_tuple";
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
            &[&["iptables", "-t", "nat", "-I", "PREROUTING", "1"], &rule[..]].concat(),
            &[&["iptables", "-t", "nat", "-D", "PREROUTING"], &rule[..]].concat(),
        );
    }
    for (i, o) in [(&up, &br), (&br, &up)] {
        bed.with(
            &["iptables", "-I", "FORWARD", "1", "-i", i, "-o", o, "-j", "ACCEPT"],
            &["iptables", "-D", "FORWARD", "-i", i, "-o", o, "-j", "ACCEPT"],
        );
    }
    // IPv6 conntrack runs in a namespace only once a rule needs it: this one does.
    let track6 = ["-o", up.as_str(), "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"];
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
    let tcp4 =
        tcp_connect(&bed.outside, Some(outside4), SocketAddr::new(host4, published)).expect("TCP through the DNAT");
    let (udp4, echoed) = udp_exchange(&bed.outside, Some(outside4), SocketAddr::new(host4, published), 1);
    assert_eq!(echoed, 1, "UDP through the DNAT");
    let tcp6 = {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(outside6, inside), Duration::from_secs(2))
            .expect("TCP over IPv6");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut [0u8; 2]).unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), host6);
        s.local_addr().unwrap().port()
    };
    let udp6 = {
        let u = UdpSocket::bind(SocketAddr::new(host6, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(b"ping", SocketAddr::new(outside6, inside)).unwrap();
        u.recv_from(&mut [0u8; 16]).expect("UDP echo over IPv6");
        u.local_addr().unwrap().port()
    };
    // Let the TCP closes finish: a late ACK would make a new (loose) entry after the delete.
    std::thread::sleep(Duration::from_millis(500));
    let flows = [
        FlowTuple { proto: 6, src: outside4, dst: host4, sport: tcp4, dport: published },
        FlowTuple { proto: 17, src: outside4, dst: host4, sport: udp4, dport: published },
        FlowTuple { proto: 6, src: host6, dst: outside6, sport: tcp6, dport: inside },
        FlowTuple { proto: 17, src: host6, dst: outside6, sport: udp6, dport: inside },
    ];
    let sources = [outside4, host6];

    // Listed as `conntrack -L` lists them, each flow by its original tuple.
    let listed = conntrack::list().expect("conntrack dump over netlink");
    for f in &flows {
        assert!(listed.iter().any(|e| e.original == Some(*f)), "{f:?} not in the dump");
    }
    let cli: usize = sources.iter().map(|s| conntrack_cli_count(*s)).sum();
    assert_eq!(conntrack::count_from(&sources).unwrap(), cli, "netlink and `conntrack -L -s` disagree");
    assert_eq!(cli, flows.len(), "one entry per flow from these sources");

    // Only the exact original tuple deletes: not the reply direction of the DNAT'd
    // entry (the kernel would find the entry by it), not another port.
    let reply = FlowTuple { proto: 6, src: container4, dst: outside4, sport: inside, dport: tcp4 };
    assert!(conntrack::get(&reply).unwrap().is_some(), "the kernel finds an entry by its reply tuple");
    assert_eq!(conntrack::delete(&reply).unwrap(), 0);
    let other_port = FlowTuple { sport: tcp4.wrapping_add(1), ..flows[0] };
    assert_eq!(conntrack::delete(&other_port).unwrap(), 0);
    assert_eq!(conntrack::count_from(&sources).unwrap(), flows.len(), "nothing deleted yet");

    // verify's cleanup: each probe's entry by its tuple, then what remains.
    let probes: Vec<(Probe, u16)> = flows.iter().map(|f| (probe(f), f.sport)).collect();
    let mut warnings = Vec::new();
    let (deleted, remaining) =
        host_state::delete_conntrack(probes.iter().map(|(p, s)| (p, *s)), &sources, &mut warnings);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((deleted, remaining), (flows.len(), 0));
    for s in sources {
        assert_eq!(conntrack_cli_count(s), 0, "`conntrack -L -s {s}` still lists entries");
    }
    assert!(conntrack::list().unwrap().iter().all(|e| !flows.iter().any(|f| e.original == Some(*f))));
    // A second cleanup finds nothing: the count is of deletions, not of requests.
    assert_eq!(host_state::delete_conntrack(probes.iter().map(|(p, s)| (p, *s)), &sources, &mut warnings), (0, 0));
    assert_eq!(host_state::remaining_conntrack(&sources), 0);
}
