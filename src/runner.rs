//! The job runner: apalis workers on the configured database, a cron-driven sweep that finds due
//! work and enqueues it (the database is the truth, a job is a nudge), and the readiness check the
//! manual clock reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use apalis::layers::retry::RetryPolicy;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use settled_jobs::clock::Clock;
use settled_jobs::job::{Envelope, Job};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use crate::app::State;
use crate::config::Config;
use crate::store::{Db, queue};

/// Why a job did not complete: transient failures are retried with backoff, permanent ones are
/// aborted at once and stay visible as failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0:#}")]
    Transient(anyhow::Error),
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Transient(anyhow::Error::new(e).context("database error"))
    }
}

/// Finds due work and keeps the clock's "ready" promise.
pub struct Scheduler {
    db: Db,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    wake: Notify,
    /// Milliseconds since start of the last completed sweep (the watchdog's sign of life).
    last_sweep: AtomicI64,
    started: Instant,
}

impl Scheduler {
    pub fn new(db: Db, clock: Arc<dyn Clock>, config: Arc<Config>) -> Scheduler {
        Scheduler {
            db,
            clock,
            config,
            wake: Notify::new(),
            last_sweep: AtomicI64::new(-1),
            started: Instant::now(),
        }
    }

    /// Asks for a sweep now rather than at the next tick.
    pub fn nudge(&self) {
        self.wake.notify_one();
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

    /// Every piece of work due at `now` as the job that does it.
    pub async fn due_jobs(&self, now: DateTime<Utc>) -> Result<Vec<Job>, sqlx::Error> {
        crate::billing::due_jobs(&self.db, now).await
    }

    /// Enqueues every due job not already queued; returns how many were new.
    #[tracing::instrument(skip_all)]
    pub async fn sweep(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let jobs = self.due_jobs(now).await?;
        let mut added = 0;
        if !jobs.is_empty() {
            let mut tx = self.db.begin().await?;
            for job in &jobs {
                if queue::enqueue(&mut tx, job, 0, self.config.jobs.max_attempts).await? {
                    added += 1;
                }
            }
            tx.commit().await?;
        }
        self.last_sweep
            .store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
        if added > 0 {
            tracing::debug!(added, "sweep enqueued due work");
        }
        Ok(added)
    }

    /// Ready when nothing due at `now` is waiting to be enqueued and no job is unfinished.
    pub async fn is_ready(&self, db: &Db, _now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let added = self.sweep().await?;
        if added > 0 {
            return Ok(false);
        }
        Ok(queue::unfinished(db).await? == 0)
    }
}

/// The running workers; `stop` drains them.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    drain: Duration,
}

impl Workers {
    /// Stops taking jobs and waits (bounded) for the ones in flight.
    pub async fn stop(self) {
        self.stop.cancel();
        let all = futures::future::join_all(self.handles);
        if tokio::time::timeout(self.drain, all).await.is_err() {
            tracing::warn!(
                timeout_s = self.drain.as_secs(),
                "in-flight jobs did not finish in time; they will be picked up again after restart"
            );
        }
    }
}

pub fn start(state: Arc<State>) -> Workers {
    let stop = CancellationToken::new();
    let drain = Duration::from_secs(state.config.daemon.shutdown_timeout_seconds);
    let handles = vec![
        spawn_queue_worker(state.clone(), stop.clone()),
        spawn_sweeper(state.clone(), stop.clone()),
        spawn_wake_loop(state.clone(), stop.clone()),
    ];
    Workers {
        handles,
        stop,
        drain,
    }
}

fn worker_name(kind: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "settled-{kind}-{host}-{}-{}",
        std::process::id(),
        ulid::Ulid::generate()
    )
}

/// Backoff between in-process retries of a transiently failing job: 0.5 s doubling up to a minute.
fn backoff() -> ExponentialBackoff<HasherRng> {
    let maker = ExponentialBackoffMaker::new(
        Duration::from_millis(500),
        Duration::from_secs(60),
        0.5,
        HasherRng::default(),
    )
    .unwrap_or_default();
    let mut maker = maker;
    maker.make_backoff()
}

fn spawn_queue_worker(state: Arc<State>, stop: CancellationToken) -> JoinHandle<()> {
    let poll = Duration::from_millis(state.config.jobs.poll_interval_ms);
    let retries = state.config.jobs.max_attempts.saturating_sub(1) as usize;
    let concurrency = state.config.jobs.concurrency;
    let policy = RetryPolicy::retries(retries).with_backoff(backoff());
    match state.db.clone() {
        Db::Sqlite(pool) => {
            let config = apalis_sqlite::Config::default().queue(queue::QUEUE);
            let backend = apalis_sqlite::SqliteStorage::<Envelope>::new(&pool)
                .with_config(config)
                .poll_with_interval(poll);
            let worker = WorkerBuilder::new(worker_name("sqlite"))
                .backend(backend)
                .data(state.clone())
                .concurrency(concurrency)
                .retry(policy)
                .build(handle_job);
            tokio::spawn(async move {
                let signal = async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                };
                if let Err(e) = worker.run_until(signal).await {
                    tracing::error!(error = %e, "job worker stopped with an error");
                }
            })
        }
        Db::Postgres(pool) => {
            let config = apalis_postgres::Config::default().queue(queue::QUEUE);
            // LISTEN/NOTIFY wakes the worker the moment a due job is inserted (the sweep only
            // ever enqueues due work); the fixed interval covers rows made due by an UPDATE
            // (an operator's retry, apalis re-enqueuing an orphan). No idle back-off.
            let strategy = apalis::prelude::Strategy::new().interval(poll);
            let backend = apalis_postgres::PostgresStorage::<Envelope>::new(&pool)
                .with_config(config)
                .with_pubsub()
                .poll_with_strategy(strategy);
            let worker = WorkerBuilder::new(worker_name("postgres"))
                .backend(backend)
                .data(state.clone())
                .concurrency(concurrency)
                .retry(policy)
                .build(handle_job);
            tokio::spawn(async move {
                let signal = async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                };
                if let Err(e) = worker.run_until(signal).await {
                    tracing::error!(error = %e, "job worker stopped with an error");
                }
            })
        }
    }
}

/// The cron-driven sweep: every tick (every second by default) enqueues what became due.
fn spawn_sweeper(state: Arc<State>, stop: CancellationToken) -> JoinHandle<()> {
    let schedule: cron::Schedule = match state.config.jobs.sweep_cron.parse() {
        Ok(s) => s,
        Err(e) => {
            // Validated at config load; this is unreachable in practice.
            tracing::error!(error = %e, "invalid jobs.sweep_cron; sweeping every second");
            "* * * * * *".parse().unwrap_or_else(|_| unreachable!())
        }
    };
    let worker = WorkerBuilder::new(worker_name("sweep"))
        .backend(CronScheduler::new(schedule))
        .data(state)
        .build(sweep_tick);
    tokio::spawn(async move {
        let signal = async move {
            stop.cancelled().await;
            Ok::<(), std::io::Error>(())
        };
        if let Err(e) = worker.run_until(signal).await {
            tracing::error!(error = %e, "sweep stopped with an error");
        }
    })
}

async fn sweep_tick(_tick: Tick, state: Data<Arc<State>>) -> Result<(), BoxDynError> {
    if let Err(e) = state.scheduler.sweep().await {
        tracing::warn!(error = %e, "sweep failed; the next tick retries");
    }
    Ok(())
}

/// Sweeps at once when nudged (the manual clock moved, an operator retried a job), so a demo or a
/// test does not wait for the next tick.
fn spawn_wake_loop(state: Arc<State>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.scheduler.wake.notified() => {}
            }
            if let Err(e) = state.scheduler.sweep().await {
                tracing::warn!(error = %e, "sweep failed; the next tick retries");
            }
        }
    })
}

/// Runs one job from the queue.
async fn handle_job(envelope: Envelope, state: Data<Arc<State>>) -> Result<(), BoxDynError> {
    let job = envelope.job;
    let kind = job.kind();
    let started = Instant::now();
    // A panic in a job must not take the worker down: it is a permanent failure of that job.
    let result = std::panic::AssertUnwindSafe(crate::billing::run(&state, &job))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(JobError::Permanent(anyhow::anyhow!("the job panicked"))));
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => {
            tracing::info!(job = kind, elapsed_ms, "job done");
            // Its effects may have made more work due (a finalised invoice to charge, an email).
            state.scheduler.nudge();
            Ok(())
        }
        Err(JobError::Transient(e)) => {
            tracing::warn!(
                job = kind,
                error = format!("{e:#}"),
                "job failed; it will be retried"
            );
            Err(e.into())
        }
        Err(JobError::Permanent(e)) => {
            tracing::error!(
                job = kind,
                error = format!("{e:#}"),
                "job failed permanently"
            );
            Err(Box::new(AbortError::new(e)))
        }
    }
}
