//! The lines `dockexpose verify` prints: the header, one line per probe, the counts
//! and what was cleaned up. Pure.

use std::collections::BTreeSet;

use super::{
    plan::{self, Verdict},
    Outcome, Prepared,
};
use crate::kernel::event::Proto;

/// "dockexpose verify: N published bindings, M probes on eth0 from ..."
pub fn header_line(prepared: &Prepared, default_sources: bool) -> String {
    let what = if prepared.targets.first().is_some_and(|t| t.direct) {
        " --direct: {} listening sockets of containers (at their own addresses)"
    } else {
        ": {} published bindings"
    };
    format!(
        "dockexpose verify{}, {} probes on {} from {}{}",
        what.replace("{}", &prepared.targets.len().to_string()),
        prepared.plan.probes.len(),
        prepared.uplinks.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", "),
        prepared.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        if default_sources {
            " (documentation addresses no rule should trust; test an allow-list with --from CIDR)"
        } else {
            ""
        }
    )
}

/// The lines after the header: one per probe, one per binding not probed, the
/// summary and the cleanup.
pub fn outcome_lines(outcome: &Outcome, expected: &BTreeSet<(u16, Proto)>) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &outcome.probes {
        let is_expected = expected.contains(&(r.target.port.host_port, r.target.port.proto));
        let why = match (&r.verdict, &r.reached_on) {
            (Verdict::Exposed, Some(bridge)) => format!("{} (seen on {bridge})", r.why),
            _ => r.why.clone(),
        };
        lines.push(plan::probe_line(r.verdict, &why, &r.target, &r.probe, &r.uplink, is_expected));
    }
    for (t, why) in &outcome.skipped {
        lines.push(plan::skipped_line(t, why));
    }
    lines.push(format!(
        "summary: {}; {}; took {} ms",
        counts_text(outcome),
        plan::unexpected_text(&outcome.reachable(), expected),
        outcome.elapsed.as_millis()
    ));
    lines.push(cleanup_text(outcome));
    lines
}

/// "1 exposed, 0 through a proxy, 1 held, 0 not probed"
pub fn counts_text(outcome: &Outcome) -> String {
    format!(
        "{} exposed, {} through a proxy, {} held, {} not probed",
        outcome.count(Verdict::Exposed),
        outcome.count(Verdict::Proxy),
        outcome.count(Verdict::Held),
        outcome.skipped.len()
    )
}

/// "cleanup: guard on eth0 dropped 1 packets to probe sources; ..."
pub fn cleanup_text(outcome: &Outcome) -> String {
    format!(
        "cleanup: guard on {} dropped {} packets to probe sources{}; {} conntrack entries of probes deleted, {} remain",
        outcome.guards.join(", "),
        outcome.guard_dropped,
        if outcome.answers_lost > 0 {
            format!(" ({} answers not recorded: ring full)", outcome.answers_lost)
        } else {
            String::new()
        },
        outcome.conntrack_deleted,
        outcome.conntrack_remaining,
    )
}
