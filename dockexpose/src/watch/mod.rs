//! `dockexpose watch`: the daemon loop.
//!
//! Start-up validates everything the operator gave (fail early, with the fix), loads
//! and attaches the kernel programs, then one task reads the ring buffer while this
//! loop runs the connection stage (`stage`), whose records go to every output through
//! one fan-out (`output::fanout`). The loop also keeps the attachments current
//! (`attach`), answers `dockexpose status` and metrics scrapes (`status`), reloads the
//! configuration on SIGHUP and reopens the audit log on SIGUSR1.
//!
//! - `start`: the options settled, the outputs and the kernel side opened, the inputs
//!   connected, the start lines said;
//! - `serve`: the loop, and the stop that drains the ring;
//! - `settings`: the options, validated;
//! - `attach`: bridges and uplinks, attached and detached as the host changes;
//! - `host_refresh`: when the host is read again (after a change, not every second);
//! - `stage`: kernel records -> connection records;
//! - `verifying`: `--verify-every` runs;
//! - `health`: counters, loss warnings, the status report.

mod attach;
mod drifting;
pub mod ground;
mod health;
mod host_refresh;
mod intent;
mod serve;
mod settings;
mod stage;
mod start;
mod verifying;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::ArgMatches;
use tokio::sync::watch;

use self::{
    host_refresh::{HostRefresh, LinkChanges},
    settings::Settings,
    verifying::VerifyState,
};
use crate::{
    cli::WatchArgs,
    config::{self, FileConfig},
    error::{Error, Result},
    host::interfaces::HostSnapshot,
    inventory::{docker::DockerState, model::Inventory},
    kernel::{event::KernelClock, loader::Kernel, reader::ReaderStats},
    output::{
        alerts::{Alert, HealthCondition},
        fanout::{AlertOut, Outputs, StderrAlerts},
        formats::Formatter,
        human,
        sinks::{self, SinkHandle, SinksConfig},
    },
    state::{pending::PendingRecords, release::ReleaseLedger},
    stats::{LossTracker, PipelineCounters},
    verdict::AttemptTracker,
    verify::daemon::{self as verifyd, RunKind},
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
/// How soon chunks the audit log's hand-off had no room for are offered again.
const AUDIT_RETRY: Duration = Duration::from_millis(500);
/// How long stopping waits for the audit log's writer to write what it was handed.
const AUDIT_STOP_WAIT: Duration = Duration::from_secs(8);
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
    /// `--json-format` and the host events name (a restart changes them).
    formatter: Formatter,
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
    /// What the link watcher received (counted by its thread), and when the host was
    /// last read against it.
    links: std::sync::Arc<LinkChanges>,
    host_refresh: HostRefresh,
    /// ifindex -> interface name, for the records.
    ifnames: BTreeMap<u32, crate::kernel::event::IfName>,
    /// How each uplink is attached ("tcx", "xdp native", "xdp generic").
    uplink_modes: BTreeMap<String, &'static str>,
    outputs: Outputs,
    /// The alert sinks behind the fan-out's queues (for their figures).
    sinks: Vec<std::rc::Rc<SinkHandle>>,
    clock: KernelClock,
    reader: ReaderStats,
    losses: LossTracker,
    /// The counters when the last periodic summary was said.
    counters_said: PipelineCounters,
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
    /// What each hand-off to the audit log's writer completes: released once written.
    release: ReleaseLedger<dockexpose_common::PendingKey>,
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
    /// `--ship`: the shipper's thread (None when off).
    ship: Option<crate::fleet::ship::Shipper>,
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
/// Their JSON (a webhook's body, a syslog message's) is in `formatter`'s format.
fn start_sinks(config: &SinksConfig, formatter: &Formatter) -> Result<Vec<std::rc::Rc<SinkHandle>>> {
    let mut config = config.clone();
    if config.journald.is_none() && sinks::journald::stderr_is_journal() {
        config.journald = Some(Default::default());
    }
    let handles = sinks::start(&config, formatter).map_err(|e| Error::Config(e.to_string()))?;
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

/// `dockexpose watch`, in its stages.
pub async fn run(cli: WatchArgs, matches: ArgMatches) -> Result<()> {
    if cli.print_config {
        return print_config(&cli, &matches);
    }
    // stderr through a bounded queue and a thread of its own: a reader that stops
    // reading never stalls the loop. Written out (bounded) when `run` returns.
    let _console = crate::output::console::Detached::start();
    let (mut w, mut continuity, mut inputs, config_path) = start::open(cli, matches)?.connect().await?;
    w.announce(config_path.as_deref());
    let outcome = w.serve(&mut inputs, &mut continuity).await?;
    w.stop(outcome, inputs, continuity).await
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
                // Its networks decide the bridges now, and the uplinks (a bridge of
                // Docker's is no uplink) at the next tick.
                self.host_refresh.ask();
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

    /// Hands the audit log's buffer to its writer (never waiting on the disk).
    fn flush(&mut self) {
        self.outputs.flush();
    }

    /// SIGUSR1 / SIGHUP: logrotate moved the log; write to the path anew (after what
    /// was handed before). The writer says how it went.
    fn reopen_audit_log(&mut self, signal: &'static str) {
        self.outputs.audit.reopen(signal);
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
            match start_sinks(&sinks, &self.config.formatter) {
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
            if restart.is_empty() {
                String::new()
            } else {
                format!("; changed, applied at the next restart: {}", restart.join(", "))
            }
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

    /// Once a second: re-reads interfaces and addresses when they may have changed
    /// (`host_refresh`), then drops vanished bridges, picks up new ones and keeps the
    /// local prefixes current; every time, releases what waited for identity, decides
    /// attempts, closes alert windows, and warns about loss.
    fn refresh_host(&mut self) -> Result<()> {
        let (count, now) = (self.links.count(), Instant::now());
        if self.host_refresh.due(count, now) {
            self.host = HostSnapshot::read()?;
            self.host_refresh.read(count, now);
            self.reconcile_bridges();
            self.reconcile_uplinks();
            self.sync_prefixes();
        }
        self.release_pending(false)?;
        self.decide_attempts()?;
        self.outputs.tick(Instant::now());
        self.warn_about_loss()
    }
}
