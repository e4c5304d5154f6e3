//! Correlation: a kernel observation plus the Docker inventory give a connection with
//! its container and published mapping. Pure functions, unit-tested.

use std::{sync::Arc, time::SystemTime};

use crate::{
    inventory::model::{exposure_of, Exposure, Inventory, PublishedPort},
    kernel::event::{IfName, Observation, Stage},
    output::record::{ContainerRef, HostSide, Record},
    verdict::Verdict,
};

/// Builds the record of an observation, enriched from the inventory when there is one.
pub fn record(
    obs: &Observation,
    stage: Stage,
    at: SystemTime,
    iface: impl Into<IfName>,
    inventory: Option<&Inventory>,
) -> Record {
    let mut rec = Record::from_observation(obs, stage, at, iface);
    let Some(inv) = inventory else { return rec };
    match stage {
        Stage::Reached => enrich_reached(&mut rec, obs, inv),
        Stage::Attempted | Stage::Blocked | Stage::Answered => enrich_attempt(&mut rec, obs, inv),
    }
    rec
}

/// The record of a verdict on an attempt that reached no bridge.
pub fn verdict_record(verdict: &Verdict, clock: impl Fn(u64) -> SystemTime, inventory: Option<&Inventory>) -> Record {
    match verdict {
        Verdict::Blocked { attempt, iface } => {
            record(attempt, Stage::Blocked, clock(attempt.ktime_ns), iface.clone(), inventory)
        }
        Verdict::ReachedViaProxy { attempt, iface } => {
            // Described from the uplink: the destination is the host side the proxy
            // answered on; the container comes from the published mapping.
            let mut rec = record(attempt, Stage::Attempted, clock(attempt.ktime_ns), iface.clone(), inventory);
            rec.stage = Stage::Reached.as_str();
            rec.path = Some("proxy");
            rec
        }
    }
}

/// The container's identity for a record: shared, not copied. (A routing-mesh
/// service may carry the identity of its one local task: kept as it is.)
fn container_ref(c: &crate::inventory::model::Container) -> Arc<ContainerRef> {
    if c.identity.id.is_empty() && c.identity.name.is_empty() {
        c.clone().with_identity().identity
    } else {
        c.identity.clone()
    }
}

fn enrich_reached(rec: &mut Record, obs: &Observation, inv: &Inventory) {
    let Some(c) = inv.container_at(obs.dst) else {
        // The routing mesh's hop: the service of the published port it was sent to
        // (the exact one from conntrack, else the port DOCKER-INGRESS kept).
        let port = obs.orig_dst.map_or(obs.dst_port, |(_, port)| port);
        if let Some((svc, mappings)) = inv.mesh_service_reached(obs.dst, port, obs.proto) {
            rec.container = Some(container_ref(svc));
            rec.exposure = exposure_of(&mappings).as_str();
            rec.published = candidates(&mappings, obs.src.is_ipv4());
            rec.host_port.get_or_insert(port);
        }
        return;
    };
    rec.container = Some(container_ref(c));
    let mappings = inv.mappings(c, obs.dst_port, obs.proto);
    rec.exposure = exposure_of(&mappings).as_str();
    rec.published = candidates(&mappings, obs.src.is_ipv4());
    if obs.direct() {
        // Conntrack saw no DNAT: whatever the port's mappings, this connection used
        // none of them. No host side to name, never a guess.
        if !mappings.is_empty() {
            rec.exposure = Exposure::Direct.as_str();
        }
        rec.host_ip = None;
        rec.host_port = None;
        return;
    }
    if obs.orig_dst.is_some() {
        // The kernel join already gave the exact host side.
        return;
    }
    // Without the join, the host side is known only when one port fits.
    let mut ports: Vec<u16> = rec.published.iter().map(|h| h.host_port).collect();
    ports.dedup();
    if let [port] = ports[..] {
        rec.host_port = Some(port);
        if let [only] = rec.published[..] {
            rec.host_ip = Some(only.host_ip);
        }
    }
}

fn enrich_attempt(rec: &mut Record, obs: &Observation, inv: &Inventory) {
    // An attempt is seen before DNAT: its destination is the host side.
    rec.host_ip = Some(obs.dst);
    rec.host_port = Some(obs.dst_port);
    if let Some((c, p)) = inv.published_at(obs.dst, obs.dst_port, obs.proto) {
        rec.container = Some(container_ref(c));
        rec.exposure = exposure_of(&[p]).as_str();
        rec.published = vec![HostSide { host_ip: p.host_ip, host_port: p.host_port }];
    }
}

/// The published host sides an outside connection can have come through: of the
/// connection's family where there are some (Docker lists 0.0.0.0 and :: for one
/// `-p`), and not the loopback-bound ones while others exist (those are what an
/// outsider reaches; a reach of only loopback-bound ports is flagged as such).
fn candidates(mappings: &[&PublishedPort], ipv4: bool) -> Vec<HostSide> {
    // Two preferences, each falling back to all when nothing passes it; decided
    // first, so that the one Vec made is the answer (this runs for every record).
    let same_family = |m: &PublishedPort| m.host_ip.is_ipv4() == ipv4;
    let any_same_family = mappings.iter().any(|m| same_family(m));
    let in_family = |m: &PublishedPort| !any_same_family || same_family(m);
    let any_open = mappings.iter().any(|m| in_family(m) && !m.loopback_only());
    mappings
        .iter()
        .filter(|m| in_family(m) && (!any_open || !m.loopback_only()))
        .map(|m| HostSide { host_ip: m.host_ip, host_port: m.host_port })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inventory::model::tests::sample, kernel::event::Proto};

    fn reached(dst: &str, dport: u16, proto: Proto) -> Observation {
        Observation::sample(Stage::Reached, proto, "198.18.3.2", 40000, dst, dport)
    }

    fn rec(obs: &Observation, inv: Option<&Inventory>) -> Record {
        record(obs, obs.stage, SystemTime::UNIX_EPOCH, "docker0", inv)
    }

    #[test]
    fn reached_container_is_named_with_its_single_published_port() {
        let inv = sample();
        let r = rec(&reached("172.17.0.2", 53, Proto::Udp), Some(&inv));
        let c = r.container.as_ref().unwrap();
        assert_eq!(
            (c.name.as_str(), c.image.as_str(), c.compose_project.as_deref()),
            ("web", "nginx:1.27", Some("shop"))
        );
        assert_eq!(r.host_port, Some(5353));
        assert_eq!(r.host_ip, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(r.exposure, "published");
    }

    #[test]
    fn several_host_ports_for_one_container_port_are_all_candidates() {
        let inv = sample();
        let r = rec(&reached("172.17.0.2", 80, Proto::Tcp), Some(&inv));
        assert_eq!(r.published.iter().map(|h| h.host_port).collect::<Vec<_>>(), [8080, 8443]);
        assert_eq!((r.host_ip, r.host_port), (None, None), "ambiguous without the kernel join");
    }

    #[test]
    fn loopback_bindings_do_not_make_an_outside_reach_ambiguous() {
        let mut inv = sample();
        let web = &mut inv.containers[0];
        web.ports.retain(|p| p.host_port != 8443);
        web.ports.push(crate::inventory::model::PublishedPort {
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: 8081,
            container_port: 80,
            proto: Proto::Tcp,
        });
        let r = rec(&reached("172.17.0.2", 80, Proto::Tcp), Some(&inv));
        assert_eq!((r.host_ip, r.host_port), (Some("0.0.0.0".parse().unwrap()), Some(8080)));
        assert_eq!(r.exposure, "published");
    }

    #[test]
    fn the_kernel_join_wins_over_candidates() {
        let inv = sample();
        let mut obs = reached("172.17.0.2", 80, Proto::Tcp);
        obs.orig_dst = Some(("198.18.3.1".parse().unwrap(), 8443));
        let r = rec(&obs, Some(&inv));
        assert_eq!((r.host_ip, r.host_port), (Some("198.18.3.1".parse().unwrap()), Some(8443)));
        assert_eq!(r.published.len(), 2);
    }

    #[test]
    fn direct_routing_to_a_published_port_never_names_a_host_port() {
        let inv = sample();
        // Conntrack saw no DNAT: the outsider routed to 172.17.0.2:53 itself.
        let mut obs = reached("172.17.0.2", 53, Proto::Udp);
        obs.flags |= dockexpose_common::FLAG_DIRECT;
        let r = rec(&obs, Some(&inv));
        assert_eq!((r.exposure, r.host_ip, r.host_port), ("direct", None, None));
        assert_eq!(r.container.as_ref().unwrap().name, "web");
        assert_eq!(
            r.published.iter().map(|h| h.host_port).collect::<Vec<_>>(),
            [5353],
            "the mapping it did not use is listed"
        );
        // Not published at all: still `unpublished`.
        let mut obs = reached("172.17.0.2", 22, Proto::Tcp);
        obs.flags |= dockexpose_common::FLAG_DIRECT;
        assert_eq!(rec(&obs, Some(&inv)).exposure, "unpublished");
    }

    #[test]
    fn unpublished_and_loopback_only_reaches_are_marked() {
        let inv = sample();
        assert_eq!(rec(&reached("172.17.0.2", 22, Proto::Tcp), Some(&inv)).exposure, "unpublished");
        assert_eq!(rec(&reached("172.17.0.3", 5432, Proto::Tcp), Some(&inv)).exposure, "unpublished");
        let lo = rec(&reached("172.17.0.2", 9000, Proto::Tcp), Some(&inv));
        assert_eq!(lo.exposure, "loopback_only");
        assert_eq!(lo.host_port, Some(9000));
    }

    #[test]
    fn unknown_destinations_and_missing_inventory_leave_nulls() {
        let inv = sample();
        let r = rec(&reached("172.17.0.99", 80, Proto::Tcp), Some(&inv));
        assert!(r.container.is_none());
        assert_eq!(r.exposure, "unknown");
        let r = rec(&reached("172.17.0.2", 80, Proto::Tcp), None);
        assert!(r.container.is_none() && r.published.is_empty());
    }

    #[test]
    fn verdicts_become_blocked_or_proxied_reaches() {
        let inv = sample();
        let mut attempt = reached("198.18.3.1", 8080, Proto::Tcp);
        attempt.stage = Stage::Attempted;
        let clock = |_| SystemTime::UNIX_EPOCH;
        let blocked =
            verdict_record(&Verdict::Blocked { attempt: attempt.clone(), iface: "eth0".into() }, clock, Some(&inv));
        assert_eq!((blocked.stage, blocked.path, &*blocked.iface), ("blocked", None, "eth0"));
        assert_eq!(blocked.container.as_ref().unwrap().name, "web");
        let proxied = verdict_record(&Verdict::ReachedViaProxy { attempt, iface: "eth0".into() }, clock, Some(&inv));
        assert_eq!((proxied.stage, proxied.path), ("reached", Some("proxy")));
        assert_eq!((proxied.host_port, proxied.exposure), (Some(8080), "published"));
    }

    #[test]
    fn the_routing_mesh_hop_is_named_by_the_service_not_taken_for_a_container() {
        let inv = crate::inventory::model::tests::swarm_sample();
        // DOCKER-INGRESS: engine:8080 -> ingress-sbox 172.18.0.2:8080, seen on docker_gwbridge.
        let mut obs = reached("172.18.0.2", 8080, Proto::Tcp);
        obs.orig_dst = Some(("198.18.3.1".parse().unwrap(), 8080));
        let r = rec(&obs, Some(&inv));
        let c = r.container.as_ref().expect("named by the service");
        assert_eq!((c.name.as_str(), c.swarm_service.as_deref(), c.swarm_task.as_deref()), ("web", Some("web"), None));
        assert_eq!(
            (r.exposure, r.host_ip, r.host_port),
            ("published", Some("198.18.3.1".parse().unwrap()), Some(8080))
        );
        assert_eq!(r.published.iter().map(|h| h.host_port).collect::<Vec<_>>(), [8080]);
        // Without conntrack: the port DOCKER-INGRESS kept.
        let r = rec(&reached("172.18.0.2", 8080, Proto::Tcp), Some(&inv));
        assert_eq!((r.container.as_ref().map(|c| c.name.as_str()), r.host_port), (Some("web"), Some(8080)));
        // Another address on docker_gwbridge: a task container of its own, by address.
        let r = rec(&reached("172.18.0.3", 90, Proto::Tcp), Some(&inv));
        assert_eq!(r.container.as_ref().unwrap().swarm_task.as_deref(), Some("api.1.abc"));
        // The hop on a port the mesh does not publish: nobody.
        assert!(rec(&reached("172.18.0.2", 9999, Proto::Tcp), Some(&inv)).container.is_none());
    }

    #[test]
    fn attempts_are_named_by_their_host_port() {
        let inv = sample();
        let mut obs = reached("198.18.3.1", 8443, Proto::Tcp);
        obs.stage = Stage::Attempted;
        let r = rec(&obs, Some(&inv));
        assert_eq!(r.container.as_ref().unwrap().name, "web");
        assert_eq!((r.host_ip, r.host_port), (Some("198.18.3.1".parse().unwrap()), Some(8443)));
    }
}
