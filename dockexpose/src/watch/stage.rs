//! The connection stage: kernel records become connection records (identity from
//! the inventory, verdicts for attempts), handed to the outputs' fan-out.

use std::time::Instant;

use dockexpose_common::ConnEvent;

use super::{Watcher, IDENTITY_GRACE, MAX_PENDING};
use crate::{
    correlate,
    error::Result,
    kernel::event::{IfName, Observation, Stage},
    output::alerts::HealthCondition,
};

impl Watcher {
    /// Verdicts on attempts whose window closed: blocked, or reached through a proxy.
    pub(super) fn decide_attempts(&mut self) -> Result<()> {
        let clock = self.clock;
        for verdict in self.attempts.expire(clock.ktime_now()) {
            let rec = correlate::verdict_record(&verdict, |k| clock.wall(k), self.inventory.as_ref());
            // Verdicts wait for their window by design: no latency sample.
            self.outputs.verdict(rec, verdict.attempt());
        }
        let untracked = self.attempts.take_untracked();
        self.attempts_untracked += untracked;
        if untracked > 0 {
            let line = format!(
                "WARNING: {untracked} attempts got no verdict: more than {} awaited one at once (a flood?); they are in the JSON log as attempted",
                crate::verdict::MAX_TRACKED
            );
            self.outputs.alerts.health_failing(HealthCondition::AttemptsUntracked, None, line);
        }
        Ok(())
    }

    /// Records a previous daemon held for identity when it stopped or died (their ring
    /// space was released; the pinned PENDING map kept them): handled again now,
    /// with the identity known today.
    pub(super) fn handle_left_pending(&mut self) -> Result<()> {
        let left = self.pending.left_by_previous();
        if left.is_empty() {
            return Ok(());
        }
        crate::say!(
            "dockexpose: {} records the previous daemon held for their container's identity are written now",
            left.len()
        );
        for ev in &left {
            self.handle(ev)?;
        }
        self.pending.forget_unless_held(&left);
        Ok(())
    }

    pub(super) fn handle_batch(&mut self, batch: &[ConnEvent]) -> Result<()> {
        for ev in batch {
            self.handle(ev)?;
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, ev: &ConnEvent) -> Result<()> {
        let mut obs = match Observation::from_event(ev) {
            Ok(o) => o,
            Err(e) => {
                crate::say!("warning: undecodable kernel record dropped: {}", e.0);
                return Ok(());
            }
        };
        if self.verify.as_ref().is_some_and(|v| v.probes.is_probe(&obs, Instant::now)) {
            // The daemon's own probe (or the host's answer to one): no outside connection.
            self.probe_records += 1;
            return Ok(());
        }
        // A shared name: a reference count per record, not a copy.
        let iface: IfName =
            self.ifnames.get(&obs.ifindex).cloned().unwrap_or_else(|| format!("if{}", obs.ifindex).into());
        match obs.stage {
            Stage::Answered => {
                self.answers_received += 1;
                self.attempts.answered(&obs);
                return Ok(());
            }
            Stage::Attempted if !self.attempt_is_on_a_binding(&obs) => {
                // The kernel knows published ports, not their bind addresses: an
                // attempt at the host address of a port bound to 127.0.0.1 only is
                // no attempt at anything published.
                self.unbound_attempts += 1;
                return Ok(());
            }
            Stage::Attempted => self.attempts.attempted(&obs, iface.clone()),
            Stage::Reached => {
                if let Some(host_side) = self.attempts.reached(&obs) {
                    obs.orig_dst = Some(host_side);
                }
            }
            Stage::Blocked => {}
        }
        if self.awaits_identity(&obs) {
            // Held, never holding the ring: its pinned copy keeps it across a crash.
            let Err((obs, iface)) = self.hold_for_identity(ev, obs, iface) else { return Ok(()) };
            return self.emit(&obs, &iface);
        }
        self.emit(&obs, &iface)
    }

    pub(super) fn attempt_is_on_a_binding(&self, obs: &Observation) -> bool {
        self.inventory.as_ref().is_none_or(|inv| inv.published_at(obs.dst, obs.dst_port, obs.proto).is_some())
    }

    /// A reach of an address on a Docker network that no known container holds: most
    /// likely a container that just started, which the next inventory will name.
    pub(super) fn awaits_identity(&self, obs: &Observation) -> bool {
        awaits_identity(self.inventory.as_ref(), self.docker_connected, obs)
    }

    fn hold_for_identity(
        &mut self,
        ev: &ConnEvent,
        obs: Observation,
        iface: IfName,
    ) -> std::result::Result<(), (Observation, IfName)> {
        if self.pending.len() >= MAX_PENDING {
            self.pending.refused += 1;
            return Err((obs, iface));
        }
        let keep = (obs.clone(), iface.clone());
        if self.pending.hold(ev, obs, iface, Instant::now() + IDENTITY_GRACE) {
            Ok(())
        } else {
            Err(keep)
        }
    }

    /// Writes the records waiting for identity whose container is now known, or whose
    /// time is up (all of them with `all`).
    pub(super) fn release_pending(&mut self, all: bool) -> Result<()> {
        let (inventory, connected) = (self.inventory.take(), self.docker_connected);
        let due = self.pending.take_due(all, |obs| awaits_identity(inventory.as_ref(), connected, obs));
        self.inventory = inventory;
        if due.is_empty() {
            return Ok(());
        }
        for (obs, iface) in &due {
            self.emit(obs, iface)?;
            // Its pinned copy goes once the audit log has it on disk.
            self.pending.written(obs);
        }
        Ok(())
    }

    pub(super) fn emit(&mut self, obs: &Observation, iface: &IfName) -> Result<()> {
        let rec =
            correlate::record(obs, obs.stage, self.clock.wall(obs.ktime_ns), iface.clone(), self.inventory.as_ref());
        self.outputs.connection(rec, Some(obs));
        Ok(())
    }
}

/// A reach of an address on a Docker network that no known container holds: most
/// likely a container that just started, which the next inventory will name. Not the
/// routing mesh's ingress-sbox, which no inventory will ever name as a container.
fn awaits_identity(
    inventory: Option<&crate::inventory::model::Inventory>,
    docker_connected: bool,
    obs: &Observation,
) -> bool {
    let Some(inv) = inventory.filter(|_| docker_connected) else { return false };
    obs.stage == Stage::Reached
        && inv.container_at(obs.dst).is_none()
        && !inv.ingress_sbox.contains(&obs.dst)
        && inv.networks.iter().flat_map(|n| &n.subnets).any(|p| p.contains(obs.dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Proto;

    fn reached(dst: &str) -> Observation {
        Observation::sample(Stage::Reached, Proto::Tcp, "198.18.3.2", 40000, dst, 8080)
    }

    #[test]
    fn only_an_unnamed_address_of_a_docker_network_waits_for_identity() {
        let inv = crate::inventory::model::tests::swarm_sample();
        assert!(awaits_identity(Some(&inv), true, &reached("172.18.0.77")), "no container there yet: it waits");
        assert!(
            !awaits_identity(Some(&inv), true, &reached("172.18.0.2")),
            "swarm's ingress-sbox never gets a container's name"
        );
        assert!(!awaits_identity(Some(&inv), true, &reached("172.18.0.3")), "a known container");
        assert!(!awaits_identity(Some(&inv), true, &reached("10.99.0.5")), "not a Docker network");
        assert!(!awaits_identity(Some(&inv), false, &reached("172.18.0.77")), "Docker away: nothing to wait for");
    }
}
