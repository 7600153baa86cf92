//! The job queue's rows, seen from the daemon. The queue carries one drain job per kind of work
//! ([`arm_drains`]); the work itself lives in its own tables. The rows live in apalis's own
//! tables (`Jobs` on SQLite, `apalis.jobs` on PostgreSQL) and apalis workers run them. Rows older
//! daemons queued one per item are still run (as a drain of their kind) and cleaned up.

use std::time::{SystemTime, UNIX_EPOCH};

use settled_jobs::job::Job;

use super::{Db, Result, Tx, on_db, on_tx};

/// The queue name (apalis `job_type`) every job of the daemon is pushed to.
pub const QUEUE: &str = "settled";

/// The queue compares `run_at` with the real wall clock (it knows nothing of the daemon's manual
/// clock): due work is enqueued as due a second ago so it is picked up on the next poll.
fn due_now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
        - 1
}

fn payload(job: &Job) -> Vec<u8> {
    // Serialising a plain enum of strings and integers cannot fail.
    serde_json::to_vec(&job.clone().envelope()).unwrap_or_default()
}

/// Enqueues `job` inside `tx`, due now; returns false when a job with the same dedup key exists.
pub async fn enqueue(tx: &mut Tx, job: &Job, max_attempts: u32) -> Result<bool> {
    let sql = match tx {
        Tx::Sqlite(_) => {
            "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority, \
             metadata, idempotency_key) VALUES ($1, $2, $3, 'Pending', 0, $4, $5, $6, '{}', $7) \
             ON CONFLICT (job_type, idempotency_key) DO NOTHING"
        }
        Tx::Postgres(_) => {
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
             priority, metadata, idempotency_key) \
             VALUES ($1, $2, $3, 'Pending', 0, $4, to_timestamp($5), $6, ''::hstore, $7) \
             ON CONFLICT (job_type, idempotency_key) DO NOTHING"
        }
    };
    let added = on_tx!(tx, c => {
        sqlx::query(sql)
            .bind(payload(job))
            .bind(ulid::Ulid::generate().to_string())
            .bind(QUEUE)
            .bind(max_attempts as i32)
            .bind(due_now_secs())
            .bind(job.priority())
            .bind(job.dedup_key())
            .execute(&mut *c)
            .await?
            .rows_affected()
    });
    Ok(added == 1)
}

/// Arms one drain job per kind: a kind without a row gets one; a kind whose row is finished
/// (done, or failed for good) has it made pending again; a kind whose job waits or runs is left
/// as it is. The queue thus holds at most one row per kind, whatever the backlog. Each row is its
/// own statement, outside any transaction: a worker's fetch locks several queue rows in an order
/// of its own, and holding one row while asking for another could deadlock with it.
pub async fn arm_drains(
    db: &Db,
    kinds: &[settled_jobs::job::WorkKind],
    max_attempts: u32,
) -> Result<()> {
    let sql = match db {
        Db::Sqlite(_) => {
            "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority, \
             metadata, idempotency_key) VALUES ($1, $2, $3, 'Pending', 0, $4, $5, $6, '{}', $7) \
             ON CONFLICT (job_type, idempotency_key) DO UPDATE SET status = 'Pending', attempts = 0, \
             run_at = excluded.run_at, lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = NULL \
             WHERE Jobs.status IN ('Done', 'Killed') \
             OR (Jobs.status = 'Failed' AND Jobs.attempts >= Jobs.max_attempts)"
        }
        Db::Postgres(_) => {
            "INSERT INTO apalis.jobs AS j (job, id, job_type, status, attempts, max_attempts, run_at, \
             priority, metadata, idempotency_key) \
             VALUES ($1, $2, $3, 'Pending', 0, $4, to_timestamp($5), $6, ''::hstore, $7) \
             ON CONFLICT (job_type, idempotency_key) DO UPDATE SET status = 'Pending', attempts = 0, \
             run_at = excluded.run_at, lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = NULL \
             WHERE j.status IN ('Done', 'Killed') OR (j.status = 'Failed' AND j.attempts >= j.max_attempts)"
        }
    };
    for kind in kinds {
        let job = Job::Drain { kind: *kind };
        on_db!(db, p => {
            sqlx::query(sql)
                .bind(payload(&job))
                .bind(ulid::Ulid::generate().to_string())
                .bind(QUEUE)
                .bind(max_attempts as i32)
                .bind(due_now_secs())
                .bind(job.priority())
                .bind(job.dedup_key())
                .execute(p)
                .await?;
        });
    }
    Ok(())
}

/// Returns the jobs a worker had claimed but not finished to the queue.
pub async fn release_worker(db: &Db, worker: &str) -> Result<u64> {
    let sql = match db {
        Db::Sqlite(_) => {
            "UPDATE Jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE lock_by = $1 AND status IN ('Queued', 'Running')"
        }
        Db::Postgres(_) => {
            "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL \
             WHERE lock_by = $1 AND status IN ('Queued', 'Running')"
        }
    };
    on_db!(db, p => Ok(sqlx::query(sql).bind(worker).execute(p).await?.rows_affected()))
}

/// Deletes finished jobs done before `before_secs` (Unix seconds), keeping failed ones for the operator.
pub async fn vacuum(db: &Db, before_secs: i64) -> Result<u64> {
    let sql = match db {
        Db::Sqlite(_) => {
            "DELETE FROM Jobs WHERE job_type = $1 AND status = 'Done' AND done_at < $2"
        }
        Db::Postgres(_) => {
            "DELETE FROM apalis.jobs WHERE job_type = $1 AND status = 'Done' AND done_at < to_timestamp($2)"
        }
    };
    on_db!(db, p => Ok(sqlx::query(sql).bind(QUEUE).bind(before_secs).execute(p).await?.rows_affected()))
}

/// Unfinished and failed jobs of one kind, for the metrics scrape.
#[derive(Debug, Clone)]
pub struct KindStats {
    pub kind: String,
    /// Waiting, claimed, running or waiting for another try.
    pub depth: i64,
    /// The earliest `run_at` (Unix seconds) among jobs due now that have not started.
    pub oldest_due: Option<i64>,
    /// Failed for good (kept for the operator).
    pub failed: i64,
}

/// Queue depth, the oldest due job and failed jobs per kind (the `type` in the job's payload).
/// Finished jobs are left out by the status condition, so the scan stays small.
pub async fn stats(db: &Db) -> Result<Vec<KindStats>> {
    let now = due_now_secs() + 1;
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT COALESCE(json_extract(CAST(job AS TEXT), '$.type'), 'unknown') AS kind, \
             SUM(CASE WHEN status IN ('Pending', 'Queued', 'Running') \
                 OR (status = 'Failed' AND attempts < max_attempts) THEN 1 ELSE 0 END) AS depth, \
             MIN(CASE WHEN (status IN ('Pending', 'Queued') \
                 OR (status = 'Failed' AND attempts < max_attempts)) AND run_at <= $2 \
                 THEN run_at END) AS oldest_due, \
             SUM(CASE WHEN status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts) \
                 THEN 1 ELSE 0 END) AS failed \
             FROM Jobs WHERE job_type = $1 \
             AND status IN ('Pending', 'Queued', 'Running', 'Failed', 'Killed') GROUP BY 1"
        }
        Db::Postgres(_) => {
            "SELECT COALESCE(convert_from(job, 'UTF8')::jsonb ->> 'type', 'unknown') AS kind, \
             COUNT(*) FILTER (WHERE status IN ('Pending', 'Queued', 'Running') \
                 OR (status = 'Failed' AND attempts < max_attempts)) AS depth, \
             (EXTRACT(EPOCH FROM MIN(run_at) FILTER (WHERE (status IN ('Pending', 'Queued') \
                 OR (status = 'Failed' AND attempts < max_attempts)) \
                 AND run_at <= to_timestamp($2))))::BIGINT AS oldest_due, \
             COUNT(*) FILTER (WHERE status = 'Killed' \
                 OR (status = 'Failed' AND attempts >= max_attempts)) AS failed \
             FROM apalis.jobs WHERE job_type = $1 \
             AND status IN ('Pending', 'Queued', 'Running', 'Failed', 'Killed') GROUP BY 1"
        }
    };
    let rows: Vec<(String, i64, Option<i64>, i64)> = on_db!(db, p => {
        sqlx::query_as(sql).bind(QUEUE).bind(now).fetch_all(p).await?
    });
    Ok(rows
        .into_iter()
        .map(|(kind, depth, oldest_due, failed)| KindStats {
            kind,
            depth,
            oldest_due,
            failed,
        })
        .collect())
}
