//! Invoices: writing and finalising them with a gapless number, and reads for the API.

use chrono::{DateTime, Utc};
use settled_jobs::error::JobError;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::invoice::format_number;
use settled_jobs::store::NewInvoice;
use sqlx::FromRow;

use super::{Db, Tx, ms, on_db, on_tx};
use crate::app::State;

#[derive(Debug, Clone, FromRow)]
pub struct InvoiceRow {
    pub id: String,
    pub number: Option<String>,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    pub kind: String,
    pub status: String,
    pub currency: String,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub credits_applied: i64,
    pub retainer_applied: i64,
    pub amount_paid: i64,
    pub amount_due: i64,
    pub auto_charge: bool,
    pub due_at: Option<i64>,
    pub finalize_at: Option<i64>,
    pub finalized_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub voided_at: Option<i64>,
    pub created_at: i64,
}

pub const INVOICE_COLUMNS: &str = "id, number, customer_id, subscription_id, kind, status, currency, \
     period_start, period_end, subtotal, tax, total, credits_applied, retainer_applied, amount_paid, \
     amount_due, auto_charge, due_at, finalize_at, finalized_at, paid_at, voided_at, created_at";

#[derive(Debug, Clone, FromRow)]
pub struct LineRow {
    pub id: String,
    pub position: i64,
    pub kind: String,
    pub description: String,
    pub quantity: String,
    pub unit_amount: i64,
    pub amount: i64,
    pub tax_rate: Option<String>,
}

/// Inserts the invoice and its lines; finalises it at once unless it has a draft window.
/// Returns false when the period already has its invoice (the natural key held).
pub async fn insert(
    tx: &mut Tx,
    inv: &NewInvoice,
    now: DateTime<Utc>,
    number_format: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO invoices (id, customer_id, subscription_id, kind, status, currency, period_start, \
             period_end, subtotal, tax, total, amount_due, auto_charge, due_at, finalize_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'draft', $5, $6, $7, $8, $9, $10, $10, $11, $12, $13, $14, $14) \
             ON CONFLICT (subscription_id, period_start) DO NOTHING",
        )
        .bind(&inv.id)
        .bind(&inv.customer_id)
        .bind(&inv.subscription_id)
        .bind(inv.kind)
        .bind(&inv.currency)
        .bind(inv.period.map(|p| ms(p.0)))
        .bind(inv.period.map(|p| ms(p.1)))
        .bind(inv.subtotal)
        .bind(inv.tax)
        .bind(inv.total)
        .bind(inv.auto_charge)
        .bind(ms(inv.due_at))
        .bind(inv.finalize_at.map(ms))
        .bind(ms(now))
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    if inserted == 0 {
        return Ok(false);
    }
    for (i, line) in inv.lines.iter().enumerate() {
        on_tx!(tx, c => {
            sqlx::query(
                "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, unit_amount, amount, tax_rate) \
                 VALUES ($1, $2, $3, 'item', $4, $5, $6, $7, $8)",
            )
            .bind(new_id(prefix::INVOICE_LINE))
            .bind(&inv.id)
            .bind(i as i64)
            .bind(&line.description)
            .bind(&line.quantity)
            .bind(line.unit_amount)
            .bind(line.amount)
            .bind(&line.tax_rate)
            .execute(&mut *c)
            .await?;
        });
    }
    if inv.finalize_at.is_none() {
        finalize(tx, &inv.id, now, number_format).await?;
    }
    Ok(true)
}

/// Takes `count` consecutive numbers from the gapless sequence and returns the first. The
/// sequence row stays locked until the caller's transaction ends, so numbers are never skipped:
/// a transaction that rolls back gives its numbers back.
pub async fn take_numbers(tx: &mut Tx, count: i64) -> Result<i64, sqlx::Error> {
    on_tx!(tx, c => {
        sqlx::query("INSERT INTO invoice_sequences (name, next_value) VALUES ('invoice', 1) ON CONFLICT (name) DO NOTHING")
            .execute(&mut *c)
            .await?;
        sqlx::query_scalar("UPDATE invoice_sequences SET next_value = next_value + $1 WHERE name = 'invoice' RETURNING next_value - $1")
            .bind(count)
            .fetch_one(&mut *c)
            .await
    })
}

/// Numbers a draft from the gapless sequence and opens it, in the caller's transaction, and
/// records it in the ledger. A paid-in-full invoice (total 0) is paid at once.
pub async fn finalize(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
    number_format: &str,
) -> Result<bool, sqlx::Error> {
    let seq = take_numbers(tx, 1).await?;
    let number = format_number(number_format, now, seq);
    let row: Option<(String, String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE invoices SET number = $2, status = CASE WHEN amount_due = 0 THEN 'paid' ELSE 'open' END, \
             finalized_at = $3, paid_at = CASE WHEN amount_due = 0 THEN $3 ELSE NULL END, updated_at = $3 \
             WHERE id = $1 AND status = 'draft' RETURNING customer_id, currency, total",
        )
        .bind(invoice_id)
        .bind(&number)
        .bind(ms(now))
        .fetch_optional(&mut *c)
        .await?
    });
    let Some((customer_id, currency, total)) = row else {
        // Not a draft any more: the numbering must not advance, so undo by failing the transaction.
        return Err(sqlx::Error::RowNotFound);
    };
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO ledger_entries (id, customer_id, currency, kind, amount, invoice_id, memo, at) \
             VALUES ($1, $2, $3, 'invoice', $4, $5, $6, $7)",
        )
        .bind(new_id(prefix::LEDGER))
        .bind(&customer_id)
        .bind(&currency)
        .bind(total)
        .bind(invoice_id)
        .bind(&number)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    crate::credits::on_finalized(tx, invoice_id, now).await?;
    crate::outbox::invoice_issued(tx, invoice_id, now).await?;
    crate::charges::on_finalized(tx, invoice_id, now).await?;
    Ok(true)
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(anyhow::Error::new(e).context("database error"))
}

/// The finalize_invoice job: a draft whose review window has passed gets its number.
pub async fn finalize_due(state: &State, invoice_id: &str) -> Result<(), JobError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await.map_err(transient)?;
    let status: Option<(String, Option<i64>)> = on_tx!(&mut tx, c => {
        sqlx::query_as("SELECT status, finalize_at FROM invoices WHERE id = $1")
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(transient)?
    });
    match status {
        Some((s, Some(at))) if s == "draft" && at <= ms(now) => {
            finalize(
                &mut tx,
                invoice_id,
                now,
                &state.config.billing.number_format,
            )
            .await
            .map_err(transient)?;
            tx.commit().await.map_err(transient)?;
            Ok(())
        }
        Some(_) => Ok(()),
        None => Err(JobError::permanent(format!("no invoice {invoice_id}"))),
    }
}

pub async fn get(db: &Db, id: &str) -> Result<Option<InvoiceRow>, sqlx::Error> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1");
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await)
}

pub async fn lines(db: &Db, invoice_id: &str) -> Result<Vec<LineRow>, sqlx::Error> {
    on_db!(db, p => {
        sqlx::query_as(
            "SELECT id, position, kind, description, quantity, unit_amount, amount, tax_rate \
             FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
        )
        .bind(invoice_id)
        .fetch_all(p)
        .await
    })
}

#[derive(Debug, Default)]
pub struct InvoiceFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub subscription_id: Option<&'a str>,
    pub status: Option<&'a str>,
}

/// Invoices oldest first (by creation, then id), which is also numbering order.
pub async fn list(
    db: &Db,
    filter: &InvoiceFilter<'_>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    let mut sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    for (col, v) in [
        ("customer_id", filter.customer_id),
        ("subscription_id", filter.subscription_id),
        ("status", filter.status),
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
            " AND (created_at, id) > (SELECT created_at, id FROM invoices WHERE id = ${n})"
        ));
    }
    sql.push_str(&format!(
        " ORDER BY created_at, id LIMIT ${}",
        binds.len() + 1
    ));
    on_db!(db, p => {
        let mut q = sqlx::query_as::<_, InvoiceRow>(sqlx::AssertSqlSafe(sql.as_str()));
        for b in &binds {
            q = q.bind(b.clone());
        }
        q.bind(limit).fetch_all(p).await
    })
}
