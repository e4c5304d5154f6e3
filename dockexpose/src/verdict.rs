//! Attempted, reached, blocked: the verdict on every attempt the uplink saw.
//!
//! An attempt (uplink XDP, before any firewall) is followed within the window by:
//! - a reach on a bridge (same source address, port and protocol): it got through;
//! - or an answer from the host (SYN-ACK / UDP reply leaving the uplink) without a
//!   reach: a proxy on the host (docker-proxy) relayed it, from the gateway address,
//!   which a bridge hook cannot tie to the outside source: reached through the proxy;
//! - or nothing: the firewall held, blocked.
//!
//! Pure bookkeeping on kernel timestamps; bounded.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use crate::kernel::event::{Observation, Proto};

/// Most attempts awaiting a verdict; past that, new ones are counted as untracked.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    src_port: u16,
    proto: Proto,
}

impl Key {
    fn of(obs: &Observation) -> Self {
        Self { src: obs.src, src_port: obs.src_port, proto: obs.proto }
    }
}

struct Waiting {
    attempt: Observation,
    iface: String,
    answered: bool,
}

/// What became of an attempt that reached no bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answered by the host itself: relayed by a proxy.
    ReachedViaProxy { attempt: Observation, iface: String },
    /// Nothing answered: the firewall held.
    Blocked { attempt: Observation, iface: String },
}

pub struct AttemptTracker {
    window_ns: u64,
    waiting: HashMap<Key, Waiting>,
    /// Keys in arrival order with their deadlines (an entry may be stale: the key
    /// was settled or re-attempted; checked against `waiting`).
    deadlines: VecDeque<(u64, Key)>,
    untracked: u64,
}

impl AttemptTracker {
    pub fn new(window_ns: u64) -> Self {
        Self { window_ns, waiting: HashMap::new(), deadlines: VecDeque::new(), untracked: 0 }
    }

    pub fn attempted(&mut self, obs: &Observation, iface: &str) {
        let key = Key::of(obs);
        if !self.waiting.contains_key(&key) && self.waiting.len() >= MAX_TRACKED {
            self.untracked += 1;
            return;
        }
        self.waiting.insert(key, Waiting { attempt: obs.clone(), iface: iface.to_string(), answered: false });
        self.deadlines.push_back((obs.ktime_ns.saturating_add(self.window_ns), key));
    }

    /// A reach settles the attempt from the same source.
    pub fn reached(&mut self, obs: &Observation) {
        self.waiting.remove(&Key::of(obs));
    }

    pub fn answered(&mut self, obs: &Observation) {
        if let Some(w) = self.waiting.get_mut(&Key::of(obs)) {
            w.answered = true;
        }
    }

    /// Verdicts on the attempts whose window closed by `now_ns` (kernel clock).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Verdict> {
        let mut out = Vec::new();
        while let Some(&(deadline, key)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_front();
            let due = self.waiting.get(&key).is_some_and(|w| w.attempt.ktime_ns.saturating_add(self.window_ns) <= now_ns);
            if !due {
                continue;
            }
            let w = self.waiting.remove(&key).expect("checked above");
            out.push(if w.answered {
                Verdict::ReachedViaProxy { attempt: w.attempt, iface: w.iface }
            } else {
                Verdict::Blocked { attempt: w.attempt, iface: w.iface }
            });
        }
        out
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
        }
    }

    #[test]
    fn a_reach_settles_the_attempt() {
        let mut t = AttemptTracker::new(2 * S);
        t.attempted(&obs(Stage::Attempted, 1000, 10 * S), "eth0");
        t.reached(&obs(Stage::Reached, 1000, 10 * S + 1000));
        assert!(t.expire(20 * S).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn silence_is_blocked_and_only_after_the_window() {
        let mut t = AttemptTracker::new(2 * S);
        t.attempted(&obs(Stage::Attempted, 1000, 10 * S), "eth0");
        assert!(t.expire(11 * S).is_empty(), "window still open");
        let v = t.expire(12 * S);
        assert!(matches!(&v[..], [Verdict::Blocked { attempt, iface }] if attempt.src_port == 1000 && iface == "eth0"));
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
