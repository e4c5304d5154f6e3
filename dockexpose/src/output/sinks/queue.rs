//! A sink's queue: two bounded lanes, each of the sink's `queue` length. The priority
//! lane takes the alerts a flood must not push out (the first alert of a container in
//! a window, its window's summary, health alerts) and is always served first; the
//! other lane takes the rest. Offering never waits: a full lane drops the new alert,
//! and the caller counts it. Containers are bounded by the inventory and health
//! conditions by the code, so outsiders cannot fill the priority lane.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

use crate::output::alerts::Alert;

/// The two lanes (pure: no waiting).
#[derive(Debug)]
pub(super) struct Lanes {
    priority: VecDeque<Arc<Alert>>,
    normal: VecDeque<Arc<Alert>>,
    /// Most alerts in each lane.
    capacity: usize,
    closed: bool,
}

impl Lanes {
    pub(super) fn new(capacity: usize) -> Self {
        Self { priority: VecDeque::new(), normal: VecDeque::new(), capacity, closed: false }
    }

    /// Queues `alert` in its lane; false when that lane is full (or the queue closed):
    /// the alert is dropped.
    pub(super) fn push(&mut self, alert: Arc<Alert>) -> bool {
        let lane = if alert.priority { &mut self.priority } else { &mut self.normal };
        if self.closed || lane.len() >= self.capacity {
            return false;
        }
        lane.push_back(alert);
        true
    }

    /// The next alert to deliver: the priority lane first.
    pub(super) fn pop(&mut self) -> Option<Arc<Alert>> {
        self.priority.pop_front().or_else(|| self.normal.pop_front())
    }

    pub(super) fn len(&self) -> usize {
        self.priority.len() + self.normal.len()
    }
}

/// The lanes shared by a handle (which offers) and its worker (which waits).
pub(super) struct Queue {
    lanes: Mutex<Lanes>,
    ready: Notify,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { lanes: Mutex::new(Lanes::new(capacity)), ready: Notify::new() })
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Never waits; false when the alert was dropped.
    pub(super) fn offer(&self, alert: Arc<Alert>) -> bool {
        let queued = self.lanes().push(alert);
        if queued {
            self.ready.notify_one();
        }
        queued
    }

    /// The next alert, waiting for one; None once closed and empty.
    pub(super) async fn next(&self) -> Option<Arc<Alert>> {
        loop {
            {
                let mut lanes = self.lanes();
                if let Some(a) = lanes.pop() {
                    return Some(a);
                }
                if lanes.closed {
                    return None;
                }
            }
            // A permit stored by an offer made since the check wakes this at once.
            self.ready.notified().await;
        }
    }

    /// No more offers; the worker delivers what is queued, then ends.
    pub(super) fn close(&self) {
        self.lanes().closed = true;
        self.ready.notify_one();
    }

    pub(super) fn len(&self) -> usize {
        self.lanes().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alerts::AlertKind;

    fn alert(text: &str, priority: bool) -> Arc<Alert> {
        let mut a = Alert::new(AlertKind::Reached, text.into(), None);
        a.priority = priority;
        Arc::new(a)
    }

    #[test]
    fn a_full_lane_drops_and_the_priority_lane_goes_first() {
        let mut l = Lanes::new(2);
        assert!(l.push(alert("a", false)) && l.push(alert("b", false)));
        assert!(!l.push(alert("c", false)), "the normal lane is full");
        assert!(l.push(alert("first of db", true)), "a flood of others does not fill the priority lane");
        assert!(l.push(alert("health", true)));
        assert!(!l.push(alert("x", true)), "the priority lane is bounded too");
        let order: Vec<String> = std::iter::from_fn(|| l.pop()).map(|a| a.text.clone()).collect();
        assert_eq!(order, ["first of db", "health", "a", "b"]);
    }
}
