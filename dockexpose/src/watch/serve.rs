//! `watch` running and stopping: the loop that takes the ring's batches and every
//! other input in turn (`serve`), handing what it encoded to the audit log's writer
//! thread before each wait and releasing the ring only as far as the writer says it
//! wrote (the loop itself never waits on the disk); then the stop that drains what is
//! left, waits (bounded) for the writer, and says what stays attached (`stop`).

use std::time::{Duration, Instant};

use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Interval,
};

use super::{
    next_docker_state, sleep_until,
    verifying::{next_verify_result, VerifyResult},
    Watcher, AUDIT_RETRY, AUDIT_STOP_WAIT, BATCHES_PER_FLUSH, VERIFY_STOP_WAIT,
};
use crate::{
    error::{Error, Result},
    intent::IntentBook,
    inventory::docker::DockerState,
    kernel::ring,
    output::audit,
    state::{self, continuity::Continuity},
    status::Query,
    verify::drift::Cause,
};

/// The signals the daemon answers.
pub(super) struct Signals {
    pub(super) interrupt: Signal,
    pub(super) terminate: Signal,
    pub(super) hangup: Signal,
    pub(super) user1: Signal,
}

/// Everything the loop waits on.
pub(super) struct Inputs {
    /// The ring reader's batches, and the reader itself.
    pub(super) batches: mpsc::Receiver<ring::Batch>,
    /// What the audit log's writer thread says (how far it wrote, failures).
    pub(super) audit: mpsc::UnboundedReceiver<audit::Report>,
    pub(super) reader_task: JoinHandle<Result<u64>>,
    pub(super) reader_ended: bool,
    pub(super) stop_reader: Option<oneshot::Sender<()>>,
    pub(super) docker: Option<watch::Receiver<DockerState>>,
    pub(super) intent: mpsc::UnboundedReceiver<IntentBook>,
    pub(super) ground: mpsc::UnboundedReceiver<Cause>,
    pub(super) queries: mpsc::Receiver<Query>,
    pub(super) verify: Option<mpsc::UnboundedReceiver<VerifyResult>>,
    pub(super) signals: Signals,
    pub(super) refresh: Interval,
    pub(super) stats: Interval,
    /// Kept for as long as the loop runs (dropping it closes the socket).
    pub(super) _status_socket: Option<crate::status::server::StatusSocket>,
}

impl Watcher {
    /// The loop, until a signal (Ok: its name) or the reader's end (Err). A failure
    /// that must end the daemon at once is the outer Err.
    pub(super) async fn serve(
        &mut self,
        inputs: &mut Inputs,
        continuity: &mut Continuity,
    ) -> Result<Result<&'static str>> {
        // SIGINT/SIGTERM while a verify run goes: wait for it to clean up, then stop.
        let mut stopping: Option<(&'static str, Instant)> = None;
        loop {
            let verify_due = if stopping.is_some() {
                None
            } else {
                self.verify
                    .as_ref()
                    .and_then(|v| v.schedule.due())
                    .map(|due| self.drift_due().map_or(due, |d| d.min(due)))
            };
            // The writer's acknowledgements are read on each turn; they wake the loop
            // only while the log holds it back.
            if self.outputs.audit.full() || self.outputs.audit.unsent() {
                let said = self.outputs.audit.wake_on_write();
                self.outputs.audit_health(said.map(|line| (line, Some(true))));
            }
            let holding_all = self.outputs.audit.full();
            let unsent = self.outputs.audit.unsent();
            tokio::select! {
                // While the audit log holds all it may (a slow or full disk), records
                // wait in the ring.
                Some(batch) = inputs.batches.recv(), if !holding_all => {
                    self.handle_batch(&batch)?;
                    // Take the rest of a burst now; flushed below, once.
                    for _ in 0..BATCHES_PER_FLUSH {
                        let Ok(batch) = inputs.batches.try_recv() else { break };
                        self.handle_batch(&batch)?;
                    }
                }
                Some(report) = inputs.audit.recv() => self.outputs.audit_report(report),
                Some(state) = next_docker_state(&mut inputs.docker) => self.docker_changed(state)?,
                Some(book) = inputs.intent.recv() => self.intent_read(book),
                Some(cause) = inputs.ground.recv() => self.ground_moved(cause),
                _ = inputs.refresh.tick() => {
                    self.intent.tick(Instant::now());
                    self.ship_alerts();
                    self.refresh_host()?;
                    continuity.refreshed(&mut self.kernel);
                }
                _ = inputs.stats.tick() => self.report_counters()?,
                Some(query) = inputs.queries.recv() => self.answer(query),
                Some(result) = next_verify_result(&mut inputs.verify) => self.verify_done(result)?,
                _ = sleep_until(verify_due) => self.start_verify(),
                _ = inputs.signals.hangup.recv() => {
                    self.reopen_audit_log("SIGHUP");
                    self.reload().await;
                }
                _ = inputs.signals.user1.recv() => self.reopen_audit_log("SIGUSR1"),
                // The hand-off to the audit log's writer was full: try again (the
                // flush below) soon, even if nothing else wakes the loop.
                _ = tokio::time::sleep(AUDIT_RETRY), if unsent => {}
                _ = inputs.signals.interrupt.recv() => {
                    if !self.verify_running() {
                        return Ok(Ok("SIGINT"));
                    }
                    stopping.get_or_insert(("SIGINT", Instant::now() + VERIFY_STOP_WAIT));
                }
                _ = inputs.signals.terminate.recv() => {
                    if !self.verify_running() {
                        return Ok(Ok("SIGTERM"));
                    }
                    stopping.get_or_insert(("SIGTERM", Instant::now() + VERIFY_STOP_WAIT));
                }
                res = &mut inputs.reader_task => {
                    inputs.reader_ended = true;
                    return Ok(match res {
                        Ok(Ok(_)) => Err(Error::RingBuffer(std::io::Error::other("the reader stopped"))),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(Error::RingBuffer(std::io::Error::other(e))),
                    });
                }
            }
            // Before waiting again, everything seen so far goes to the writer; the ring
            // is released as far as it has written.
            self.flush();
            self.release_written(continuity);
            if let Some((reason, deadline)) = stopping {
                if !self.verify_running() {
                    return Ok(Ok(reason));
                }
                if Instant::now() >= deadline {
                    crate::say!(
                        "warning: the verify run in progress did not finish within {} s; stopping without its results",
                        VERIFY_STOP_WAIT.as_secs()
                    );
                    return Ok(Ok(reason));
                }
            }
        }
    }

    /// After a hand-off: notes what the chunks handed so far complete, then releases
    /// the ring and forgets the pinned copies as far as the writer has written.
    fn release_written(&mut self, continuity: &mut Continuity) {
        let handed = self.outputs.audit.handed();
        self.release.handed(handed, continuity.handled(), self.pending.take_written());
        let (ring, keys) = self.release.written(self.outputs.audit.written());
        continuity.released(ring);
        self.pending.forget(keys);
        self.ring_unreleased = continuity.unreleased();
    }

    /// At stop: waits, until `by` at most, for the writer to write all that was
    /// handed, releasing the ring as it goes. A failing log is not waited for (what it
    /// holds stays in the ring for the next daemon; the failure was said).
    async fn await_written(&mut self, inputs: &mut Inputs, continuity: &mut Continuity, by: Instant) {
        loop {
            let said = self.outputs.audit.wake_on_write();
            self.outputs.audit_health(said.map(|line| (line, Some(true))));
            self.release_written(continuity);
            let a = &self.outputs.audit;
            if (a.written() >= a.handed() && !a.unsent()) || a.stats().failing {
                return;
            }
            match tokio::time::timeout_at(by.into(), inputs.audit.recv()).await {
                Ok(Some(report)) => self.outputs.audit_report(report),
                Ok(None) => return,
                Err(_) => {
                    crate::say!(
                        "warning: the audit log's writer did not finish within {} s at exit; what it has not written stays in the kernel's ring for the next daemon",
                        AUDIT_STOP_WAIT.as_secs()
                    );
                    return;
                }
            }
        }
    }

    /// What the reader handed over, then what is still in the ring, gets written;
    /// the final lines; the kernel side detached or left recording, and said so.
    pub(super) async fn stop(
        mut self,
        outcome: Result<&'static str>,
        mut inputs: Inputs,
        mut continuity: Continuity,
    ) -> Result<()> {
        state::notify::tell("STOPPING=1");
        if let Some(stop) = inputs.stop_reader.take() {
            let _ = stop.send(());
        }
        let cursor = if inputs.reader_ended { None } else { (&mut inputs.reader_task).await.ok().and_then(|r| r.ok()) };
        while let Ok(batch) = inputs.batches.try_recv() {
            self.handle_batch(&batch)?;
        }
        if let Some(cursor) = cursor {
            let rest = ring::drain_rest(&continuity.ring(), cursor, &self.reader);
            self.handle_batch(&rest)?;
        }
        self.release_pending(true)?;
        self.flush();
        let write_by = Instant::now() + AUDIT_STOP_WAIT;
        self.await_written(&mut inputs, &mut continuity, write_by).await;
        if !self.attempts.is_empty() {
            crate::say!(
                "dockexpose: {} attempts were still within their --blocked-after window at exit: no verdict",
                self.attempts.len()
            );
        }
        let reason = outcome?;
        self.outputs.tick(Instant::now() + self.settings.alert_window);
        self.report_final_counters()?;
        let bridges: Vec<String> = self.kernel.bridges().chain(self.kernel.uplinks()).map(str::to_string).collect();
        let kept = continuity.pin_dir().filter(|_| !continuity.detach_on_exit).map(|d| d.dir.display().to_string());
        continuity.stop(&mut self.kernel, &mut self.outputs.audit, reason)?;
        // The last lines (daemon_stop) written before exit, within the same bound.
        let left = write_by.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        for (line, _) in self.outputs.audit.close(&mut inputs.audit, left).await {
            crate::say!("{line}");
        }
        if let Some(ship) = self.ship.take() {
            ship.stop();
        }
        // Give the sinks a moment to deliver the last alerts.
        let sinks = std::mem::take(&mut self.sinks);
        drop(self);
        drop(inputs);
        for s in sinks {
            if let Ok(s) = std::rc::Rc::try_unwrap(s) {
                s.stop().await;
            }
        }
        let list = if bridges.is_empty() { "nothing".into() } else { bridges.join(", ") };
        match kept {
            Some(dir) => crate::say!(
                "dockexpose: {reason}: the kernel side stays attached to {list} and keeps recording (pinned at {dir}; the next start resumes it, `dockexpose cleanup` removes it)"
            ),
            None => crate::say!("dockexpose: {reason}: detached from {list}"),
        }
        Ok(())
    }
}
