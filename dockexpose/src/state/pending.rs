//! Records held back while the inventory catches up with their container (a reach of
//! an address on a Docker network that no known container holds yet).
//!
//! They never hold the ring: an outsider who reaches such an address once a second
//! (a VM bridged into docker0, a just-removed container's address) would otherwise
//! keep the ring's space from ever being released, and a flood would then find it
//! full. Their ring space is released like any other's; each is kept instead in the
//! pinned PENDING map until it is written, so that a daemon killed meanwhile loses
//! none: the next one finds them there and writes them (with whatever identity it
//! then knows). Bounded: past PENDING_MAX a record is written at once, unnamed.

use std::time::Instant;

use aya::maps::{HashMap, MapData};
use dockexpose_common::{ConnEvent, PendingKey};

use crate::kernel::event::{IfName, Observation};

/// One record waiting: its observation, interface name and deadline.
struct Waiting {
    obs: Observation,
    iface: IfName,
    deadline: Instant,
}

pub struct PendingRecords {
    waiting: Vec<Waiting>,
    /// The pinned copy (None without the kernel side: tests, `--no-pin` still has it
    /// unpinned).
    map: Option<HashMap<MapData, PendingKey, ConnEvent>>,
    capacity: usize,
    /// Records the map refused (full or failing): written at once without identity.
    pub refused: u64,
    /// Written, but perhaps only into the audit log's memory: their pinned copies go
    /// once its writer has written them (`take_written`, `forget`).
    written: Vec<PendingKey>,
}

fn key_of(cpu: u32, rec_seq: u64) -> PendingKey {
    [u64::from(cpu), rec_seq]
}

impl PendingRecords {
    pub fn new(map: Option<HashMap<MapData, PendingKey, ConnEvent>>, capacity: usize) -> Self {
        Self { waiting: Vec::new(), map, capacity, refused: 0, written: Vec::new() }
    }

    /// What a previous daemon left waiting (at start): to be handled again. They stay
    /// in the map until written.
    pub fn left_by_previous(&self) -> Vec<ConnEvent> {
        let Some(map) = &self.map else { return Vec::new() };
        let mut out: Vec<ConnEvent> = map.iter().filter_map(|r| r.ok().map(|(_, ev)| ev)).collect();
        out.sort_by_key(|ev| ev.ktime_ns);
        out
    }

    /// Holds `ev` until `deadline`. False when it cannot be kept safely (full): the
    /// caller writes it now.
    pub fn hold(&mut self, ev: &ConnEvent, obs: Observation, iface: IfName, deadline: Instant) -> bool {
        if self.waiting.len() >= self.capacity {
            self.refused += 1;
            return false;
        }
        if let Some(map) = &mut self.map {
            if map.insert(key_of(ev.cpu, ev.rec_seq), *ev, 0).is_err() {
                self.refused += 1;
                return false;
            }
        }
        self.waiting.push(Waiting { obs, iface, deadline });
        true
    }

    /// Takes the records to write now: those whose time is up, those `still_waits`
    /// no longer holds for, or all of them. They leave the map once the caller has
    /// written them (`written`).
    pub fn take_due(
        &mut self,
        all: bool,
        mut still_waits: impl FnMut(&Observation) -> bool,
    ) -> Vec<(Observation, IfName)> {
        let now = Instant::now();
        let (due, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| all || now >= w.deadline || !still_waits(&w.obs));
        self.waiting = keep;
        due.into_iter().map(|w| (w.obs, w.iface)).collect()
    }

    /// The record went to the audit log: its pinned copy goes once that is written.
    pub fn written(&mut self, obs: &Observation) {
        if self.map.is_some() {
            self.written.push(key_of(obs.cpu, obs.rec_seq));
        }
    }

    /// A previous daemon's records, handled again: their pinned copies go once they
    /// are written, unless held again.
    pub fn forget_unless_held(&mut self, left: &[ConnEvent]) {
        if self.map.is_some() {
            self.written.extend(left.iter().map(|ev| key_of(ev.cpu, ev.rec_seq)));
        }
    }

    /// The pinned copies of the records written since the last hand-off to the audit
    /// log's writer: `state::release` gives them back (`forget`) once it wrote them.
    pub fn take_written(&mut self) -> Vec<PendingKey> {
        std::mem::take(&mut self.written)
    }

    /// Their records are in the file: the pinned copies go.
    pub fn forget(&mut self, keys: Vec<PendingKey>) {
        if keys.is_empty() {
            return;
        }
        let waiting: Vec<PendingKey> = self.waiting.iter().map(|w| key_of(w.obs.cpu, w.obs.rec_seq)).collect();
        if let Some(map) = &mut self.map {
            for key in keys {
                // Held again since (a record a previous daemon left): it stays.
                if !waiting.contains(&key) {
                    let _ = map.remove(&key);
                }
            }
        }
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
    use std::time::Duration;

    use super::*;
    use crate::kernel::event::Observation;

    fn event(rec_seq: u64, last: u8) -> ConnEvent {
        let mut ev = ConnEvent::zeroed();
        ev.family = dockexpose_common::FAMILY_IPV4;
        ev.proto = dockexpose_common::PROTO_TCP;
        ev.stage = dockexpose_common::STAGE_REACHED;
        ev.dst_addr[..4].copy_from_slice(&[172, 17, 254, last]);
        ev.rec_seq = rec_seq;
        ev
    }

    #[test]
    fn records_wait_until_named_or_due_and_never_past_the_bound() {
        let mut p = PendingRecords::new(None, 2);
        let later = Instant::now() + Duration::from_secs(60);
        for (seq, last) in [(1, 10), (2, 11)] {
            let ev = event(seq, last);
            assert!(p.hold(&ev, Observation::from_event(&ev).unwrap(), "docker0".into(), later));
        }
        let ev = event(3, 12);
        assert!(
            !p.hold(&ev, Observation::from_event(&ev).unwrap(), "docker0".into(), later),
            "past the bound: written at once"
        );
        assert_eq!((p.len(), p.refused), (2, 1));
        // .11 got a name: it goes; .10 still waits.
        let due = p.take_due(false, |obs| obs.dst != "172.17.254.11".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(due.iter().map(|(o, _)| o.rec_seq).collect::<Vec<_>>(), [2]);
        assert_eq!(p.len(), 1);
        let due = p.take_due(true, |_| true);
        assert_eq!(due.len(), 1);
        assert!(p.is_empty());
    }
}
