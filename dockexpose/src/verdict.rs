//! Attempted, reached, blocked: the verdict on every attempt the uplink saw.
//!
//! An attempt (uplink XDP, before any firewall) is followed within the window by:
//! - a reach on a bridge of the same connection: it got through. The reach names the
//!   connection exactly: its pre-DNAT destination comes from conntrack, and TCP/SCTP
//!   carry their initial sequence number, which DNAT leaves alone. Two SYNs from one
//!   source port to two host ports (a scanner's) are two attempts, settled apart;
//! - or an answer from the host (SYN-ACK / UDP reply leaving the uplink) without a
//!   reach: a proxy on the host (docker-proxy) relayed it, from the gateway address,
//!   which a bridge hook cannot tie to the outside source: reached through the proxy;
//! - or nothing: the firewall held, blocked.
//!
//! Pure bookkeeping on kernel timestamps; bounded. Every attempt gets a verdict, or is
//! counted: untracked (the table was full) or still open at exit.

use std::{
    collections::{hash_map::Entry, HashMap as StdHashMap},
    net::IpAddr,
};

use smallvec::SmallVec;

use crate::kernel::event::{IfName, Observation, Proto};

/// Outsiders choose these keys (addresses, ports): a randomly seeded hasher, much
/// cheaper than SipHash and still resistant to crafted collisions.
type HashMap<K, V> = StdHashMap<K, V, foldhash::quality::RandomState>;

/// Most attempts awaiting a verdict; past that, new ones are counted as untracked.
pub const MAX_TRACKED: usize = 65_536;

/// One connection attempt: its whole pre-DNAT tuple and its ISN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    src_port: u16,
    proto: Proto,
    host: IpAddr,
    host_port: u16,
    seq: u32,
}

/// What a reach without a known pre-DNAT destination can still be matched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SourceKey {
    src: IpAddr,
    src_port: u16,
    proto: Proto,
    seq: u32,
}

impl Key {
    /// An attempt or an answer: the destination is the host side.
    fn of_attempt(obs: &Observation) -> Self {
        Self {
            src: obs.src,
            src_port: obs.src_port,
            proto: obs.proto,
            host: obs.dst,
            host_port: obs.dst_port,
            seq: obs.seq,
        }
    }

    fn source(&self) -> SourceKey {
        SourceKey { src: self.src, src_port: self.src_port, proto: self.proto, seq: self.seq }
    }
}

struct Waiting {
    attempt: Observation,
    iface: IfName,
    answered: bool,
}

/// What became of an attempt that reached no bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answered by the host itself: relayed by a proxy.
    ReachedViaProxy { attempt: Observation, iface: IfName },
    /// Nothing answered: the firewall held.
    Blocked { attempt: Observation, iface: IfName },
}

impl Verdict {
    /// The attempt judged.
    pub fn attempt(&self) -> &Observation {
        match self {
            Verdict::ReachedViaProxy { attempt, .. } | Verdict::Blocked { attempt, .. } => attempt,
        }
    }
}

pub struct AttemptTracker {
    window_ns: u64,
    waiting: HashMap<Key, Waiting>,
    /// The waiting attempts by source, for reaches whose host side is unknown (nearly
    /// always one a source: kept inline, no allocation an attempt).
    by_source: HashMap<SourceKey, SmallVec<[Key; 1]>>,
    untracked: u64,
}

impl AttemptTracker {
    pub fn new(window_ns: u64) -> Self {
        Self { window_ns, waiting: HashMap::default(), by_source: HashMap::default(), untracked: 0 }
    }

    pub fn attempted(&mut self, obs: &Observation, iface: impl Into<IfName>) {
        let key = Key::of_attempt(obs);
        let full = self.waiting.len() >= MAX_TRACKED;
        let waiting = |iface: IfName| Waiting { attempt: obs.clone(), iface, answered: false };
        match self.waiting.entry(key) {
            // Attempted again (a retransmit past the kernel's window): a new wait.
            Entry::Occupied(mut known) => {
                known.insert(waiting(iface.into()));
            }
            Entry::Vacant(_) if full => self.untracked += 1,
            Entry::Vacant(new) => {
                new.insert(waiting(iface.into()));
                self.by_source.entry(key.source()).or_default().push(key);
            }
        }
    }

    fn settle(&mut self, key: &Key) -> Option<Waiting> {
        let w = self.waiting.remove(key)?;
        self.forget_source(key);
        Some(w)
    }

    /// `key` no longer waits: its source no longer names it.
    fn forget_source(&mut self, key: &Key) {
        let source = key.source();
        if let Some(keys) = self.by_source.get_mut(&source) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_source.remove(&source);
            }
        }
    }

    /// A reach settles its attempt. With the host side known (conntrack), exactly that
    /// one; without it, the attempts from the same source port and ISN, and when
    /// there is exactly one, its host side is returned for the record.
    pub fn reached(&mut self, obs: &Observation) -> Option<(IpAddr, u16)> {
        if let Some((host, host_port)) = obs.orig_dst {
            let key = Key { src: obs.src, src_port: obs.src_port, proto: obs.proto, host, host_port, seq: obs.seq };
            self.settle(&key);
            return None;
        }
        let source = SourceKey { src: obs.src, src_port: obs.src_port, proto: obs.proto, seq: obs.seq };
        let keys = self.by_source.remove(&source).unwrap_or_default();
        for key in &keys {
            self.waiting.remove(key);
        }
        match keys[..] {
            [only] => Some((only.host, only.host_port)),
            _ => None,
        }
    }

    pub fn answered(&mut self, obs: &Observation) {
        if let Some(w) = self.waiting.get_mut(&Key::of_attempt(obs)) {
            w.answered = true;
        }
    }

    /// Verdicts on the attempts whose window closed by `now_ns` (kernel clock), oldest
    /// first. A scan of what waits (at most MAX_TRACKED, about once a second): nothing
    /// is kept of an attempt once it is settled, so the memory is the table's, whatever
    /// the rate of attempts and the window (a queue of deadlines kept every settled
    /// attempt until its window ended: 2 s of a flood, tens of MiB).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Verdict> {
        let window = self.window_ns;
        let mut due: Vec<(Key, Waiting)> =
            self.waiting.extract_if(|_, w| w.attempt.ktime_ns.saturating_add(window) <= now_ns).collect();
        due.sort_unstable_by_key(|(_, w)| (w.attempt.ktime_ns, w.attempt.cpu, w.attempt.rec_seq));
        due.into_iter()
            .map(|(key, w)| {
                self.forget_source(&key);
                if w.answered {
                    Verdict::ReachedViaProxy { attempt: w.attempt, iface: w.iface }
                } else {
                    Verdict::Blocked { attempt: w.attempt, iface: w.iface }
                }
            })
            .collect()
    }

    /// Attempts dropped for lack of room since the last call.
    pub fn take_untracked(&mut self) -> u64 {
        std::mem::take(&mut self.untracked)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Entries held in all (the waits and their sources' index).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.waiting.len() + self.by_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::event::Stage;

    const S: u64 = 1_000_000_000;

    fn obs(stage: Stage, src_port: u16, at: u64) -> Observation {
        Observation {
            ktime_ns: at,
            stage,
            proto: Proto::Tcp,
            src: "198.18.3.2".parse().unwrap(),
            src_port,
            dst: "198.18.3.1".parse().unwrap(),
            dst_port: 8080,
            orig_dst: None,
            ifindex: 2,
            seq: 7,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        }
    }

    /// The reach of an attempt, past DNAT, with its host side from conntrack or not.
    fn reach_of(attempt: &Observation, conntrack: bool) -> Observation {
        Observation {
            stage: Stage::Reached,
            dst: "10.251.0.2".parse().unwrap(),
            dst_port: 80,
            orig_dst: conntrack.then_some((attempt.dst, attempt.dst_port)),
            ktime_ns: attempt.ktime_ns + 1000,
            ..attempt.clone()
        }
    }

    #[test]
    fn scanner_syns_from_one_source_port_to_two_host_ports_are_settled_apart() {
        let mut t = AttemptTracker::new(2 * S);
        let a = obs(Stage::Attempted, 1000, 10 * S);
        let b = Observation { dst_port: 8443, seq: 99, ..a.clone() };
        t.attempted(&a, "eth0");
        t.attempted(&b, "eth0");
        assert_eq!(t.len(), 2, "the later attempt does not overwrite the earlier");
        // Only 8443 reaches (conntrack names it): 8080 is blocked, not settled by it.
        assert_eq!(t.reached(&reach_of(&b, true)), None);
        let v = t.expire(20 * S);
        assert!(matches!(&v[..], [Verdict::Blocked { attempt, .. }] if attempt.dst_port == 8080), "{v:?}");
    }

    #[test]
    fn without_conntrack_a_reach_takes_the_host_side_only_when_one_attempt_fits() {
        let mut t = AttemptTracker::new(2 * S);
        let a = obs(Stage::Attempted, 1000, 10 * S);
        t.attempted(&a, "eth0");
        assert_eq!(t.reached(&reach_of(&a, false)), Some((a.dst, 8080)));
        assert!(t.is_empty());
        // Two attempts with the same ISN (a crafted scan): settled, host side unknown.
        let b = Observation { dst_port: 8443, ..a.clone() };
        t.attempted(&a, "eth0");
        t.attempted(&b, "eth0");
        assert_eq!(t.reached(&reach_of(&a, false)), None);
        assert!(t.is_empty());
        // Another ISN from the same port is another connection: not settled.
        t.attempted(&a, "eth0");
        let other = Observation { seq: 8, ..a.clone() };
        assert_eq!(t.reached(&reach_of(&other, false)), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_reach_settles_the_attempt() {
        let mut t = AttemptTracker::new(2 * S);
        let a = obs(Stage::Attempted, 1000, 10 * S);
        t.attempted(&a, "eth0");
        t.reached(&reach_of(&a, true));
        assert!(t.expire(20 * S).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn silence_is_blocked_and_only_after_the_window() {
        let mut t = AttemptTracker::new(2 * S);
        t.attempted(&obs(Stage::Attempted, 1000, 10 * S), "eth0");
        assert!(t.expire(11 * S).is_empty(), "window still open");
        let v = t.expire(12 * S);
        assert!(
            matches!(&v[..], [Verdict::Blocked { attempt, iface }] if attempt.src_port == 1000 && &**iface == "eth0")
        );
        assert!(t.expire(30 * S).is_empty(), "one verdict per attempt");
    }

    #[test]
    fn an_answer_without_a_reach_is_the_proxy() {
        let mut t = AttemptTracker::new(2 * S);
        t.attempted(&obs(Stage::Attempted, 1000, 10 * S), "eth0");
        t.answered(&obs(Stage::Attempted, 1000, 10 * S + 5));
        assert!(matches!(&t.expire(13 * S)[..], [Verdict::ReachedViaProxy { .. }]));
    }

    #[test]
    fn a_new_attempt_from_the_same_source_restarts_its_window() {
        let mut t = AttemptTracker::new(2 * S);
        t.attempted(&obs(Stage::Attempted, 1000, 10 * S), "eth0");
        t.attempted(&obs(Stage::Attempted, 1000, 11 * S), "eth0");
        assert!(t.expire(12 * S).is_empty());
        assert_eq!(t.expire(13 * S).len(), 1);
    }

    #[test]
    fn a_flood_of_settled_attempts_leaves_nothing_held() {
        let mut t = AttemptTracker::new(2 * S);
        for i in 0..200_000u32 {
            let mut a = obs(Stage::Attempted, (i % 60_000) as u16, S + u64::from(i));
            a.src = IpAddr::from([198, 19, (i >> 16) as u8, (i >> 8) as u8]);
            t.attempted(&a, "eth0");
            t.reached(&reach_of(&a, i % 2 == 0));
        }
        assert_eq!(t.held(), 0, "a reached attempt is forgotten at once, not when its window ends");
        assert!(t.expire(10 * S).is_empty());
    }

    #[test]
    fn verdicts_come_oldest_first_and_forget_their_sources() {
        let mut t = AttemptTracker::new(2 * S);
        // Ports in an order a hash map would not keep.
        for (n, port) in [5000u16, 17, 40_000, 3, 999, 12_345].into_iter().enumerate() {
            t.attempted(&obs(Stage::Attempted, port, S + n as u64 * 1000), "eth0");
        }
        let ports: Vec<u16> = t.expire(4 * S).iter().map(|v| v.attempt().src_port).collect();
        assert_eq!(ports, [5000, 17, 40_000, 3, 999, 12_345]);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = AttemptTracker::new(2 * S);
        for port in 0..(MAX_TRACKED as u32 + 10) {
            let mut o = obs(Stage::Attempted, (port % 65_536) as u16, S);
            o.src = IpAddr::from([198, 18, (port >> 16) as u8, 1]);
            t.attempted(&o, "eth0");
        }
        assert_eq!(t.len(), MAX_TRACKED);
        assert_eq!(t.take_untracked(), 10);
        assert_eq!(t.take_untracked(), 0);
    }
}
