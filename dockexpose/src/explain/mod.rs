//! `dockexpose explain`: the firewall's word (intent, read by `intent`) against
//! reality (verify's probes, run the same way as `dockexpose verify`), one line per
//! published port, family and uplink. The join, the words and the suggested rules
//! are pure (`rows`, `suggest`); this reads the host and prints.

pub mod rows;
pub mod suggest;

use std::{
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{anyhow, Result};

use self::suggest::{Host, Tool};
use crate::{
    cli::ExplainArgs,
    host::privileges,
    intent::IntentBook,
    inventory::{docker, model::Inventory},
    kernel::event::Proto,
    output::human::escape_untrusted,
    verify::{self, plan, ProbeResult},
};

/// Runs explain; the exit code is 0 (intent and reality agree), 1 (they contradict
/// somewhere). Errors are exit code 2 (by main).
pub async fn run(args: ExplainArgs) -> Result<i32> {
    privileges::check().map_err(|e| anyhow!("{e}"))?;
    verify::catch_interrupts();
    let ports: Vec<(u16, Proto)> = args
        .ports
        .iter()
        .map(|s| plan::parse_port(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!("PORT/PROTO {e}"))?;
    let sources = verify::probe_sources(&args.from)?;
    let endpoint = docker::endpoint(args.docker_host.as_deref());
    let engine = docker::connect(&endpoint)
        .await
        .map_err(|e| anyhow!("{e}\n  (explain needs the Docker inventory: what is published, and by whom)"))?;
    let inventory = docker::snapshot(&engine)
        .await
        .map_err(|e| anyhow!("listing containers and networks at {endpoint} failed: {e}.\n  Fix: check that the engine answers (`docker ps`)"))?;

    let book = IntentBook::read(&args.intent_root);
    for w in &book.warnings {
        crate::say!("warning: {}", escape_untrusted(w));
    }
    let prepared = verify::prepare(&args.uplinks, &inventory, &ports, &sources)?.with_injection(args.injection);
    let header = format!(
        "dockexpose explain: intent from {}; reality from {} probes on {}",
        escape_untrusted(&book.summary),
        prepared.probe_count(),
        prepared.uplink_names().iter().map(|u| escape_untrusted(u)).collect::<Vec<_>>().join(", ")
    );
    if args.json {
        crate::say!("{header}");
    } else {
        crate::say_out!("{header}");
    }
    let outcome = prepared.execute(verify::daemon::RATE, verify::daemon::WINDOW)?;
    crate::say!("note: {}", outcome.injection);
    for w in &outcome.warnings {
        crate::say!("{w}");
    }
    let rows = rows::rows(&outcome, &book, host_rules(), |r| container_addr(&inventory, r));
    for r in &rows {
        if args.json {
            // Plain strings, numbers and addresses: serializing cannot fail.
            crate::say_out!("{}", serde_json::to_string(r).expect("a Row always serializes"));
        } else {
            crate::say_out!("{}", rows::human_line(r));
        }
    }
    if !args.json {
        for ban in &book.bans {
            crate::say_out!(
                "note: {} drops its sources in INPUT only: a published port is reached through FORWARD, where it does not apply",
                escape_untrusted(&ban.name)
            );
        }
        let n = rows.iter().filter(|r| r.contradiction).count();
        crate::say_out!("{n} contradiction{} in {} rows", if n == 1 { "" } else { "s" }, rows.len());
    }
    if outcome.not_sent > 0 {
        crate::say!("interrupted: {} probes not sent; what was sent is cleaned up", outcome.not_sent);
        return Ok(130);
    }
    Ok(rows::exit_code(&rows))
}

/// The container's own address and port behind a probe's binding (for "DNAT to ..."
/// when the trace cannot say).
fn container_addr(inventory: &Inventory, r: &ProbeResult) -> Option<(IpAddr, u16)> {
    let (name, _) = r.target.container.as_ref()?;
    let c = inventory.containers.iter().find(|c| &c.name == name)?;
    let ip = c.addresses.iter().map(|(_, ip)| *ip).find(|ip| ip.is_ipv4() == r.probe.dst.is_ipv4())?;
    Some((ip, r.target.port.container_port))
}

/// What the host's rules are written with: iptables where Docker's chains answer
/// to it (iptables-nft or legacy), else nft; and for which families Docker made
/// DOCKER-USER.
fn host_rules() -> Host {
    let answers = |cmd: &str, args: &[&str]| {
        Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let (v4, v6) = (
        answers("iptables", &["-w", "5", "-S", "DOCKER-USER"]),
        answers("ip6tables", &["-w", "5", "-S", "DOCKER-USER"]),
    );
    if v4 || !answers("nft", &["list", "chain", "ip", "filter", "DOCKER-USER"]) {
        return Host { tool: Tool::Iptables, docker_user_v4: v4, docker_user_v6: v6 };
    }
    let v6 = answers("nft", &["list", "chain", "ip6", "filter", "DOCKER-USER"]);
    Host { tool: Tool::Nft, docker_user_v4: true, docker_user_v6: v6 }
}
