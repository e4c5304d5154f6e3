//! `dockexpose watch`: the daemon loop.
//!
//! Start-up validates everything the operator gave (fail early, with the fix), loads
//! and attaches the kernel programs, then one task reads the ring buffer while this
//! loop turns records into output, keeps the kernel maps current, and reports counters.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use dockexpose_common::ConnEvent;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    time::{interval, MissedTickBehavior},
};

use crate::{
    cli::WatchArgs,
    correlate,
    error::{Error, Result},
    host::{
        interfaces::{self, HostSnapshot},
        local, privileges,
    },
    inventory::{
        docker::{self, DockerState},
        model::Inventory,
    },
    kernel::{
        event::{KernelClock, Observation, Stage},
        loader::{ConntrackAccess, Kernel, KernelSettings, UplinkHook, UplinkAttachMode},
        reader::ReaderStats,
        ring,
    },
    net::prefix::Prefix,
    output::{alerts::Alerter, human, record::Record, sink::JsonSink},
    state::{self, continuity::Stamped},
    stats::{LatencyHistogram, LossTracker, PipelineCounters},
    verdict::AttemptTracker,
    verify::{
        self,
        daemon::{self as verifyd, ProbeSources, RunKind, Schedule},
        Outcome,
    },
};

/// Most batches handled before the audit log is flushed.
const BATCHES_PER_FLUSH: usize = 8;
/// Batches (of up to reader::MAX_BATCH records) waiting between the reader and the
/// outputs. A burst larger than this is counted as reader loss, never buffered
/// without bound.
const CHANNEL_BATCHES: usize = 16;
/// Unread ring-buffer bytes that wake the reader at once (about 800 records); fewer
/// wait for its timer (reader::DRAIN_EVERY).
const WAKEUP_BYTES: u64 = 64 * 1024;
/// How often interfaces and addresses are re-read.
const HOST_REFRESH: Duration = Duration::from_secs(1);
/// How long a record that reached an address on a Docker network, but no known
/// container, waits for the inventory to catch up (a connection right at start-up).
const IDENTITY_GRACE: Duration = Duration::from_secs(1);
/// Most records waiting for identity; past that they are written without.
const MAX_PENDING: usize = 1024;
/// How long start-up waits for Docker's first answer before choosing bridges.
const DOCKER_FIRST_ANSWER: Duration = Duration::from_secs(3);

/// How long shutdown waits for a verify run in progress to finish and clean up.
const VERIFY_STOP_WAIT: Duration = Duration::from_secs(20);

/// `--verify-every`, validated.
struct VerifySettings {
    every: Duration,
    sources: Vec<IpAddr>,
    /// --uplink as given (empty: chosen as verify does).
    uplinks: Vec<String>,
}

/// A verify run's result, from its blocking thread.
type VerifyResult = std::result::Result<Outcome, String>;

/// Verifying from the daemon: the schedule, the run in progress, its probe sources.
struct VerifyState {
    settings: VerifySettings,
    schedule: Schedule,
    probes: ProbeSources,
    tx: mpsc::UnboundedSender<VerifyResult>,
    /// The run in progress, and the inventory it probes (its records are named from it).
    running: Option<(RunKind, Inventory)>,
}

/// Where attempts are watched for.
enum UplinkSelection {
    /// --no-uplinks, or --no-docker (the reason).
    Off(&'static str),
    /// --uplink: these; one that vanishes is attached again when it comes back.
    Given(Vec<String>),
    /// Every up interface with a global address that is not a bridge, port or loopback.
    Auto,
}

/// The options, validated.
struct Settings {
    /// Bridges named with --bridge; one that vanishes is attached again when it comes back.
    explicit_bridges: Vec<String>,
    uplinks: UplinkSelection,
    uplink_hook: UplinkHook,
    blocked_after_ns: u64,
    /// None with --no-docker.
    docker_endpoint: Option<String>,
    alert_window: Duration,
    trusted: Vec<Prefix>,
    stats_interval: Option<Duration>,
    quiet: bool,
    kernel: KernelSettings,
    /// None without --verify-every.
    verify: Option<VerifySettings>,
}

fn validate(args: &WatchArgs, host: &HostSnapshot) -> Result<Settings> {
    let trusted = args
        .trusted
        .iter()
        .map(|s| {
            s.parse::<Prefix>().map_err(|e| Error::InvalidCidr { option: "--trusted", input: s.clone(), reason: e.0 })
        })
        .collect::<Result<Vec<_>>>()?;
    for name in &args.bridges {
        if !interfaces::exists(name) {
            return Err(Error::UnknownInterface { name: name.clone(), hint: host.suggest(name) });
        }
        if !interfaces::is_bridge(name) {
            eprintln!(
                "warning: {} is not a Linux bridge; watching its egress anyway, but container \
                 traffic normally leaves through docker0 or a br-* bridge",
                human::escape_untrusted(name)
            );
        }
    }
    for name in &args.uplinks {
        if !interfaces::exists(name) {
            return Err(Error::UnknownInterface { name: name.clone(), hint: host.suggest(name) });
        }
        if interfaces::is_bridge(name) {
            eprintln!(
                "dockexpose: uplink {} is a bridge: its ports are watched, where traffic from outside arrives",
                human::escape_untrusted(name)
            );
        }
    }
    if args.blocked_after == 0 {
        return Err(Error::InvalidSetting { name: "--blocked-after", reason: "must be at least 1 second".into() });
    }
    if args.udp_idle == 0 {
        return Err(Error::InvalidSetting { name: "--udp-idle", reason: "must be at least 1 second".into() });
    }
    if args.alert_window == 0 {
        return Err(Error::InvalidSetting { name: "--alert-window", reason: "must be at least 1 second".into() });
    }
    if args.no_docker && !args.uplinks.is_empty() {
        eprintln!(
            "warning: --uplink is ignored with --no-docker: attempts are attempts at Docker's published \
             ports, which only Docker's inventory names; only what reaches the bridges is reported"
        );
    }
    let verify = match args.verify_every {
        None => None,
        Some(every) if every < verifyd::MIN_EVERY => {
            return Err(Error::InvalidSetting {
                name: "--verify-every",
                reason: format!("must be at least {} (new published ports are verified on their own)", humantime::format_duration(verifyd::MIN_EVERY)),
            })
        }
        Some(every) => {
            let sources = verify::sources_from(&args.verify_from)
                .map_err(|(input, reason)| Error::InvalidCidr { option: "--verify-from", input, reason })?;
            Some(VerifySettings { every, sources, uplinks: args.uplinks.clone() })
        }
    };
    Ok(Settings {
        verify,
        explicit_bridges: args.bridges.clone(),
        uplinks: if args.no_uplinks {
            UplinkSelection::Off("off (--no-uplinks)")
        } else if args.no_docker {
            UplinkSelection::Off("off (--no-docker: without Docker's published ports there is nothing to call an attempt)")
        } else if args.uplinks.is_empty() {
            UplinkSelection::Auto
        } else {
            UplinkSelection::Given(args.uplinks.clone())
        },
        uplink_hook: match args.uplink_hook {
            crate::cli::UplinkHookArg::Xdp => UplinkHook::Xdp,
            crate::cli::UplinkHookArg::Tc => UplinkHook::Tcx,
        },
        blocked_after_ns: args.blocked_after.saturating_mul(1_000_000_000),
        docker_endpoint: (!args.no_docker).then(|| docker::endpoint(args.docker_host.as_deref())),
        alert_window: Duration::from_secs(args.alert_window),
        trusted,
        stats_interval: (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval)),
        quiet: args.quiet,
        kernel: KernelSettings {
            udp_idle_ns: args.udp_idle.saturating_mul(1_000_000_000),
            wakeup_bytes: WAKEUP_BYTES,
            ..KernelSettings::default()
        },
    })
}

/// The running watcher's state outside the kernel.
struct Watcher {
    kernel: Kernel,
    settings: Settings,
    host: HostSnapshot,
    /// ifindex -> interface name, for the records.
    ifnames: BTreeMap<u32, String>,
    sink: JsonSink,
    clock: KernelClock,
    reader: ReaderStats,
    /// Kernel timestamp to audit-log record, and to alert line.
    record_latency: LatencyHistogram,
    alert_latency: LatencyHistogram,
    /// Kernel timestamps of the records written since the last flush.
    unflushed: Vec<u64>,
    losses: LossTracker,
    /// Last inventory Docker gave; kept while Docker is unreachable.
    inventory: Option<Inventory>,
    docker_connected: bool,
    /// The last Docker problem told to the operator (each is said once).
    docker_problem: Option<String>,
    alerter: Alerter,
    /// Records waiting (until the deadline) for the inventory to know their container.
    pending: Vec<(Observation, String, Instant)>,
    /// Attempts awaiting their verdict.
    attempts: AttemptTracker,
    /// Attempts at a published port number on an address it is not bound to.
    unbound_attempts: u64,
    /// Attempts that got no verdict: the tracker was full.
    attempts_untracked: u64,
    answers_received: u64,
    /// `--verify-every`: None when off.
    verify: Option<VerifyState>,
    /// Kernel records of the daemon's own probes: not written.
    probe_records: u64,
}

/// The next verify result, or never when verify is off.
async fn next_verify_result(rx: &mut Option<mpsc::UnboundedReceiver<VerifyResult>>) -> Option<VerifyResult> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let host = HostSnapshot::read()?;
    let settings = validate(&args, &host)?;
    let mut sink = JsonSink::open(args.json.as_deref())?;
    privileges::check()?;
    // Continuity (state/): lock, pinned kernel side adopted or created, start records.
    let service = state::continuity::ServiceSettings::from_args(&args.service);
    let (kernel, mut continuity) = state::continuity::start(&service, settings.kernel, &mut sink)?;

    let alerter = Alerter::new(settings.alert_window);
    let blocked_after_ns = settings.blocked_after_ns;
    let (verify_tx, verify_rx) = mpsc::unbounded_channel::<VerifyResult>();
    let mut verify_rx = settings.verify.is_some().then_some(verify_rx);
    let verify = settings.verify.as_ref().map(|v| VerifyState {
        settings: VerifySettings { every: v.every, sources: v.sources.clone(), uplinks: v.uplinks.clone() },
        schedule: Schedule::new(v.every, Instant::now()),
        probes: ProbeSources::new(v.sources.clone()),
        tx: verify_tx,
        running: None,
    });
    let mut w = Watcher {
        kernel,
        settings,
        host,
        ifnames: BTreeMap::new(),
        sink,
        clock: KernelClock::now(),
        reader: ReaderStats::default(),
        record_latency: LatencyHistogram::default(),
        alert_latency: LatencyHistogram::default(),
        unflushed: Vec::new(),
        losses: LossTracker::default(),
        inventory: None,
        docker_connected: false,
        docker_problem: None,
        alerter,
        pending: Vec::new(),
        attempts: AttemptTracker::new(blocked_after_ns),
        unbound_attempts: 0,
        attempts_untracked: 0,
        answers_received: 0,
        verify,
        probe_records: 0,
    };
    // Docker first: its networks decide which bridges to watch.
    let mut docker_rx = match w.settings.docker_endpoint.clone() {
        Some(endpoint) => {
            let (tx, mut rx) = watch::channel(DockerState::Starting);
            tokio::spawn(docker::run(endpoint, tx));
            let _ = tokio::time::timeout(DOCKER_FIRST_ANSWER, rx.wait_for(|s| *s != DockerState::Starting)).await;
            let state = rx.borrow_and_update().clone();
            w.docker_changed(state)?;
            Some(rx)
        }
        None => {
            eprintln!("dockexpose: --no-docker: running without container identity");
            None
        }
    };
    // The operator's bridges must attach, or nothing is watched where they expect.
    for bridge in w.settings.explicit_bridges.clone() {
        w.attach_bridge(&bridge)?;
    }
    w.reconcile_bridges();
    // The operator's uplinks must attach (a bridge: its ports), or attempts they
    // expect to see are missed.
    if let UplinkSelection::Given(_) = &w.settings.uplinks {
        for uplink in w.desired_uplinks() {
            w.attach_uplink(&uplink)?;
        }
    }
    w.reconcile_uplinks();
    w.sync_prefixes()?;

    let (tx, mut rx) = mpsc::channel::<ring::Batch>(CHANNEL_BATCHES);
    let (stop_reader, reader_stop) = tokio::sync::oneshot::channel();
    let mut reader_task = tokio::spawn(ring::run(continuity.ring(), tx, w.reader.clone(), reader_stop));
    let mut reader_ended = false;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut refresh = interval(HOST_REFRESH);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stats = interval(w.settings.stats_interval.unwrap_or(Duration::from_secs(3600 * 24 * 365)));
    stats.tick().await;

    let watched: Vec<&str> = w.kernel.bridges().collect();
    let uplinks: Vec<&str> = w.kernel.uplinks().collect();
    match w.kernel.conntrack() {
        ConntrackAccess::Kfuncs => eprintln!(
            "dockexpose: conntrack consulted from the bridge program: exact host ports on every uplink, fragments told by the kernel's own state"
        ),
        ConntrackAccess::Unavailable(why) => eprintln!(
            "warning: conntrack cannot be consulted ({}): host ports come from the uplink programs and the published bindings; a first fragment cut before the TCP flags is counted as bridge_uninspected",
            human::escape_untrusted(why)
        ),
    }
    eprintln!(
        "dockexpose: watching {} ({}); uplinks: {}; JSON log: {}",
        if watched.is_empty() { "no bridge yet".to_string() } else { watched.join(", ") },
        w.bridge_source(),
        match w.settings.uplinks {
            UplinkSelection::Off(why) => why.to_string(),
            UplinkSelection::Auto if uplinks.is_empty() => {
                "none found (no up interface with a global address that is not a container bridge); picked up when one appears".to_string()
            }
            _ if uplinks.is_empty() => "none yet".to_string(),
            _ => uplinks.join(", "),
        },
        args.json.as_deref().map_or("off".into(), |p| if p == Path::new("-") { "stdout".into() } else { p.display().to_string() }),
    );
    if let Some(v) = &w.verify {
        eprintln!(
            "dockexpose: verify: every published port now and every {}, new published ports {} s after Docker publishes them; probes from {} on {} (their records are not outside connections)",
            humantime::format_duration(v.settings.every),
            verifyd::DEBOUNCE.as_secs(),
            v.settings.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
            if v.settings.uplinks.is_empty() { "the uplinks verify chooses".to_string() } else { v.settings.uplinks.join(", ") },
        );
    }
    // Attached and reading: a Type=notify service is now started.
    state::notify::tell("READY=1");
    // SIGINT/SIGTERM while a verify run goes: wait for it to clean up, then stop.
    let mut stopping: Option<(&'static str, Instant)> = None;

    let outcome = loop {
        let verify_due = if stopping.is_some() { None } else { w.verify.as_ref().and_then(|v| v.schedule.due()) };
        tokio::select! {
            Some(batch) = rx.recv() => {
                w.handle_batch(&batch)?;
                // Take the rest of a burst now; flushed below, once.
                for _ in 0..BATCHES_PER_FLUSH {
                    let Ok(batch) = rx.try_recv() else { break };
                    w.handle_batch(&batch)?;
                }
            }
            Some(state) = next_docker_state(&mut docker_rx) => w.docker_changed(state)?,
            _ = refresh.tick() => {
                w.refresh_host()?;
                continuity.refreshed(&mut w.kernel);
            }
            _ = stats.tick() => w.report_counters("counters")?,
            Some(result) = next_verify_result(&mut verify_rx) => w.verify_done(result)?,
            _ = sleep_until(verify_due) => w.start_verify(),
            _ = sigint.recv() => {
                if !w.verify_running() {
                    break Ok("SIGINT");
                }
                stopping.get_or_insert(("SIGINT", Instant::now() + VERIFY_STOP_WAIT));
            }
            _ = sigterm.recv() => {
                if !w.verify_running() {
                    break Ok("SIGTERM");
                }
                stopping.get_or_insert(("SIGTERM", Instant::now() + VERIFY_STOP_WAIT));
            }
            res = &mut reader_task => {
                reader_ended = true;
                break match res {
                    Ok(Ok(_)) => Err(Error::RingBuffer(std::io::Error::other("the reader stopped"))),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(Error::RingBuffer(std::io::Error::other(e))),
                };
            }
        }
        // Before waiting again, everything seen so far is written out; then (only
        // then) its ring space is released.
        w.flush()?;
        continuity.flushed(!w.pending.is_empty());
        if let Some((reason, deadline)) = stopping {
            if !w.verify_running() {
                break Ok(reason);
            }
            if Instant::now() >= deadline {
                eprintln!("warning: the verify run in progress did not finish within {} s; stopping without its results", VERIFY_STOP_WAIT.as_secs());
                break Ok(reason);
            }
        }
    };
    // What the reader handed over, then what is still in the ring, gets written.
    state::notify::tell("STOPPING=1");
    let _ = stop_reader.send(());
    let cursor = if reader_ended { None } else { reader_task.await.ok().and_then(|r| r.ok()) };
    while let Ok(batch) = rx.try_recv() {
        w.handle_batch(&batch)?;
    }
    if let Some(cursor) = cursor {
        let rest = ring::drain_rest(&continuity.ring(), cursor, &w.reader);
        w.handle_batch(&rest)?;
    }
    w.release_pending(true)?;
    w.flush()?;
    if !w.attempts.is_empty() {
        eprintln!("dockexpose: {} attempts were still within their --blocked-after window at exit: no verdict", w.attempts.len());
    }
    let reason = outcome?;
    for line in w.alerter.flush(Instant::now() + w.settings.alert_window) {
        eprintln!("{line}");
    }
    w.report_counters("final counters")?;
    let bridges: Vec<String> = w.kernel.bridges().chain(w.kernel.uplinks()).map(str::to_string).collect();
    let kept = continuity.pin_dir().filter(|_| !continuity.detach_on_exit).map(|d| d.dir.display().to_string());
    continuity.stop(&mut w.kernel, &mut w.sink, reason)?;
    drop(w);
    let list = if bridges.is_empty() { "nothing".into() } else { bridges.join(", ") };
    match kept {
        Some(dir) => eprintln!("dockexpose: {reason}: the kernel side stays attached to {list} and keeps recording (pinned at {dir}; the next start resumes it, `dockexpose cleanup` removes it)"),
        None => eprintln!("dockexpose: {reason}: detached from {list}"),
    }
    Ok(())
}

/// What to change so that the attached interfaces become the wanted ones that exist.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// To detach, with whether the interface is gone (rather than no longer wanted).
    detach: Vec<(String, bool)>,
    attach: Vec<String>,
}

impl Plan {
    fn new(attached: &[String], want: &BTreeSet<String>, exists: impl Fn(&str) -> bool) -> Self {
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

/// The next Docker state, or never when Docker is off.
async fn next_docker_state(rx: &mut Option<watch::Receiver<DockerState>>) -> Option<DockerState> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Watcher {
    fn bridge_source(&self) -> &'static str {
        match (self.inventory.is_some(), self.settings.explicit_bridges.is_empty()) {
            (true, true) => "Docker's bridge networks, followed live",
            (true, false) => "as given, plus Docker's bridge networks",
            (false, true) => "bridges found on the host; new ones are picked up",
            (false, false) => "as given",
        }
    }

    /// Bridges that should be watched now.
    fn desired_bridges(&self) -> BTreeSet<String> {
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
    fn drop_recreated(&mut self, attached: Vec<String>) -> Vec<String> {
        let mut kept = Vec::new();
        for name in attached {
            let now = interfaces::ifindex(&name);
            if now.is_some() && now != self.kernel.attached_ifindex(&name) {
                eprintln!("dockexpose: {} was recreated (new ifindex); attaching again", human::escape_untrusted(&name));
                self.kernel.detach_bridge(&name);
                self.kernel.detach_uplink(&name);
                self.ifnames.retain(|_, n| n != &name);
            } else {
                kept.push(name);
            }
        }
        kept
    }

    /// Attaches to desired bridges that exist, detaches from the others.
    fn reconcile_bridges(&mut self) {
        let attached: Vec<String> = self.kernel.bridges().map(str::to_string).collect();
        let attached = self.drop_recreated(attached);
        let plan = Plan::new(&attached, &self.desired_bridges(), interfaces::exists);
        for (b, gone) in plan.detach {
            self.kernel.detach_bridge(&b);
            self.ifnames.retain(|_, n| n != &b);
            let why = if gone {
                "disappeared; no longer watched (attached again if it comes back)"
            } else {
                "is no longer a Docker network; no longer watched"
            };
            eprintln!("dockexpose: bridge {} {why}", human::escape_untrusted(&b));
        }
        for b in plan.attach {
            match self.attach_bridge(&b) {
                Ok(()) => eprintln!("dockexpose: bridge {} watched", human::escape_untrusted(&b)),
                Err(e) => eprintln!("warning: bridge {}: {e}", human::escape_untrusted(&b)),
            }
        }
    }

    /// Uplinks that should be watched now.
    fn desired_uplinks(&self) -> BTreeSet<String> {
        let container_bridges: BTreeSet<String> = self.desired_bridges();
        let mut want: BTreeSet<String> = match &self.settings.uplinks {
            UplinkSelection::Off(_) => BTreeSet::new(),
            // A bridge given as an uplink stands for its ports, where outside traffic arrives.
            UplinkSelection::Given(list) => list
                .iter()
                .flat_map(|u| if interfaces::is_bridge(u) { interfaces::bridge_ports(u) } else { vec![u.clone()] })
                .collect(),
            UplinkSelection::Auto => self.host.uplink_candidates(&container_bridges).into_iter().map(|u| u.name).collect(),
        };
        want.retain(|u| !self.kernel.bridges().any(|b| b == u));
        want
    }

    fn attach_uplink(&mut self, name: &str) -> Result<()> {
        let layer = interfaces::link_layer(name);
        let mode = self.kernel.attach_uplink(name, layer, self.settings.uplink_hook)?;
        if let Ok(idx) = nix::net::if_::if_nametoindex(name) {
            self.ifnames.insert(idx, name.to_string());
        }
        let how = match mode {
            UplinkAttachMode::Native => "XDP native",
            UplinkAttachMode::Generic => "XDP generic: the driver has no native XDP",
            UplinkAttachMode::Tcx => "TCX ingress",
            UplinkAttachMode::Adopted => "the previous daemon's pinned link, program replaced",
        };
        let kind = match interfaces::bridge_of(name) {
            Some(bridge) => format!("a port of the bridged uplink {}, ", human::escape_untrusted(&bridge)),
            None => String::new(),
        };
        eprintln!(
            "dockexpose: uplink {} watched for attempts ({kind}{}; {how})",
            human::escape_untrusted(name),
            layer.describe()
        );
        Ok(())
    }

    /// Attaches to desired uplinks that exist, detaches from the others.
    fn reconcile_uplinks(&mut self) {
        let attached: Vec<String> = self.kernel.uplinks().map(str::to_string).collect();
        let attached = self.drop_recreated(attached);
        let plan = Plan::new(&attached, &self.desired_uplinks(), interfaces::exists);
        for (u, gone) in plan.detach {
            self.kernel.detach_uplink(&u);
            self.ifnames.retain(|_, n| n != &u);
            let why = if gone {
                "disappeared; no longer watched (attached again if it comes back)"
            } else {
                "is no longer an uplink (no global address)"
            };
            eprintln!("dockexpose: uplink {} {why}", human::escape_untrusted(&u));
        }
        for u in plan.attach {
            if let Err(e) = self.attach_uplink(&u) {
                eprintln!("warning: uplink {}: {e}", human::escape_untrusted(&u));
            }
        }
    }

    /// Verdicts on attempts whose window closed: blocked, or reached through a proxy.
    fn decide_attempts(&mut self) -> Result<()> {
        let clock = self.clock;
        for verdict in self.attempts.expire(clock.ktime_now()) {
            let rec = correlate::verdict_record(&verdict, |k| clock.wall(k), self.inventory.as_ref());
            // Verdicts wait for their window by design: no latency sample.
            self.write(&rec, None, None)?;
        }
        let untracked = self.attempts.take_untracked();
        self.attempts_untracked += untracked;
        if untracked > 0 {
            eprintln!(
                "WARNING: {untracked} attempts got no verdict: more than {} awaited one at once (a flood?); they are in the JSON log as attempted",
                crate::verdict::MAX_TRACKED
            );
        }
        Ok(())
    }

    /// Takes in what Docker says now; tells the operator when that changes.
    fn docker_changed(&mut self, state: DockerState) -> Result<()> {
        match state {
            DockerState::Starting => {}
            DockerState::Connected(inv) => {
                if !self.docker_connected {
                    eprintln!(
                        "dockexpose: Docker inventory: {} running containers on {} bridge networks",
                        inv.containers.len(),
                        inv.networks.len()
                    );
                }
                self.docker_connected = true;
                self.docker_problem = None;
                self.kernel.sync_published_ports(&inv.published_host_ports())?;
                if let Some(v) = &mut self.verify {
                    let new = v.schedule.inventory(verifyd::published_ports(&inv), Instant::now());
                    if !new.is_empty() {
                        eprintln!(
                            "dockexpose: verify: {} published; verified within {} s",
                            RunKind::NewPorts(new).describe(),
                            verifyd::DEBOUNCE.as_secs()
                        );
                    }
                }
                self.inventory = Some(inv);
                self.reconcile_bridges();
                self.sync_prefixes()?;
                self.release_pending(false)?;
            }
            DockerState::Unavailable(reason) => {
                if self.docker_problem.as_ref() != Some(&reason) {
                    let keep = if self.inventory.is_some() {
                        "keeping the kernel side and the last known inventory; reconnecting with backoff"
                    } else {
                        "running without container identity (records carry container: null); retrying in the background"
                    };
                    eprintln!("warning: {}; {keep}", human::escape_untrusted(&reason));
                    self.docker_problem = Some(reason);
                }
                self.docker_connected = false;
            }
        }
        Ok(())
    }

    fn attach_bridge(&mut self, name: &str) -> Result<()> {
        self.kernel.attach_bridge(name)?;
        if let Ok(idx) = nix::net::if_::if_nametoindex(name) {
            self.ifnames.insert(idx, name.to_string());
        }
        Ok(())
    }

    fn sync_prefixes(&mut self) -> Result<()> {
        let bridges: Vec<&str> = self.kernel.bridges().collect();
        let table = local::source_table(&self.host, bridges, &self.settings.trusted);
        self.kernel.sync_prefixes(&table)
    }

    fn handle_batch(&mut self, batch: &[ConnEvent]) -> Result<()> {
        for ev in batch {
            self.handle(ev)?;
        }
        Ok(())
    }

    fn handle(&mut self, ev: &ConnEvent) -> Result<()> {
        let mut obs = match Observation::from_event(ev) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("warning: undecodable kernel record dropped: {}", e.0);
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

    fn attempt_is_on_a_binding(&self, obs: &Observation) -> bool {
        self.inventory.as_ref().is_none_or(|inv| inv.published_at(obs.dst, obs.dst_port, obs.proto).is_some())
    }

    /// A reach of an address on a Docker network that no known container holds: most
    /// likely a container that just started, which the next inventory will name.
    fn awaits_identity(&self, obs: &Observation) -> bool {
        let Some(inv) = self.inventory.as_ref().filter(|_| self.docker_connected) else { return false };
        obs.stage == Stage::Reached
            && inv.container_at(obs.dst).is_none()
            && inv.networks.iter().flat_map(|n| &n.subnets).any(|p| p.contains(obs.dst))
    }

    /// Writes the records waiting for identity whose container is now known, or whose
    /// time is up (all of them with `all`).
    fn release_pending(&mut self, all: bool) -> Result<()> {
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

    fn emit(&mut self, obs: &Observation, iface: &str) -> Result<()> {
        let rec = correlate::record(obs, obs.stage, self.clock.wall(obs.ktime_ns), iface, self.inventory.as_ref());
        self.write(&rec, Some(obs.ktime_ns), Some(obs))
    }

    /// Pushes the audit log's buffer to the file; the records in it are now written.
    fn flush(&mut self) -> Result<()> {
        self.sink.flush()?;
        let now = self.clock.ktime_now();
        for t in self.unflushed.drain(..) {
            self.record_latency.record(now.saturating_sub(t) / 1000);
        }
        Ok(())
    }

    /// One record out: the audit log, the connection line, the alert. `seen_ns`: the
    /// kernel timestamp of the packet, for the latency figures.
    /// `kernel`: the kernel record it comes from (its boot id, cpu and sequence number
    /// go with it, so that a duplicate after a crash is told).
    fn write(&mut self, rec: &Record, seen_ns: Option<u64>, kernel: Option<&Observation>) -> Result<()> {
        match kernel {
            Some(obs) => self.sink.write_record(&Stamped::of(rec, obs))?,
            None => self.sink.write_record(rec)?,
        }
        let latency_us = |clock: &KernelClock| seen_ns.map(|t| clock.ktime_now().saturating_sub(t) / 1000);
        if let Some(t) = seen_ns {
            // Measured once the buffer reaches the file (`flush`).
            self.unflushed.push(t);
        }
        if !self.settings.quiet {
            eprintln!("{}", human::connection_line(rec));
        }
        if let Some(alert) = self.alerter.observe(rec, Instant::now()) {
            eprintln!("{alert}");
            if let Some(us) = latency_us(&self.clock) {
                self.alert_latency.record(us);
            }
        }
        Ok(())
    }

    fn verify_running(&self) -> bool {
        self.verify.as_ref().is_some_and(|v| v.running.is_some())
    }

    /// Starts the verify run that is due, on a blocking thread (it sleeps between
    /// probes); its result comes back over the channel. One run at a time.
    fn start_verify(&mut self) {
        let Some(v) = self.verify.as_mut() else { return };
        let Some(inventory) = self.inventory.clone() else { return };
        let Some(kind) = v.schedule.start(Instant::now()) else { return };
        // Ports gone again since they were queued are not probed.
        let kind = match kind {
            RunKind::NewPorts(ports) => {
                let now = verifyd::published_ports(&inventory);
                RunKind::NewPorts(ports.into_iter().filter(|p| now.contains(p)).collect())
            }
            k => k,
        };
        if kind == RunKind::NewPorts(BTreeSet::new()) {
            v.schedule.finished();
            return;
        }
        let (uplinks, sources, ports, tx) = (v.settings.uplinks.clone(), v.settings.sources.clone(), kind.ports(), v.tx.clone());
        let probed = inventory.clone();
        v.probes.begin();
        v.running = Some((kind, inventory));
        tokio::task::spawn_blocking(move || {
            let result = verify::prepare(&uplinks, &probed, &ports, &sources)
                .and_then(|prepared| prepared.execute(verifyd::RATE, verifyd::WINDOW))
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(result);
        });
    }

    /// A verify run ended: one `verified` record per probe, alerts for ports found
    /// reachable, a summary line.
    fn verify_done(&mut self, result: VerifyResult) -> Result<()> {
        let Some(v) = self.verify.as_mut() else { return Ok(()) };
        let Some((kind, inventory)) = v.running.take() else { return Ok(()) };
        v.schedule.finished();
        v.probes.end(Instant::now());
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                eprintln!("warning: verify ({}) failed: {}; trying again at the next run", kind.describe(), human::escape_untrusted(&e));
                return Ok(());
            }
        };
        for warning in &outcome.warnings {
            eprintln!("{warning}");
        }
        for r in &outcome.probes {
            let rec = verifyd::verified_record(r, Some(&inventory));
            self.sink.write_record(&rec)?;
            if !self.settings.quiet {
                eprintln!("{}", human::connection_line(&rec));
            }
            if let Some(alert) = self.alerter.verified(&rec, Some(r.target.port.container_port), Instant::now()) {
                eprintln!("{alert}");
            }
        }
        eprintln!("{}", verifyd::summary_line(&kind, &outcome));
        Ok(())
    }

    /// Re-reads interfaces and addresses: drops vanished bridges, picks up new ones,
    /// keeps the local prefixes current, closes alert windows, and warns about loss.
    fn refresh_host(&mut self) -> Result<()> {
        self.host = HostSnapshot::read()?;
        self.reconcile_bridges();
        self.reconcile_uplinks();
        self.sync_prefixes()?;
        self.release_pending(false)?;
        self.decide_attempts()?;
        for line in self.alerter.flush(Instant::now()) {
            eprintln!("{line}");
        }
        self.warn_about_loss()
    }

    fn counters(&self) -> Result<PipelineCounters> {
        Ok(PipelineCounters {
            kernel: self.kernel.counters()?,
            reader_lost: self.reader.lost(),
            reader_wakeups: self.reader.wakeups(),
            records_read: self.reader.records(),
            record_latency: self.record_latency.summary(),
            alert_latency: self.alert_latency.summary(),
            unbound_attempts: self.unbound_attempts,
            answers_received: self.answers_received,
            attempts_untracked: self.attempts_untracked,
            probe_records: self.probe_records,
        })
    }

    fn warn_about_loss(&mut self) -> Result<()> {
        let now = self.counters()?;
        for w in self.losses.warnings(&now) {
            eprintln!("{w}");
        }
        Ok(())
    }

    fn report_counters(&mut self, label: &str) -> Result<()> {
        let now = self.counters()?;
        eprintln!("dockexpose: {label}: {}", now.format());
        self.warn_about_loss()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_detach_the_gone_and_unwanted_and_attach_the_new_that_exist() {
        let attached = vec!["docker0".to_string(), "br-old".to_string(), "br-gone".to_string()];
        let want: BTreeSet<String> = ["docker0", "br-gone", "br-new", "br-later"].iter().map(|s| s.to_string()).collect();
        let exists = |n: &str| n != "br-gone" && n != "br-later";
        let plan = Plan::new(&attached, &want, exists);
        assert_eq!(plan.detach, vec![("br-old".to_string(), false), ("br-gone".to_string(), true)]);
        assert_eq!(plan.attach, vec!["br-new".to_string()], "br-later waits until its interface exists");
    }
}
