//! `watch` starting, in the order that fails early: the options settled and checked,
//! the outputs opened, the kernel side adopted or loaded (`open`); then everything
//! that feeds the loop connected: the ground, the firewall's word, Docker, the
//! attachments, the status socket and the metrics, the ring reader (`connect`); then
//! the start lines said (`announce`).

use std::{collections::BTreeMap, path::Path, time::Instant};

use clap::ArgMatches;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
    time::{interval, MissedTickBehavior},
};

use super::{
    alert_outs, effective, ground, human, intent,
    serve::{Inputs, Signals},
    settings,
    settings::{UplinkSelection, VerifySettings},
    start_sinks,
    verifying::{VerifyResult, VerifyState},
    ConfigState, Watcher, CHANNEL_BATCHES, DOCKER_FIRST_ANSWER, HOST_REFRESH, MAX_PENDING, QUERY_QUEUE,
};
use crate::{
    cli::WatchArgs,
    config,
    error::{Error, Result},
    host::{interfaces::HostSnapshot, privileges},
    inventory::docker::{self, DockerState},
    kernel::{event::KernelClock, loader::ConntrackAccess, reader::ReaderStats, ring},
    output::{
        alerts::HealthCondition,
        audit::AuditLog,
        fanout::{AlertStage, Outputs},
        formats::{Formatter, Observer},
    },
    state::{
        self, continuity::Continuity, continuity::ServiceSettings, pending::PendingRecords, release::ReleaseLedger,
    },
    stats::{LossTracker, PipelineCounters},
    status::{self, Query},
    verdict::AttemptTracker,
    verify::daemon::{self as verifyd, ProbeSources, Schedule},
};

/// What `open` made, for `connect`.
pub(super) struct Opened {
    pub(super) w: Watcher,
    pub(super) continuity: Continuity,
    intent_rx: mpsc::UnboundedReceiver<crate::intent::IntentBook>,
    verify_rx: Option<mpsc::UnboundedReceiver<VerifyResult>>,
    metrics_addr: Option<std::net::SocketAddr>,
    config_path: Option<std::path::PathBuf>,
}

/// The options settled (command line > environment > file) and checked, the audit log
/// and the sinks opened, the kernel side adopted or loaded: nothing attached yet.
pub(super) fn open(cli: WatchArgs, matches: ArgMatches) -> Result<Opened> {
    let (args, sink_config, config_path) = effective(&cli, &matches)?;
    let host = HostSnapshot::read()?;
    let settings = settings::validate(&args, &host)?;
    let metrics_addr = config::metrics_addr(&args).map_err(Error::Config)?;
    let ship_settings = settings::ship(&args)?;
    let mut audit = AuditLog::open(args.json.as_deref(), settings::rotation(&args))?;
    let mut observer = Observer::this_host();
    if let Some(name) = &args.host_name {
        observer.hostname = settings::host_name(name)?;
    }
    let formatter = Formatter::new(args.json_format, observer);
    audit.set_format(formatter.clone());
    privileges::check()?;
    let sinks = start_sinks(&sink_config, &formatter)?;
    // Continuity (state/): the lock, the pinned kernel side adopted or created, the
    // start records.
    let service = ServiceSettings::from_args(&args.service);
    let (kernel, mut continuity) = state::continuity::start(&service, settings.kernel, &mut audit)?;
    // The start records are written: the shipper reads the file from here on.
    let ship = ship_settings.map(crate::fleet::ship::Shipper::start).transpose().map_err(Error::Config)?;

    let blocked_after_ns = settings.blocked_after_ns;
    let (verify_tx, verify_rx) = mpsc::unbounded_channel::<VerifyResult>();
    let verify_rx = settings.verify.is_some().then_some(verify_rx);
    let verify = settings.verify.as_ref().map(|v| VerifyState {
        settings: VerifySettings { every: v.every, sources: v.sources.clone(), uplinks: v.uplinks.clone() },
        schedule: Schedule::new(v.every, Instant::now()),
        probes: ProbeSources::new(v.sources.clone()),
        tx: verify_tx,
        running: None,
        debounce: Default::default(),
        run_causes: Vec::new(),
        verdicts: Default::default(),
        last_success: None,
        runs_ok: 0,
        runs_failed: 0,
    });
    let (intent_state, intent_rx) = intent::IntentState::new(args.intent_root.clone());
    let clock = KernelClock::now();
    let outputs =
        Outputs::new(audit, settings.quiet, AlertStage::new(settings.alert_window, alert_outs(&sinks)), clock)
            .named_by(&formatter.observer);
    let w = Watcher {
        kernel,
        settings,
        host,
        links: Default::default(),
        host_refresh: Default::default(),
        ifnames: BTreeMap::new(),
        uplink_modes: BTreeMap::new(),
        outputs,
        sinks,
        clock,
        reader: ReaderStats::default(),
        losses: LossTracker::default(),
        counters_said: PipelineCounters::default(),
        last_loss: None,
        inventory: None,
        inventory_at: None,
        docker_connected: false,
        docker_problem: None,
        pending: PendingRecords::new(continuity.take_pending_map(), MAX_PENDING),
        ring_unreleased: 0,
        release: ReleaseLedger::default(),
        attempts: AttemptTracker::new(blocked_after_ns),
        unbound_attempts: 0,
        attempts_untracked: 0,
        prefixes_left_out: 0,
        answers_received: 0,
        verify,
        intent: intent_state,
        probe_records: 0,
        config: ConfigState { cli, matches, effective: args, sinks: sink_config, formatter },
        started: Instant::now(),
        ship,
    };
    Ok(Opened { w, continuity, intent_rx, verify_rx, metrics_addr, config_path })
}

impl Watcher {
    /// Everything that feeds the loop: the ground's watchers, the firewall's first
    /// reading, Docker's first answer, the bridges and uplinks attached, the status
    /// socket and the metrics, and last the ring reader.
    pub(super) async fn connect(
        &mut self,
        continuity: &Continuity,
        intent_rx: mpsc::UnboundedReceiver<crate::intent::IntentBook>,
        verify_rx: Option<mpsc::UnboundedReceiver<VerifyResult>>,
        metrics_addr: Option<std::net::SocketAddr>,
    ) -> Result<Inputs> {
        // The ground: ruleset, link and address changes, each a reason to read the
        // firewall's word again (and, with --verify-every, to verify again).
        let (ground_tx, ground_rx) = mpsc::unbounded_channel();
        for line in ground::spawn(ground_tx, std::process::id(), self.verify.is_some(), self.links.clone()) {
            crate::say!("dockexpose: {line}");
        }
        let first_reading = self.intent.read_now();
        self.intent_read(first_reading);

        // Docker first: its networks decide which bridges to watch.
        let docker_rx = match self.settings.docker_endpoint.clone() {
            Some(endpoint) => {
                let (tx, mut rx) = watch::channel(DockerState::Starting);
                tokio::spawn(docker::run(endpoint, tx));
                let _ = tokio::time::timeout(DOCKER_FIRST_ANSWER, rx.wait_for(|s| *s != DockerState::Starting)).await;
                let state = rx.borrow_and_update().clone();
                self.docker_changed(state)?;
                Some(rx)
            }
            None => {
                crate::say!("dockexpose: --no-docker: running without container identity");
                None
            }
        };
        // The operator's bridges must attach, or nothing is watched where they expect.
        for bridge in self.settings.explicit_bridges.clone() {
            self.attach_bridge(&bridge)?;
        }
        self.reconcile_bridges();
        // The operator's uplinks must attach (a bridge: its ports), or attempts they
        // expect to see are missed.
        if let UplinkSelection::Given(_) = &self.settings.uplinks {
            for uplink in self.desired_uplinks() {
                self.attach_uplink(&uplink)?;
            }
        }
        self.reconcile_uplinks();
        self.sync_prefixes();
        self.handle_left_pending()?;

        // The status socket and the metrics: questions come to the loop.
        let (query_tx, queries) = mpsc::channel::<Query>(QUERY_QUEUE);
        let socket_path = self.config.effective.status_socket.clone();
        let status_socket = match status::server::serve_status(&socket_path, query_tx.clone()) {
            Ok(s) => {
                crate::say!("dockexpose: `dockexpose status` answered on {}", socket_path.display());
                Some(s)
            }
            Err(e) => {
                crate::say!(
                    "warning: no status socket ({e}); `dockexpose status` cannot ask this daemon, detection goes on"
                );
                None
            }
        };
        if let Some(addr) = metrics_addr {
            let bound = status::server::serve_metrics(addr, query_tx.clone()).await.map_err(Error::Config)?;
            crate::say!("dockexpose: Prometheus metrics on http://{bound}/metrics (also /healthz, /readyz)");
        }
        drop(query_tx);

        let (tx, batches) = mpsc::channel::<ring::Batch>(CHANNEL_BATCHES);
        let (stop_reader, reader_stop) = oneshot::channel();
        let reader_task =
            tokio::spawn(ring::run(continuity.ring(), tx, self.reader.clone(), continuity.idle_flag(), reader_stop));
        let signals = Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(Error::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(Error::Signals)?,
            hangup: signal(SignalKind::hangup()).map_err(Error::Signals)?,
            user1: signal(SignalKind::user_defined1()).map_err(Error::Signals)?,
        };
        let mut refresh = interval(HOST_REFRESH);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stats =
            interval(self.settings.stats_interval.unwrap_or(std::time::Duration::from_secs(3600 * 24 * 365)));
        stats.tick().await;
        // A log that is off never reports: a channel that stays empty.
        let audit = self.outputs.audit.take_reports().unwrap_or_else(|| mpsc::unbounded_channel().1);
        Ok(Inputs {
            batches,
            audit,
            reader_task,
            reader_ended: false,
            stop_reader: Some(stop_reader),
            docker: docker_rx,
            intent: intent_rx,
            ground: ground_rx,
            queries,
            verify: verify_rx,
            signals,
            refresh,
            stats,
            _status_socket: status_socket,
        })
    }

    /// The start lines: what the kernel offers, what is watched and where records
    /// go; then a Type=notify service is told it has started.
    pub(super) fn announce(&mut self, config_path: Option<&Path>) {
        if let Some(p) = config_path {
            crate::say!("dockexpose: configuration from {} (command line and DOCKEXPOSE_* win over it)", p.display());
        }
        let watched: Vec<&str> = self.kernel.bridges().collect();
        let uplinks: Vec<&str> = self.kernel.uplinks().collect();
        crate::say!("dockexpose: {}", self.kernel.features().line());
        // A defence this kernel cannot give is a health alert (condition kernel_limits),
        // printed and sent to the sinks like any other.
        for (feature, limit) in self.kernel.features().limits() {
            self.outputs.alerts.health_failing(
                HealthCondition::KernelLimits,
                Some(feature),
                format!("dockexpose: this kernel: {limit}"),
            );
        }
        match self.kernel.conntrack() {
            ConntrackAccess::Kfuncs => crate::say!(
                "dockexpose: conntrack consulted from the bridge program: exact host ports on every uplink, fragments told by the kernel's own state"
            ),
            ConntrackAccess::Unavailable(why) => crate::say!(
                "warning: conntrack cannot be consulted ({}): host ports come from the uplink programs and the published bindings; a first fragment cut before the TCP flags is counted as bridge_uninspected",
                human::escape_untrusted(why)
            ),
        }
        let json = self.config.effective.json.as_deref();
        crate::say!(
            "dockexpose: watching {} ({}); uplinks: {}; JSON log: {}",
            if watched.is_empty() { "no bridge yet".to_string() } else { watched.join(", ") },
            self.bridge_source(),
            match self.settings.uplinks {
                UplinkSelection::Off(why) => why.to_string(),
                UplinkSelection::Auto if uplinks.is_empty() => {
                    "none found (no up interface with a global address that is not a container bridge); picked up when one appears".to_string()
                }
                _ if uplinks.is_empty() => "none yet".to_string(),
                _ => uplinks.join(", "),
            },
            json.map_or("off".into(), |p| if p == Path::new("-") { "stdout".into() } else { p.display().to_string() }),
        );
        for s in &self.sinks {
            crate::say!("dockexpose: alerts also go to {}", human::escape_untrusted(s.name()));
        }
        if let Some(v) = &self.verify {
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
    }
}

impl Opened {
    /// `connect` with what `open` kept for it; the configuration's path, for
    /// `announce`.
    pub(super) async fn connect(self) -> Result<(Watcher, Continuity, Inputs, Option<std::path::PathBuf>)> {
        let Opened { mut w, continuity, intent_rx, verify_rx, metrics_addr, config_path } = self;
        let inputs = w.connect(&continuity, intent_rx, verify_rx, metrics_addr).await?;
        Ok((w, continuity, inputs, config_path))
    }
}
