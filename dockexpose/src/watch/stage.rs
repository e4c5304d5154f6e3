//! The connection stage: kernel records become connection records (identity from
//! the inventory, verdicts for attempts), handed to the outputs' fan-out.

use std::time::Instant;

use dockexpose_common::ConnEvent;

use super::{Watcher, IDENTITY_GRACE, MAX_PENDING};
use crate::{
    correlate,
    error::Result,
    kernel::event::{Observation, Stage},
};

impl Watcher {
    /// Verdicts on attempts whose window closed: blocked, or reached through a proxy.
    pub(super) fn decide_attempts(&mut self) -> Result<()> {
        let clock = self.clock;
        for verdict in self.attempts.expire(clock.ktime_now()) {
            let rec = correlate::verdict_record(&verdict, |k| clock.wall(k), self.inventory.as_ref());
            // Verdicts wait for their window by design: no latency sample.
            self.outputs.connection(rec, None);
        }
        let untracked = self.attempts.take_untracked();
        self.attempts_untracked += untracked;
        if untracked > 0 {
            crate::say!(
                "WARNING: {untracked} attempts got no verdict: more than {} awaited one at once (a flood?); they are in the JSON log as attempted",
                crate::verdict::MAX_TRACKED
            );
        }
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
        let iface = self.ifnames.get(&obs.ifindex).cloned().unwrap_or_else(|| format!("if{}", obs.ifindex));
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
            Stage::Attempted => self.attempts.attempted(&obs, &iface),
            Stage::Reached => {
                if let Some(host_side) = self.attempts.reached(&obs) {
                    obs.orig_dst = Some(host_side);
                }
            }
            Stage::Blocked => {}
        }
        if self.awaits_identity(&obs) && self.pending.len() < MAX_PENDING {
            self.pending.push((obs, iface, Instant::now() + IDENTITY_GRACE));
            return Ok(());
        }
        self.emit(&obs, &iface)
    }

    pub(super) fn attempt_is_on_a_binding(&self, obs: &Observation) -> bool {
        self.inventory.as_ref().is_none_or(|inv| inv.published_at(obs.dst, obs.dst_port, obs.proto).is_some())
    }

    /// A reach of an address on a Docker network that no known container holds: most
    /// likely a container that just started, which the next inventory will name.
    pub(super) fn awaits_identity(&self, obs: &Observation) -> bool {
        let Some(inv) = self.inventory.as_ref().filter(|_| self.docker_connected) else { return false };
        obs.stage == Stage::Reached
            && inv.container_at(obs.dst).is_none()
            && inv.networks.iter().flat_map(|n| &n.subnets).any(|p| p.contains(obs.dst))
    }

    /// Writes the records waiting for identity whose container is now known, or whose
    /// time is up (all of them with `all`).
    pub(super) fn release_pending(&mut self, all: bool) -> Result<()> {
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.pending);
        for (obs, iface, deadline) in waiting {
            if all || now >= deadline || !self.awaits_identity(&obs) {
                self.emit(&obs, &iface)?;
            } else {
                self.pending.push((obs, iface, deadline));
            }
        }
        Ok(())
    }

    pub(super) fn emit(&mut self, obs: &Observation, iface: &str) -> Result<()> {
        let rec = correlate::record(obs, obs.stage, self.clock.wall(obs.ktime_ns), iface, self.inventory.as_ref());
        self.outputs.connection(rec, Some(obs));
        Ok(())
    }
}
