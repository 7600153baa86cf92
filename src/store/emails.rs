//! The email outbox's rows: written by the outbox in the caller's transaction, finished by the
//! send job, listed and retried by the operator. The only writer of `emails`.

use chrono::{DateTime, Utc};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::job::WorkKind;
use sqlx::FromRow;

use super::bulk::{self, Arg};
use super::{Db, Result, Tx, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct EmailRow {
    pub id: String,
    pub template: String,
    pub subject_id: String,
    pub attempt: i64,
    pub customer_id: Option<String>,
    pub invoice_id: Option<String>,
    pub payment_id: Option<String>,
    /// JSON list of addresses.
    pub recipients: String,
    pub subject: String,
    /// JSON snapshot of the facts the message is about, taken when the row was written.
    pub context: String,
    pub message_id: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub send_after: i64,
    pub sent_at: Option<i64>,
    pub created_at: i64,
}

const EMAIL_COLUMNS: &str = "id, template, subject_id, attempt, customer_id, invoice_id, payment_id, \
     recipients, subject, context, message_id, status, attempts, last_error, send_after, sent_at, created_at";

pub const EMAIL_STATUSES: &[&str] = &["pending", "sent", "failed"];

/// What one message is about; (template, subject_id, attempt) is its natural key.
pub struct NewEmail<'a> {
    pub template: settled_jobs::template::Template,
    pub subject_id: &'a str,
    pub attempt: i64,
    pub customer_id: &'a str,
    pub invoice_id: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    pub recipients: &'a [String],
    pub subject: &'a str,
    /// The snapshot the message is rendered from, as JSON.
    pub context: &'a str,
}

/// The Message-ID a row's message carries, derived from its natural key so every resend of it
/// is recognisably the same message.
pub fn message_id(template: &str, subject_id: &str, attempt: i64) -> String {
    format!("<{template}.{subject_id}.{attempt}@settled>")
}

/// Writes the row in `tx` (a pending email is due work of its own), unless the row exists
/// already (a retried job or a replayed webhook): then nothing is written and None is returned.
pub async fn insert(tx: &mut Tx, new: &NewEmail<'_>, now: DateTime<Utc>) -> Result<Option<String>> {
    Ok(insert_many(tx, std::slice::from_ref(new), now).await?.pop())
}

const COLUMNS: [&str; 15] = [
    "id",
    "template",
    "subject_id",
    "attempt",
    "customer_id",
    "invoice_id",
    "payment_id",
    "recipients",
    "subject",
    "context",
    "message_id",
    "status",
    "attempts",
    "send_after",
    "created_at",
];

/// [`insert`] for many rows in a few statements; returns the ids of the rows written (those not
/// there already).
pub async fn insert_many(
    tx: &mut Tx,
    news: &[NewEmail<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let rows: Vec<Vec<Arg>> = news
        .iter()
        .map(|new| {
            let recipients = serde_json::to_string(new.recipients).unwrap_or_else(|_| "[]".into());
            vec![
                Arg::from(new_id(prefix::EMAIL)),
                Arg::from(new.template.name()),
                Arg::from(new.subject_id),
                Arg::from(new.attempt),
                Arg::from(new.customer_id),
                Arg::from(new.invoice_id.map(str::to_string)),
                Arg::from(new.payment_id.map(str::to_string)),
                Arg::from(recipients),
                Arg::from(new.subject),
                Arg::from(new.context),
                Arg::from(message_id(new.template.name(), new.subject_id, new.attempt)),
                Arg::from("pending"),
                Arg::from(0),
                Arg::from(ms(now)),
                Arg::from(ms(now)),
            ]
        })
        .collect();
    let ids = bulk::insert_returning(
        tx,
        "emails",
        &COLUMNS,
        &rows,
        "ON CONFLICT (template, subject_id, attempt) DO NOTHING",
    )
    .await?;
    Ok(ids)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<EmailRow>> {
    let sql = format!("SELECT {EMAIL_COLUMNS} FROM emails WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

/// The first message of `template` about `subject_id` (the invoice email of an invoice, the
/// receipt of a payment).
pub async fn first_of(db: &Db, template: &str, subject_id: &str) -> Result<Option<EmailRow>> {
    let sql = format!(
        "SELECT {EMAIL_COLUMNS} FROM emails WHERE template = $1 AND subject_id = $2 \
         ORDER BY attempt LIMIT 1"
    );
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(template)
            .bind(subject_id)
            .fetch_optional(p)
            .await?
    }))
}

#[derive(Debug, Default)]
pub struct EmailFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub invoice_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub template: Option<&'a str>,
}

/// Emails newest first; `starting_after` continues after that email.
pub async fn list(
    db: &Db,
    filter: &EmailFilter<'_>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<EmailRow>> {
    let mut sql = format!("SELECT {EMAIL_COLUMNS} FROM emails WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    for (col, v) in [
        ("customer_id", filter.customer_id),
        ("invoice_id", filter.invoice_id),
        ("status", filter.status),
        ("template", filter.template),
    ] {
        if let Some(v) = v {
            binds.push(v.to_string());
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    if let Some(after) = starting_after {
        binds.push(after.to_string());
        let n = binds.len();
        sql.push_str(&format!(
            " AND (created_at, id) < (SELECT created_at, id FROM emails WHERE id = ${n})"
        ));
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ${}",
        binds.len() + 1
    ));
    on_db!(db, p => {
        let mut q = sqlx::query_as::<_, EmailRow>(sqlx::AssertSqlSafe(sql.as_str()));
        for b in &binds {
            q = q.bind(b.clone());
        }
        Ok(q.bind(limit).fetch_all(p).await?)
    })
}

/// How one try at sending ended.
pub enum Outcome<'a> {
    Sent {
        at: DateTime<Utc>,
        /// A note for the operator (an address that was left out), if any.
        note: Option<&'a str>,
    },
    Failed {
        reason: &'a str,
    },
    /// Temporary: try again after `delay` (wall clock).
    Retry {
        reason: &'a str,
        delay: std::time::Duration,
    },
}

/// Records the end of try number `attempts + 1` of a row that had `attempts` tries, with the
/// subject it was rendered with, in the caller's transaction; a temporary failure sets the row
/// aside until its next try. Returns false when the row moved on meanwhile (nothing written).
pub async fn finish(
    tx: &mut Tx,
    id: &str,
    attempts: i64,
    subject: &str,
    outcome: Outcome<'_>,
    wall_now: i64,
) -> Result<bool> {
    let (status, sent_at, error) = match &outcome {
        Outcome::Sent { at, note } => ("sent", Some(ms(*at)), note.map(str::to_string)),
        Outcome::Failed { reason } => ("failed", None, Some(reason.to_string())),
        Outcome::Retry { reason, .. } => ("pending", None, Some(reason.to_string())),
    };
    let updated = on_tx!(tx, c => {
        sqlx::query(
            "UPDATE emails SET status = $3, attempts = attempts + 1, sent_at = $4, last_error = $5, \
             subject = CASE WHEN $6 = '' THEN subject ELSE $6 END, lease_until = NULL \
             WHERE id = $1 AND status = 'pending' AND attempts = $2",
        )
        .bind(id)
        .bind(attempts)
        .bind(status)
        .bind(sent_at)
        .bind(error)
        .bind(subject)
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    if updated == 0 {
        return Ok(false);
    }
    match outcome {
        Outcome::Retry { reason, delay } => {
            super::work_failures::set_aside(
                tx,
                WorkKind::Emails,
                id,
                reason,
                wall_now,
                Some(delay.as_millis() as i64),
            )
            .await?;
        }
        _ => super::work_failures::clear(tx, WorkKind::Emails, &[id]).await?,
    }
    Ok(true)
}

pub enum RetryOutcome {
    Retried,
    NotFound,
    NotFailed(String),
}

/// An operator's retry: a failed row goes back to pending, due at once.
pub async fn retry(db: &Db, id: &str, now: DateTime<Utc>) -> Result<RetryOutcome> {
    let mut tx = db.begin().await?;
    let lock = tx.lock_rows();
    let sql = format!("SELECT status, attempts, context = '' FROM emails WHERE id = $1{lock}");
    let row: Option<(String, i64, bool)> = on_tx!(&mut tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    });
    let attempts = match row {
        None => return Ok(RetryOutcome::NotFound),
        Some((status, _, _)) if status != "failed" => return Ok(RetryOutcome::NotFailed(status)),
        // Its snapshot was pruned by retention: there is nothing left to render it from.
        Some((_, _, true)) => return Ok(RetryOutcome::NotFailed("pruned".into())),
        Some((_, attempts, _)) => attempts,
    };
    let _ = attempts;
    on_tx!(&mut tx, c => {
        sqlx::query("UPDATE emails SET status = 'pending', send_after = $2, lease_until = NULL WHERE id = $1")
            .bind(id)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
    });
    super::work_failures::clear(&mut tx, WorkKind::Emails, &[id]).await?;
    tx.commit().await?;
    Ok(RetryOutcome::Retried)
}

/// Claims pending rows due by `now` (billing time), leaving out those set aside until a later
/// try and those under another batch's lease, and leases them until `lease_until` (wall
/// milliseconds), so no other batch sends them meanwhile. Oldest first.
pub async fn claim(
    tx: &mut Tx,
    now: DateTime<Utc>,
    wall_now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<EmailRow>> {
    let sql = format!(
        "SELECT {EMAIL_COLUMNS} FROM emails e WHERE status = 'pending' AND send_after <= $1 \
         AND (lease_until IS NULL OR lease_until < $2) AND {} ORDER BY send_after, id LIMIT $3{}",
        super::work_failures::not_set_aside(WorkKind::Emails, "e.id", "$2"),
        tx.skip_locked()
    );
    let rows: Vec<EmailRow> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    });
    let ids: Vec<Vec<Arg>> = rows
        .iter()
        .map(|r| vec![Arg::from(r.id.as_str()), Arg::from(Some(lease_until))])
        .collect();
    bulk::update(
        tx,
        "emails",
        "id",
        &["lease_until"],
        &ids,
        "lease_until = v.lease_until",
    )
    .await?;
    Ok(rows)
}

/// Rows not yet sent or given up on, due or not (the outbox gauge).
pub async fn pending_count(db: &Db) -> Result<i64> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'pending'")
            .fetch_one(p)
            .await?
    }))
}

/// Pending rows due by `now`; with `claimable`, only those that can be taken now.
pub async fn due_count(db: &Db, now: DateTime<Utc>, wall_now: i64, claimable: bool) -> Result<i64> {
    let sql = if claimable {
        format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM emails e WHERE status = 'pending' AND send_after <= $1 \
             AND (lease_until IS NULL OR lease_until < $2) AND {} LIMIT 1) x",
            super::work_failures::not_set_aside(WorkKind::Emails, "e.id", "$2")
        )
    } else {
        "SELECT COUNT(*) FROM emails WHERE status = 'pending' AND send_after <= $1 AND $2 = $2"
            .to_string()
    };
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .fetch_one(p)
            .await?
    }))
}

/// Rows one prune statement empties at most, so no statement holds the write lock for long.
const PRUNE_BATCH: i64 = 500;

/// Empties the stored snapshot (the facts a message is rendered from) of emails sent or given
/// up on before `before` (billing time); the rows, recipients, subject and status stay. With
/// `dry_run`, only counts them. Returns how many were (or would be) pruned.
pub async fn prune_snapshots(db: &Db, before: DateTime<Utc>, dry_run: bool) -> Result<i64> {
    const DONE: &str = "status IN ('sent', 'failed') AND context <> '' \
         AND COALESCE(sent_at, created_at) < $1";
    if dry_run {
        let sql = format!("SELECT COUNT(*) FROM emails WHERE {DONE}");
        return Ok(on_db!(db, p => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(ms(before)).fetch_one(p).await?
        }));
    }
    let sql = format!(
        "UPDATE emails SET context = '' WHERE id IN (SELECT id FROM emails WHERE {DONE} LIMIT $2)"
    );
    let mut pruned = 0;
    loop {
        let mut tx = db.begin().await?;
        let n = on_tx!(&mut tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(ms(before))
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
