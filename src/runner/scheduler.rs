//! The sweep: finds due work and enqueues it (the database is the truth, a job is a nudge), keeps
//! its place in the walk through due subscriptions, cleans up finished jobs, and answers the
//! manual clock's "ready" question.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use settled_jobs::clock::{Clock, ManualClock};
use settled_jobs::job::Job;
use tokio::sync::Notify;

use crate::billing::{self, Billing, due};
use crate::store::subscriptions::DueCursor;
use crate::store::{self, Db, queue};

/// How often the sweep looks for stored events and outbox rows whose job was lost.
const LOST_JOB_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Finds due work and keeps the clock's "ready" promise.
pub struct Scheduler {
    billing: Arc<Billing>,
    manual: Option<Arc<ManualClock>>,
    pub(super) wake: Notify,
    /// Jobs finished: sweep soon, together with whatever else finishes meanwhile.
    pub(super) wake_soon: Notify,
    /// How far the sweep's walk through the due subscriptions has got, and when it last
    /// started from the first.
    walk: std::sync::Mutex<Walk>,
    /// Milliseconds since start of the last completed sweep (the watchdog's sign of life).
    last_sweep: AtomicI64,
    /// Milliseconds since start of the last clean-up of finished jobs.
    last_vacuum: AtomicI64,
    /// Jobs this process has finished; readiness is only trusted if none finished while it was
    /// being checked (a job finishing mid-check can make new work due between two queries).
    finished_jobs: AtomicI64,
    started: Instant,
    /// The job queue's own pool, once the worker opened it (its use is reported at /metrics).
    pub(super) queue_db: std::sync::OnceLock<Db>,
    /// When the sweep last looked for stored events and outbox rows whose job was lost.
    last_lost_job_check: std::sync::Mutex<Option<Instant>>,
}

/// How far the sweep's walk through the due subscriptions has got (the position of the last
/// one it enqueued), and when the walk last started from the first.
struct Walk {
    cursor: Option<DueCursor>,
    started: Instant,
}

/// The sweep's walk through the due subscriptions starts over from the first this often.
const WALK_RESTART: Duration = Duration::from_secs(30);

/// How soon after the last sweep a finished job's nudge sweeps again.
pub(super) const SWEEP_AFTER_JOBS: Duration = Duration::from_millis(250);

/// Finished jobs are kept this long for the operator, then deleted (failed ones are kept).
const KEEP_DONE_JOBS: Duration = Duration::from_secs(7 * 24 * 3600);
const VACUUM_EVERY: Duration = Duration::from_secs(3600);

impl Scheduler {
    pub fn new(billing: Arc<Billing>, manual: Option<Arc<ManualClock>>) -> Scheduler {
        Scheduler {
            billing,
            manual,
            wake: Notify::new(),
            wake_soon: Notify::new(),
            walk: std::sync::Mutex::new(Walk {
                cursor: None,
                started: Instant::now(),
            }),
            last_sweep: AtomicI64::new(-1),
            last_vacuum: AtomicI64::new(-1),
            finished_jobs: AtomicI64::new(0),
            started: Instant::now(),
            queue_db: std::sync::OnceLock::new(),
            last_lost_job_check: std::sync::Mutex::new(None),
        }
    }

    /// True at most once per [`LOST_JOB_CHECK_EVERY`] (and at the first sweep of the process):
    /// sweeps run after every finished job, and with a backlog of events this scan would
    /// otherwise run continuously.
    fn lost_job_check_due(&self) -> bool {
        let mut last = self
            .last_lost_job_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *last {
            Some(t) if t.elapsed() < LOST_JOB_CHECK_EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// The job queue's pool, when this process runs workers.
    pub fn queue_db(&self) -> Option<Db> {
        self.queue_db.get().cloned()
    }

    /// Asks for a sweep now rather than at the next tick, from the first due subscription (an
    /// operator's change may have made one due that lies before the walk's position).
    pub fn nudge(&self) {
        self.lock_walk().cursor = None;
        self.wake.notify_one();
    }

    fn lock_walk(&self) -> std::sync::MutexGuard<'_, Walk> {
        self.walk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A job finished and its effects may have made more work due: sweep within
    /// [`SWEEP_AFTER_JOBS`] of the last sweep. Thousands of jobs finishing a second then cost a
    /// few sweeps, not thousands.
    pub fn nudge_soon(&self) {
        self.wake_soon.notify_one();
    }

    /// How long ago the last sweep completed, if one has.
    pub(super) fn since_last_sweep(&self) -> Option<Duration> {
        let last = self.last_sweep.load(Ordering::Relaxed);
        (last >= 0).then(|| {
            Duration::from_millis((self.started.elapsed().as_millis() as i64 - last).max(0) as u64)
        })
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

    /// Every piece of work due at `now` as the job that does it (the first page of due
    /// subscriptions).
    pub async fn due_jobs(&self, now: DateTime<Utc>) -> billing::Result<Vec<Job>> {
        Ok(due::due_jobs(&self.billing, now, None, false).await?.0)
    }

    /// Enqueues every due job not already queued; returns how many were new.
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self) -> billing::Result<usize> {
        self.follow_stored_clock().await?;
        let now = self.billing.now();
        // Due subscriptions are walked in (next_period_start, id) order, a page per sweep, from
        // where the last sweep stopped: a backlog is not re-read from its start each time (its
        // first pages are queued already), and whatever falls due later lies further on. The walk
        // starts over when nudged (an operator's change may have made due a subscription that
        // lies before its position) and every WALK_RESTART as a safety net.
        let after = {
            let mut walk = self.lock_walk();
            if walk.started.elapsed() >= WALK_RESTART {
                walk.started = Instant::now();
                walk.cursor = None;
            }
            walk.cursor.clone()
        };
        let lost_jobs = self.lost_job_check_due();
        let (jobs, next) = due::due_jobs(&self.billing, now, after.as_ref(), lost_jobs).await?;

        let mut added = 0;
        if !jobs.is_empty() {
            let mut tx = self.billing.db.begin().await?;
            added = queue::enqueue_many(&mut tx, &jobs, self.billing.max_attempts()).await?;
            tx.commit().await?;
        }
        {
            // An explicit nudge during this sweep reset the walk; keep the reset. An empty page
            // leaves the position where it is.
            let mut walk = self.lock_walk();
            if walk.cursor == after && next.is_some() {
                walk.cursor = next;
            }
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
        }
        if added > 0 {
            tracing::debug!(added, "sweep enqueued due work");
        }

        Ok(added)
    }

    /// Ready when no job is unfinished and every piece of work due at `now` has a finished job.
    /// The order matters: with nothing running at the first check, any work that becomes due
    /// later comes from a job enqueued later, which the second check sees as not finished.
    pub async fn is_ready(&self, now: DateTime<Utc>) -> billing::Result<bool> {
        let db = &self.billing.db;
        let finished_before = self.finished_jobs.load(Ordering::SeqCst);
        self.sweep().await?;
        if queue::unfinished(db).await? > 0 {
            return Ok(false);
        }
        let due = self.due_jobs(now).await?;
        if !due.is_empty() {
            let keys: Vec<String> = due.iter().map(|j| j.dedup_key(0)).collect();
            if queue::count_finished(db, &keys).await? != keys.len() {
                return Ok(false);
            }
        }
        Ok(self.finished_jobs.load(Ordering::SeqCst) == finished_before)
    }

    /// Called by the worker each time a job finishes, whatever its outcome.
    pub fn job_finished(&self) {
        self.finished_jobs.fetch_add(1, Ordering::SeqCst);
    }
}
