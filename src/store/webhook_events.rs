//! The `webhook_events` rows: stored by intake (unique on source and event id, with their
//! process_event job in the same transaction), read and replayed by operators, updated by the
//! process_event job. The only writer of `webhook_events`.

use std::collections::HashSet;

use settled_jobs::job::Job;
use sqlx::FromRow;

use super::{Db, Result, Tx, on_db, on_tx, queue};

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: String,
    pub source: String,
    pub event_id: String,
    pub kind: String,
    pub body: String,
    pub status: String,
    pub error: Option<String>,
    pub replays: i64,
    pub received_at: i64,
    pub processed_at: Option<i64>,
}

const COLUMNS: &str = "id, source, event_id, type AS kind, body, status, error, replays, \
     received_at, processed_at";

/// A verified delivery about to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub source: String,
    pub event_id: String,
    pub kind: String,
    pub body: String,
    pub received_at: i64,
}

/// Rows per INSERT statement (6 parameters each, well inside both backends' limits).
const ROWS_PER_STATEMENT: usize = 100;

/// Stores `events` and enqueues one process_event job per new one, in one transaction; returns
/// the ids of the events that were new (the others were already stored: duplicates).
pub async fn insert_events(
    db: &Db,
    events: &[&NewEvent],
    max_attempts: u32,
) -> Result<HashSet<String>> {
    let mut tx = db.begin().await?;
    let mut new_ids = HashSet::with_capacity(events.len());
    if let Tx::Postgres(t) = &mut tx {
        // One statement text whatever the batch size, so it is prepared once per connection.
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO webhook_events (id, source, event_id, type, body, received_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
             ON CONFLICT (source, event_id) DO NOTHING RETURNING id",
        )
        .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.source.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.body.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.received_at).collect::<Vec<_>>())
        .fetch_all(&mut **t)
        .await?;
        new_ids.extend(ids);
    }
    let sqlite_rows: &[&NewEvent] = if matches!(tx, Tx::Sqlite(_)) {
        events
    } else {
        &[]
    };
    for chunk in sqlite_rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO webhook_events (id, source, event_id, type, body, received_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        sql.push_str(" ON CONFLICT (source, event_id) DO NOTHING RETURNING id");
        let ids: Vec<String> = on_tx!(&mut tx, c => {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()));
            for e in chunk {
                q = q
                    .bind(&e.id)
                    .bind(&e.source)
                    .bind(&e.event_id)
                    .bind(&e.kind)
                    .bind(&e.body)
                    .bind(e.received_at);
            }
            q.fetch_all(c).await?
        });
        new_ids.extend(ids);
    }
    if !new_ids.is_empty() {
        let jobs: Vec<Job> = events
            .iter()
            .filter(|e| new_ids.contains(&e.id))
            .map(|e| Job::ProcessEvent {
                event_id: e.id.clone(),
            })
            .collect();
        queue::enqueue_many(&mut tx, &jobs, max_attempts).await?;
    }
    tx.commit().await?;
    Ok(new_ids)
}

/// Our id of an already stored event.
pub async fn id_of(db: &Db, source: &str, event_id: &str) -> Result<Option<String>> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar("SELECT id FROM webhook_events WHERE source = $1 AND event_id = $2")
            .bind(source)
            .bind(event_id)
            .fetch_optional(p)
            .await?
    }))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<EventRow>> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_events WHERE id = $1");
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?
    }))
}

/// The row, locked for the rest of `tx` (PostgreSQL; SQLite's write transaction is exclusive).
pub async fn get_locked(tx: &mut Tx, id: &str) -> Result<Option<EventRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_events WHERE id = $1{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await?
    }))
}

/// Newest first (by receipt, then id); `starting_after` continues after that event.
pub async fn list(
    db: &Db,
    status: Option<&str>,
    source: Option<&str>,
    limit: i64,
    after: Option<&EventRow>,
) -> Result<Vec<EventRow>> {
    let mut sql = format!("SELECT {COLUMNS} FROM webhook_events WHERE 1 = 1");
    let mut n = 1;
    if status.is_some() {
        n += 1;
        sql.push_str(&format!(" AND status = ${n}"));
    }
    if source.is_some() {
        n += 1;
        sql.push_str(&format!(" AND source = ${n}"));
    }
    if after.is_some() {
        sql.push_str(&format!(
            " AND (received_at < ${} OR (received_at = ${} AND id < ${}))",
            n + 1,
            n + 1,
            n + 2
        ));
    }
    sql.push_str(" ORDER BY received_at DESC, id DESC LIMIT $1");
    on_db!(db, p => {
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(limit);
        if let Some(s) = status {
            q = q.bind(s);
        }
        if let Some(s) = source {
            q = q.bind(s);
        }
        if let Some(a) = after {
            q = q.bind(a.received_at).bind(&a.id);
        }
        Ok(q.fetch_all(p).await?)
    })
}

/// Sets the outcome of processing inside the processing transaction.
pub async fn set_outcome(
    tx: &mut Tx,
    id: &str,
    status: &str,
    error: Option<&str>,
    at: i64,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE webhook_events SET status = $2, error = $3, processed_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(at)
        .execute(c)
        .await?;
    });
    Ok(())
}

/// Marks an event failed in a transaction of its own (its processing was rolled back), unless
/// something else finished it meanwhile.
pub async fn mark_failed(db: &Db, id: &str, error: &str, at: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, c => {
        sqlx::query(
            "UPDATE webhook_events SET status = 'failed', error = $2, processed_at = $3 \
             WHERE id = $1 AND status NOT IN ('processed', 'ignored')",
        )
        .bind(id)
        .bind(error)
        .bind(at)
        .execute(c)
        .await?;
    });
    tx.commit().await
}

/// Queues the event for processing again: counts the replay, puts the event back to `received`
/// and enqueues a process_event job under a new dedup round, all in one transaction. Returns
/// false when there is no such event.
pub async fn replay(db: &Db, id: &str, max_attempts: u32) -> Result<bool> {
    let mut tx = db.begin().await?;
    let Some(row) = get_locked(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(false);
    };
    let round = row.replays + 1;
    on_tx!(&mut tx, c => {
        sqlx::query(
            "UPDATE webhook_events SET replays = $2, status = 'received', error = NULL, \
             processed_at = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(round)
        .execute(c)
        .await?;
    });
    let job = Job::ProcessEvent {
        event_id: id.to_string(),
    };
    queue::enqueue_round(&mut tx, &job, round.max(0) as u32, max_attempts).await?;
    tx.commit().await?;
    Ok(true)
}

/// Events stored but not yet processed whose process_event job is missing from the queue (the
/// sweep's safety net), among the `window` oldest unprocessed ones. Events whose job is waiting
/// are left alone, so a backlog does not make every sweep re-offer thousands of jobs. The key is
/// `Job::dedup_key(replays)` of `ProcessEvent`: `process_event:{id}`, `:r{n}` after a replay.
pub async fn unprocessed_without_job(db: &Db, window: i64) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT e.id FROM (SELECT id, replays, received_at FROM webhook_events \
         WHERE status = 'received' ORDER BY received_at LIMIT $2) e \
         WHERE NOT EXISTS (SELECT 1 FROM {} j WHERE j.job_type = $1 AND j.idempotency_key = \
         'process_event:' || e.id || CASE WHEN e.replays > 0 THEN ':r' || e.replays ELSE '' END) \
         ORDER BY e.received_at",
        db.queue_table()
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(queue::QUEUE)
            .bind(window)
            .fetch_all(p)
            .await?
    }))
}

/// Events that arrived before the payment they are about (a refund or dispute overtaking its
/// payment) wait as `received` or `failed`; once the payment is recorded they are queued again.
pub async fn wake_waiting(
    tx: &mut Tx,
    source: &str,
    gateway_payment_id: &str,
    max_attempts: u32,
) -> Result<()> {
    let pattern = format!("%\"{gateway_payment_id}\"%");
    let waiting: Vec<(String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE webhook_events SET replays = replays + 1, status = 'received', error = NULL \
             WHERE source = $2 AND status IN ('received', 'failed') \
             AND type IN ('charge.refunded', 'charge.dispute.created', 'charge.dispute.closed') \
             AND body LIKE $1 RETURNING id, replays",
        )
        .bind(&pattern)
        .bind(source)
        .fetch_all(&mut *c)
        .await?
    });
    for (event_id, round) in waiting {
        queue::enqueue_round(
            tx,
            &Job::ProcessEvent { event_id },
            round as u32,
            max_attempts,
        )
        .await?;
    }
    Ok(())
}
