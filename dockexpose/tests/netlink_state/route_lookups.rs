//! Route lookups over netlink against `ip route get`.

use super::*;

/// `ip route get ADDR`, read as the old verify read it: (dev, on link, via).
fn ip_route_get(addr: IpAddr) -> Option<(String, bool, Option<IpAddr>)> {
    let out = std::process::Command::new("ip").args(["route", "get", &addr.to_string()]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1].to_string());
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
    bed.with(&["ip", "route", "add", &via4, "via", &gw4, "dev", &up], &["ip", "route", "del", &via4]);
    bed.with(&["ip", "-6", "route", "add", &via6, "via", &gw6, "dev", &up], &["ip", "-6", "route", "del", &via6]);
    let (unr4, unr6) = (format!("198.18.{n}.96/28"), format!("fd42:198:{n}::200/124"));
    bed.with(&["ip", "route", "add", "unreachable", &unr4], &["ip", "route", "del", "unreachable", &unr4]);
    bed.with(&["ip", "-6", "route", "add", "unreachable", &unr6], &["ip", "-6", "route", "del", "unreachable", &unr6]);

    // (address, expected dev, expected on link): on the link, via a gateway, local.
    let cases = [
        (bed.v4(2), up.as_str(), true),
        (bed.v4(70), up.as_str(), false),
        (bed.v4(1), "lo", true),
        (bed.v6(2), up.as_str(), true),
        (bed.v6(0x105), up.as_str(), false),
        (bed.v6(1), "lo", true),
        (format!("10.251.{n}.2").parse().unwrap(), bed.bridge.as_str(), true),
    ];
    for (addr, dev, on_link) in cases {
        let (ip_dev, ip_on_link, ip_via) = ip_route_get(addr).unwrap_or_else(|| panic!("ip route get {addr} failed"));
        let route = routes::route_get(addr).unwrap_or_else(|e| panic!("route_get {addr}: {e}"));
        eprintln!("{addr}: netlink {route:?}; ip route get: dev {ip_dev} via {ip_via:?}");
        assert_eq!(
            (route.dev.as_str(), route.on_link(), route.gateway),
            (ip_dev.as_str(), ip_on_link, ip_via),
            "{addr}"
        );
        assert_eq!((ip_dev.as_str(), ip_on_link), (dev, on_link), "{addr}: the bed is not what the test thinks");
        assert_eq!(host_state::route_to(addr), Some((dev.to_string(), on_link)), "{addr}");
    }
    for addr in [bed.v4(100), bed.v6(0x205)] {
        assert!(ip_route_get(addr).is_none(), "{addr} should be unreachable");
        let err = routes::route_get(addr).expect_err("no route, so an error");
        eprintln!("{addr}: {err}");
        assert_eq!(host_state::route_to(addr), None);
    }
}
