//! The limits on connection alerts: one line per new (container, port, source, kind)
//! within a window, then a count when the window closes. Bounded in memory and in
//! lines, so that a flood from random sources or a scan of every port cannot flood the
//! terminal and the sinks as well.
//!
//! - A new source at an exposure already shown: at most 50 lines a second overall and
//!   50 per exposure and window; the rest counted in one summary line.
//! - A new exposure (a port, or a kind, of a container not yet alerted on): at most 10
//!   per container and window; the rest of a port scan counted in one summary line per
//!   container and window ("N more ports of web reached").
//! - The first new exposure of a container in a window is always shown, and marked as
//!   priority: the sinks deliver it through a lane of their own that no flood fills.
//!   So is its summary. Containers are bounded by the inventory, not by outsiders.
//! - An address without a known container (outsiders can sweep a whole subnet) gets
//!   no such promise: its new exposures share the 50 a second with new sources.

use std::{
    collections::HashMap as StdHashMap,
    fmt::Write,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    text::{self, PortSpan},
    Alert, AlertKind,
};
use crate::output::record::{ContainerRef, Record, STAGE_VERIFIED};

/// Outsiders choose these keys (addresses, ports): a randomly seeded hasher, much
/// cheaper than SipHash and still resistant to crafted collisions.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// Most (exposure, source) keys tracked at once; past that, new sources at a known
/// exposure are counted, not shown.
pub(super) const MAX_OPEN: usize = 50_000;
/// Most exposures remembered at once. Real exposures are bounded by containers x ports x
/// kinds; past this cap a new exposure is judged by its container's window alone.
pub(super) const MAX_EXPOSURES: usize = 65_536;
/// Most alert lines a second for new sources at a known exposure and for addresses
/// without a container; past that they are counted and summarised.
pub(super) const MAX_NEW_PER_SECOND: u32 = 50;
/// Most sources shown per exposure and window, its first alert included.
pub(super) const MAX_SOURCES_PER_EXPOSURE: u32 = 50;
/// Most new exposures (ports, kinds) shown per container and window, its first
/// included; the rest are counted in one summary line per container and window.
pub(super) const MAX_NEW_EXPOSURES_PER_TARGET: u32 = 10;
/// Most targets (containers, and addresses without one) remembered at once.
const MAX_TARGETS: usize = 65_536;
/// Of which addresses without a known container (outsiders choose them).
pub(super) const MAX_ADDRESS_TARGETS: usize = 4_096;

/// The container reached (its shared identity: a clone is a reference count), or
/// the destination address when no container is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Container(Arc<ContainerRef>),
    Address(IpAddr),
}

/// A container is hashed by its id alone, not by every field of its identity (equal
/// targets have equal ids, so this agrees with `Eq`): up to three lookups a record.
impl std::hash::Hash for Target {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Target::Container(c) => {
                state.write_u8(0);
                c.id.hash(state);
            }
            Target::Address(a) => {
                state.write_u8(1);
                a.hash(state);
            }
        }
    }
}

impl Target {
    fn of(rec: &Record) -> Self {
        rec.container.as_ref().map_or(Target::Address(rec.dst_ip), |c| Target::Container(c.clone()))
    }
}

/// What was exposed, whoever reached it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExposureKey {
    kind: &'static str,
    target: Target,
    port: u16,
    proto: &'static str,
}

/// A port a probe of `watch --verify-every` found reachable, on one uplink.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VerifiedKey {
    target: Target,
    port: u16,
    proto: &'static str,
    uplink: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AlertKey {
    exposure: ExposureKey,
    src: IpAddr,
}

struct Open {
    first: Instant,
    count: u64,
    headline: String,
    record: Arc<Record>,
}

struct Exposure {
    /// Start of the window in which `shown` sources were shown.
    window_start: Instant,
    /// Last connection: the exposure is forgotten a window after it.
    last: Instant,
    shown: u32,
}

/// A target's new exposures in its current window.
struct TargetWindow {
    start: Instant,
    last: Instant,
    shown: u32,
    /// New exposures held back (containers only; addresses count in `suppressed`).
    held: u64,
    ports: PortSpan,
    first_held: Option<Arc<Record>>,
}

/// How a new exposure is treated.
enum NewExposure {
    /// The first of its container in the window: shown, through the priority lane.
    First,
    Shown,
    Held,
}

pub struct Alerter {
    window: Duration,
    open: HashMap<AlertKey, Open>,
    exposures: HashMap<ExposureKey, Exposure>,
    targets: HashMap<Target, TargetWindow>,
    /// Entries of `targets` that are addresses.
    address_targets: usize,
    second_started: Option<Instant>,
    new_this_second: u32,
    /// Alerts held back by the shared limits (new sources, addresses), not yet said.
    suppressed: u64,
    /// When the last summary line was shown: after the first, at most one a window.
    last_summary: Option<Instant>,
    /// Verified exposures alerted on, and when (one alert per window).
    verified: HashMap<VerifiedKey, Instant>,
}

impl Alerter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::default(),
            exposures: HashMap::default(),
            targets: HashMap::default(),
            address_targets: 0,
            second_started: None,
            new_this_second: 0,
            suppressed: 0,
            last_summary: None,
            verified: HashMap::default(),
        }
    }

    /// A `verified` record (a probe of `watch --verify-every`): the line for a port
    /// found reachable (verdict EXPOSED or PROXY), once per (container, host port,
    /// protocol, uplink) per window; None for HELD and for repeats. `container_port`:
    /// the binding's container side.
    pub fn verified(&mut self, rec: &Arc<Record>, container_port: Option<u16>, now: Instant) -> Option<Alert> {
        if rec.stage != STAGE_VERIFIED || !matches!(rec.verdict, Some("EXPOSED" | "PROXY")) {
            return None;
        }
        let key = VerifiedKey {
            target: Target::of(rec),
            port: rec.host_port.unwrap_or(rec.dst_port),
            proto: rec.proto,
            uplink: rec.iface.to_string(),
        };
        if self.verified.get(&key).is_some_and(|t| now.duration_since(*t) < self.window) {
            return None;
        }
        if self.verified.len() < MAX_EXPOSURES || self.verified.contains_key(&key) {
            self.verified.insert(key, now);
        }
        Some(Alert::new(AlertKind::Verified, text::verified_headline(rec, container_port), Some(rec.clone())))
    }

    /// Registers a record; returns the line to show now, if any.
    pub fn observe(&mut self, rec: &Arc<Record>, now: Instant) -> Option<Alert> {
        let kind = text::kind(rec)?;
        let exposure = ExposureKey {
            kind,
            target: Target::of(rec),
            port: rec.host_port.unwrap_or(rec.dst_port),
            proto: rec.proto,
        };
        // One lookup of the exposure a record (a container's id is hashed each time).
        let mut known = self.exposures.get_mut(&exposure);
        if let Some(e) = known.as_deref_mut() {
            e.last = now;
        }
        let key = AlertKey { exposure, src: rec.src_ip };
        if let Some(open) = self.open.get_mut(&key) {
            open.count += 1;
            return None;
        }
        if self.second_started.is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1)) {
            self.second_started = Some(now);
            self.new_this_second = 0;
        }
        let mut priority = false;
        match known {
            // A new exposure: judged by its target's window; remembered while there is room.
            None => {
                match self.new_exposure(&key.exposure.target, rec, now) {
                    NewExposure::First => priority = true,
                    NewExposure::Shown => {}
                    NewExposure::Held => {
                        // Counted once as a port held back; its further sources in this
                        // window count in the shared summary, not as more ports.
                        if self.exposures.len() < MAX_EXPOSURES {
                            let e = Exposure { window_start: now, last: now, shown: MAX_SOURCES_PER_EXPOSURE };
                            self.exposures.insert(key.exposure, e);
                        }
                        return None;
                    }
                }
                if self.exposures.len() < MAX_EXPOSURES {
                    self.exposures.insert(key.exposure.clone(), Exposure { window_start: now, last: now, shown: 1 });
                }
            }
            // A new source at a known exposure: limited per second and per exposure.
            Some(e) => {
                if now.duration_since(e.window_start) >= self.window {
                    e.window_start = now;
                    e.shown = 0;
                }
                if self.open.len() >= MAX_OPEN
                    || self.new_this_second >= MAX_NEW_PER_SECOND
                    || e.shown >= MAX_SOURCES_PER_EXPOSURE
                {
                    self.suppressed += 1;
                    return None;
                }
                e.shown += 1;
            }
        }
        self.new_this_second = self.new_this_second.saturating_add(1);
        let (kind, line) = text::headline(rec)?;
        if self.open.len() < MAX_OPEN {
            self.open.insert(key, Open { first: now, count: 1, headline: line.clone(), record: rec.clone() });
        }
        let mut alert = Alert::new(AlertKind::of(kind), line, Some(rec.clone()));
        alert.priority = priority;
        Some(alert)
    }

    /// A new exposure of `target`: the first of a container in its window always goes
    /// out; further ones up to the per-target limit; the rest are counted.
    fn new_exposure(&mut self, target: &Target, rec: &Arc<Record>, now: Instant) -> NewExposure {
        let container = matches!(target, Target::Container(_));
        let budget = self.new_this_second < MAX_NEW_PER_SECOND;
        if !self.targets.contains_key(target) {
            let room = self.targets.len() < MAX_TARGETS && (container || self.address_targets < MAX_ADDRESS_TARGETS);
            if !room {
                // Not remembered: a container's is shown (containers are bounded by the
                // inventory); an address's within the shared budget.
                return match (container, budget) {
                    (true, _) => NewExposure::First,
                    (false, true) => NewExposure::Shown,
                    (false, false) => {
                        self.suppressed += 1;
                        NewExposure::Held
                    }
                };
            }
            let fresh =
                TargetWindow { start: now, last: now, shown: 0, held: 0, ports: PortSpan::default(), first_held: None };
            self.targets.insert(target.clone(), fresh);
            self.address_targets += usize::from(!container);
        }
        let Some(t) = self.targets.get_mut(target) else { return NewExposure::Held };
        t.last = now;
        // A window over with nothing held starts anew here; with something held, the
        // next flush says it first.
        if now.duration_since(t.start) >= self.window && t.held == 0 {
            (t.start, t.shown) = (now, 0);
        }
        if container && t.shown == 0 {
            t.shown = 1;
            return NewExposure::First;
        }
        if t.shown < MAX_NEW_EXPOSURES_PER_TARGET && (container || budget) {
            t.shown += 1;
            return NewExposure::Shown;
        }
        if container {
            t.held += 1;
            t.ports.add(rec.proto, rec.dst_port);
            t.first_held.get_or_insert_with(|| rec.clone());
        } else {
            self.suppressed += 1;
        }
        NewExposure::Held
    }

    /// Closes the windows that are over: a count line for alerts seen more than once,
    /// one summary per container whose new exposures were held back (priority), and a
    /// line for alerts held back by the shared limits (the first at once, then at most
    /// one a window). Forgets what was quiet for a window.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        let window = self.window;
        let mut out = Vec::new();
        self.open.retain(|_, o| {
            if now.duration_since(o.first) < window {
                return true;
            }
            if o.count > 1 {
                let mut line = o.headline.clone();
                let _ = write!(line, " ({} connections in {} s)", o.count, window.as_secs());
                out.push(Alert::new(AlertKind::Repeated, line, Some(o.record.clone())));
            }
            false
        });
        self.exposures.retain(|_, e| now.duration_since(e.last) < window);
        self.verified.retain(|_, t| now.duration_since(*t) < window);
        let mut forgotten_addresses = 0;
        self.targets.retain(|target, t| {
            if now.duration_since(t.start) >= window {
                if let Some(first) = t.first_held.take() {
                    let line = text::exposures_summary(t.held, &first, &t.ports, window.as_secs());
                    let mut alert = Alert::new(AlertKind::Suppressed, line, Some(first));
                    alert.priority = true;
                    out.push(alert);
                }
                (t.start, t.shown, t.held, t.ports) = (now, 0, 0, PortSpan::default());
            }
            let keep = now.duration_since(t.last) < window;
            forgotten_addresses += usize::from(!keep && matches!(target, Target::Address(_)));
            keep
        });
        self.address_targets -= forgotten_addresses;
        if self.suppressed > 0 && self.last_summary.is_none_or(|t| now.duration_since(t) >= window) {
            let text = format!(
                "WARNING: {} more alerts not shown (new sources at exposures already shown or addresses without a known container, over {MAX_NEW_PER_SECOND} per second or {MAX_SOURCES_PER_EXPOSURE} per exposure in {} s: a scan or a flood?); every connection is still in the JSON log",
                self.suppressed,
                window.as_secs()
            );
            out.push(Alert::new(AlertKind::Suppressed, text, None));
            self.suppressed = 0;
            self.last_summary = Some(now);
        }
        out.sort_by(|a, b| a.text.cmp(&b.text));
        out
    }

    /// Tables' sizes, for the tests' bounds.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize, usize) {
        (self.open.len(), self.exposures.len(), self.targets.len())
    }
}
