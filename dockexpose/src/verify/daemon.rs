//! `watch --verify-every`: verify's probes from the daemon. The pure parts: when a
//! run is due (periodically, and a debounce after Docker publishes new ports), which
//! kernel records are the daemon's own probes, and the `verified` audit record.
//! The I/O (spawn_blocking, the channel, the loop) is in `watch.rs`.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{plan::Probe, Outcome, ProbeResult};
use crate::{
    correlate,
    inventory::model::Inventory,
    kernel::event::{Observation, Proto, Stage},
    output::record::{Record, STAGE_VERIFIED},
};

/// Probes a second (verify's default).
pub const RATE: u32 = 200;
/// How long to wait after an uplink's last probe (verify's default).
pub const WINDOW: Duration = Duration::from_millis(300);
/// New published ports are verified this long after the last change (a compose
/// project starting publishes several in a row)...
pub const DEBOUNCE: Duration = Duration::from_secs(2);
/// ...but never later than this after the first of them.
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Records from a probe source this long after a run are still the run's (the ring
/// buffer hands them over in batches).
pub const GRACE: Duration = Duration::from_secs(2);
/// The shortest `--verify-every`.
pub const MIN_EVERY: Duration = Duration::from_secs(10);

/// Host ports Docker publishes, with their protocol.
pub fn published_ports(inventory: &Inventory) -> BTreeSet<(u16, Proto)> {
    inventory.containers.iter().flat_map(|c| c.ports.iter()).map(|p| (p.host_port, p.proto)).collect()
}

/// What a run probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Every published port (at start, then every `--verify-every`).
    Scheduled,
    /// Ports Docker published since the last inventory.
    NewPorts(BTreeSet<(u16, Proto)>),
    /// Every published port, because the ground moved (a ruleset, link or address
    /// change): "after a ruleset change by iptables (pid 1234)". It covers the new
    /// ports queued when it started, and names them, so no second run follows.
    Drift { why: String, new_ports: BTreeSet<(u16, Proto)> },
}

impl RunKind {
    /// "scheduled" or "new ports 8080/tcp, 53/udp".
    pub fn describe(&self) -> String {
        match self {
            RunKind::Scheduled => "scheduled".into(),
            RunKind::Drift { why, new_ports } if new_ports.is_empty() => format!("after {why}"),
            RunKind::Drift { why, new_ports } => {
                format!("new ports {}, with every published port after {why}", port_list(new_ports))
            }
            RunKind::NewPorts(ports) => format!("new ports {}", port_list(ports)),
        }
    }

    /// Without the new ports that are no longer published (gone again since they
    /// were queued).
    pub fn published_now(self, published: &BTreeSet<(u16, Proto)>) -> Self {
        let keep = |ports: BTreeSet<(u16, Proto)>| ports.into_iter().filter(|p| published.contains(p)).collect();
        match self {
            RunKind::NewPorts(ports) => RunKind::NewPorts(keep(ports)),
            RunKind::Drift { why, new_ports } => RunKind::Drift { why, new_ports: keep(new_ports) },
            RunKind::Scheduled => RunKind::Scheduled,
        }
    }

    /// The `ports` argument of `verify::prepare` (empty: every published port).
    pub fn ports(&self) -> Vec<(u16, Proto)> {
        match self {
            RunKind::Scheduled | RunKind::Drift { .. } => Vec::new(),
            RunKind::NewPorts(ports) => ports.iter().copied().collect(),
        }
    }
}

/// "53/udp, 9090/tcp".
fn port_list(ports: &BTreeSet<(u16, Proto)>) -> String {
    ports.iter().map(|(p, proto)| format!("{p}/{}", proto.as_str())).collect::<Vec<_>>().join(", ")
}

/// When runs are due. At most one runs at a time: what falls due meanwhile waits.
#[derive(Debug)]
pub struct Schedule {
    every: Duration,
    next_scheduled: Instant,
    /// The published ports last seen; None before Docker's first inventory (no run
    /// before it: there would be nothing to probe).
    known: Option<BTreeSet<(u16, Proto)>>,
    queued: BTreeSet<(u16, Proto)>,
    /// When the first and the last of the queued ports appeared.
    queued_first: Option<Instant>,
    queued_last: Option<Instant>,
    running: bool,
}

impl Schedule {
    /// The first scheduled run is due at once (as soon as the inventory is known).
    pub fn new(every: Duration, now: Instant) -> Self {
        Self {
            every,
            next_scheduled: now,
            known: None,
            queued: BTreeSet::new(),
            queued_first: None,
            queued_last: None,
            running: false,
        }
    }

    /// Docker's published ports now. Returns those that are new (queued for a run);
    /// none for the first inventory, which the first scheduled run covers.
    pub fn inventory(&mut self, ports: BTreeSet<(u16, Proto)>, now: Instant) -> BTreeSet<(u16, Proto)> {
        let new: BTreeSet<(u16, Proto)> = match &self.known {
            None => BTreeSet::new(),
            Some(known) => ports.difference(known).copied().collect(),
        };
        if !new.is_empty() {
            self.queued.extend(new.iter().copied());
            self.queued_first.get_or_insert(now);
            self.queued_last = Some(now);
        }
        // A port that goes away and comes back is new again.
        self.queued.retain(|p| ports.contains(p));
        if self.queued.is_empty() {
            (self.queued_first, self.queued_last) = (None, None);
        }
        self.known = Some(ports);
        new
    }

    /// When the next run is due; None while one runs or before the first inventory.
    pub fn due(&self) -> Option<Instant> {
        if self.running || self.known.is_none() {
            return None;
        }
        let new = match (self.queued_first, self.queued_last) {
            (Some(first), Some(last)) => Some((last + DEBOUNCE).min(first + MAX_DELAY)),
            _ => None,
        };
        Some(new.map_or(self.next_scheduled, |n| n.min(self.next_scheduled)))
    }

    /// The run to start now, if one is due (it is then running until `finished`).
    pub fn start(&mut self, now: Instant) -> Option<RunKind> {
        if self.due().is_none_or(|t| t > now) {
            return None;
        }
        self.running = true;
        let ports = std::mem::take(&mut self.queued);
        (self.queued_first, self.queued_last) = (None, None);
        if self.next_scheduled <= now {
            // Every published port: the new ones too.
            self.next_scheduled = now + self.every;
            return Some(RunKind::Scheduled);
        }
        Some(RunKind::NewPorts(ports))
    }

    /// Starts a run of every published port outside the schedule (the ground
    /// moved), unless one runs or Docker has not answered yet. When it starts, it
    /// takes the new ports queued so far (it probes them too) and returns them.
    pub fn start_unscheduled(&mut self) -> Option<BTreeSet<(u16, Proto)>> {
        if self.running || self.known.is_none() {
            return None;
        }
        self.running = true;
        (self.queued_first, self.queued_last) = (None, None);
        Some(std::mem::take(&mut self.queued))
    }

    pub fn finished(&mut self) {
        self.running = false;
    }

    pub fn running(&self) -> bool {
        self.running
    }
}

/// The probes of the run in progress, and for `GRACE` after it: kernel records of
/// exactly those probes (their source, source port and protocol, noted by the run as
/// it injects each) are the daemon's own, not outside connections. Only the exact
/// tuples: a packet an outsider spoofs from a probe source, at a time it can predict,
/// is still reported.
#[derive(Debug)]
pub struct ProbeSources {
    sources: Vec<IpAddr>,
    noted: NotedProbes,
    /// A run is in progress (None) or ended, its records expected until then.
    until: Option<Instant>,
    running: bool,
}

/// The (source, source port, protocol) of each probe sent, shared with the run's thread.
pub type NotedProbes = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(IpAddr, u16, Proto)>>>;

impl ProbeSources {
    pub fn new(sources: Vec<IpAddr>) -> Self {
        Self { sources, noted: NotedProbes::default(), until: None, running: false }
    }

    /// A run starts: what the previous one noted is forgotten; the run notes its
    /// probes in `noted()` as it sends them.
    pub fn begin(&mut self) {
        self.running = true;
        self.until = None;
        if let Ok(mut n) = self.noted.lock() {
            n.clear();
        }
    }

    pub fn end(&mut self, now: Instant) {
        self.running = false;
        self.until = Some(now + GRACE);
    }

    pub fn noted(&self) -> NotedProbes {
        self.noted.clone()
    }

    /// Whether a record from `ip:port` at `now` is one of the probes.
    fn matches(&self, ip: IpAddr, port: u16, proto: Proto, now: impl FnOnce() -> Instant) -> bool {
        self.sources.contains(&ip)
            && (self.running || self.until.is_some_and(|u| now() < u))
            // A poisoned lock (a panicked run) names no probe.
            && self.noted.lock().is_ok_and(|n| n.contains(&(ip, port, proto)))
    }

    /// Whether a kernel record is one of the probes: from a probe (its source and
    /// port), or (an answer of the host) to one.
    pub fn is_probe(&self, obs: &Observation, now: impl Fn() -> Instant) -> bool {
        self.matches(obs.src, obs.src_port, obs.proto, &now)
            || (obs.stage == Stage::Answered && self.matches(obs.dst, obs.dst_port, obs.proto, &now))
    }
}

/// The `verified` record of one probe: shaped as the attempt it imitated (src = the
/// probe source, dst = host_ip/host_port = the address and port probed, iface = the
/// uplink, container and exposure from the published binding), plus its verdict.
pub fn verified_record(r: &ProbeResult, inventory: Option<&Inventory>) -> Record {
    let Probe { source, dst, dst_port, proto, .. } = r.probe;
    let obs = Observation {
        ktime_ns: 0,
        stage: Stage::Attempted,
        proto,
        src: source,
        src_port: r.sport,
        dst,
        dst_port,
        orig_dst: None,
        ifindex: 0,
        seq: 0,
        flags: 0,
        cpu: 0,
        rec_seq: 0,
    };
    let mut rec = correlate::record(&obs, Stage::Attempted, r.at, r.uplink.as_str(), inventory);
    rec.stage = STAGE_VERIFIED;
    rec.host_ip = Some(dst);
    rec.host_port = Some(dst_port);
    rec.path = None;
    rec.verdict = Some(r.verdict.as_str());
    rec.why = Some(match &r.reached_on {
        Some(bridge) if r.verdict == super::plan::Verdict::Exposed => format!("{} (seen on {bridge})", r.why),
        _ => r.why.clone(),
    });
    rec
}

/// One stderr line per run: what, where, the counts, the cleanup.
pub fn summary_line(kind: &RunKind, outcome: &Outcome) -> String {
    format!(
        "dockexpose: verify ({}): {} probes on {} from {}: {}; took {} ms; {}",
        kind.describe(),
        outcome.probes.len(),
        outcome.uplinks.iter().map(|u| crate::output::human::escape_untrusted(u)).collect::<Vec<_>>().join(", "),
        outcome.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        super::counts_text(outcome),
        outcome.elapsed.as_millis(),
        super::cleanup_text(outcome)
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        inventory::model::tests::sample,
        verify::plan::{Target, Verdict},
    };

    fn set(ports: &[(u16, Proto)]) -> BTreeSet<(u16, Proto)> {
        ports.iter().copied().collect()
    }

    #[test]
    fn the_first_run_waits_for_the_inventory_then_runs_every_period() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut s = Schedule::new(hour, t0);
        assert_eq!(s.due(), None, "nothing to probe before Docker answers");
        assert!(s.inventory(set(&[(8080, Proto::Tcp)]), t0).is_empty(), "the first inventory is the first run's");
        assert_eq!(s.start(t0), Some(RunKind::Scheduled));
        assert_eq!((s.due(), s.start(t0)), (None, None), "one run at a time");
        s.finished();
        assert_eq!(s.due(), Some(t0 + hour));
        assert_eq!(s.start(t0 + hour - Duration::from_secs(1)), None);
        assert_eq!(s.start(t0 + hour), Some(RunKind::Scheduled));
    }

    #[test]
    fn new_ports_are_verified_after_a_debounce() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(3600), t0);
        s.inventory(set(&[(8080, Proto::Tcp)]), t0);
        assert_eq!(s.start(t0), Some(RunKind::Scheduled));
        s.finished();
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(s.inventory(set(&[(8080, Proto::Tcp), (9090, Proto::Tcp)]), t1), set(&[(9090, Proto::Tcp)]));
        assert_eq!(s.due(), Some(t1 + DEBOUNCE));
        // Another port a second later: the debounce starts again.
        let t2 = t1 + Duration::from_secs(1);
        let all = set(&[(8080, Proto::Tcp), (9090, Proto::Tcp), (53, Proto::Udp)]);
        assert_eq!(s.inventory(all.clone(), t2), set(&[(53, Proto::Udp)]));
        assert_eq!(s.inventory(all.clone(), t2), set(&[]), "an unchanged inventory adds nothing");
        assert_eq!(s.due(), Some(t2 + DEBOUNCE));
        assert_eq!(s.start(t2 + Duration::from_secs(1)), None);
        let run = s.start(t2 + DEBOUNCE).unwrap();
        assert_eq!(run, RunKind::NewPorts(set(&[(53, Proto::Udp), (9090, Proto::Tcp)])));
        assert_eq!(run.describe(), "new ports 53/udp, 9090/tcp");
        assert_eq!(run.ports(), [(53, Proto::Udp), (9090, Proto::Tcp)]);
        assert_eq!(s.due(), None);
        s.finished();
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3600)), "back to the schedule");
    }

    #[test]
    fn a_stream_of_changes_waits_at_most_max_delay() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(3600), t0);
        s.inventory(set(&[]), t0);
        s.start(t0);
        s.finished();
        let mut ports = Vec::new();
        for i in 0..20u16 {
            ports.push((10_000 + i, Proto::Tcp));
            s.inventory(set(&ports), t0 + Duration::from_secs(1) + Duration::from_millis(u64::from(i) * 1000));
        }
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(1) + MAX_DELAY));
    }

    #[test]
    fn ports_that_come_while_a_run_goes_wait_for_it_and_gone_ports_are_dropped() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(3600), t0);
        s.inventory(set(&[(1, Proto::Tcp)]), t0);
        assert_eq!(s.start(t0), Some(RunKind::Scheduled));
        s.inventory(set(&[(1, Proto::Tcp), (2, Proto::Tcp), (3, Proto::Tcp)]), t0);
        s.inventory(set(&[(1, Proto::Tcp), (2, Proto::Tcp)]), t0);
        assert_eq!(s.due(), None, "running");
        s.finished();
        assert_eq!(s.start(t0 + DEBOUNCE), Some(RunKind::NewPorts(set(&[(2, Proto::Tcp)]))));
        s.finished();
        // Gone and back: new again.
        s.inventory(set(&[(1, Proto::Tcp)]), t0 + Duration::from_secs(5));
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3600)), "nothing new queued");
        assert_eq!(
            s.inventory(set(&[(1, Proto::Tcp), (2, Proto::Tcp)]), t0 + Duration::from_secs(6)),
            set(&[(2, Proto::Tcp)])
        );
        // A scheduled run that falls due covers the queued ports too.
        assert_eq!(s.start(t0 + Duration::from_secs(3600)), Some(RunKind::Scheduled));
        s.finished();
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(7200)));
    }

    #[test]
    fn a_drift_run_starts_only_between_runs_and_after_the_first_inventory() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(3600), t0);
        assert_eq!(s.start_unscheduled(), None, "nothing to probe before Docker answers");
        s.inventory(set(&[(8080, Proto::Tcp)]), t0);
        assert_eq!(s.start(t0), Some(RunKind::Scheduled));
        assert_eq!(s.start_unscheduled(), None, "one run at a time");
        s.finished();
        assert_eq!(s.start_unscheduled(), Some(set(&[])));
        assert_eq!(s.due(), None, "running");
        s.finished();
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3600)), "the schedule is untouched");
        let drift = |ports: &[(u16, Proto)]| RunKind::Drift {
            why: "a ruleset change by nft (pid 7)".into(),
            new_ports: set(ports),
        };
        assert_eq!(drift(&[]).describe(), "after a ruleset change by nft (pid 7)");
        assert!(drift(&[(9090, Proto::Tcp)]).ports().is_empty(), "every published port");
    }

    #[test]
    fn a_drift_run_takes_the_queued_new_ports_and_names_them() {
        // Seen in CI: a new container's veth (a link change) and its published port
        // arrive together; the drift run probed the port but was named only by the
        // link, and a second run of the same port was still queued behind it.
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(3600), t0);
        s.inventory(set(&[(8080, Proto::Tcp)]), t0);
        s.start(t0);
        s.finished();
        let t1 = t0 + Duration::from_secs(100);
        s.inventory(set(&[(8080, Proto::Tcp), (39447, Proto::Tcp)]), t1);
        assert_eq!(s.due(), Some(t1 + DEBOUNCE));
        let taken = s.start_unscheduled().expect("no run goes");
        assert_eq!(taken, set(&[(39447, Proto::Tcp)]));
        s.finished();
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3600)), "no second run of the same port");
        let run = RunKind::Drift { why: "a link change: veth1 added".into(), new_ports: taken };
        assert_eq!(run.describe(), "new ports 39447/tcp, with every published port after a link change: veth1 added");
        assert!(run.ports().is_empty(), "every published port");
        let gone = run.published_now(&set(&[(8080, Proto::Tcp)]));
        assert_eq!(gone.describe(), "after a link change: veth1 added", "a port gone again is not named");
    }

    fn obs(stage: Stage, src: &str, dst: &str) -> Observation {
        Observation::sample(stage, Proto::Tcp, src, 20001, dst, 8080)
    }

    #[test]
    fn records_of_probes_are_told_during_a_run_and_its_grace() {
        let t0 = Instant::now();
        let mut p = ProbeSources::new(vec!["198.18.5.77".parse().unwrap()]);
        let probe = obs(Stage::Attempted, "198.18.5.77", "198.18.5.1");
        let outsider = obs(Stage::Attempted, "198.18.5.2", "198.18.5.1");
        assert!(!p.is_probe(&probe, || t0), "no run yet: an outsider at that address is one");
        p.begin();
        assert!(!p.is_probe(&probe, || t0), "not sent yet: an outsider with that source and port is one");
        p.noted().lock().unwrap().insert(("198.18.5.77".parse().unwrap(), 20001, Proto::Tcp));
        assert!(p.is_probe(&probe, || t0));
        let mut spoofed = obs(Stage::Reached, "198.18.5.77", "172.17.0.2");
        spoofed.src_port = 20002;
        assert!(!p.is_probe(&spoofed, || t0), "a spoofed packet from the probe source on another port is reported");
        spoofed.src_port = 20001;
        spoofed.proto = Proto::Udp;
        assert!(!p.is_probe(&spoofed, || t0), "nor with another protocol");
        assert!(p.is_probe(&obs(Stage::Reached, "198.18.5.77", "172.17.0.2"), || t0));
        let mut answer = obs(Stage::Answered, "198.18.5.1", "198.18.5.77");
        (answer.src_port, answer.dst_port) = (8080, 20001);
        assert!(p.is_probe(&answer, || t0), "the host's answer to a probe");
        assert!(!p.is_probe(&outsider, || t0));
        assert!(!p.is_probe(&obs(Stage::Reached, "198.18.5.1", "198.18.5.77"), || t0));
        p.end(t0);
        assert!(p.is_probe(&probe, || t0 + GRACE - Duration::from_millis(1)));
        assert!(!p.is_probe(&probe, || t0 + GRACE));
    }

    #[test]
    fn verified_records_carry_verdict_and_why_and_the_binding() {
        let inv = sample();
        let web = &inv.containers[0];
        let port = web.ports.iter().find(|p| p.host_port == 8080).copied().unwrap();
        let r = ProbeResult {
            verdict: Verdict::Exposed,
            why: "reached the container, which accepted (SYN-ACK)".into(),
            target: Target { container: Some((web.name.clone(), web.image.clone())), port, direct: false },
            probe: Probe {
                target: 0,
                uplink: 0,
                source: "198.18.5.77".parse().unwrap(),
                dst: "198.18.5.1".parse().unwrap(),
                dst_port: 8080,
                proto: Proto::Tcp,
            },
            uplink: "eth0".into(),
            sport: 23456,
            at: SystemTime::UNIX_EPOCH,
            reached_on: Some("docker0".into()),
            dnat_rule: None,
            accept_rule: None,
        };
        let v: serde_json::Value = serde_json::from_str(&verified_record(&r, Some(&inv)).to_json_line()).unwrap();
        assert_eq!(v["stage"], "verified");
        assert_eq!(v["verdict"], "EXPOSED");
        assert_eq!(v["why"], "reached the container, which accepted (SYN-ACK) (seen on docker0)");
        assert_eq!((v["src_ip"].as_str(), v["src_port"].as_u64()), (Some("198.18.5.77"), Some(23456)));
        assert_eq!((v["dst_ip"].as_str(), v["dst_port"].as_u64()), (Some("198.18.5.1"), Some(8080)));
        assert_eq!((v["host_ip"].as_str(), v["host_port"].as_u64()), (Some("198.18.5.1"), Some(8080)));
        assert_eq!(v["iface"], "eth0");
        assert_eq!(v["container"]["name"], "web");
        assert_eq!(v["exposure"], "published");
        assert_eq!(v["published"][0]["host_port"], 8080);
        assert!(v["path"].is_null());
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        let held = ProbeResult {
            verdict: Verdict::Held,
            why: "dropped before reaching the container".into(),
            reached_on: None,
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&verified_record(&held, Some(&inv)).to_json_line()).unwrap();
        assert_eq!(
            (v["verdict"].as_str(), v["why"].as_str()),
            (Some("HELD"), Some("dropped before reaching the container"))
        );
    }
}
