//! The host's interfaces as `HostSnapshot::read` gives them (two rtnetlink dumps a
//! second, links and addresses, instead of getifaddrs and /sys reads), in a namespace
//! of the test's own holding each kind that matters: a bridge with two ports and two
//! addresses, a veth that is no port, one that is down, an L3 tunnel.

use std::collections::BTreeMap;

use dockexpose::host::interfaces::{HostSnapshot, LinkLayer};
use serde_json::Value;

use super::*;

/// `ip -j link show` in `ns`: each interface's index by name.
fn indexes(ns: &str) -> BTreeMap<String, u32> {
    let json: Value = serde_json::from_str(&sh(&["ip", "-n", ns, "-j", "link", "show"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|l| (l["ifname"].as_str().unwrap().to_owned(), l["ifindex"].as_u64().unwrap() as u32))
        .collect()
}

#[test]
fn bridges_their_ports_indexes_and_link_layers_are_read_from_one_link_dump() {
    let n = run_id();
    let ns = format!("dxnli{n}");
    let mut undo = Undo::default();
    sh(&["ip", "netns", "add", &ns]);
    undo.push(&["ip", "netns", "del", &ns]);
    let ip = |args: &[&str]| sh(&[&["ip", "-n", ns.as_str()], args].concat());
    ip(&["link", "add", "br7", "type", "bridge"]);
    ip(&["addr", "add", &format!("10.251.{n}.1/24"), "dev", "br7"]);
    // Two ports, named so that their order is not their creation order.
    ip(&["addr", "add", &format!("fd42:251:{n}::1/64"), "dev", "br7", "nodad"]);
    for (end, peer) in [("vz", "vzp"), ("va", "vap"), ("loose", "loosep"), ("down7", "down7p")] {
        ip(&["link", "add", end, "type", "veth", "peer", "name", peer]);
    }
    ip(&["link", "set", "vz", "master", "br7"]);
    ip(&["link", "set", "va", "master", "br7"]);
    ip(&["tuntap", "add", "dev", "tun7", "mode", "tun"]);
    for dev in ["lo", "br7", "vz", "va", "loose", "tun7"] {
        ip(&["link", "set", dev, "up"]);
    }

    let snapshot = in_netns(&ns, || HostSnapshot::read().expect("read the interfaces"));
    let got = |name: &str| snapshot.get(name).unwrap_or_else(|| panic!("{name} missing: {:?}", snapshot.interfaces));
    let br = got("br7");
    assert!(br.is_bridge && !br.is_bridge_port, "{br:?}");
    assert_eq!(br.ports, ["va", "vz"], "its ports, sorted");
    assert_eq!(br.link_layer, LinkLayer::Ethernet);
    for port in ["va", "vz"] {
        let p = got(port);
        assert!(p.is_bridge_port && !p.is_bridge && p.ports.is_empty(), "{p:?}");
    }
    let loose = got("loose");
    assert!(!loose.is_bridge_port && !loose.is_bridge, "a veth on no bridge: {loose:?}");
    assert_eq!(got("tun7").link_layer, LinkLayer::L3, "a tun device has no Ethernet header");
    assert_eq!(got("lo").link_layer, LinkLayer::Ethernet);
    assert!(got("lo").is_loopback && !loose.is_loopback);
    assert!(loose.is_up && !got("down7").is_up, "up as IFF_UP says");
    let prefixes: Vec<String> = br.addresses.iter().map(|p| p.to_string()).collect();
    assert_eq!(prefixes, [format!("10.251.{n}.0/24"), format!("fd42:251:{n}::/64")], "the bridge's subnets");
    for (name, index) in indexes(&ns) {
        assert_eq!(got(&name).ifindex, index, "{name}'s index");
    }
    // And they are the host's candidates as before: the bridge's address is the host's.
    assert!(snapshot.all_addresses().any(|a| a.to_string() == format!("10.251.{n}.1")));
    drop(undo);
}
