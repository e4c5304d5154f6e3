//! Temporary neighbour entries, added and removed; the host's own kept.

use super::*;

/// `ip neigh show ADDR dev DEV`, trimmed.
fn ip_neigh(addr: IpAddr, dev: &str) -> String {
    sh(&["ip", "neigh", "show", &addr.to_string(), "dev", dev]).trim().to_string()
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
        &["ip", "neigh", "add", &own.to_string(), "lladdr", own_mac, "dev", &up, "nud", "permanent"],
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
        assert_eq!(neighbours.0, [(a4, up.clone()), (a6, up.clone())], "only the absent ones, on a real interface");
        for addr in [a4, a6] {
            let shown = ip_neigh(addr, &up);
            assert!(shown.contains(probe_mac) && shown.contains("REACHABLE"), "{addr}: {shown:?}");
            let got = routes::neighbour_get(addr, ifindex).unwrap();
            assert_eq!(got, Some((netlink_packet_route::neighbour::NeighbourState::Reachable, PROBE_SRC_MAC.to_vec())));
        }
        let shown = ip_neigh(own, &up);
        assert!(shown.contains(own_mac) && shown.contains("PERMANENT"), "the host's entry changed: {shown:?}");
    }
    for addr in [a4, a6] {
        assert_eq!(ip_neigh(addr, &up), "", "{addr} left behind");
        assert_eq!(routes::neighbour_get(addr, ifindex).unwrap(), None);
    }
    let shown = ip_neigh(own, &up);
    assert!(shown.contains(own_mac) && shown.contains("PERMANENT"), "the host's entry was removed: {shown:?}");
    // Adding twice is refused by the kernel (EXCL): the second add reports "not mine".
    assert!(routes::neighbour_add(a4, ifindex, PROBE_SRC_MAC).unwrap());
    assert!(!routes::neighbour_add(a4, ifindex, PROBE_SRC_MAC).unwrap());
    routes::neighbour_del(a4, ifindex).unwrap();
    assert_eq!(ip_neigh(a4, &up), "");
}
