//! The job queue's rows, seen from the daemon: enqueue inside the caller's transaction with a dedup
//! key (so a repeated sweep or a second daemon adds nothing), list, retry and count jobs. The rows
//! live in apalis's own tables (`Jobs` on SQLite, `apalis.jobs` on PostgreSQL) and apalis workers
//! run them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use settled_jobs::job::Job;
use sqlx::Row;

use super::{Db, Result, Tx, from_ms, on_db, on_tx};

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

/// Enqueues `job` inside `tx`; returns false when a job with the same dedup key already exists.
pub async fn enqueue(tx: &mut Tx, job: &Job, max_attempts: u32) -> Result<bool> {
    Ok(enqueue_many(tx, std::slice::from_ref(job), max_attempts).await? == 1)
}

/// Enqueues many jobs in a few multi-row statements (a sweep may find thousands due at once);
/// returns how many were new.
pub async fn enqueue_many(tx: &mut Tx, jobs: &[Job], max_attempts: u32) -> Result<usize> {
    insert_jobs(tx, jobs, 0, due_now_secs(), max_attempts).await
}

/// Enqueues one job that becomes due `delay` from now on the wall clock (a transport's retry
/// backoff, which has nothing to do with billing time); false when its dedup key exists.
pub async fn enqueue_after(
    tx: &mut Tx,
    job: &Job,
    delay: std::time::Duration,
    max_attempts: u32,
) -> Result<bool> {
    let run_at = due_now_secs() + 1 + delay.as_secs() as i64;
    Ok(insert_jobs(tx, std::slice::from_ref(job), 0, run_at, max_attempts).await? == 1)
}

/// Enqueues `job` under dedup round `round` (`Job::dedup_key(round)`): a deliberate re-run, such
/// as an operator's replay, that must not be swallowed by the finished job of an earlier round.
pub async fn enqueue_round(tx: &mut Tx, job: &Job, round: u32, max_attempts: u32) -> Result<bool> {
    Ok(insert_jobs(
        tx,
        std::slice::from_ref(job),
        round,
        due_now_secs(),
        max_attempts,
    )
    .await?
        == 1)
}

async fn insert_jobs(
    tx: &mut Tx,
    jobs: &[Job],
    round: u32,
    run_at: i64,
    max_attempts: u32,
) -> Result<usize> {
    if let Tx::Postgres(t) = tx {
        // One statement text whatever the number of jobs, so it is prepared once per connection.
        let payloads: Vec<Vec<u8>> = jobs.iter().map(payload).collect();
        let ids: Vec<String> = jobs
            .iter()
            .map(|_| ulid::Ulid::generate().to_string())
            .collect();
        let keys: Vec<String> = jobs.iter().map(|j| j.dedup_key(round)).collect();
        let priorities: Vec<i32> = jobs.iter().map(Job::priority).collect();
        let n = sqlx::query(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, \
             priority, metadata, idempotency_key) \
             SELECT j, i, $1, 'Pending', 0, $2, to_timestamp($3), p, ''::hstore, k \
             FROM UNNEST($4::bytea[], $5::text[], $6::text[], $7::int4[]) AS t(j, i, k, p) \
             ON CONFLICT (job_type, idempotency_key) DO NOTHING",
        )
        .bind(QUEUE)
        .bind(max_attempts as i32)
        .bind(run_at)
        .bind(payloads)
        .bind(ids)
        .bind(keys)
        .bind(priorities)
        .execute(&mut **t)
        .await?
        .rows_affected();
        return Ok(n as usize);
    }
    let mut added = 0usize;
    for chunk in jobs.chunks(200) {
        let (table, run_at_sql, metadata) = match tx {
            Tx::Sqlite(_) => ("Jobs", "$3", "'{}'"),
            Tx::Postgres(_) => ("apalis.jobs", "to_timestamp($3)", "''::hstore"),
        };
        let mut sql = format!(
            "INSERT INTO {table} (job, id, job_type, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key) VALUES "
        );
        for i in 0..chunk.len() {
            let b = 4 + i * 4;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${b}, ${}, $1, 'Pending', 0, $2, {run_at_sql}, ${}, {metadata}, ${})",
                b + 1,
                b + 3,
                b + 2
            ));
        }
        sql.push_str(" ON CONFLICT (job_type, idempotency_key) DO NOTHING");
        let n = on_tx!(tx, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(QUEUE)
                .bind(max_attempts as i32)
                .bind(run_at);
            for job in chunk {
                q = q
                    .bind(payload(job))
                    .bind(ulid::Ulid::generate().to_string())
                    .bind(job.dedup_key(round))
                    .bind(job.priority());
            }
            q.execute(c).await?.rows_affected()
        });
        added += n as usize;
    }
    Ok(added)
}

/// How many jobs of `job`'s dedup key exist, counting deliberate re-runs (`:r{n}`): the round a
/// new re-run takes.
pub async fn rounds(tx: &mut Tx, job: &Job) -> Result<u32> {
    let base = job.dedup_key(0);
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE job_type = $1 AND (idempotency_key = $2 \
         OR idempotency_key LIKE $3)",
        match tx {
            Tx::Sqlite(_) => "Jobs",
            Tx::Postgres(_) => "apalis.jobs",
        }
    );
    let n: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(QUEUE)
            .bind(&base)
            .bind(format!("{base}:r%"))
            .fetch_one(&mut *c)
            .await?
    });
    Ok(n as u32)
}

/// Enqueues in a transaction of its own.
pub async fn enqueue_now(db: &Db, job: &Job, max_attempts: u32) -> Result<bool> {
    let mut tx = db.begin().await?;
    let added = enqueue(&mut tx, job, max_attempts).await?;
    tx.commit().await?;
    Ok(added)
}

/// A job as the operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: chrono::DateTime<chrono::Utc>,
    pub done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    pub args: serde_json::Value,
}

/// The operator's status names: apalis keeps a `Failed` job with attempts left for another try.
fn status_name(status: &str, attempts: i64, max_attempts: i64) -> &'static str {
    match status {
        "Pending" => "pending",
        "Queued" => "queued",
        "Running" => "running",
        "Done" => "done",
        "Failed" if attempts < max_attempts => "retrying",
        "Failed" | "Killed" => "failed",
        _ => "unknown",
    }
}

/// SQL condition (with the table's columns) for each operator status.
fn status_condition(status: &str) -> Option<&'static str> {
    Some(match status {
        "pending" => "status = 'Pending'",
        "queued" => "status = 'Queued'",
        "running" => "status = 'Running'",
        "done" => "status = 'Done'",
        "retrying" => "(status = 'Failed' AND attempts < max_attempts)",
        "failed" => "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))",
        _ => return None,
    })
}

pub const JOB_STATUSES: &[&str] = &["pending", "queued", "running", "done", "retrying", "failed"];

fn select_sql(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => {
            "SELECT id, job, status, attempts, max_attempts, run_at * 1000 AS run_at_ms, \
             done_at * 1000 AS done_at_ms, last_result FROM Jobs WHERE job_type = $1"
        }
        Db::Postgres(_) => {
            "SELECT id, job, status, attempts::BIGINT AS attempts, max_attempts::BIGINT AS max_attempts, \
             (EXTRACT(EPOCH FROM run_at) * 1000)::BIGINT AS run_at_ms, \
             (EXTRACT(EPOCH FROM done_at) * 1000)::BIGINT AS done_at_ms, last_result::TEXT AS last_result \
             FROM apalis.jobs WHERE job_type = $1"
        }
    }
}

fn to_view<R: Row>(row: &R) -> Result<JobView>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let body: Vec<u8> = row.try_get("job")?;
    let args: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let kind = args
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("unknown")
        .to_string();
    let status: String = row.try_get("status")?;
    let attempts: i64 = row.try_get("attempts")?;
    let max_attempts: i64 = row.try_get("max_attempts")?;
    Ok(JobView {
        id: row.try_get("id")?,
        kind,
        status: status_name(&status, attempts, max_attempts).to_string(),
        attempts,
        max_attempts,
        run_at: from_ms(row.try_get("run_at_ms")?),
        done_at: row.try_get::<Option<i64>, _>("done_at_ms")?.map(from_ms),
        last_error: row.try_get("last_result")?,
        args,
    })
}

/// Lists jobs, newest first, optionally by operator status; `starting_after` pages by id.
pub async fn list(
    db: &Db,
    status: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<JobView>> {
    let mut sql = select_sql(db).to_string();
    if let Some(cond) = status.and_then(status_condition) {
        sql.push_str(" AND ");
        sql.push_str(cond);
    }
    if starting_after.is_some() {
        sql.push_str(" AND id < $3");
    }
    sql.push_str(" ORDER BY id DESC LIMIT $2");
    on_db!(db, p => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(QUEUE).bind(limit);
        if let Some(after) = starting_after {
            q = q.bind(after.to_string());
        }
        q.fetch_all(p).await?.iter().map(to_view).collect()
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Option<JobView>> {
    let sql = format!("{} AND id = $2", select_sql(db));
    on_db!(db, p => {
        match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(QUEUE).bind(id).fetch_optional(p).await? {
            Some(row) => Ok(Some(to_view(&row)?)),
            None => Ok(None),
        }
    })
}

/// Puts a failed job back in the queue with fresh attempts. Only failed jobs can be retried.
pub async fn retry(db: &Db, id: &str) -> Result<RetryOutcome> {
    let Some(job) = get(db, id).await? else {
        return Ok(RetryOutcome::NotFound);
    };
    if job.status != "failed" {
        return Ok(RetryOutcome::NotFailed(job.status));
    }
    let sql = match db {
        Db::Sqlite(_) => {
            "UPDATE Jobs SET status = 'Pending', attempts = 0, run_at = $2, lock_by = NULL, \
             lock_at = NULL, done_at = NULL WHERE id = $1 AND job_type = $3"
        }
        Db::Postgres(_) => {
            "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = to_timestamp($2), \
             lock_by = NULL, lock_at = NULL, done_at = NULL WHERE id = $1 AND job_type = $3"
        }
    };
    on_db!(db, p => {
        sqlx::query(sql).bind(id).bind(due_now_secs()).bind(QUEUE).execute(p).await?;
    });
    Ok(RetryOutcome::Retried)
}

pub enum RetryOutcome {
    Retried,
    NotFound,
    NotFailed(String),
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

/// Jobs not yet finished (waiting, queued, running or waiting for another try).
pub async fn unfinished(db: &Db) -> Result<i64> {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND (status IN ('Pending', 'Queued', 'Running') \
             OR (status = 'Failed' AND attempts < max_attempts))"
        }
        Db::Postgres(_) => {
            "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1 AND (status IN ('Pending', 'Queued', 'Running') \
             OR (status = 'Failed' AND attempts < max_attempts))"
        }
    };
    Ok(on_db!(db, p => sqlx::query_scalar(sql).bind(QUEUE).fetch_one(p).await?))
}

/// How many of the jobs with these dedup keys have finished (done or failed for good).
pub async fn count_finished(db: &Db, keys: &[String]) -> Result<usize> {
    let table = match db {
        Db::Sqlite(_) => "Jobs",
        Db::Postgres(_) => "apalis.jobs",
    };
    let mut total = 0usize;
    for chunk in keys.chunks(500) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM {table} WHERE job_type = $1 AND idempotency_key IN ({}) \
             AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))",
            placeholders.join(", ")
        );
        let n: i64 = on_db!(db, p => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(QUEUE);
            for k in chunk {
                q = q.bind(k.as_str());
            }
            q.fetch_one(p).await?
        });
        total += n as usize;
    }
    Ok(total)
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

/// Jobs finished (done, or failed for good) at or after `since_secs` (Unix seconds).
pub async fn finished_since(db: &Db, since_secs: i64) -> Result<i64> {
    let sql = match db {
        Db::Sqlite(_) => {
            "SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND done_at >= $2 \
             AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))"
        }
        Db::Postgres(_) => {
            "SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1 AND done_at >= to_timestamp($2) \
             AND (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))"
        }
    };
    Ok(on_db!(db, p => sqlx::query_scalar(sql).bind(QUEUE).bind(since_secs).fetch_one(p).await?))
}
