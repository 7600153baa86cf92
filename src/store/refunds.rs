//! Refunds: money given back on a payment. The only writer of `refunds`, unique on the gateway's
//! refund id, so a refund heard twice (our own call and its webhook) is one row. A refund the
//! daemon asks a gateway for is written `pending` with its Idempotency-Key before the call, and
//! becomes `succeeded` or `failed` once the gateway has said which.

use chrono::{DateTime, Utc};
use settled_jobs::job::WorkKind;
use sqlx::FromRow;

use super::{Db, Result, Tx, ms, on_db, on_tx};

/// A refund's state.
pub mod status {
    pub const PENDING: &str = "pending";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
}

#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub id: &'a str,
    pub payment_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub gateway: &'a str,
    /// The gateway's refund id (re_...), None for one made by other means or not sent yet.
    pub gateway_refund_id: Option<&'a str>,
    pub to_credit: bool,
    pub reason: Option<&'a str>,
    pub at: DateTime<Utc>,
    /// `succeeded`, or `pending` for one the daemon is about to send.
    pub status: &'a str,
    /// The key a pending refund is sent under.
    pub idempotency_key: Option<&'a str>,
    /// The retainer deposit it pays back, for a retainer refund.
    pub retainer_id: Option<&'a str>,
}

/// Inserts the refund unless its gateway refund id is recorded already; returns whether it was
/// new.
pub async fn insert(tx: &mut Tx, r: &NewRefund<'_>) -> Result<bool> {
    let inserted = on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO refunds (id, payment_id, amount, currency, gateway, gateway_refund_id, to_credit, \
             reason, at, status, idempotency_key, retainer_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (gateway, gateway_refund_id) DO NOTHING",
        )
        .bind(r.id)
        .bind(r.payment_id)
        .bind(r.amount)
        .bind(r.currency)
        .bind(r.gateway)
        .bind(r.gateway_refund_id)
        .bind(r.to_credit)
        .bind(r.reason)
        .bind(ms(r.at))
        .bind(r.status)
        .bind(r.idempotency_key)
        .bind(r.retainer_id)
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    Ok(inserted > 0)
}

/// A refund as an email describes it: (id, payment id, amount, currency, to credit, reason, at).
pub type RefundFacts = (String, String, i64, String, bool, Option<String>, i64);

pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<RefundFacts>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, payment_id, amount, currency, to_credit, reason, at FROM refunds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    }))
}

/// A refund the daemon sends, with what its request and its outcome need.
#[derive(Debug, Clone, FromRow)]
pub struct Outgoing {
    pub id: String,
    pub payment_id: String,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    pub gateway: String,
    pub gateway_payment_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub retainer_id: Option<String>,
    pub to_credit: bool,
    pub status: String,
}

const OUTGOING: &str = "SELECT r.id, r.payment_id, p.customer_id, r.amount, r.currency, r.gateway, \
     p.gateway_payment_id, r.idempotency_key, r.retainer_id, r.to_credit, r.status \
     FROM refunds r JOIN payments p ON p.id = r.payment_id";

/// One refund, locked (its outcome is about to be recorded).
pub async fn lock_outgoing(tx: &mut Tx, id: &str) -> Result<Option<Outgoing>> {
    let sql = format!("{OUTGOING} WHERE r.id = $1{}", tx.lock_rows_of("r"));
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

pub async fn outgoing(db: &Db, id: &str) -> Result<Option<Outgoing>> {
    let sql = format!("{OUTGOING} WHERE r.id = $1");
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(p)
            .await?
    }))
}

/// Claims pending refunds nobody is sending: never sent, or sent before `sent_before_wall_ms`
/// with no recorded answer (the sender died), not set aside; each is leased until
/// `lease_until` and marked sent.
pub async fn claim_pending(
    tx: &mut Tx,
    sent_before_wall_ms: i64,
    wall_now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Outgoing>> {
    let sql = format!(
        "{OUTGOING} WHERE r.status = 'pending' AND COALESCE(r.sent_wall_ms, 0) < $1 \
         AND (r.lease_until IS NULL OR r.lease_until < $2) AND {} ORDER BY r.at, r.id LIMIT $3{}",
        super::work_failures::not_set_aside(WorkKind::Refunds, "r.id", "$2"),
        tx.skip_locked_of("r")
    );
    let rows: Vec<Outgoing> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(sent_before_wall_ms)
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    });
    for r in &rows {
        mark_sent(tx, &r.id, wall_now, Some(lease_until)).await?;
    }
    Ok(rows)
}

/// Marks a pending refund as being sent now (held until `lease_until`).
pub async fn mark_sent(
    tx: &mut Tx,
    id: &str,
    wall_now: i64,
    lease_until: Option<i64>,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE refunds SET sent_wall_ms = $2, lease_until = $3 WHERE id = $1")
            .bind(id)
            .bind(wall_now)
            .bind(lease_until)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// A pending refund went through: its gateway id is recorded. False when it was not pending.
pub async fn set_succeeded(tx: &mut Tx, id: &str, gateway_refund_id: &str) -> Result<bool> {
    Ok(on_tx!(tx, c => {
        sqlx::query(
            "UPDATE refunds SET status = 'succeeded', gateway_refund_id = $2, lease_until = NULL, \
             failure_message = NULL WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(gateway_refund_id)
        .execute(&mut *c)
        .await?
        .rows_affected()
    }) == 1)
}

/// A pending refund did not go through. False when it was not pending.
pub async fn set_failed(tx: &mut Tx, id: &str, message: &str) -> Result<bool> {
    Ok(on_tx!(tx, c => {
        sqlx::query(
            "UPDATE refunds SET status = 'failed', failure_message = $2, lease_until = NULL \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(message)
        .execute(&mut *c)
        .await?
        .rows_affected()
    }) == 1)
}

/// Releases a pending refund's lease (its answer was not known; it is asked again later).
pub async fn clear_lease(tx: &mut Tx, id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE refunds SET lease_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Pending refunds (sent or not): work not done.
pub async fn pending_count(db: &Db) -> Result<i64> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar("SELECT COUNT(*) FROM refunds WHERE status = 'pending'")
            .fetch_one(p)
            .await?
    }))
}

/// Whether a pending refund can be claimed now.
pub async fn claimable(db: &Db, sent_before_wall_ms: i64, wall_now: i64) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM refunds r WHERE r.status = 'pending' \
         AND COALESCE(r.sent_wall_ms, 0) < $1 AND (r.lease_until IS NULL OR r.lease_until < $2) AND {})",
        super::work_failures::not_set_aside(WorkKind::Refunds, "r.id", "$2")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(sent_before_wall_ms)
            .bind(wall_now)
            .fetch_one(p)
            .await?
    }))
}

/// The refund with this id if it is of `payment_id` (a gateway event naming our refund id in its
/// metadata): (id, status).
pub async fn ours_of_payment(
    tx: &mut Tx,
    id: &str,
    payment_id: &str,
) -> Result<Option<(String, String)>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as("SELECT id, status FROM refunds WHERE id = $1 AND payment_id = $2")
            .bind(id)
            .bind(payment_id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// How many refunds of `payment_id` were sent (or are to be sent) under a key of ours: the next
/// one is number this + 1.
pub async fn keyed_count(tx: &mut Tx, payment_id: &str) -> Result<i64> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM refunds WHERE payment_id = $1 AND idempotency_key IS NOT NULL",
        )
        .bind(payment_id)
        .fetch_one(&mut *c)
        .await?
    }))
}

/// Refunds of a payment, oldest first, for the payment's view.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: String,
    pub gateway: String,
    pub gateway_refund_id: Option<String>,
    pub to_credit: bool,
    pub reason: Option<String>,
    pub status: String,
    pub failure_message: Option<String>,
    pub at: i64,
}

pub async fn of_payment(db: &Db, payment_id: &str) -> Result<Vec<RefundRow>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT id, payment_id, amount, currency, gateway, gateway_refund_id, to_credit, reason, \
             status, failure_message, at FROM refunds WHERE payment_id = $1 ORDER BY at, id",
        )
        .bind(payment_id)
        .fetch_all(p)
        .await?
    }))
}
