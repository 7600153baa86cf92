//! Work set aside after a failure: one row per (kind, item) with its tries, its last error and
//! its next try on the real wall clock. The only writer of `work_failures`. Claims of due work
//! leave out items whose next try lies ahead ([`not_set_aside`]); a success clears the row; an
//! operator's retry makes it due at once.

use settled_jobs::job::WorkKind;
use sqlx::FromRow;

use super::{Db, Result, Tx, on_db, on_tx};

/// The SQL condition that keeps items of `kind` whose next try lies after `$now_param` (wall
/// milliseconds) out of a claim; `id` is the item's id column.
pub fn not_set_aside(kind: WorkKind, id: &str, now_param: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM work_failures f WHERE f.kind = '{}' AND f.item_id = {id} \
         AND f.retry_at > {now_param})",
        kind.name()
    )
}

/// After this many failed tries an item is the operator's: it shows as failed in `/v1/jobs`, no
/// longer counts as work still to be done (so the manual clock can be ready without it), and is
/// still tried again on its backoff.
pub const REPORTED_AFTER_TRIES: i64 = 3;

/// Which set-aside items a query about due work leaves out.
#[derive(Debug, Clone, Copy)]
pub enum SetAside {
    /// A claim's: those whose next try lies after this wall time (milliseconds).
    WaitingAt(i64),
    /// A count of the work still to be done: those failed [`REPORTED_AFTER_TRIES`] times.
    Reported,
}

impl SetAside {
    /// The SQL condition for items of `kind` whose id column is `id`, with its value in `param`.
    pub fn condition(self, kind: WorkKind, id: &str, param: &str) -> String {
        match self {
            SetAside::WaitingAt(_) => not_set_aside(kind, id, param),
            SetAside::Reported => format!(
                "NOT EXISTS (SELECT 1 FROM work_failures f WHERE f.kind = '{}' \
                 AND f.item_id = {id} AND f.tries >= {param})",
                kind.name()
            ),
        }
    }

    /// The value bound to the condition's parameter.
    pub fn value(self) -> i64 {
        match self {
            SetAside::WaitingAt(wall) => wall,
            SetAside::Reported => REPORTED_AFTER_TRIES,
        }
    }
}

/// The delay before try `tries + 1` after `tries` failures: 1 s doubling up to an hour.
pub fn backoff_ms(tries: i64) -> i64 {
    let exp = (tries - 1).clamp(0, 12) as u32;
    (1000i64 << exp).min(3_600_000)
}

/// Sets an item aside after a failure: counts the try and schedules the next one after
/// `delay_ms` (None: the backoff for the try count). Returns the tries so far.
pub async fn set_aside(
    tx: &mut Tx,
    kind: WorkKind,
    item_id: &str,
    error: &str,
    now_wall_ms: i64,
    delay_ms: Option<i64>,
) -> Result<i64> {
    let error: String = error.chars().take(2000).collect();
    let tries: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(
            "INSERT INTO work_failures (kind, item_id, tries, first_failed_at, failed_at, retry_at, last_error) \
             VALUES ($1, $2, 1, $3, $3, $3, $4) \
             ON CONFLICT (kind, item_id) DO UPDATE SET tries = work_failures.tries + 1, \
             failed_at = excluded.failed_at, last_error = excluded.last_error RETURNING tries",
        )
        .bind(kind.name())
        .bind(item_id)
        .bind(now_wall_ms)
        .bind(&error)
        .fetch_one(&mut *c)
        .await?
    });
    let retry_at = now_wall_ms + delay_ms.unwrap_or_else(|| backoff_ms(tries));
    on_tx!(tx, c => {
        sqlx::query("UPDATE work_failures SET retry_at = $3 WHERE kind = $1 AND item_id = $2")
            .bind(kind.name())
            .bind(item_id)
            .bind(retry_at)
            .execute(&mut *c)
            .await?;
    });
    Ok(tries)
}

/// Clears the rows of items that are done.
pub async fn clear(tx: &mut Tx, kind: WorkKind, item_ids: &[&str]) -> Result<()> {
    if item_ids.is_empty() {
        return Ok(());
    }
    let kind_name = kind.name();
    match tx {
        Tx::Postgres(t) => {
            sqlx::query("DELETE FROM work_failures WHERE kind = $1 AND item_id = ANY($2)")
                .bind(kind_name)
                .bind(item_ids)
                .execute(&mut **t)
                .await?;
        }
        Tx::Sqlite(t) => {
            for chunk in item_ids.chunks(500) {
                let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let sql = format!(
                    "DELETE FROM work_failures WHERE kind = $1 AND item_id IN ({})",
                    list.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(kind_name);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut **t).await?;
            }
        }
    }
    Ok(())
}

/// Makes set-aside items due at once (the thing they waited for happened).
pub async fn wake(tx: &mut Tx, kind: WorkKind, item_ids: &[String]) -> Result<()> {
    for id in item_ids {
        on_tx!(tx, c => {
            sqlx::query("UPDATE work_failures SET retry_at = 0 WHERE kind = $1 AND item_id = $2")
                .bind(kind.name())
                .bind(id)
                .execute(&mut *c)
                .await?;
        });
    }
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct FailureRow {
    pub kind: String,
    pub item_id: String,
    pub tries: i64,
    pub first_failed_at: i64,
    pub failed_at: i64,
    pub retry_at: i64,
    pub last_error: String,
}

const COLUMNS: &str = "kind, item_id, tries, first_failed_at, failed_at, retry_at, last_error";

/// Set-aside items, longest failing first; `reported`: only those failed
/// [`REPORTED_AFTER_TRIES`] times (true) or only those not yet (false); `after` continues after
/// that (kind, item).
pub async fn list(
    db: &Db,
    kind: Option<WorkKind>,
    reported: Option<bool>,
    limit: i64,
    after: Option<(&str, &str)>,
) -> Result<Vec<FailureRow>> {
    let mut sql = format!("SELECT {COLUMNS} FROM work_failures WHERE ($1 IS NULL OR kind = $1)");
    match reported {
        Some(true) => sql.push_str(&format!(" AND tries >= {REPORTED_AFTER_TRIES}")),
        Some(false) => sql.push_str(&format!(" AND tries < {REPORTED_AFTER_TRIES}")),
        None => {}
    }
    if after.is_some() {
        sql.push_str(
            " AND (first_failed_at, kind, item_id) > \
             (SELECT first_failed_at, kind, item_id FROM work_failures WHERE kind = $3 AND item_id = $4)",
        );
    }
    sql.push_str(" ORDER BY first_failed_at, kind, item_id LIMIT $2");
    Ok(on_db!(db, p => {
        let mut q = sqlx::query_as::<_, FailureRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(kind.map(WorkKind::name))
            .bind(limit);
        if let Some((k, id)) = after {
            q = q.bind(k.to_string()).bind(id.to_string());
        }
        q.fetch_all(p).await?
    }))
}

pub async fn get(db: &Db, kind: WorkKind, item_id: &str) -> Result<Option<FailureRow>> {
    let sql = format!("SELECT {COLUMNS} FROM work_failures WHERE kind = $1 AND item_id = $2");
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(kind.name())
            .bind(item_id)
            .fetch_optional(p)
            .await?
    }))
}

/// An operator's retry: the item is due at once. False when it is not set aside.
pub async fn retry_now(db: &Db, kind: WorkKind, item_id: &str) -> Result<bool> {
    Ok(on_db!(db, p => {
        sqlx::query("UPDATE work_failures SET retry_at = 0 WHERE kind = $1 AND item_id = $2")
            .bind(kind.name())
            .bind(item_id)
            .execute(p)
            .await?
            .rows_affected()
            == 1
    }))
}

/// Per kind: how many items are set aside, and when the longest-failing one first failed.
pub async fn summary(db: &Db) -> Result<Vec<(String, i64, i64)>> {
    summary_from(db, 0).await
}

/// [`summary`] of the items that failed at least `tries` times.
pub async fn summary_from(db: &Db, tries: i64) -> Result<Vec<(String, i64, i64)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT kind, COUNT(*), MIN(first_failed_at) FROM work_failures \
             WHERE tries >= $1 GROUP BY kind ORDER BY kind",
        )
        .bind(tries)
        .fetch_all(p)
        .await?
    }))
}
