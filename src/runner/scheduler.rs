//! The sweep: every tick (and at once when nudged) it asks each kind of work whether something
//! can be taken, starts a drain of that kind here and arms the kind's queue job for any daemon on
//! the database; it also answers the manual clock's "ready" question and cleans up finished
//! queue rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use settled_jobs::clock::{Clock, ManualClock};
use settled_jobs::job::WorkKind;
use tokio::sync::Notify;

use super::drain::Drainers;
use crate::billing::{self, Billing, work};
use crate::store::{self, Db, queue};

/// Finished queue rows are kept this long for the operator, then deleted.
const KEEP_DONE_JOBS: Duration = Duration::from_secs(7 * 24 * 3600);
const VACUUM_EVERY: Duration = Duration::from_secs(3600);

/// Finds due work and keeps the clock's "ready" promise.
pub struct Scheduler {
    billing: Arc<Billing>,
    manual: Option<Arc<ManualClock>>,
    pub(super) drainers: Arc<Drainers>,
    pub(super) wake: Notify,
    /// Milliseconds since start of the last completed sweep (the watchdog's sign of life).
    last_sweep: AtomicI64,
    /// Milliseconds since start of the last clean-up of finished jobs.
    last_vacuum: AtomicI64,
    started: Instant,
    /// The job queue's own pool, once the worker opened it (its use is reported at /metrics).
    pub(super) queue_db: std::sync::OnceLock<Db>,
}

impl Scheduler {
    pub fn new(
        billing: Arc<Billing>,
        manual: Option<Arc<ManualClock>>,
        drainers: Arc<Drainers>,
    ) -> Scheduler {
        Scheduler {
            billing,
            manual,
            drainers,
            wake: Notify::new(),
            last_sweep: AtomicI64::new(-1),
            last_vacuum: AtomicI64::new(-1),
            started: Instant::now(),
            queue_db: std::sync::OnceLock::new(),
        }
    }

    /// The job queue's pool, when this process runs workers.
    pub fn queue_db(&self) -> Option<Db> {
        self.queue_db.get().cloned()
    }

    /// Asks for a sweep now rather than at the next tick (an operator's change, a clock advance).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Work of `kind` was just stored here: a drain starts at once if this process runs workers
    /// (other daemons find it at their next sweep).
    pub fn kick(&self, kind: WorkKind) {
        self.drainers.kick(kind);
    }

    /// The manual clock moved: look for work that became due.
    pub fn mark_advanced(&self) {
        self.nudge();
    }

    /// True when a sweep completed within `within` (the runner is not wedged).
    pub fn alive_within(&self, within: Duration) -> bool {
        let last = self.last_sweep.load(Ordering::Relaxed);
        last >= 0 && (self.started.elapsed().as_millis() as i64 - last) <= within.as_millis() as i64
    }

    /// How long ago the last sweep completed (None before the first).
    pub fn since_last_sweep(&self) -> Option<Duration> {
        let last = self.last_sweep.load(Ordering::Relaxed);
        (last >= 0).then(|| {
            Duration::from_millis((self.started.elapsed().as_millis() as i64 - last).max(0) as u64)
        })
    }

    /// A manual clock advanced elsewhere (`settled clock advance`, another daemon on the same
    /// database) is followed here, so every daemon lives at the same instant.
    pub async fn follow_stored_clock(&self) -> store::Result<()> {
        if let Some(manual) = &self.manual {
            let stored = store::settings::get(&self.billing.db, store::settings::CLOCK).await?;
            if let Some(t) = stored.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()) {
                let t = t.with_timezone(&Utc);
                if t > manual.now() {
                    let _ = manual.advance_to(t);
                }
            }
        }
        Ok(())
    }

    /// Starts a drain of every kind that has something to take, here and (through its queue
    /// job) for any daemon on the database; returns the kinds.
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self) -> billing::Result<Vec<WorkKind>> {
        self.follow_stored_clock().await?;
        let now = self.billing.now();
        let mut due = Vec::new();
        for kind in WorkKind::ALL {
            if work::claimable(&self.billing, *kind, now).await? {
                due.push(*kind);
            }
        }
        if !due.is_empty() {
            for kind in &due {
                self.drainers.kick(*kind);
            }
            queue::arm_drains(&self.billing.db, &due, self.billing.max_attempts()).await?;
            tracing::debug!(kinds = ?due, "sweep found due work");
        }
        let elapsed = self.started.elapsed().as_millis() as i64;
        self.last_sweep.store(elapsed, Ordering::Relaxed);
        let last_vacuum = self.last_vacuum.load(Ordering::Relaxed);
        if last_vacuum < 0 || elapsed - last_vacuum >= VACUUM_EVERY.as_millis() as i64 {
            self.last_vacuum.store(elapsed, Ordering::Relaxed);
            let before = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.saturating_sub(KEEP_DONE_JOBS).as_secs() as i64)
                .unwrap_or(0);
            match queue::vacuum(&self.billing.db, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted finished jobs older than 7 days"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old finished jobs"),
            }
            let keys_before = crate::store::wall_ms() - crate::store::idempotency_keys::KEEP_MS;
            match crate::store::idempotency_keys::vacuum(&self.billing.db, keys_before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "deleted idempotency keys older than 48 hours")
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete old idempotency keys"),
            }
            match super::retention::prune(&self.billing, false).await {
                Ok(p) if p == super::retention::Pruned::default() => {}
                Ok(p) => tracing::info!(
                    webhook_bodies = p.webhook_bodies,
                    email_snapshots = p.email_snapshots,
                    "retention: pruned stored bodies past their age"
                ),
                Err(e) => tracing::warn!(error = %e, "retention: cannot prune"),
            }
        }
        Ok(due)
    }

    /// Ready when every piece of work due at `now` is done: nothing waits, runs, is in flight or
    /// is set aside after a failure, in any table, and no drain runs here.
    pub async fn is_ready(&self, now: DateTime<Utc>) -> billing::Result<bool> {
        self.sweep().await?;
        if !self.drainers.idle() {
            return Ok(false);
        }
        let pending = work::pending(&self.billing, now).await?;
        Ok(pending.iter().all(|(_, n)| *n == 0) && self.drainers.idle())
    }

    /// What is due and not done, per kind (for the operator and the metrics).
    pub async fn pending(&self) -> billing::Result<Vec<(WorkKind, i64)>> {
        work::pending(&self.billing, self.billing.now()).await
    }
}
