//! The workers: the apalis queue worker on the configured database (restarted if it dies), the
//! cron-driven sweep, and the loop that sweeps at once when nudged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::layers::retry::RetryPolicy;
use apalis::prelude::*;
use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use apalis_cron::{CronScheduler, Tick};
use futures::FutureExt;
use settled_jobs::job::{Envelope, Job};
use std::future::Future;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use super::Runner;
use super::dispatch;
use crate::store::{Db, queue};

pub use settled_jobs::error::JobError;

/// The running workers; `stop` drains them.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    drain: Duration,
    runner: Arc<Runner>,
}

impl Workers {
    /// Stops taking jobs and starting batches, and waits (bounded) for the batches in flight.
    pub async fn stop(self) {
        self.stop.cancel();
        self.runner.drainers.stop();
        let started = Instant::now();
        let all = futures::future::join_all(self.handles);
        let finished = tokio::time::timeout(self.drain, all).await.is_ok()
            && self
                .runner
                .drainers
                .wait_idle(self.drain.saturating_sub(started.elapsed()))
                .await;
        if !finished {
            tracing::warn!(
                timeout_s = self.drain.as_secs(),
                "in-flight work did not finish in time; it is taken up again after restart"
            );
        }
    }
}

pub fn start(runner: Arc<Runner>) -> Workers {
    let stop = CancellationToken::new();
    let drain = Duration::from_secs(runner.billing.config.daemon.shutdown_timeout_seconds);
    runner.drainers.start();
    let handles = vec![
        spawn_queue_worker(runner.clone(), stop.clone()),
        spawn_sweeper(runner.clone(), stop.clone()),
        spawn_wake_loop(runner.clone(), stop.clone()),
    ];
    Workers {
        handles,
        stop,
        drain,
        runner,
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Worker names say which host and process a job ran on (several daemons share one database).
fn worker_name(kind: &str) -> String {
    format!(
        "settled-{kind}-{}-{}-{}",
        hostname(),
        std::process::id(),
        ulid::Ulid::generate()
    )
}

/// Wakes the queue worker every `period`, always leaving the next wake-up armed. (apalis's own
/// interval strategy re-arms its timer without polling it, so a fetch that completes within one
/// poll leaves the worker asleep until something else wakes it; seen as jobs starting seconds late.)
struct FixedInterval {
    period: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl FixedInterval {
    fn new(period: Duration) -> Self {
        FixedInterval {
            period,
            sleep: None,
        }
    }
}

impl PollStrategy for FixedInterval {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _snapshot: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let mut fired = false;
        loop {
            let period = self.period;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
            match sleep.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => {
                    self.sleep = None;
                    fired = true;
                }
                std::task::Poll::Pending if fired => return std::task::Poll::Ready(Some(())),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
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

/// A worker that missed this many heartbeats is presumed dead (killed, its host lost) and the
/// jobs it had claimed are handed to another worker.
const ORPHAN_AFTER_MISSED_HEARTBEATS: usize = 3;

/// Runs the queue worker and restarts it if it dies (a lost connection, a driver fault): a daemon
/// that answers HTTP but no longer runs jobs would be worse than one that restarts.
fn spawn_queue_worker(runner: Arc<Runner>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The queue gets a pool of its own, opened after the migrations ran. The queue's fetch
        // statements select every column (`RETURNING *`); a connection that loaded the schema
        // before a migration altered the jobs table would describe them with the old column
        // count (a driver panic on SQLite, "cached plan must not change result type" on
        // PostgreSQL).
        let config = &runner.billing.config;
        let queue_db = match Db::open_sized(config, Db::pool_shares(config).1) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a pool for the job queue; sharing the main one");
                runner.billing.db.clone()
            }
        };
        let _ = runner.scheduler.queue_db.set(queue_db.clone());
        let mut delay = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let name = worker_name(runner.billing.db.backend());
            let result =
                run_queue_worker(runner.clone(), queue_db.clone(), stop.clone(), &name).await;
            if stop.is_cancelled() {
                return;
            }
            // Jobs the dead worker had claimed go back to the queue at once instead of waiting
            // for the orphan check (their effects are idempotent, so a re-run is harmless).
            match queue::release_worker(&runner.billing.db, &name).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(jobs = n, "released jobs claimed by the failed worker"),
                Err(e) => tracing::warn!(error = %e, "cannot release the failed worker's jobs"),
            }
            match result {
                Ok(()) => tracing::warn!("job worker stopped; restarting it"),
                Err(e) => tracing::error!(error = %e, "job worker failed; restarting it"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_millis(200);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    })
}

async fn run_queue_worker(
    runner: Arc<Runner>,
    queue_db: Db,
    stop: CancellationToken,
    name: &str,
) -> Result<(), WorkerError> {
    let jobs = &runner.billing.config.jobs;
    let poll = Duration::from_millis(jobs.poll_interval_ms);
    let heartbeat = Duration::from_secs(jobs.heartbeat_seconds);
    let retries = jobs.max_attempts.saturating_sub(1) as usize;
    let concurrency = jobs.concurrency;
    // One poll may claim as many jobs as can run at once (apalis's default of 10 per poll would
    // cap a 100 ms poll at 100 jobs/s whatever the concurrency).
    let batch = concurrency.clamp(10, 1000);
    let policy = RetryPolicy::retries(retries).with_backoff(backoff());
    let signal = async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    };
    match queue_db {
        Db::Sqlite(pool) => {
            let config = apalis_sqlite::Config::default()
                .queue(queue::QUEUE)
                .batch_size(batch)
                .heartbeat_interval(heartbeat)
                .missed_heartbeats(ORPHAN_AFTER_MISSED_HEARTBEATS);
            let backend = apalis_sqlite::SqliteStorage::<Envelope>::new(&pool)
                .with_config(config)
                .poll_with_strategy(FixedInterval::new(poll));
            WorkerBuilder::new(name)
                .backend(backend)
                .data(runner.clone())
                .concurrency(concurrency)
                .retry(policy)
                .build(handle_job)
                .run_until(signal)
                .await
        }
        Db::Postgres(pool) => {
            let config = apalis_postgres::Config::default()
                .queue(queue::QUEUE)
                .batch_size(batch)
                .heartbeat_interval(heartbeat)
                .missed_heartbeats(ORPHAN_AFTER_MISSED_HEARTBEATS);
            // LISTEN/NOTIFY wakes the worker the moment a due job is inserted (the sweep only
            // ever enqueues due work); the fixed interval covers rows made due by an UPDATE
            // (an operator's retry, apalis re-enqueuing an orphan). No idle back-off.
            let backend = apalis_postgres::PostgresStorage::<Envelope>::new(&pool)
                .with_config(config)
                .with_pubsub()
                .poll_with_strategy(FixedInterval::new(poll));
            WorkerBuilder::new(name)
                .backend(backend)
                .data(runner.clone())
                .concurrency(concurrency)
                .retry(policy)
                .build(handle_job)
                .run_until(signal)
                .await
        }
    }
}

/// The cron-driven sweep: every tick (every second by default) enqueues what became due.
fn spawn_sweeper(runner: Arc<Runner>, stop: CancellationToken) -> JoinHandle<()> {
    let schedule: cron::Schedule = match runner.billing.config.jobs.sweep_cron.parse() {
        Ok(s) => s,
        Err(e) => {
            // Validated at config load; this is unreachable in practice.
            tracing::error!(error = %e, "invalid jobs.sweep_cron; sweeping every second");
            "* * * * * *".parse().unwrap_or_else(|_| unreachable!())
        }
    };
    let worker = WorkerBuilder::new(worker_name("sweep"))
        .backend(CronScheduler::new(schedule))
        .data(runner)
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

async fn sweep_tick(_tick: Tick, runner: Data<Arc<Runner>>) -> Result<(), BoxDynError> {
    if let Err(e) = runner.scheduler.sweep().await {
        tracing::warn!(error = %e, "sweep failed; the next tick retries");
    }
    Ok(())
}

/// Sweeps at once when nudged (the manual clock moved, an operator retried a job), so a demo or a
/// test does not wait for the next tick.
fn spawn_wake_loop(runner: Arc<Runner>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = runner.scheduler.wake.notified() => {}
            }
            if let Err(e) = runner.scheduler.sweep().await {
                tracing::warn!(error = %e, "sweep failed; the next tick retries");
            }
        }
    })
}

/// What the queue row says about a job besides its payload: its id, when it was due, and which
/// run this is.
struct QueueRow {
    id: String,
    due_ms: Option<i64>,
    run: usize,
}

impl FromRequest<Task<Envelope>> for QueueRow {
    type Error = std::convert::Infallible;
    async fn from_request(task: &Task<Envelope>) -> Result<Self, Self::Error> {
        let ctx = task.ctx();
        let id = ctx.task_id().map(|t| t.to_string()).unwrap_or_default();
        // The row's run_at has one-second resolution, and due work is stored as due a second
        // before it was enqueued; the id is a ULID minted at enqueue time to the millisecond. A
        // job is due at the later of the two (an enqueue_after delay lies ahead of its id).
        let enqueued_ms = ulid::Ulid::from_string(&id)
            .ok()
            .map(|u| u.timestamp_ms() as i64);
        let run_at_ms = ctx.run_at().map(|s| s as i64 * 1000);
        let due_ms = match (run_at_ms, enqueued_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(QueueRow {
            id,
            due_ms,
            run: ctx.attempt(),
        })
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The span a job runs in: its kind, queue id and run, and the ids of what it works on, so every
/// line the job logs says which invoice, event or email it was about.
fn job_span(job: &Job, row: &QueueRow) -> tracing::Span {
    tracing::info_span!(
        "job",
        kind = job.kind(),
        work = job.work_kind().name(),
        job_id = %row.id,
        run = row.run,
    )
}

/// Runs one job from the queue.
async fn handle_job(
    envelope: Envelope,
    row: QueueRow,
    runner: Data<Arc<Runner>>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let job = envelope.job;
    let kind = job.kind();
    let started = Instant::now();
    // Latency is measured on a job's first run only: a retry's wait is its backoff, not the queue.
    let latency = row
        .due_ms
        .filter(|_| row.run <= 1)
        .map(|due| Duration::from_millis((wall_ms() - due).max(0) as u64));
    crate::metrics::job_started(&job, latency);
    let span = job_span(&job, &row);
    // A panic in a job must not take the worker down: it is a permanent failure of that job.
    let result = std::panic::AssertUnwindSafe(dispatch::run(&runner, &job))
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| Err(JobError::Permanent(anyhow::anyhow!("the job panicked"))));
    let took = started.elapsed();
    let elapsed_ms = took.as_millis() as u64;
    let _entered = span.enter();
    match result {
        Ok(()) => {
            crate::metrics::job_finished(&job, "done", took);
            tracing::info!(job = kind, elapsed_ms, "job done");
            // Its effects may have made more work due (a finalised invoice to charge, an email).
            runner.scheduler.nudge();
            Ok(())
        }
        Err(JobError::Transient(e)) => {
            crate::metrics::job_finished(&job, "retry", took);
            tracing::warn!(
                job = kind,
                elapsed_ms,
                error = format!("{e:#}"),
                "job failed; it will be retried"
            );
            Err(e.into())
        }
        Err(JobError::Permanent(e)) => {
            crate::metrics::job_finished(&job, "failed", took);
            tracing::error!(
                job = kind,
                elapsed_ms,
                error = format!("{e:#}"),
                "job failed permanently"
            );
            Err(Box::new(AbortError::new(e)))
        }
    }
}
