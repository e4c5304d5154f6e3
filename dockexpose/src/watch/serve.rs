//! `watch` running and stopping: the loop that takes the ring's batches and every
//! other input in turn (`serve`), writing and flushing before each wait so that the
//! ring is released only past what is written; then the stop that drains what is left
//! and says what stays attached (`stop`).

use std::time::Instant;

use tokio::{
    signal::unix::Signal,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Interval,
};

use super::{
    next_docker_state, sleep_until,
    verifying::{next_verify_result, VerifyResult},
    Watcher, AUDIT_RETRY, BATCHES_PER_FLUSH, VERIFY_STOP_WAIT,
};
use crate::{
    error::{Error, Result},
    intent::IntentBook,
    inventory::docker::DockerState,
    kernel::ring,
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
            let holding_all = self.outputs.audit.full();
            let holding = self.outputs.audit.holding();
            tokio::select! {
                // While the audit log holds all it may (a full disk), records wait in the ring.
                Some(batch) = inputs.batches.recv(), if !holding_all => {
                    self.handle_batch(&batch)?;
                    // Take the rest of a burst now; flushed below, once.
                    for _ in 0..BATCHES_PER_FLUSH {
                        let Ok(batch) = inputs.batches.try_recv() else { break };
                        self.handle_batch(&batch)?;
                    }
                }
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
                // The audit log failed: try it again (the flush below) now and then.
                _ = tokio::time::sleep(AUDIT_RETRY), if holding => {}
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
            // Before waiting again, everything seen so far is written out; then (only
            // then) its ring space is released.
            self.flush();
            let holding = self.outputs.audit.holding();
            continuity.flushed(holding);
            self.pending.flushed(!holding);
            self.ring_unreleased = continuity.unreleased();
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

    /// What the reader handed over, then what is still in the ring, gets written;
    /// the final lines; the kernel side detached or left recording, and said so.
    pub(super) async fn stop(
        mut self,
        outcome: Result<&'static str>,
        mut inputs: Inputs,
        continuity: Continuity,
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
