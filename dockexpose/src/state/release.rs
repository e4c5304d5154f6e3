//! What may be released once the audit log's writer says how far it wrote.
//!
//! The loop hands the writer thread numbered chunks (`output::audit`) and never waits
//! for them. After each hand-off it notes here the last chunk number and what that
//! chunk completes: the ring position every record of which is in it or before it,
//! and the pinned copies of records that waited for identity (`state::pending`). When
//! the writer acknowledges a number, everything noted up to it is on disk: the ring
//! is released that far and those copies are forgotten; never further, so a slow or
//! failing disk holds the ring (its records wait there) and loses nothing.

use std::collections::VecDeque;

/// One hand-off's worth: up to chunk `seq`, the ring up to `ring` is written, and
/// the pinned copies `keys` may go.
struct Mark<K> {
    seq: u64,
    ring: u64,
    keys: Vec<K>,
}

pub struct ReleaseLedger<K> {
    marks: VecDeque<Mark<K>>,
}

impl<K> Default for ReleaseLedger<K> {
    fn default() -> Self {
        Self { marks: VecDeque::new() }
    }
}

impl<K> ReleaseLedger<K> {
    /// After a hand-off: every record handled so far (the ring up to `ring`, the
    /// pending records `keys`) is in a chunk numbered `seq` or less.
    pub fn handed(&mut self, seq: u64, ring: u64, keys: Vec<K>) {
        match self.marks.back_mut() {
            // Nothing new handed since: the same chunk completes more (batches that
            // wrote nothing).
            Some(last) if last.seq == seq => {
                last.ring = last.ring.max(ring);
                last.keys.extend(keys);
            }
            _ => self.marks.push_back(Mark { seq, ring, keys }),
        }
    }

    /// The writer has written every chunk up to `written`: the ring position that
    /// may be released (None: nothing new) and the pinned copies that may go.
    pub fn written(&mut self, written: u64) -> (Option<u64>, Vec<K>) {
        let (mut ring, mut keys) = (None, Vec::new());
        while self.marks.front().is_some_and(|m| m.seq <= written) {
            if let Some(m) = self.marks.pop_front() {
                ring = Some(ring.map_or(m.ring, |r: u64| r.max(m.ring)));
                keys.extend(m.keys);
            }
        }
        (ring, keys)
    }

    /// Hand-offs not yet acknowledged.
    pub fn waiting(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_released_up_to_what_is_written_and_held_at_unwritten_chunks() {
        let mut l = ReleaseLedger::default();
        // Nothing handed yet (chunk 0 is "none"): everything handled is released.
        l.handed(0, 960, vec!['a']);
        assert_eq!(l.written(0), (Some(960), vec!['a']));
        // Chunk 1 holds the records up to 1920; the writer is slow (or failing): held
        // at 960, however many batches follow, until it is written.
        l.handed(1, 1920, vec!['b']);
        l.handed(2, 4800, vec![]);
        assert_eq!(l.written(0), (None, vec![]));
        assert_eq!(l.waiting(), 2);
        assert_eq!(l.written(1), (Some(1920), vec!['b']));
        // Batches that wrote nothing complete the last chunk handed.
        l.handed(2, 5760, vec!['c']);
        assert_eq!(l.written(2), (Some(5760), vec!['c']));
        assert_eq!(l.waiting(), 0);
        // Never backwards.
        l.handed(2, 100, vec![]);
        l.handed(3, 6000, vec![]);
        assert_eq!(l.written(3).0, Some(6000));
    }

    #[test]
    fn an_acknowledgement_of_several_chunks_releases_the_furthest() {
        let mut l = ReleaseLedger::default();
        for seq in 1..=5 {
            l.handed(seq, seq * 100, vec![seq]);
        }
        assert_eq!(l.written(4), (Some(400), vec![1, 2, 3, 4]));
        assert_eq!(l.written(5), (Some(500), vec![5]));
    }
}
