//! `dockexpose watch`: the daemon loop.
//!
//! Start-up validates everything the operator gave (fail early, with the fix), loads
//! and attaches the kernel programs, then one task reads the ring buffer while this
//! loop turns records into output, keeps the kernel maps current, and reports counters.

use std::{collections::BTreeMap, path::Path, time::Duration};

use dockexpose_common::ConnEvent;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{interval, MissedTickBehavior},
};

use crate::{
    cli::WatchArgs,
    error::{Error, Result},
    host::{
        interfaces::{self, HostSnapshot},
        local, privileges,
    },
    kernel::{
        event::{KernelClock, Observation},
        loader::{Kernel, KernelSettings},
        reader::{self, ReaderLoss},
    },
    net::prefix::Prefix,
    output::{human, record::Record, sink::JsonSink},
    stats::{LossTracker, PipelineCounters},
};

/// Records waiting between the reader and the outputs. A burst larger than this is
/// counted as reader loss, never buffered without bound.
const CHANNEL_CAPACITY: usize = 8192;
/// How often interfaces and addresses are re-read.
const HOST_REFRESH: Duration = Duration::from_secs(1);

/// Which bridges to watch.
enum BridgeSelection {
    /// Named by the operator; one that vanishes is dropped.
    Fixed(Vec<String>),
    /// Every addressed Linux bridge, now and later.
    Discover,
}

/// The options, validated.
struct Settings {
    selection: BridgeSelection,
    trusted: Vec<Prefix>,
    stats_interval: Option<Duration>,
    quiet: bool,
    kernel: KernelSettings,
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
    if args.udp_idle == 0 {
        return Err(Error::InvalidSetting { name: "--udp-idle", reason: "must be at least 1 second".into() });
    }
    let selection =
        if args.bridges.is_empty() { BridgeSelection::Discover } else { BridgeSelection::Fixed(args.bridges.clone()) };
    Ok(Settings {
        selection,
        trusted,
        stats_interval: (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval)),
        quiet: args.quiet,
        kernel: KernelSettings {
            udp_idle_ns: args.udp_idle.saturating_mul(1_000_000_000),
            attempt_window_ns: 10_000_000_000,
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
    reader_loss: ReaderLoss,
    losses: LossTracker,
}

pub async fn run(args: WatchArgs) -> Result<()> {
    let host = HostSnapshot::read()?;
    let settings = validate(&args, &host)?;
    let sink = JsonSink::open(args.json.as_deref())?;
    privileges::check()?;
    let (kernel, ring) = Kernel::load(settings.kernel)?;

    let mut w = Watcher {
        kernel,
        settings,
        host,
        ifnames: BTreeMap::new(),
        sink,
        clock: KernelClock::now(),
        reader_loss: ReaderLoss::default(),
        losses: LossTracker::default(),
    };
    let initial: Vec<String> = match &w.settings.selection {
        BridgeSelection::Fixed(list) => list.clone(),
        BridgeSelection::Discover => w.host.addressed_bridges(),
    };
    for bridge in &initial {
        w.attach_bridge(bridge)?;
    }
    w.sync_prefixes()?;

    let (tx, mut rx) = mpsc::channel::<ConnEvent>(CHANNEL_CAPACITY);
    let mut reader_task = tokio::spawn(reader::run(ring, tx, w.reader_loss.clone()));
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut refresh = interval(HOST_REFRESH);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stats = interval(w.settings.stats_interval.unwrap_or(Duration::from_secs(3600 * 24 * 365)));
    stats.tick().await;

    let watched: Vec<&str> = w.kernel.bridges().collect();
    eprintln!(
        "dockexpose: watching {} ({}); JSON log: {}",
        if watched.is_empty() { "no bridge yet".to_string() } else { watched.join(", ") },
        match w.settings.selection {
            BridgeSelection::Fixed(_) => "as given",
            BridgeSelection::Discover => "discovered; new bridges are picked up",
        },
        args.json.as_deref().map_or("off".into(), |p| if p == Path::new("-") { "stdout".into() } else { p.display().to_string() }),
    );

    let outcome = loop {
        tokio::select! {
            Some(ev) = rx.recv() => w.handle(&ev)?,
            _ = refresh.tick() => w.refresh_host()?,
            _ = stats.tick() => w.report_counters("counters")?,
            _ = sigint.recv() => break Ok("SIGINT"),
            _ = sigterm.recv() => break Ok("SIGTERM"),
            res = &mut reader_task => break match res {
                Ok(Ok(())) => Err(Error::RingBuffer(std::io::Error::other("the reader stopped"))),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(Error::RingBuffer(std::io::Error::other(e))),
            },
        }
    };
    reader_task.abort();
    // What the reader handed over before stopping still gets written.
    while let Ok(ev) = rx.try_recv() {
        w.handle(&ev)?;
    }
    let reason = outcome?;
    w.report_counters("final counters")?;
    let bridges: Vec<String> = w.kernel.bridges().map(str::to_string).collect();
    drop(w);
    eprintln!("dockexpose: {reason}: detached from {}", if bridges.is_empty() { "nothing".into() } else { bridges.join(", ") });
    Ok(())
}

impl Watcher {
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

    fn handle(&mut self, ev: &ConnEvent) -> Result<()> {
        let obs = match Observation::from_event(ev) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("warning: undecodable kernel record dropped: {}", e.0);
                return Ok(());
            }
        };
        let iface = self.ifnames.get(&obs.ifindex).cloned().unwrap_or_else(|| format!("if{}", obs.ifindex));
        let rec = Record::from_observation(&obs, obs.stage, self.clock.wall(obs.ktime_ns), &iface);
        self.sink.write_line(&rec.to_json_line())?;
        if !self.settings.quiet {
            eprintln!("{}", human::connection_line(&rec));
        }
        Ok(())
    }

    /// Re-reads interfaces and addresses: drops vanished bridges, picks up new ones
    /// (discovery mode), keeps the local prefixes current, and warns about loss.
    fn refresh_host(&mut self) -> Result<()> {
        let host = HostSnapshot::read()?;
        let gone: Vec<String> =
            self.kernel.bridges().filter(|b| !interfaces::exists(b)).map(str::to_string).collect();
        for b in gone {
            self.kernel.detach_bridge(&b);
            self.ifnames.retain(|_, n| n != &b);
            eprintln!("dockexpose: bridge {} disappeared; no longer watched", human::escape_untrusted(&b));
        }
        if matches!(self.settings.selection, BridgeSelection::Discover) {
            for b in host.addressed_bridges() {
                if !self.kernel.bridges().any(|w| w == b) {
                    match self.attach_bridge(&b) {
                        Ok(()) => eprintln!("dockexpose: new bridge {} watched", human::escape_untrusted(&b)),
                        Err(e) => eprintln!("warning: new bridge {}: {e}", human::escape_untrusted(&b)),
                    }
                }
            }
        }
        self.host = host;
        self.sync_prefixes()?;
        self.warn_about_loss()
    }

    fn counters(&self) -> Result<PipelineCounters> {
        Ok(PipelineCounters { kernel: self.kernel.counters()?, reader_lost: self.reader_loss.get() })
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
