//! The `webhook_events` rows: stored by intake (unique on source and event id, with their
//! process_event job in the same transaction), read and replayed by operators, updated by the
//! process_event job. The only writer of `webhook_events`.

use std::collections::HashSet;

use settled_jobs::job::WorkKind;
use sqlx::FromRow;

use super::work_failures::{REPORTED_AFTER_TRIES, SetAside};
use super::{Db, Result, Tx, on_db, on_tx};

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

/// Stores `events` in one transaction; returns the ids of the events that were new (the others
/// were already stored: duplicates). Each stored event is due work of its own (status
/// `received`); nothing else is written.
pub async fn insert_events(db: &Db, events: &[&NewEvent]) -> Result<HashSet<String>> {
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

/// Makes the event due again: counts the replay and puts it back to `received`, its
/// set-aside try (if any) cleared. Returns false when there is no such event.
pub async fn replay(db: &Db, id: &str) -> Result<bool> {
    let mut tx = db.begin().await?;
    let Some(row) = get_locked(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(false);
    };
    on_tx!(&mut tx, c => {
        sqlx::query(
            "UPDATE webhook_events SET replays = $2, status = 'received', error = NULL, \
             processed_at = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(row.replays + 1)
        .execute(c)
        .await?;
    });
    super::work_failures::clear(&mut tx, WorkKind::Events, &[id]).await?;
    tx.commit().await?;
    Ok(true)
}

/// Every stored event that is `received` or `failed`, of a source if given (the operator's bulk
/// replay); oldest first.
pub async fn replayable(
    db: &Db,
    status: &str,
    source: Option<&str>,
    limit: i64,
) -> Result<Vec<String>> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT id FROM webhook_events WHERE status = $1 AND ($2 IS NULL OR source = $2) \
             ORDER BY received_at, id LIMIT $3",
        )
        .bind(status)
        .bind(source)
        .bind(limit)
        .fetch_all(p)
        .await?
    }))
}

/// Claims up to `limit` stored events not processed yet, oldest first, leaving out those set
/// aside and (PostgreSQL) those another batch holds; locked for the rest of `tx`.
pub async fn claim(tx: &mut Tx, wall_now: i64, limit: i64) -> Result<Vec<EventRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_events e WHERE status = 'received' AND {} \
         ORDER BY received_at, id LIMIT $2{}",
        super::work_failures::not_set_aside(WorkKind::Events, "e.id", "$1"),
        tx.skip_locked()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// How many stored events wait to be processed; with `claimable`, only those that can be taken
/// now (not set aside).
pub async fn due_count(db: &Db, wall_now: i64, claimable: bool) -> Result<i64> {
    let sql = if claimable {
        format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM webhook_events e WHERE status = 'received' \
             AND {} LIMIT 1) x",
            super::work_failures::not_set_aside(WorkKind::Events, "e.id", "$1")
        )
    } else {
        format!(
            "SELECT COUNT(*) FROM webhook_events e WHERE status = 'received' AND {} AND $1 = $1",
            SetAside::Reported.condition(
                WorkKind::Events,
                "e.id",
                &REPORTED_AFTER_TRIES.to_string()
            )
        )
    };
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(wall_now)
            .fetch_one(p)
            .await?
    }))
}

/// Marks that the event waits for the gateway payment `gateway_payment_id` to be recorded.
pub async fn wait_for(tx: &mut Tx, id: &str, gateway_payment_id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE webhook_events SET waits_for = $2 WHERE id = $1")
            .bind(id)
            .bind(gateway_payment_id)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Events that arrived before the payment they are about (a refund or dispute overtaking its
/// payment) wait for it; once it is recorded they are due again at once.
pub async fn wake_waiting(tx: &mut Tx, source: &str, gateway_payment_id: &str) -> Result<()> {
    let waiting: Vec<String> = on_tx!(tx, c => {
        sqlx::query_scalar(
            "UPDATE webhook_events SET waits_for = NULL, status = 'received', error = NULL \
             WHERE waits_for = $1 AND source = $2 AND status IN ('received', 'failed') RETURNING id",
        )
        .bind(gateway_payment_id)
        .bind(source)
        .fetch_all(&mut *c)
        .await?
    });
    super::work_failures::wake(tx, WorkKind::Events, &waiting).await
}

/// Rows one prune statement empties at most, so no statement holds the write lock for long.
const PRUNE_BATCH: i64 = 500;

/// Empties the stored body of events done with (processed, ignored or failed) since before
/// `before` (wall milliseconds); the rows, their type, status and outcome stay. With `dry_run`,
/// only counts them. Returns how many bodies were (or would be) pruned. A pruned event cannot
/// be replayed.
pub async fn prune_bodies(db: &Db, before: i64, dry_run: bool) -> Result<i64> {
    const DONE: &str = "status IN ('processed', 'ignored', 'failed') AND body <> '' \
         AND COALESCE(processed_at, received_at) < $1";
    if dry_run {
        let sql = format!("SELECT COUNT(*) FROM webhook_events WHERE {DONE}");
        return Ok(on_db!(db, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(before).fetch_one(p).await?
        }));
    }
    let sql = format!(
        "UPDATE webhook_events SET body = '' WHERE id IN \
         (SELECT id FROM webhook_events WHERE {DONE} LIMIT $2)"
    );
    let mut pruned = 0;
    loop {
        let mut tx = db.begin().await?;
        let n = on_tx!(&mut tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(before)
                .bind(PRUNE_BATCH)
                .execute(&mut *c)
                .await?
                .rows_affected()
        });
        tx.commit().await?;
        pruned += n as i64;
        if (n as i64) < PRUNE_BATCH {
            return Ok(pruned);
        }
    }
}
