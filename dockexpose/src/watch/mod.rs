//! `dockexpose watch`: the daemon loop.
//!
//! Start-up validates everything the operator gave (fail early, with the fix), loads
//! and attaches the kernel programs, then one task reads the ring buffer while this
//! loop runs the connection stage (`stage`), whose records go to every output through
//! one fan-out (`output::fanout`). The loop also keeps the attachments current
//! (`attach`), answers `dockexpose status` and metrics scrapes (`status`), reloads the
//! configuration on SIGHUP and reopens the audit log on SIGUSR1.
//!
//! - `settings`: the options, validated;
//! - `attach`: bridges and uplinks, attached and detached as the host changes;
//! - `stage`: kernel records -> connection records;
//! - `verifying`: `--verify-every` runs;
//! - `health`: counters, loss warnings, the status report.

mod attach;
mod drifting;
pub mod ground;
mod health;
mod intent;
mod settings;
mod stage;
mod verifying;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clap::ArgMatches;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    time::{interval, MissedTickBehavior},
};

use self::{
    settings::{Settings, UplinkSelection, VerifySettings},
    verifying::{next_verify_result, VerifyResult, VerifyState},
};
use crate::{
    cli::WatchArgs,
    config::{self, FileConfig},
    error::{Error, Result},
    host::{interfaces::HostSnapshot, privileges},
    inventory::{
        docker::{self, DockerState},
        model::Inventory,
    },
    kernel::{
        event::KernelClock,
        loader::{ConntrackAccess, Kernel},
        reader::ReaderStats,
        ring,
    },
    output::{
        alerts::{Alert, HealthCondition},
        audit::AuditLog,
        fanout::{AlertOut, AlertStage, Outputs, StderrAlerts},
        human,
        sinks::{self, SinkHandle, SinksConfig},
    },
    state::{self, continuity::ServiceSettings, pending::PendingRecords},
    stats::LossTracker,
    status::{self, Query},
    verdict::AttemptTracker,
    verify::daemon::{self as verifyd, ProbeSources, RunKind, Schedule},
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
const MAX_PENDING: usize = dockexpose_common::PENDING_MAX as usize;
/// How often an audit log that failed is tried again.
const AUDIT_RETRY: Duration = Duration::from_millis(500);
/// How long start-up waits for Docker's first answer before choosing bridges.
const DOCKER_FIRST_ANSWER: Duration = Duration::from_secs(3);
/// How long shutdown waits for a verify run in progress to finish and clean up.
const VERIFY_STOP_WAIT: Duration = Duration::from_secs(20);
/// Questions from the status and metrics servers waiting for the loop.
const QUERY_QUEUE: usize = 16;

/// The configuration as loaded, kept for SIGHUP.
struct ConfigState {
    /// The command line (and environment) as given: it keeps winning over the file.
    cli: WatchArgs,
    matches: ArgMatches,
    /// The effective options and sinks now.
    effective: WatchArgs,
    sinks: SinksConfig,
}

/// An alert sink's queue, as the fan-out sees it.
struct QueuedSink(std::rc::Rc<SinkHandle>);

impl AlertOut for QueuedSink {
    fn alert(&mut self, alert: &std::sync::Arc<Alert>) {
        self.0.offer(alert);
    }
}

/// The running watcher's state outside the kernel.
struct Watcher {
    kernel: Kernel,
    settings: Settings,
    host: HostSnapshot,
    /// ifindex -> interface name, for the records.
    ifnames: BTreeMap<u32, String>,
    /// How each uplink is attached ("tcx", "xdp native", "xdp generic").
    uplink_modes: BTreeMap<String, &'static str>,
    outputs: Outputs,
    /// The alert sinks behind the fan-out's queues (for their figures).
    sinks: Vec<std::rc::Rc<SinkHandle>>,
    clock: KernelClock,
    reader: ReaderStats,
    losses: LossTracker,
    /// When a loss was last noticed (status: degraded for a while after).
    last_loss: Option<Instant>,
    /// Last inventory Docker gave; kept while Docker is unreachable.
    inventory: Option<Inventory>,
    inventory_at: Option<Instant>,
    docker_connected: bool,
    /// The last Docker problem told to the operator (each is said once).
    docker_problem: Option<String>,
    /// Records waiting (until the deadline) for the inventory to know their container.
    pending: PendingRecords,
    /// Ring bytes not yet released to the kernel (status).
    ring_unreleased: u64,
    /// Attempts awaiting their verdict.
    attempts: AttemptTracker,
    /// Attempts at a published port number on an address it is not bound to.
    unbound_attempts: u64,
    /// Attempts that got no verdict: the tracker was full.
    attempts_untracked: u64,
    /// Local and trusted prefixes the kernel's tries do not hold (over their bound).
    prefixes_left_out: usize,
    answers_received: u64,
    /// `--verify-every`: None when off.
    verify: Option<VerifyState>,
    /// The firewall's word, read off the loop.
    intent: intent::IntentState,
    /// Kernel records of the daemon's own probes: not written.
    probe_records: u64,
    config: ConfigState,
    started: Instant,
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The effective options: the command line over the file (`--config`, or the
/// default path when it exists).
fn effective(cli: &WatchArgs, matches: &ArgMatches) -> Result<(WatchArgs, SinksConfig, Option<PathBuf>)> {
    let loaded = FileConfig::load(cli.config.as_deref()).map_err(|e| Error::Config(e.to_string()))?;
    let (path, file) = match loaded {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };
    let args = config::merge(cli, matches, &file).map_err(Error::Config)?;
    let sinks = config::sinks(&args, &file);
    Ok((args, sinks, path))
}

/// Starts the alert sinks; journald by default when stderr is the journal.
fn start_sinks(config: &SinksConfig) -> Result<Vec<std::rc::Rc<SinkHandle>>> {
    let mut config = config.clone();
    if config.journald.is_none() && sinks::journald::stderr_is_journal() {
        config.journald = Some(Default::default());
    }
    // lead: json_format from settings
    let formatter = crate::output::formats::Formatter::new(
        crate::output::formats::JsonFormat::Native,
        crate::output::formats::Observer::this_host(),
    );
    let handles = sinks::start(&config, &formatter).map_err(|e| Error::Config(e.to_string()))?;
    Ok(handles.into_iter().map(std::rc::Rc::new).collect())
}

/// Where alerts go: stderr, then every sink. When stderr is the journal and the
/// journald sink writes there too, stderr is left out (one entry per alert, the
/// structured one).
fn alert_outs(sinks: &[std::rc::Rc<SinkHandle>]) -> Vec<Box<dyn AlertOut>> {
    let journal_twice = sinks::journald::stderr_is_journal() && sinks.iter().any(|s| s.name().starts_with("journald"));
    let mut outs: Vec<Box<dyn AlertOut>> = Vec::new();
    if !journal_twice {
        outs.push(Box::new(StderrAlerts));
    }
    outs.extend(sinks.iter().map(|s| Box::new(QueuedSink(s.clone())) as Box<dyn AlertOut>));
    outs
}

/// `dockexpose watch --print-config`: the effective configuration, as a file.
pub fn print_config(cli: &WatchArgs, matches: &ArgMatches) -> Result<()> {
    let (args, sinks, path) = effective(cli, matches)?;
    let mut shown = config::effective_file(&args, &sinks);
    // Header values are credentials (Authorization): never printed.
    for w in &mut shown.sinks.webhook {
        for v in w.headers.values_mut() {
            *v = "<redacted>".into();
        }
    }
    let text = toml::to_string(&shown).map_err(|e| Error::Config(e.to_string()))?;
    crate::say_out!(
        "# the effective configuration: command line > environment > {} > defaults",
        path.map_or_else(|| format!("(no file; {} does not exist)", config::DEFAULT_PATH), |p| p.display().to_string())
    );
    crate::output::console::stdout_text(format_args!("{text}"));
    Ok(())
}

pub async fn run(cli: WatchArgs, matches: ArgMatches) -> Result<()> {
    if cli.print_config {
        return print_config(&cli, &matches);
    }
    let (args, sink_config, config_path) = effective(&cli, &matches)?;
    let host = HostSnapshot::read()?;
    let settings = settings::validate(&args, &host)?;
    let metrics_addr = config::metrics_addr(&args).map_err(Error::Config)?;
    let mut audit = AuditLog::open(args.json.as_deref(), settings::rotation(&args))?;
    privileges::check()?;
    let sinks = start_sinks(&sink_config)?;
    // Continuity (state/): the lock, the pinned kernel side adopted or created, the
    // start records.
    let service = ServiceSettings::from_args(&args.service);
    let (kernel, mut continuity) = state::continuity::start(&service, settings.kernel, &mut audit)?;

    let blocked_after_ns = settings.blocked_after_ns;
    let (verify_tx, verify_rx) = mpsc::unbounded_channel::<VerifyResult>();
    let mut verify_rx = settings.verify.is_some().then_some(verify_rx);
    let verify = settings.verify.as_ref().map(|v| VerifyState {
        settings: VerifySettings { every: v.every, sources: v.sources.clone(), uplinks: v.uplinks.clone() },
        schedule: Schedule::new(v.every, Instant::now()),
        probes: ProbeSources::new(v.sources.clone()),
        tx: verify_tx,
        running: None,
        debounce: Default::default(),
        run_causes: Vec::new(),
        verdicts: Default::default(),
    });
    let (intent_state, mut intent_rx) = intent::IntentState::new(args.intent_root.clone());
    let clock = KernelClock::now();
    let outputs = Outputs::new(audit, settings.quiet, AlertStage::new(settings.alert_window, alert_outs(&sinks)), clock);
    let mut w = Watcher {
        kernel,
        settings,
        host,
        ifnames: BTreeMap::new(),
        uplink_modes: BTreeMap::new(),
        outputs,
        sinks,
        clock,
        reader: ReaderStats::default(),
        losses: LossTracker::default(),
        last_loss: None,
        inventory: None,
        inventory_at: None,
        docker_connected: false,
        docker_problem: None,
        pending: PendingRecords::new(continuity.take_pending_map(), MAX_PENDING),
        ring_unreleased: 0,
        attempts: AttemptTracker::new(blocked_after_ns),
        unbound_attempts: 0,
        attempts_untracked: 0,
        prefixes_left_out: 0,
        answers_received: 0,
        verify,
        intent: intent_state,
        probe_records: 0,
        config: ConfigState { cli, matches, effective: args.clone(), sinks: sink_config },
        started: Instant::now(),
    };
    // The ground: ruleset, link and address changes, each a reason to read the
    // firewall's word again (and, with --verify-every, to verify again).
    let (ground_tx, mut ground_rx) = mpsc::unbounded_channel();
    for line in ground::spawn(ground_tx, std::process::id(), w.verify.is_some()) {
        crate::say!("dockexpose: {line}");
    }
    let first_reading = w.intent.read_now();
    w.intent_read(first_reading);

    if let Some(p) = &config_path {
        crate::say!("dockexpose: configuration from {} (command line and DOCKEXPOSE_* win over it)", p.display());
    }
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
            crate::say!("dockexpose: --no-docker: running without container identity");
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
    w.sync_prefixes();
    w.handle_left_pending()?;

    // The status socket and the metrics: questions come to this loop.
    let (query_tx, mut query_rx) = mpsc::channel::<Query>(QUERY_QUEUE);
    let _status_socket = match status::server::serve_status(&args.status_socket, query_tx.clone()) {
        Ok(s) => {
            crate::say!("dockexpose: `dockexpose status` answered on {}", args.status_socket.display());
            Some(s)
        }
        Err(e) => {
            crate::say!("warning: no status socket ({e}); `dockexpose status` cannot ask this daemon, detection goes on");
            None
        }
    };
    if let Some(addr) = metrics_addr {
        let bound = status::server::serve_metrics(addr, query_tx.clone()).await.map_err(Error::Config)?;
        crate::say!("dockexpose: Prometheus metrics on http://{bound}/metrics (also /healthz, /readyz)");
    }
    drop(query_tx);

    let (tx, mut rx) = mpsc::channel::<ring::Batch>(CHANNEL_BATCHES);
    let (stop_reader, reader_stop) = tokio::sync::oneshot::channel();
    let mut reader_task = tokio::spawn(ring::run(continuity.ring(), tx, w.reader.clone(), reader_stop));
    let mut reader_ended = false;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(Error::Signals)?;
    let mut refresh = interval(HOST_REFRESH);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stats = interval(w.settings.stats_interval.unwrap_or(Duration::from_secs(3600 * 24 * 365)));
    stats.tick().await;

    let watched: Vec<&str> = w.kernel.bridges().collect();
    let uplinks: Vec<&str> = w.kernel.uplinks().collect();
    crate::say!("dockexpose: {}", w.kernel.features().line());
    // A defence this kernel cannot give is a health alert (condition kernel_limits),
    // printed and sent to the sinks like any other.
    for (feature, limit) in w.kernel.features().limits() {
        w.outputs.alerts.health_failing(HealthCondition::KernelLimits, Some(feature), format!("dockexpose: this kernel: {limit}"));
    }
    match w.kernel.conntrack() {
        ConntrackAccess::Kfuncs => crate::say!(
            "dockexpose: conntrack consulted from the bridge program: exact host ports on every uplink, fragments told by the kernel's own state"
        ),
        ConntrackAccess::Unavailable(why) => crate::say!(
            "warning: conntrack cannot be consulted ({}): host ports come from the uplink programs and the published bindings; a first fragment cut before the TCP flags is counted as bridge_uninspected",
            human::escape_untrusted(why)
        ),
    }
    crate::say!(
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
    for s in &w.sinks {
        crate::say!("dockexpose: alerts also go to {}", human::escape_untrusted(s.name()));
    }
    if let Some(v) = &w.verify {
        crate::say!(
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
        let verify_due = if stopping.is_some() {
            None
        } else {
            w.verify.as_ref().and_then(|v| v.schedule.due()).map(|due| w.drift_due().map_or(due, |d| d.min(due)))
        };
        tokio::select! {
            // While the audit log holds all it may (a full disk), records wait in the ring.
            Some(batch) = rx.recv(), if !w.outputs.audit.full() => {
                w.handle_batch(&batch)?;
                // Take the rest of a burst now; flushed below, once.
                for _ in 0..BATCHES_PER_FLUSH {
                    let Ok(batch) = rx.try_recv() else { break };
                    w.handle_batch(&batch)?;
                }
            }
            Some(state) = next_docker_state(&mut docker_rx) => w.docker_changed(state)?,
            Some(book) = intent_rx.recv() => w.intent_read(book),
            Some(cause) = ground_rx.recv() => w.ground_moved(cause),
            _ = refresh.tick() => {
                w.intent.tick(Instant::now());
                w.refresh_host()?;
                continuity.refreshed(&mut w.kernel);
            }
            _ = stats.tick() => w.report_counters("counters")?,
            Some(query) = query_rx.recv() => w.answer(query),
            Some(result) = next_verify_result(&mut verify_rx) => w.verify_done(result)?,
            _ = sleep_until(verify_due) => w.start_verify(),
            _ = sighup.recv() => {
                w.reopen_audit_log("SIGHUP");
                w.reload().await;
            }
            _ = sigusr1.recv() => w.reopen_audit_log("SIGUSR1"),
            // The audit log failed: try it again (the flush below) now and then.
            _ = tokio::time::sleep(AUDIT_RETRY), if w.outputs.audit.holding() => {}
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
        w.flush();
        let holding = w.outputs.audit.holding();
        continuity.flushed(holding);
        w.pending.flushed(!holding);
        w.ring_unreleased = continuity.unreleased();
        if let Some((reason, deadline)) = stopping {
            if !w.verify_running() {
                break Ok(reason);
            }
            if Instant::now() >= deadline {
                crate::say!("warning: the verify run in progress did not finish within {} s; stopping without its results", VERIFY_STOP_WAIT.as_secs());
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
    w.flush();
    if !w.attempts.is_empty() {
        crate::say!("dockexpose: {} attempts were still within their --blocked-after window at exit: no verdict", w.attempts.len());
    }
    let reason = outcome?;
    w.outputs.tick(Instant::now() + w.settings.alert_window);
    w.report_counters("final counters")?;
    let bridges: Vec<String> = w.kernel.bridges().chain(w.kernel.uplinks()).map(str::to_string).collect();
    let kept = continuity.pin_dir().filter(|_| !continuity.detach_on_exit).map(|d| d.dir.display().to_string());
    continuity.stop(&mut w.kernel, &mut w.outputs.audit, reason)?;
    // Give the sinks a moment to deliver the last alerts.
    let sinks = std::mem::take(&mut w.sinks);
    drop(w);
    for s in sinks {
        if let Ok(s) = std::rc::Rc::try_unwrap(s) {
            s.stop().await;
        }
    }
    let list = if bridges.is_empty() { "nothing".into() } else { bridges.join(", ") };
    match kept {
        Some(dir) => crate::say!("dockexpose: {reason}: the kernel side stays attached to {list} and keeps recording (pinned at {dir}; the next start resumes it, `dockexpose cleanup` removes it)"),
        None => crate::say!("dockexpose: {reason}: detached from {list}"),
    }
    Ok(())
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
    /// Takes in what Docker says now; tells the operator when that changes.
    fn docker_changed(&mut self, state: DockerState) -> Result<()> {
        match state {
            DockerState::Starting => {}
            DockerState::Connected(inv) => {
                if !self.docker_connected {
                    let line = format!(
                        "dockexpose: Docker inventory: {} running containers on {} bridge networks",
                        inv.containers.len(),
                        inv.networks.len()
                    );
                    // After a failure that was said, the recovery is a health alert.
                    if !self.outputs.alerts.health_recovered(HealthCondition::Docker, None, line.clone()) {
                        crate::say!("{line}");
                    }
                }
                self.docker_connected = true;
                self.docker_problem = None;
                self.kernel.sync_published_ports(&inv.published_host_ports())?;
                if let Some(v) = &mut self.verify {
                    let new = v.schedule.inventory(verifyd::published_ports(&inv), Instant::now());
                    if !new.is_empty() {
                        crate::say!(
                            "dockexpose: verify: {} published; verified within {} s",
                            RunKind::NewPorts(new).describe(),
                            verifyd::DEBOUNCE.as_secs()
                        );
                    }
                }
                self.outputs.exposures.sync(&inv);
                self.inventory = Some(inv);
                self.inventory_at = Some(Instant::now());
                self.reconcile_bridges();
                self.sync_prefixes();
                self.release_pending(false)?;
            }
            DockerState::Unavailable(reason) => {
                if self.docker_problem.as_ref() != Some(&reason) {
                    let keep = if self.inventory.is_some() {
                        "keeping the kernel side and the last known inventory; reconnecting with backoff"
                    } else {
                        "running without container identity (records carry container: null); retrying in the background"
                    };
                    let line = format!("warning: {}; {keep}", human::escape_untrusted(&reason));
                    self.outputs.alerts.health_failing(HealthCondition::Docker, None, line);
                    self.docker_problem = Some(reason);
                }
                self.docker_connected = false;
            }
        }
        Ok(())
    }

    /// Pushes the audit log's buffer to the file; what the operator must know about
    /// it (a write failure, once a minute; a recovery) is a health alert.
    fn flush(&mut self) {
        self.outputs.flush();
    }

    /// SIGUSR1 / SIGHUP: logrotate moved the log; write to the path anew.
    fn reopen_audit_log(&mut self, signal: &str) {
        if self.outputs.audit.path().is_none() {
            return;
        }
        match self.outputs.audit.reopen() {
            Some(line) => self.outputs.audit_health(Some(line)),
            None => crate::say!("dockexpose: {signal}: audit log {} reopened", self.outputs.audit.path().map_or(String::new(), |p| p.display().to_string())),
        }
    }

    /// SIGHUP: reads the configuration again and applies what can change without a
    /// restart (trusted networks, alert settings, sinks, rotation). A bad file keeps
    /// the running configuration, and says why.
    async fn reload(&mut self) {
        let (args, sinks, path) = match effective(&self.config.cli, &self.config.matches) {
            Ok(e) => e,
            Err(e) => {
                crate::say!("warning: SIGHUP: the configuration was not reloaded, the running one stays: {e}");
                return;
            }
        };
        let trusted = match settings::trusted(&args.trusted) {
            Ok(t) => t,
            Err(e) => {
                crate::say!("warning: SIGHUP: the configuration was not reloaded, the running one stays: {e}");
                return;
            }
        };
        let restart = config::needs_restart(&self.config.effective, &args);
        let old = config::Reloadable::of(&self.config.effective, &self.config.sinks);
        let new = config::Reloadable::of(&args, &sinks);
        if old.sinks != new.sinks {
            match start_sinks(&sinks) {
                Ok(handles) => {
                    self.outputs.alerts.set_outs(alert_outs(&handles));
                    for s in std::mem::replace(&mut self.sinks, handles) {
                        if let Ok(s) = std::rc::Rc::try_unwrap(s) {
                            s.stop().await;
                        }
                    }
                }
                Err(e) => {
                    crate::say!("warning: SIGHUP: the configuration was not reloaded, the running one stays: {e}");
                    return;
                }
            }
        }
        if old.alert_window != new.alert_window {
            self.settings.alert_window = config::secs(new.alert_window);
            self.outputs.alerts.set_window(self.settings.alert_window);
        }
        self.settings.quiet = new.quiet;
        self.outputs.set_quiet(new.quiet);
        self.outputs.audit.set_rotation(settings::rotation(&args));
        self.settings.trusted = trusted;
        self.sync_prefixes();
        crate::say!(
            "dockexpose: SIGHUP: configuration reloaded{}: {} trusted networks, alert window {} s, {} alert sinks{}",
            path.map_or(String::new(), |p| format!(" from {}", p.display())),
            self.settings.trusted.len(),
            self.settings.alert_window.as_secs(),
            self.sinks.len(),
            if restart.is_empty() { String::new() } else { format!("; changed, applied at the next restart: {}", restart.join(", ")) }
        );
        // What needs a restart stays as it runs, so that it is reported again until then.
        let running = &mut self.config.effective;
        running.trusted = args.trusted;
        running.alert_window = args.alert_window;
        running.quiet = args.quiet;
        running.rotate_size_mb = args.rotate_size_mb;
        running.max_files = args.max_files;
        self.config.sinks = sinks;
    }

    /// Re-reads interfaces and addresses: drops vanished bridges, picks up new ones,
    /// keeps the local prefixes current, closes alert windows, and warns about loss.
    fn refresh_host(&mut self) -> Result<()> {
        self.host = HostSnapshot::read()?;
        self.reconcile_bridges();
        self.reconcile_uplinks();
        self.sync_prefixes();
        self.release_pending(false)?;
        self.decide_attempts()?;
        self.outputs.tick(Instant::now());
        self.warn_about_loss()
    }
}
