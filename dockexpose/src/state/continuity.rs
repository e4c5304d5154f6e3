//! No record lost across restarts, upgrades and crashes.
//!
//! At start: the lock (one reader per ring), the pinned kernel side adopted or created
//! (`kernel::pins`), a `kernel_state_reset` record when what was pinned could not be
//! adopted, and a `daemon_start` record (resumed or fresh, the backlog the ring holds,
//! what the kernel lost while no daemon read). While running: the ring's space is
//! released only once the records are in the audit log (`kernel::ring::Committer`),
//! and the loss counter is checkpointed in the pinned DAEMON_STATE map. At stop: a
//! `daemon_stop` record; the kernel side stays (or goes with `--detach-on-exit`).
//!
//! Every connection record carries `boot_id`, `cpu` and `kseq` (the kernel's per-CPU
//! record sequence number): a record written twice (read, written, then the daemon
//! killed before it released the ring space) has the same three values.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use dockexpose_common::{
    map_names, Counter, DAEMON_STATE_CREATED, DAEMON_STATE_LOST_AT_STOP, DAEMON_STATE_RECORDS, DAEMON_STATE_RUNNING,
};
use serde::Serialize;

use super::lock::DaemonLock;
use crate::{
    error::{Error, Result},
    kernel::{
        loader::{Kernel, KernelSettings},
        pins::{self, Adoption, PinDir},
        ring::{Committer, EventRing, RingShared},
    },
    output::{audit::AuditLog, record::Timestamp},
};

/// How often the loss counter is checkpointed in DAEMON_STATE.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Links of the previous daemon that no attachment claimed within this time (the
/// interfaces this one does not watch) are detached.
const CLAIM_WITHIN: Duration = Duration::from_secs(15);

/// `watch`'s service options, validated.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Pin root (None: `--no-pin`, nothing outlives the daemon).
    pub pin_root: Option<PathBuf>,
    pub detach_on_exit: bool,
    pub lock_file: PathBuf,
}

impl ServiceSettings {
    pub fn from_args(args: &crate::cli::ServiceArgs) -> Self {
        Self {
            pin_root: (!args.no_pin).then(|| args.pin_dir.clone()),
            detach_on_exit: args.detach_on_exit,
            lock_file: args.lock_file.clone(),
        }
    }
}

/// This boot's id (/proc/sys/kernel/random/boot_id), read once.
pub fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// `daemon_start`, `daemon_stop`, `kernel_state_reset`: the daemon's own records in
/// the audit log (an `event` key, no `stage`: they are not connections).
#[derive(Serialize)]
struct Lifecycle<'a> {
    schema: u32,
    ts: Timestamp,
    event: &'static str,
    boot_id: &'static str,
    pid: u32,
    version: &'static str,
    pin_dir: Option<String>,
    #[serde(flatten)]
    detail: Detail<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    Start {
        /// `resumed`, `fresh` or `reset`.
        kernel_state: &'static str,
        /// `clean`, `crash`, or null on a fresh start.
        previous_stop: Option<&'static str>,
        /// Records waiting in the ring (written after this record).
        backlog_records: u64,
        backlog_bytes: u64,
        ring_bytes: u64,
        /// Records the kernel could not put in the ring since the last daemon stopped.
        lost_since_last_stop: u64,
        /// When the pinned kernel side was created (first start after boot or reset).
        kernel_state_since: Option<Timestamp>,
        /// "full", "no-tcx", "no-conntrack" or "basic" (kernel/features.rs).
        kernel_tier: &'static str,
        /// What the kernel offers, probed at start.
        kernel_features: &'a crate::kernel::features::Features,
    },
    Stop {
        reason: &'a str,
        /// `kept` (pinned, for the next daemon) or `detached`.
        kernel_side: &'static str,
        /// Records left in the ring (written by the next daemon).
        left_in_ring: u64,
    },
    Reset {
        reason: &'a str,
        /// What the old ring held cannot be read by this build: unknown.
        lost: Option<u64>,
    },
}

fn lifecycle<'a>(event: &'static str, pin_dir: Option<&PinDir>, detail: Detail<'a>) -> Lifecycle<'a> {
    Lifecycle {
        schema: crate::output::record::SCHEMA_VERSION,
        ts: Timestamp(SystemTime::now()),
        event,
        boot_id: boot_id(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
        pin_dir: pin_dir.map(|d| d.dir.display().to_string()),
        detail,
    }
}

/// The continuity of one daemon's run: the lock, the ring's committer, the pinned
/// bookkeeping.
pub struct Continuity {
    shared: Arc<RingShared>,
    committer: Committer,
    state: Array<MapData, u64>,
    counters: Option<PerCpuArray<MapData, u64>>,
    last_checkpoint: Instant,
    started: Instant,
    links_claimed: bool,
    pub detach_on_exit: bool,
    pin_dir: Option<PinDir>,
    pending_map: Option<aya::maps::HashMap<MapData, dockexpose_common::PendingKey, dockexpose_common::ConnEvent>>,
    _lock: Option<DaemonLock>,
}

fn state_err(source: aya::maps::MapError) -> Error {
    Error::Map { map: map_names::DAEMON_STATE, source: Box::new(source) }
}

/// Takes the lock, adopts or creates the kernel side, writes the start records.
pub fn start(service: &ServiceSettings, settings: KernelSettings, sink: &mut AuditLog) -> Result<(Kernel, Continuity)> {
    let (lock, pin_dir, adoption) = match &service.pin_root {
        Some(root) => {
            pins::ensure_root(root)?;
            let lock = DaemonLock::acquire_with_pins(&service.lock_file, Some(root))?;
            let salt = std::env::var(pins::LAYOUT_SALT_ENV).ok();
            let dir = PinDir::new(root, pins::layout_version(salt.as_deref()));
            let adoption = pins::prepare(&dir)?;
            (Some(lock), Some(dir), adoption)
        }
        None => (None, None, Adoption::Fresh),
    };
    let (kernel, maps) = Kernel::load_for_watch(settings, pin_dir.clone())?;
    let ring = EventRing::from_map(&maps.events).map_err(Error::RingBuffer)?;
    let mut state: Array<MapData, u64> = Array::try_from(Map::Array(maps.daemon_state)).map_err(state_err)?;
    let mut seq: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(maps.record_seq))
        .map_err(|source| Error::Map { map: map_names::RECORD_SEQ, source: Box::new(source) })?;
    let counters = maps.counters.map(|d| PerCpuArray::try_from(Map::PerCpuArray(d))).transpose().map_err(state_err)?;
    let pending_map = aya::maps::HashMap::try_from(Map::HashMap(maps.pending))
        .map_err(|source| Error::Map { map: map_names::PENDING, source: Box::new(source) })?;
    let now_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let resumed = adoption == Adoption::Resumed;
    let lost_now = counters.as_ref().map_or(0, ring_lost);
    let (previous_stop, lost_since) = if resumed {
        let running = state.get(&DAEMON_STATE_RUNNING, 0).unwrap_or(0);
        let at_stop = state.get(&DAEMON_STATE_LOST_AT_STOP, 0).unwrap_or(0);
        (Some(if running != 0 { "crash" } else { "clean" }), lost_now.saturating_sub(at_stop))
    } else {
        // A fresh ring: sequence numbers start above any an earlier ring of this boot
        // gave (its creation time in the high half), so they never repeat.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::RingBuffer(e))?;
        let values = PerCpuValues::try_from(vec![now_secs << 32; cpus])
            .map_err(|e| Error::RingBuffer(std::io::Error::other(e)))?;
        seq.set(0, values, 0).map_err(|source| Error::Map { map: map_names::RECORD_SEQ, source: Box::new(source) })?;
        state.set(DAEMON_STATE_CREATED, now_secs, 0).map_err(state_err)?;
        state.set(DAEMON_STATE_RECORDS, 0, 0).map_err(state_err)?;
        (None, 0)
    };
    let created = state.get(&DAEMON_STATE_CREATED, 0).unwrap_or(0);
    let (backlog_records, backlog_bytes) = ring.backlog();
    if let Adoption::Reset(reason) = &adoption {
        crate::say!("WARNING: kernel state reset: {reason}; starting fresh (what the old ring held is lost)");
        sink.write_record(&lifecycle("kernel_state_reset", pin_dir.as_ref(), Detail::Reset { reason, lost: None }));
    }
    let kernel_state = match adoption {
        Adoption::Fresh => "fresh",
        Adoption::Resumed => "resumed",
        Adoption::Reset(_) => "reset",
    };
    sink.write_record(&lifecycle(
        "daemon_start",
        pin_dir.as_ref(),
        Detail::Start {
            kernel_state,
            previous_stop,
            backlog_records,
            backlog_bytes,
            ring_bytes: ring.capacity(),
            lost_since_last_stop: lost_since,
            kernel_state_since: (created > 0).then(|| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(created))),
            kernel_tier: kernel.features().tier(),
            kernel_features: kernel.features(),
        },
    ));
    if let Some(line) = sink.flush() {
        crate::say!("{line}");
    }
    match (&pin_dir, resumed) {
        (Some(dir), true) => crate::say!(
            "dockexpose: kernel side resumed from {} (the previous daemon {}): {backlog_records} records waiting in the ring, {lost_since} lost while no daemon read it",
            dir.dir.display(),
            if previous_stop == Some("crash") { "was killed or crashed" } else { "stopped cleanly" }
        ),
        (Some(dir), false) => crate::say!("dockexpose: kernel side pinned at {} ({kernel_state})", dir.dir.display()),
        (None, _) => crate::say!("dockexpose: --no-pin: the kernel side ends with this process"),
    }
    state.set(DAEMON_STATE_RUNNING, 1, 0).map_err(state_err)?;
    state.set(DAEMON_STATE_LOST_AT_STOP, lost_now, 0).map_err(state_err)?;
    let shared = RingShared::new(ring);
    let continuity = Continuity {
        committer: Committer::new(shared.clone()),
        shared,
        state,
        counters,
        last_checkpoint: Instant::now(),
        started: Instant::now(),
        links_claimed: false,
        detach_on_exit: service.detach_on_exit,
        pin_dir,
        pending_map: Some(pending_map),
        _lock: lock,
    };
    Ok((kernel, continuity))
}

/// RingbufFull summed over CPUs.
fn ring_lost(counters: &PerCpuArray<MapData, u64>) -> u64 {
    counters.get(&(Counter::RingbufFull as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
}

impl Continuity {
    /// The ring, for the reader task.
    pub fn ring(&self) -> Arc<RingShared> {
        self.shared.clone()
    }

    /// The reader's idle flag (a DAEMON_STATE slot), on a handle of its own. None if
    /// the map's fd cannot be shared: the reader then keeps its timer, as before.
    pub fn idle_flag(&self) -> Option<crate::kernel::reader::IdleFlag> {
        use std::os::fd::AsFd as _;
        let fd = aya::maps::IterableMap::map(&self.state).fd().as_fd().try_clone_to_owned().ok()?;
        let state = Array::try_from(Map::Array(MapData::from_fd(fd).ok()?)).ok()?;
        Some(crate::kernel::reader::IdleFlag::new(state))
    }

    /// The end of every batch the loop has handled (`state::release` notes it at each
    /// hand-off to the audit log's writer).
    pub fn handled(&self) -> u64 {
        self.committer.handled()
    }

    /// After each turn of the loop: releases the ring up to `written` (what the audit
    /// log's writer has written, if it wrote more), and now and then checkpoints the
    /// loss counter for the next daemon's `daemon_start`.
    pub fn released(&mut self, written: Option<u64>) {
        if let Some(position) = written {
            self.committer.release(position);
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint();
        }
    }

    fn checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        if let Some(c) = &self.counters {
            let _ = self.state.set(DAEMON_STATE_LOST_AT_STOP, ring_lost(c), 0);
        }
    }

    /// On the host refresh: once the previous daemon's links had time to be claimed,
    /// those of interfaces this daemon does not watch are detached.
    pub fn refreshed(&mut self, kernel: &mut Kernel) {
        if self.links_claimed || self.started.elapsed() < CLAIM_WITHIN {
            return;
        }
        self.links_claimed = true;
        for (program, ifindex) in kernel.release_unclaimed_links() {
            crate::say!(
                "dockexpose: {program} on ifindex {ifindex}, left by the previous daemon, is not watched now: detached"
            );
        }
    }

    /// At exit, once the ring is released as far as the audit log is written (what it
    /// could not write stays in the ring for the next daemon): the kernel side stays
    /// for the next daemon, or goes (`--detach-on-exit`); a `daemon_stop` record says
    /// which (handed to the writer: the caller closes the log).
    pub fn stop(mut self, kernel: &mut Kernel, sink: &mut AuditLog, reason: &str) -> Result<()> {
        self.checkpoint();
        let _ = self.state.set(DAEMON_STATE_RUNNING, 0, 0);
        let left = self.shared.ring.backlog().0;
        let kept = self.pin_dir.is_some() && !self.detach_on_exit;
        sink.write_record(&lifecycle(
            "daemon_stop",
            self.pin_dir.as_ref(),
            Detail::Stop {
                reason,
                kernel_side: if kept { "kept" } else { "detached" },
                left_in_ring: if kept { left } else { 0 },
            },
        ));
        if let Some(line) = sink.flush() {
            crate::say!("{line}");
        }
        if self.pin_dir.is_some() && self.detach_on_exit {
            kernel.unpin_all()?;
        }
        Ok(())
    }

    /// Where the kernel side is pinned (None with `--no-pin`).
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pin_dir.as_ref()
    }

    /// Ring bytes not yet released to the kernel (read ahead, or held).
    pub fn unreleased(&self) -> u64 {
        self.shared.ring.produced().saturating_sub(self.committer.position())
    }

    /// The pinned map of records held back for identity.
    pub fn take_pending_map(
        &mut self,
    ) -> Option<aya::maps::HashMap<MapData, dockexpose_common::PendingKey, dockexpose_common::ConnEvent>> {
        self.pending_map.take()
    }

    /// The committed ring position (for tests and reports).
    pub fn committed(&self) -> u64 {
        self.committer.position()
    }
}
