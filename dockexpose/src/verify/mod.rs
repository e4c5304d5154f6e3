//! `dockexpose verify`: is the firewall really holding? For every published port, on
//! every uplink, one probe is injected into the uplink's receive path (as if it came
//! from outside) and the kernel says what became of it: it reached a container
//! (EXPOSED), the host itself answered it (PROXY), or neither (HELD).
//!
//! Nothing leaves the host: a TCX egress guard drops every packet to a probe source on
//! every interface a reply could leave by (policy routing and ECMP included); each TCP
//! probe is closed with a RST; the probes' conntrack entries are deleted afterwards.
//!
//! `frame`, `plan` and `text` are pure (unit-tested); `execute` sends the probes and
//! reads what became of them; this file holds what a run is and prepares it.

pub mod daemon;
pub mod direct;
pub mod drift;
mod execute;
pub mod frame;
pub mod host_state;
pub mod inject;
pub mod owner;
pub mod plan;
pub mod sentinel;
mod text;
pub mod trace;

use execute::{delete_conntrack, random_u32, Sent};
pub use text::{cleanup_text, counts_text, header_line, outcome_lines};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};

use self::plan::{Answers, Probe, Skipped, Target, Uplink, Verdict};
use crate::{
    cli::{InjectionArg, VerifyArgs},
    host::{
        interfaces::{HostSnapshot, LinkLayer},
        privileges,
    },
    inventory::{docker, model::Inventory},
    kernel::event::Proto,
    net::prefix::Prefix,
};

/// SCTP chunk type of an INIT-ACK.
const SCTP_INIT_ACK: u8 = 2;

/// What a run found, for the caller (and the tests).
#[derive(Debug, Default)]
pub struct Report {
    pub exit_code: i32,
    pub lines: Vec<String>,
}

/// The outcome of one probe: what was probed, through what, and the verdict.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub verdict: Verdict,
    /// A few words on why ("dropped before reaching the container", ...).
    pub why: String,
    /// The binding probed and who publishes it.
    pub target: Target,
    /// The packet: uplink index, source, host address and port, protocol.
    pub probe: Probe,
    /// The uplink it was injected into.
    pub uplink: String,
    /// The probe's source port.
    pub sport: u16,
    /// When it was injected.
    pub at: SystemTime,
    /// The container bridge it was seen entering, when it reached one.
    pub reached_on: Option<String>,
    /// Where netfilter's trace could say: the nat rule that rewrote its destination
    /// and the forwarding rule (or policy) that accepted it.
    pub dnat_rule: Option<String>,
    pub accept_rule: Option<String>,
}

/// What a run found, as data: printing is the caller's job.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub sources: Vec<IpAddr>,
    pub uplinks: Vec<String>,
    pub probes: Vec<ProbeResult>,
    /// Bindings not probed, and why.
    pub skipped: Vec<(Target, Skipped)>,
    pub elapsed: Duration,
    /// Interfaces the guard was on, and what it dropped (packets to probe sources).
    pub guards: Vec<String>,
    pub guard_dropped: u64,
    /// Answers the guard could not record (its ring was full).
    pub answers_lost: u64,
    /// Conntrack entries of probes deleted, and entries from probe sources that remain.
    pub conntrack_deleted: usize,
    pub conntrack_remaining: usize,
    /// Problems that did not stop the run (conntrack missing).
    pub warnings: Vec<String>,
    /// Probes not sent because the run was interrupted (SIGINT, SIGTERM): it stopped
    /// sending and cleaned up what it had done.
    pub not_sent: usize,
    /// How the probes went in (live frames, or the redirect path and why).
    pub injection: String,
}

/// Set by SIGINT or SIGTERM during `dockexpose verify`: no further probe is sent, and
/// the run cleans up what it did (each probe's RST, its conntrack entries, the trace
/// table, the guard after a grace) before it ends. A signal no longer kills it halfway.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(crate) fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How long the guard stays after the conntrack entries are gone: a late answer (a UDP
/// reply, a SYN-ACK retransmit already queued) still meets it.
pub(crate) const GUARD_GRACE: Duration = Duration::from_millis(300);

impl Outcome {
    /// Probes with this verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.probes.iter().filter(|p| p.verdict == verdict).count()
    }

    /// One probe per published port, protocol, family (of the address probed) and
    /// uplink: the most open verdict (one source that gets in is enough).
    pub fn most_open(&self) -> BTreeMap<(Proto, u16, bool, String), &ProbeResult> {
        let rank = |v: Verdict| match v {
            Verdict::Held => 0,
            Verdict::Proxy => 1,
            Verdict::Exposed => 2,
        };
        let mut best: BTreeMap<(Proto, u16, bool, String), &ProbeResult> = BTreeMap::new();
        for r in &self.probes {
            let key = (r.target.port.proto, r.target.port.host_port, r.probe.dst.is_ipv6(), r.uplink.clone());
            let e = best.entry(key).or_insert(r);
            if rank(r.verdict) > rank(e.verdict) {
                *e = r;
            }
        }
        best
    }

    /// (host port, protocol) of every probe that found the port reachable.
    pub fn reachable(&self) -> Vec<(u16, Proto)> {
        self.probes
            .iter()
            .filter(|p| p.verdict.reachable())
            .map(|p| (p.target.port.host_port, p.target.port.proto))
            .collect()
    }
}

/// What a run will probe, read from the host and the inventory (no probe sent yet).
pub struct Prepared {
    started: Instant,
    bridges: BTreeSet<String>,
    uplinks: Vec<Uplink>,
    targets: Vec<Target>,
    plan: plan::Plan,
    sources: Vec<IpAddr>,
    injection: InjectionArg,
    /// Every interface a reply could leave by, with its link layer.
    guarded: BTreeMap<String, LinkLayer>,
}

impl Prepared {
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
    pub fn probe_count(&self) -> usize {
        self.plan.probes.len()
    }
    pub fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.name.clone()).collect()
    }
    pub fn sources(&self) -> &[IpAddr] {
        &self.sources
    }
    /// How the probes are to go in (auto by default).
    pub fn with_injection(mut self, injection: InjectionArg) -> Self {
        self.injection = injection;
        self
    }
}

/// Runs verify and prints its lines on stdout; the exit code is 0 (nothing
/// unexpected reachable) or 1 (something is). Errors are exit code 2 (by main).
pub async fn run(args: VerifyArgs) -> Result<i32> {
    privileges::check().map_err(|e| anyhow!("{e}"))?;
    catch_interrupts();
    let ports: Vec<(u16, Proto)> = args
        .ports
        .iter()
        .map(|s| plan::parse_port(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!("--port {e}"))?;
    let expected: BTreeSet<(u16, Proto)> = args
        .expect_exposed
        .iter()
        .map(|s| plan::parse_port(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!("--expect-exposed {e}"))?;
    let sources = probe_sources(&args.from)?;
    if args.rate == 0 {
        bail!("--rate 0: probes per second must be at least 1.\n  Fix: --rate 200 (the default)");
    }
    let endpoint = docker::endpoint(args.docker_host.as_deref());
    if args.direct && !ports.is_empty() {
        bail!("--direct probes every listening socket of every container; --port chooses published ports.\n  Fix: give one or the other");
    }
    let mut engine_for_direct = None;
    let inventory = match docker::connect(&endpoint).await {
        Ok(engine) => {
            let inventory = docker::snapshot(&engine).await.map_err(|e| {
                anyhow!("listing containers and networks at {endpoint} failed: {e}.\n  Fix: check that the engine answers (`docker ps`)")
            })?;
            engine_for_direct = Some(engine);
            inventory
        }
        Err(e) if args.direct => {
            bail!("{e}\n  (verify --direct needs the Docker inventory: which containers run, and where)")
        }
        Err(e) if !ports.is_empty() => {
            crate::say_out!(
                "note: no Docker inventory ({e}); probing the --port list, container bridges found on the host"
            );
            Inventory::default()
        }
        Err(e) => bail!("{e}\n  (verify needs the Docker inventory, or ports given with --port)"),
    };
    let pids = match (&engine_for_direct, args.direct) {
        (Some(engine), true) => {
            Some(docker::pids(engine, &inventory.containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>()).await)
        }
        _ => None,
    };
    let report = run_with(&args, &inventory, &ports, &expected, &sources, pids.as_ref())?;
    Ok(report.exit_code)
}

/// The one-shot command on an inventory already read: probes, and prints each line
/// on stdout as it comes (the header before probing).
pub fn run_with(
    args: &VerifyArgs,
    inventory: &Inventory,
    ports: &[(u16, Proto)],
    expected: &BTreeSet<(u16, Proto)>,
    sources: &[IpAddr],
    direct_pids: Option<&std::collections::HashMap<String, u32>>,
) -> Result<Report> {
    let prepared = match direct_pids {
        Some(pids) => direct::prepare(&args.uplinks, inventory, pids, sources)?,
        None => prepare(&args.uplinks, inventory, ports, sources)?,
    }
    .with_injection(args.injection);
    let mut report = Report::default();
    let mut say = |line: String| {
        crate::say_out!("{line}");
        report.lines.push(line);
    };
    say(header_line(&prepared, args.from.is_empty()));
    let outcome = prepared.execute(args.rate, Duration::from_millis(args.window_ms))?;
    crate::say!("note: {}", outcome.injection);
    for w in &outcome.warnings {
        crate::say!("{w}");
    }
    for line in outcome_lines(&outcome, expected) {
        say(line);
    }
    report.exit_code = plan::exit_code(&outcome.reachable(), expected);
    if outcome.not_sent > 0 {
        say(format!(
            "interrupted: {} of {} probes not sent (the verdicts above are of those sent); what was sent is cleaned up",
            outcome.not_sent,
            outcome.not_sent + outcome.probes.len()
        ));
        // 128 + SIGINT, as a shell reports an interrupted command.
        report.exit_code = 130;
    }
    Ok(report)
}

/// Probe sources from `--from` prefixes (their first host address each); the
/// documentation addresses without any.
pub fn sources_from(from: &[String]) -> std::result::Result<Vec<IpAddr>, (String, String)> {
    if from.is_empty() {
        return Ok(vec![
            plan::DEFAULT_SOURCE_V4.parse().expect("literal"),
            plan::DEFAULT_SOURCE_V6.parse().expect("literal"),
        ]);
    }
    let mut out = Vec::new();
    for s in from {
        let p: Prefix = s.parse().map_err(|e: crate::net::prefix::PrefixParseError| (s.clone(), e.0))?;
        let src = plan::source_of(&p);
        if !out.contains(&src) {
            out.push(src);
        }
    }
    Ok(out)
}

pub(crate) fn probe_sources(from: &[String]) -> Result<Vec<IpAddr>> {
    sources_from(from).map_err(|(s, reason)| {
        anyhow!("invalid CIDR {s:?} for --from: {reason}.\n  Fix: write a prefix such as 10.8.0.0/24 or 2001:db8::/64")
    })
}

fn uplink_info(host: &HostSnapshot, name: &str) -> Result<Uplink> {
    let Some(i) = host.get(name) else {
        bail!(
            "unknown interface {name:?} for --uplink: no such interface here.\n  Fix: pick one from `ip -br link`{}",
            host.suggest(name)
        );
    };
    let mac = match i.link_layer {
        LinkLayer::Ethernet => {
            let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
                .with_context(|| format!("reading the MAC address of {name}"))?;
            Some(
                parse_mac(text.trim())
                    .ok_or_else(|| anyhow!("{name} has no usable MAC address ({:?})", text.trim()))?,
            )
        }
        LinkLayer::L3 => None,
    };
    Ok(Uplink { name: name.into(), ifindex: i.ifindex, layer: i.link_layer, mac, addresses: i.host_addresses.clone() })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// Reads the host and plans the probes: the bindings to verify (every published port
/// of the inventory, or `ports`), the uplinks (`uplinks`, or chosen as `watch` does).
pub fn prepare(
    uplinks: &[String],
    inventory: &Inventory,
    ports: &[(u16, Proto)],
    sources: &[IpAddr],
) -> Result<Prepared> {
    let started = Instant::now();
    let host = HostSnapshot::read().map_err(|e| anyhow!("{e}"))?;
    let mut bridges = inventory.bridges();
    if inventory.networks.is_empty() {
        bridges.extend(host.addressed_bridges());
    }
    let uplinks = choose_uplinks(&host, &bridges, uplinks)?;
    let targets = plan::targets(inventory, ports);
    let plan = plan::plan(&targets, &uplinks, sources);
    let guarded = plan::guarded_interfaces(&host, &uplinks);
    Ok(Prepared {
        started,
        bridges,
        uplinks,
        targets,
        plan,
        sources: sources.to_vec(),
        injection: InjectionArg::Auto,
        guarded,
    })
}

/// The uplinks named, or chosen as `watch` does.
fn choose_uplinks(host: &HostSnapshot, bridges: &BTreeSet<String>, named: &[String]) -> Result<Vec<Uplink>> {
    let names: Vec<String> = if named.is_empty() {
        host.uplink_candidates(bridges).into_iter().map(|u| u.name).collect()
    } else {
        named.to_vec()
    };
    if names.is_empty() {
        bail!("no uplink to probe: no interface is up with a global address besides bridges and loopback.\n  Fix: name one with --uplink IFACE");
    }
    names.iter().map(|n| uplink_info(host, n)).collect()
}
