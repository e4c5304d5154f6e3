//! The nftables backend: Docker 28's `ip docker-bridges` table, written by hand, and no
//! iptables rule at all.

use super::*;

/// Runs `ip -n NS ARGS...`.
fn ip_n(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "-n", ns];
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
    let dnat_to =
        |port: u16| if family == "ip" { format!("{container}:{port}") } else { format!("[{container}]:{port}") };
    let dnat: String = ports
        .iter()
        .map(|(proto, host, cport)| {
            format!("\t\t{proto} dport {host} counter dnat to {} comment \"DNAT\"\n", dnat_to(*cport))
        })
        .collect();
    let accept: String = ports
        .iter()
        .map(|(proto, _, cport)| format!("\t\t{addr} daddr {container} {proto} dport {cport} counter accept\n"))
        .collect();
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
    for prefix in [
        format!("10.251.{n}.0/24"),
        format!("fd42:251:{n}::/64"),
        format!("198.18.{n}.0/24"),
        format!("fd42:198:{n}::/64"),
    ] {
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
    let mut rules = docker_bridges_table(
        "ip",
        &br,
        &format!("10.251.{n}.0/24"),
        &c4,
        &[("tcp", tcp_port, 80), ("udp", udp_port, 5300)],
    );
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
    assert!(in_ns(&host, &["nft", "list", "chain", "ip", "docker-bridges", "nat-prerouting-and-output"])
        .contains(&format!("dnat to {c4}:80")));

    let _services = Services::start(&ctr, 80, 5300);
    let _own = Services::start(&host, own_port, own_port);
    let mut w =
        Watcher::start_in_netns(&host, &["--no-docker", "--bridge", &br, "--stats-interval", "0"], json_path("11nft"));
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
    let t4 = tcp_connect(&out, Some(src4), SocketAddr::new(h4.parse().unwrap(), tcp_port))
        .expect("published TCP port through nftables DNAT");
    let t6 = tcp_connect(&out, Some(src6), SocketAddr::new(h6.parse().unwrap(), tcp_port))
        .expect("published TCP port over IPv6");
    let (u4, echoed) = udp_exchange(&out, Some(src4), SocketAddr::new(h4.parse().unwrap(), udp_port), 2);
    assert_eq!(echoed, 2, "published UDP port answers");
    std::thread::sleep(Duration::from_millis(500));
    let (records, status, _) = w.stop();
    assert!(status.success());
    let ours: Vec<Value> =
        records.into_iter().filter(|r| r["src_ip"] == o4.as_str() || r["src_ip"] == o6.as_str()).collect();
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
        assert_eq!(
            (r["host_ip"].as_str(), r["host_port"].as_u64()),
            (Some(host_ip.as_str()), Some(host_port as u64)),
            "{r:#}"
        );
        assert!(r["container"].is_null(), "no runtime here, no identity: {r:#}");
    }
    drop(undo);
}
