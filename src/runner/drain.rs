//! Drains: one pass per kind of work at a time in this process, batch after batch until nothing
//! of that kind can be taken. A pass is started by the kind's queue job (the durable way, which
//! any daemon on the database may run) or by a nudge from this process (intake storing events, the
//! sweep finding due work); asked to start while one runs, the running pass simply goes on.
//! Several daemons' passes of the same kind share the work: each claim skips what another holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use settled_jobs::job::WorkKind;
use tokio_util::sync::CancellationToken;

use crate::billing::{self, Billing, work};

#[derive(Default)]
struct Slot {
    running: AtomicBool,
    /// More work arrived while a pass ran: it takes another look before it ends.
    again: AtomicBool,
}

pub struct Drainers {
    billing: Arc<Billing>,
    slots: HashMap<WorkKind, Slot>,
    /// Set once this process runs workers: nudges before then (or in an HTTP-only daemon) do
    /// nothing, and the work waits for a daemon that runs them.
    started: AtomicBool,
    stop: CancellationToken,
}

/// Clears a slot's running mark however its pass ends (an error, a panic, shutdown).
struct Running<'a>(&'a Slot);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

impl Drainers {
    pub fn new(billing: Arc<Billing>) -> Drainers {
        Drainers {
            billing,
            slots: WorkKind::ALL
                .iter()
                .map(|k| (*k, Slot::default()))
                .collect(),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    fn slot(&self, kind: WorkKind) -> &Slot {
        // Every kind has a slot from the start.
        &self.slots[&kind]
    }

    /// This process runs workers from now on.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Stops starting batches; a batch in progress finishes.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// True while no pass of any kind runs in this process.
    pub fn idle(&self) -> bool {
        self.slots
            .values()
            .all(|s| !s.running.load(Ordering::SeqCst))
    }

    /// Waits (at most `within`) until no pass runs.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.idle() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Runs passes of `kind` until nothing of it can be taken; returns how many items they took.
    /// If a pass of `kind` already runs here, it is asked to take another look and this returns
    /// at once.
    pub async fn run(&self, kind: WorkKind) -> billing::Result<usize> {
        let slot = self.slot(kind);
        if slot.running.swap(true, Ordering::SeqCst) {
            slot.again.store(true, Ordering::SeqCst);
            return Ok(0);
        }
        let _running = Running(slot);
        let mut total = 0;
        loop {
            slot.again.store(false, Ordering::SeqCst);
            if self.stop.is_cancelled() {
                return Ok(total);
            }
            let started = Instant::now();
            let taken = work::drain(&self.billing, kind, &self.stop).await?;
            if taken > 0 {
                crate::metrics::work_batch(kind, taken, started.elapsed());
            }
            total += taken;
            if taken == 0 && !slot.again.load(Ordering::SeqCst) {
                return Ok(total);
            }
        }
    }

    /// Starts a pass of `kind` in the background (or asks the running one to go on).
    pub fn kick(self: &Arc<Self>, kind: WorkKind) {
        if !self.started.load(Ordering::SeqCst) || self.stop.is_cancelled() {
            return;
        }
        let slot = self.slot(kind);
        if slot.running.load(Ordering::SeqCst) {
            slot.again.store(true, Ordering::SeqCst);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.run(kind).await {
                tracing::warn!(kind = kind.name(), error = %e, "drain failed; the sweep starts it again");
            }
        });
    }
}
