//! `dockexpose verify`: is the firewall really holding? For every published port, on
//! every uplink, one probe is injected into the uplink's receive path (as if it came
//! from outside) and the kernel says what became of it: it reached a container
//! (EXPOSED), the host itself answered it (PROXY), or neither (HELD).
//!
//! Nothing leaves the host: a TCX egress guard drops every packet to a probe source on
//! every interface a reply could leave by (policy routing and ECMP included); each TCP
//! probe is closed with a RST; the probes' conntrack entries are deleted afterwards.
//!
//! `frame` and `plan` are pure (unit-tested); this file does the I/O.

pub mod daemon;
pub mod direct;
pub mod drift;
pub mod frame;
pub mod host_state;
pub mod inject;
pub mod owner;
pub mod plan;
pub mod sentinel;
pub mod trace;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use dockexpose_common::{ProbeAnswer, PROBE_COUNTER_DROPPED, PROBE_COUNTER_LOST, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// SCTP chunk type of an INIT-ACK.
const SCTP_INIT_ACK: u8 = 2;

use self::{
    frame::{FrameSpec, Segment},
    host_state::{route_to, Neighbours},
    plan::{Answers, Probe, Skipped, Target, Uplink, Verdict},
};
use crate::{
    cli::{InjectionArg, VerifyArgs},
    host::{
        interfaces::{self, HostSnapshot, LinkLayer},
        privileges,
    },
    inventory::{docker, model::Inventory},
    kernel::{
        event::{Observation, Proto, Stage},
        loader::{Kernel, KernelSettings},
    },
    net::prefix::Prefix,
};

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
        self.probes.iter().filter(|p| p.verdict.reachable()).map(|p| (p.target.port.host_port, p.target.port.proto)).collect()
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
    let ports: Vec<(u16, Proto)> =
        args.ports.iter().map(|s| plan::parse_port(s)).collect::<std::result::Result<_, _>>().map_err(|e| anyhow!("--port {e}"))?;
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
        Err(e) if args.direct => bail!("{e}\n  (verify --direct needs the Docker inventory: which containers run, and where)"),
        Err(e) if !ports.is_empty() => {
            crate::say_out!("note: no Docker inventory ({e}); probing the --port list, container bridges found on the host");
            Inventory::default()
        }
        Err(e) => bail!("{e}\n  (verify needs the Docker inventory, or ports given with --port)"),
    };
    let pids = match (&engine_for_direct, args.direct) {
        (Some(engine), true) => Some(docker::pids(engine, &inventory.containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>()).await),
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
        if default_sources { " (documentation addresses no rule should trust; test an allow-list with --from CIDR)" } else { "" }
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
        if outcome.answers_lost > 0 { format!(" ({} answers not recorded: ring full)", outcome.answers_lost) } else { String::new() },
        outcome.conntrack_deleted,
        outcome.conntrack_remaining,
    )
}

/// Probe sources from `--from` prefixes (their first host address each); the
/// documentation addresses without any.
pub fn sources_from(from: &[String]) -> std::result::Result<Vec<IpAddr>, (String, String)> {
    if from.is_empty() {
        return Ok(vec![plan::DEFAULT_SOURCE_V4.parse().expect("literal"), plan::DEFAULT_SOURCE_V6.parse().expect("literal")]);
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
        bail!("unknown interface {name:?} for --uplink: no such interface here.\n  Fix: pick one from `ip -br link`{}", host.suggest(name));
    };
    let mac = match i.link_layer {
        LinkLayer::Ethernet => {
            let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
                .with_context(|| format!("reading the MAC address of {name}"))?;
            Some(parse_mac(text.trim()).ok_or_else(|| anyhow!("{name} has no usable MAC address ({:?})", text.trim()))?)
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

/// A random u32 (the ISNs, the first source port).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 bytes into a local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n != 4 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

/// One probe on its way, and what the kernel said of it.
struct Sent {
    probe: Probe,
    sport: u16,
    isn: u32,
    at: SystemTime,
    reached_on: Option<u32>,
    answers: Answers,
}

/// Reads the host and plans the probes: the bindings to verify (every published port
/// of the inventory, or `ports`), the uplinks (`uplinks`, or chosen as `watch` does).
pub fn prepare(uplinks: &[String], inventory: &Inventory, ports: &[(u16, Proto)], sources: &[IpAddr]) -> Result<Prepared> {
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
    Ok(Prepared { started, bridges, uplinks, targets, plan, sources: sources.to_vec(), injection: InjectionArg::Auto, guarded })
}

/// The uplinks named, or chosen as `watch` does.
fn choose_uplinks(host: &HostSnapshot, bridges: &BTreeSet<String>, named: &[String]) -> Result<Vec<Uplink>> {
    let names: Vec<String> =
        if named.is_empty() { host.uplink_candidates(bridges).into_iter().map(|u| u.name).collect() } else { named.to_vec() };
    if names.is_empty() {
        bail!("no uplink to probe: no interface is up with a global address besides bridges and loopback.\n  Fix: name one with --uplink IFACE");
    }
    names.iter().map(|n| uplink_info(host, n)).collect()
}

impl Prepared {
    /// Sends the probes (`rate` a second, one uplink at a time; blocking: it sleeps),
    /// waits `window` after each uplink's last one, cleans up, and says what became of
    /// each. Prints nothing.
    pub fn execute(self, rate: u32, window: Duration) -> Result<Outcome> {
        self.execute_noting(rate, window, |_, _, _| {})
    }

    /// `execute`, telling `note` the source, source port and protocol of each probe
    /// just before it is sent (the daemon recognises its own probes by them).
    pub fn execute_noting(self, rate: u32, window: Duration, mut note: impl FnMut(IpAddr, u16, Proto)) -> Result<Outcome> {
        let Prepared { started, bridges, uplinks, targets, plan, sources, injection, mut guarded } = self;
        let sources = &sources[..];
        // The kernel side: bridge programs (what reached a container), the injector, the guard.
        let (mut kernel, mut events) = Kernel::load(KernelSettings::default()).map_err(|e| anyhow!("{e}"))?;
        let mut answers_ring = kernel.prepare_probes().map_err(|e| anyhow!("{e}"))?;
        let (mut injector, how) = inject::Injector::choose(&mut kernel, injection)?;
        // A sentinel cleans up if this run is killed outright; the guard is pinned
        // until it has.
        let mut warnings = Vec::new();
        sentinel::remove_stale();
        let pins = sentinel::pin_dir()
            .map_err(|e| warnings.push(format!("warning: the guard is not pinned ({e}): a run killed outright (SIGKILL) loses its guard at once")))
            .ok();
        let mut sentinel = match &pins {
            Some(dir) => {
                kernel.pin_probe_guards_in(dir).map_err(|e| anyhow!("{e}"))?;
                sentinel::Sentinel::spawn(dir)
                    .map_err(|e| warnings.push(format!("warning: no sentinel ({e}): a run killed outright (SIGKILL) leaves its probes' state behind")))
                    .ok()
            }
            None => None,
        };
        for b in &bridges {
            if interfaces::exists(b) {
                kernel.attach_bridge(b).map_err(|e| anyhow!("{e}"))?;
            }
        }
        let mut neighbours = Neighbours::default();
        for s in sources {
            kernel.add_probe_source(*s).map_err(|e| anyhow!("{e}"))?;
        }
        for s in sources {
            if let Some((dev, on_link)) = route_to(*s) {
                if on_link && dev != "lo" {
                    neighbours.add(*s, &dev);
                }
                if dev != "lo" {
                    guarded.entry(dev.clone()).or_insert_with(|| interfaces::link_layer(&dev));
                }
            }
        }
        if let Some(s) = sentinel.as_mut() {
            for (addr, dev) in &neighbours.0 {
                s.note(&sentinel::Note::Neighbour { addr: *addr, dev: dev.clone() });
            }
        }
        for (dev, layer) in &guarded {
            kernel.attach_probe_guard(dev, *layer).map_err(|e| anyhow!("{e}"))?;
        }

        // Which rule drops a probe, where netfilter's trace can say.
        let tracer = trace::Tracer::start(sources);

        let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut next_port = 20_000 + (random_u32() % 30_000) as u16;
        let mut sent: Vec<Sent> = Vec::new();
        for (ui, uplink) in uplinks.iter().enumerate() {
            let batch_start = sent.len();
            let mut last = Instant::now();
            for probe in plan.probes.iter().filter(|p| p.uplink == ui) {
                if interrupted() {
                    break;
                }
                let sport = next_port;
                next_port = if next_port >= 60_000 { 20_000 } else { next_port + 1 };
                let isn = random_u32();
                let segment = match probe.proto {
                    Proto::Tcp => Segment::Syn { isn },
                    Proto::Udp => Segment::Udp,
                    Proto::Sctp => Segment::SctpInit { tag: isn },
                };
                note(probe.source, sport, probe.proto);
                if let Some(s) = sentinel.as_mut() {
                    s.note(&sentinel::Note::Probe {
                        proto: probe.proto,
                        src: probe.source,
                        sport,
                        dst: probe.dst,
                        dport: probe.dst_port,
                        isn,
                        ifindex: uplink.ifindex,
                        mac: uplink.mac,
                    });
                }
                let spec = FrameSpec {
                    dst_mac: Some(frame::live_frame_mac(uplink.mac)),
                    src: probe.source,
                    dst: probe.dst,
                    sport,
                    dport: probe.dst_port,
                    segment,
                    ip_id: sport,
                };
                let wait = gap.saturating_sub(last.elapsed());
                std::thread::sleep(wait);
                last = Instant::now();
                injector.inject(&mut kernel, &frame::build(&spec), uplink.ifindex).map_err(|e| {
                    anyhow!("injecting a probe into {} failed: {e:#}.\n  Fix: verify needs root (CAP_NET_ADMIN, CAP_BPF)", uplink.name)
                })?;
                sent.push(Sent {
                    probe: probe.clone(),
                    sport,
                    isn,
                    at: SystemTime::now(),
                    reached_on: None,
                    answers: Answers::default(),
                });
                collect(&mut events, &mut answers_ring, &mut sent[batch_start..]);
            }
            // The window after the batch's last probe.
            let deadline = last + window;
            while Instant::now() < deadline {
                collect(&mut events, &mut answers_ring, &mut sent[batch_start..]);
                std::thread::sleep(Duration::from_millis(5));
            }
            collect(&mut events, &mut answers_ring, &mut sent[batch_start..]);
            // Close what the probes opened: the container's (or the proxy's) half-open connection.
            for s in &sent[batch_start..] {
                if s.probe.proto == Proto::Tcp {
                    let spec = FrameSpec {
                        dst_mac: Some(frame::live_frame_mac(uplink.mac)),
                        src: s.probe.source,
                        dst: s.probe.dst,
                        sport: s.sport,
                        dport: s.probe.dst_port,
                        segment: Segment::Rst { seq: s.isn.wrapping_add(1) },
                        ip_id: s.sport,
                    };
                    std::thread::sleep(gap.saturating_sub(last.elapsed()));
                    last = Instant::now();
                    let _ = injector.inject(&mut kernel, &frame::build(&spec), uplink.ifindex);
                }
            }
            if interrupted() {
                break;
            }
        }
        // Let the RSTs land, then forget the probes in conntrack.
        std::thread::sleep(Duration::from_millis(30));
        collect(&mut events, &mut answers_ring, &mut sent);
        let trace_lines = tracer.map(trace::Tracer::finish).unwrap_or_default();
        let (deleted, remaining) = delete_conntrack(&sent, sources, &mut warnings);
        let dropped = kernel.probe_counter(PROBE_COUNTER_DROPPED).unwrap_or(0);
        let lost = kernel.probe_counter(PROBE_COUNTER_LOST).unwrap_or(0);
        let guards = kernel.probe_guards();
        std::thread::sleep(GUARD_GRACE);
        let dropped = kernel.probe_counter(PROBE_COUNTER_DROPPED).unwrap_or(dropped);
        drop(injector);
        drop(kernel); // detaches (and unpins) the guard and the bridge programs
        drop(neighbours);
        if let Some(dir) = &pins {
            let _ = std::fs::remove_dir(dir);
            let _ = std::fs::remove_dir(sentinel::PIN_ROOT);
        }
        if let Some(s) = sentinel {
            s.done();
        }

        // Verdicts.
        let probes = sent
            .iter()
            .map(|s| {
                let (verdict, why) = plan::decide(s.probe.proto, s.reached_on.is_some(), s.answers);
                let why = match (verdict, trace::drop_of(&trace_lines, s.probe.source, s.sport)) {
                    (Verdict::Held, Some(rule)) => format!("dropped by {rule}"),
                    // Direct: what let a packet nobody published through.
                    (Verdict::Exposed, _) if targets[s.probe.target].direct => match trace::accept_of(&trace_lines, s.probe.source, s.sport) {
                        Some(rule) => format!("{why} directly; let through by {rule}"),
                        None => format!("{why} directly"),
                    },
                    _ => why.to_string(),
                };
                ProbeResult {
                    verdict,
                    why,
                    target: targets[s.probe.target].clone(),
                    probe: s.probe.clone(),
                    uplink: uplinks[s.probe.uplink].name.clone(),
                    sport: s.sport,
                    at: s.at,
                    reached_on: s.reached_on.map(iface_name),
                    dnat_rule: trace::dnat_of(&trace_lines, s.probe.source, s.sport),
                    accept_rule: trace::accept_of(&trace_lines, s.probe.source, s.sport),
                }
            })
            .collect();
        Ok(Outcome {
            sources: sources.to_vec(),
            uplinks: uplinks.iter().map(|u| u.name.clone()).collect(),
            probes,
            skipped: plan.skipped.iter().map(|(ti, why)| (targets[*ti].clone(), why.clone())).collect(),
            elapsed: started.elapsed(),
            guards,
            guard_dropped: dropped,
            answers_lost: lost,
            conntrack_deleted: deleted,
            conntrack_remaining: remaining,
            warnings,
            not_sent: plan.probes.len().saturating_sub(sent.len()),
            injection: how,
        })
    }
}

fn iface_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("ifindex {ifindex}"))
}

fn ip_of(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == dockexpose_common::FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// Reads both rings: `reached` records of the bridges, answers the guard stopped.
fn collect(events: &mut RingBuf<MapData>, answers: &mut RingBuf<MapData>, sent: &mut [Sent]) {
    while let Some(item) = events.next() {
        let Ok(obs) = Observation::from_bytes(&item) else { continue };
        if obs.stage != Stage::Reached {
            continue;
        }
        if let Some(s) = sent.iter_mut().find(|s| s.probe.source == obs.src && s.sport == obs.src_port && s.probe.proto == obs.proto) {
            s.reached_on.get_or_insert(obs.ifindex);
        }
    }
    while let Some(item) = answers.next() {
        if item.len() < std::mem::size_of::<ProbeAnswer>() {
            continue;
        }
        // SAFETY: the ring holds ProbeAnswer records (repr(C), plain data), length checked.
        let a: ProbeAnswer = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let (src, dst) = (ip_of(&a.src_addr, a.family), ip_of(&a.dst_addr, a.family));
        let proto = match a.proto {
            PROTO_TCP => Proto::Tcp,
            PROTO_UDP => Proto::Udp,
            PROTO_SCTP => Proto::Sctp,
            _ => continue,
        };
        let Some(s) = sent.iter_mut().find(|s| {
            s.probe.source == dst && s.sport == a.dst_port && s.probe.proto == proto && s.probe.dst == src && s.probe.dst_port == a.src_port
        }) else {
            continue;
        };
        match proto {
            Proto::Tcp if a.tcp_flags & (frame::TCP_SYN | frame::TCP_ACK) == frame::TCP_SYN | frame::TCP_ACK => s.answers.syn_ack = true,
            Proto::Tcp if a.tcp_flags & frame::TCP_RST != 0 => s.answers.rst = true,
            Proto::Udp => s.answers.udp = true,
            // The first chunk's type, in the flags byte: INIT-ACK accepts, ABORT refuses.
            Proto::Sctp if a.tcp_flags == SCTP_INIT_ACK => s.answers.init_ack = true,
            _ => {}
        }
    }
}

/// Deletes each probe's conntrack entry by its exact original tuple, then counts what
/// is left from the probe sources (over netlink: `host_state`). Returns (deleted,
/// remaining).
fn delete_conntrack(sent: &[Sent], sources: &[IpAddr], warnings: &mut Vec<String>) -> (usize, usize) {
    host_state::delete_conntrack(sent.iter().map(|s| (&s.probe, s.sport)), sources, warnings)
}
