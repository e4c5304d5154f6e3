//! A prepared run, executed: the probes sent through the uplinks' receive path, what
//! the kernel said of each read back from the probe rings, and the conntrack entries
//! they made deleted.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Result};
use aya::maps::{MapData, RingBuf};
use dockexpose_common::{ProbeAnswer, PROBE_COUNTER_DROPPED, PROBE_COUNTER_LOST, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use super::{
    frame::{self, FrameSpec, Segment},
    host_state::{self, route_to, Neighbours},
    inject, interrupted,
    plan::{self, Answers, Probe, Verdict},
    sentinel, trace, Outcome, Prepared, ProbeResult, GUARD_GRACE, SCTP_INIT_ACK,
};
use crate::{
    host::interfaces,
    kernel::{
        event::{Observation, Proto, Stage},
        loader::{Kernel, KernelSettings},
    },
};

/// A random u32 (the ISNs, the first source port).
pub(super) fn random_u32() -> u32 {
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
pub(super) struct Sent {
    pub(super) probe: Probe,
    pub(super) sport: u16,
    pub(super) isn: u32,
    pub(super) at: SystemTime,
    pub(super) reached_on: Option<u32>,
    pub(super) answers: Answers,
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
    pub fn execute_noting(
        self,
        rate: u32,
        window: Duration,
        mut note: impl FnMut(IpAddr, u16, Proto),
    ) -> Result<Outcome> {
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
            .map_err(|e| {
                warnings.push(format!(
                    "warning: the guard is not pinned ({e}): a run killed outright (SIGKILL) loses its guard at once"
                ))
            })
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
                    anyhow!(
                        "injecting a probe into {} failed: {e:#}.\n  Fix: verify needs root (CAP_NET_ADMIN, CAP_BPF)",
                        uplink.name
                    )
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
                    (Verdict::Exposed, _) if targets[s.probe.target].direct => {
                        match trace::accept_of(&trace_lines, s.probe.source, s.sport) {
                            Some(rule) => format!("{why} directly; let through by {rule}"),
                            None => format!("{why} directly"),
                        }
                    }
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
    nix::net::if_::if_indextoname(ifindex)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("ifindex {ifindex}"))
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
        if let Some(s) =
            sent.iter_mut().find(|s| s.probe.source == obs.src && s.sport == obs.src_port && s.probe.proto == obs.proto)
        {
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
            s.probe.source == dst
                && s.sport == a.dst_port
                && s.probe.proto == proto
                && s.probe.dst == src
                && s.probe.dst_port == a.src_port
        }) else {
            continue;
        };
        match proto {
            Proto::Tcp if a.tcp_flags & (frame::TCP_SYN | frame::TCP_ACK) == frame::TCP_SYN | frame::TCP_ACK => {
                s.answers.syn_ack = true
            }
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
pub(super) fn delete_conntrack(sent: &[Sent], sources: &[IpAddr], warnings: &mut Vec<String>) -> (usize, usize) {
    host_state::delete_conntrack(sent.iter().map(|s| (&s.probe, s.sport)), sources, warnings)
}
