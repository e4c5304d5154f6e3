//! Which interfaces the kernel programs are attached to: the bridges (Docker's
//! networks, or the ones given) and the uplinks, kept in step with the host.

use std::collections::BTreeSet;

use dockexpose_common::PREFIXES_MAX;

use super::{settings::UplinkSelection, Watcher};
use crate::{
    error::Result,
    host::{interfaces, local},
    kernel::loader::UplinkAttachMode,
    output::{alerts::HealthCondition, human},
};

/// What to change so that the attached interfaces become the wanted ones that exist.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// To detach, with whether the interface is gone (rather than no longer wanted).
    detach: Vec<(String, bool)>,
    attach: Vec<String>,
}

impl Plan {
    pub(super) fn new(attached: &[String], want: &BTreeSet<String>, exists: impl Fn(&str) -> bool) -> Self {
        let detach = attached
            .iter()
            .filter_map(|a| {
                let gone = !exists(a);
                (gone || !want.contains(a)).then(|| (a.clone(), gone))
            })
            .collect();
        let attach = want.iter().filter(|w| !attached.contains(w) && exists(w)).cloned().collect();
        Self { detach, attach }
    }
}

impl Watcher {
    pub(super) fn bridge_source(&self) -> &'static str {
        match (self.inventory.is_some(), self.settings.explicit_bridges.is_empty()) {
            (true, true) => "Docker's bridge networks, followed live",
            (true, false) => "as given, plus Docker's bridge networks",
            (false, true) => "bridges found on the host; new ones are picked up",
            (false, false) => "as given",
        }
    }

    /// Bridges that should be watched now.
    pub(super) fn desired_bridges(&self) -> BTreeSet<String> {
        let mut want: BTreeSet<String> = self.settings.explicit_bridges.iter().cloned().collect();
        match &self.inventory {
            Some(inv) => want.extend(inv.bridges()),
            // Without Docker's word, every addressed bridge is a candidate.
            None if self.settings.explicit_bridges.is_empty() => want.extend(self.host.addressed_bridges()),
            None => {}
        }
        want
    }

    /// Interfaces deleted and recreated under the same name since they were attached:
    /// their links went with the old device, so they are detached here (and attached
    /// again by the reconcile that follows).
    pub(super) fn drop_recreated(&mut self, attached: Vec<String>) -> Vec<String> {
        let mut kept = Vec::new();
        for name in attached {
            let now = interfaces::ifindex(&name);
            if now.is_some() && now != self.kernel.attached_ifindex(&name) {
                crate::say!(
                    "dockexpose: {} was recreated (new ifindex); attaching again",
                    human::escape_untrusted(&name)
                );
                self.kernel.detach_bridge(&name);
                self.kernel.detach_uplink(&name);
                self.ifnames.retain(|_, n| **n != *name);
            } else {
                kept.push(name);
            }
        }
        kept
    }

    /// Attaches to desired bridges that exist, detaches from the others.
    pub(super) fn reconcile_bridges(&mut self) {
        let attached: Vec<String> = self.kernel.bridges().map(str::to_string).collect();
        let attached = self.drop_recreated(attached);
        let plan = Plan::new(&attached, &self.desired_bridges(), interfaces::exists);
        for (b, gone) in plan.detach {
            self.kernel.detach_bridge(&b);
            self.ifnames.retain(|_, n| **n != *b);
            let name = human::escape_untrusted(&b);
            if gone {
                // Its containers are not watched until it comes back: a health alert.
                let line = format!(
                    "dockexpose: bridge {name} disappeared; no longer watched (attached again if it comes back)"
                );
                self.outputs.alerts.health_failing(HealthCondition::Detached, Some(&b), line);
            } else {
                crate::say!("dockexpose: bridge {name} is no longer a Docker network; no longer watched");
            }
        }
        for b in plan.attach {
            let name = human::escape_untrusted(&b);
            match self.attach_bridge(&b) {
                Ok(()) => {
                    let line = format!("dockexpose: bridge {name} watched");
                    if !self.outputs.alerts.health_recovered(HealthCondition::Detached, Some(&b), line.clone()) {
                        crate::say!("{line}");
                    }
                }
                Err(e) => {
                    // Tried again at the next tick, as long as it fails.
                    self.host_refresh.ask();
                    let line = format!("warning: bridge {name}: {e}");
                    self.outputs.alerts.health_failing(HealthCondition::Detached, Some(&b), line);
                }
            }
        }
    }

    /// Uplinks that should be watched now.
    pub(super) fn desired_uplinks(&self) -> BTreeSet<String> {
        let container_bridges: BTreeSet<String> = self.desired_bridges();
        let mut want: BTreeSet<String> = match &self.settings.uplinks {
            UplinkSelection::Off(_) => BTreeSet::new(),
            // A bridge given as an uplink stands for its ports, where outside traffic arrives.
            UplinkSelection::Given(list) => list
                .iter()
                .flat_map(|u| if interfaces::is_bridge(u) { interfaces::bridge_ports(u) } else { vec![u.clone()] })
                .collect(),
            UplinkSelection::Auto => {
                self.host.uplink_candidates(&container_bridges).into_iter().map(|u| u.name).collect()
            }
        };
        want.retain(|u| !self.kernel.bridges().any(|b| b == u));
        want
    }

    pub(super) fn attach_uplink(&mut self, name: &str) -> Result<()> {
        let layer = interfaces::link_layer(name);
        let mode = self.kernel.attach_uplink(name, layer, self.settings.uplink_hook)?;
        if let Ok(idx) = nix::net::if_::if_nametoindex(name) {
            self.ifnames.insert(idx, name.into());
        }
        self.uplink_modes.insert(
            name.to_string(),
            match mode {
                UplinkAttachMode::Native => "xdp native",
                UplinkAttachMode::Generic => "xdp generic",
                UplinkAttachMode::Tcx => "tcx",
                UplinkAttachMode::ClsBpf => "cls_bpf",
                UplinkAttachMode::Adopted => "adopted",
            },
        );
        let how = match mode {
            UplinkAttachMode::Native => "XDP native",
            UplinkAttachMode::Generic => "XDP generic: the driver has no native XDP",
            UplinkAttachMode::Tcx => "TCX ingress",
            UplinkAttachMode::ClsBpf => "a cls_bpf filter on ingress: the kernel has no TCX",
            UplinkAttachMode::Adopted => "the previous daemon's pinned link, program replaced",
        };
        let kind = match interfaces::bridge_of(name) {
            Some(bridge) => format!("a port of the bridged uplink {}, ", human::escape_untrusted(&bridge)),
            None => String::new(),
        };
        crate::say!(
            "dockexpose: uplink {} watched for attempts ({kind}{}; {how})",
            human::escape_untrusted(name),
            layer.describe()
        );
        Ok(())
    }

    /// Attaches to desired uplinks that exist, detaches from the others.
    pub(super) fn reconcile_uplinks(&mut self) {
        let attached: Vec<String> = self.kernel.uplinks().map(str::to_string).collect();
        let attached = self.drop_recreated(attached);
        let plan = Plan::new(&attached, &self.desired_uplinks(), interfaces::exists);
        for (u, gone) in plan.detach {
            self.kernel.detach_uplink(&u);
            self.ifnames.retain(|_, n| **n != *u);
            let name = human::escape_untrusted(&u);
            if gone {
                let line = format!(
                    "dockexpose: uplink {name} disappeared; no longer watched (attached again if it comes back)"
                );
                self.outputs.alerts.health_failing(HealthCondition::Detached, Some(&u), line);
            } else {
                crate::say!("dockexpose: uplink {name} is no longer an uplink (no global address)");
            }
        }
        for u in plan.attach {
            let name = human::escape_untrusted(&u);
            match self.attach_uplink(&u) {
                Ok(()) => {
                    let line = format!("dockexpose: uplink {name} is back and watched again");
                    self.outputs.alerts.health_recovered(HealthCondition::Detached, Some(&u), line);
                }
                Err(e) => {
                    self.host_refresh.ask();
                    let line = format!("warning: uplink {name}: {e}");
                    self.outputs.alerts.health_failing(HealthCondition::Detached, Some(&u), line);
                }
            }
        }
    }

    pub(super) fn attach_bridge(&mut self, name: &str) -> Result<()> {
        self.kernel.attach_bridge(name)?;
        if let Ok(idx) = nix::net::if_::if_nametoindex(name) {
            self.ifnames.insert(idx, name.into());
        }
        Ok(())
    }

    /// Keeps the kernel's local/trusted tries in step with the host. More prefixes
    /// than the tries hold (or entries the kernel refuses) never end the daemon: they
    /// are left out, said when their number changes, and keep the status degraded.
    pub(super) fn sync_prefixes(&mut self) {
        let bridges: Vec<&str> = self.kernel.bridges().collect();
        let table = local::source_table(&self.host, bridges, &self.settings.trusted);
        let (fitted, over) = table.fit(PREFIXES_MAX as usize);
        let left_out = over + self.kernel.sync_prefixes(&fitted);
        if left_out != self.prefixes_left_out {
            if left_out > 0 {
                crate::say!(
                    "warning: {left_out} of {} local and trusted prefixes are left out of the kernel's tries (at most \
                     {PREFIXES_MAX} per address family): sources at those addresses may be reported as outsiders, and \
                     attempts at those host addresses are not seen; status: degraded",
                    table.len()
                );
            } else {
                crate::say!("dockexpose: every local and trusted prefix is in the kernel's tries again");
            }
            self.prefixes_left_out = left_out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn plans_detach_the_gone_and_unwanted_and_attach_the_new_that_exist() {
        let attached = vec!["docker0".to_string(), "br-old".to_string(), "br-gone".to_string()];
        let want: BTreeSet<String> =
            ["docker0", "br-gone", "br-new", "br-later"].iter().map(|s| s.to_string()).collect();
        let exists = |n: &str| n != "br-gone" && n != "br-later";
        let plan = Plan::new(&attached, &want, exists);
        assert_eq!(plan.detach, vec![("br-old".to_string(), false), ("br-gone".to_string(), true)]);
        assert_eq!(plan.attach, vec!["br-new".to_string()], "br-later waits until its interface exists");
    }
}
