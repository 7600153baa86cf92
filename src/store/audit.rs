//! Read-only questions across tables that the ledger check asks: what each record says a
//! balance is, so `billing::ledger::check` can hold it against the ledger's own sums.

use super::dialect::collectible;
use super::{Db, Result, on_db};

/// Σ amount_due of collectible invoices per (customer, currency).
pub async fn receivable_sums(db: &Db) -> Result<Vec<(String, String, i64)>> {
    let sql = format!(
        "SELECT customer_id, currency, CAST(SUM(amount_due) AS BIGINT) FROM invoices \
         WHERE status IN {} GROUP BY customer_id, currency",
        collectible()
    );
    Ok(on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(p).await?))
}

/// Σ remaining of credit notes per (customer, currency).
pub async fn credit_sums(db: &Db) -> Result<Vec<(String, String, i64)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT customer_id, currency, CAST(SUM(remaining) AS BIGINT) FROM credit_notes \
             GROUP BY customer_id, currency",
        )
        .fetch_all(p)
        .await?
    }))
}

/// Σ remaining of retainer deposits per (customer, currency).
pub async fn retainer_sums(db: &Db) -> Result<Vec<(String, String, i64)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT customer_id, currency, CAST(SUM(remaining) AS BIGINT) FROM retainers \
             GROUP BY customer_id, currency",
        )
        .fetch_all(p)
        .await?
    }))
}

/// Each finalised invoice's figures and what its payments' allocations add up to: (id, status,
/// total, credit applied, retainer applied, amount paid, amount due, allocated).
pub type InvoiceFigures = (String, String, i64, i64, i64, i64, i64, i64);

pub async fn invoice_figures(db: &Db) -> Result<Vec<InvoiceFigures>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT i.id, i.status, i.total, i.credits_applied, i.retainer_applied, i.amount_paid, i.amount_due, \
             CAST(COALESCE((SELECT SUM(a.amount) FROM payment_allocations a WHERE a.invoice_id = i.id), 0) AS BIGINT) \
             FROM invoices i WHERE i.status NOT IN ('draft', 'void')",
        )
        .fetch_all(p)
        .await?
    }))
}

/// How many credit notes or deposits hold less than nothing or more than they started with.
pub async fn impossible_balances(db: &Db) -> Result<i64> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM credit_notes WHERE remaining < 0 OR remaining > amount) \
             + (SELECT COUNT(*) FROM retainers WHERE remaining < 0 OR remaining > amount - reversed)",
        )
        .fetch_one(p)
        .await?
    }))
}

/// Each payment's amount, what it says is refunded, and what its refunds add up to.
pub async fn payment_refunds(db: &Db) -> Result<Vec<(String, i64, i64, i64)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT p.id, p.amount, p.amount_refunded, \
             CAST(COALESCE((SELECT SUM(r.amount) FROM refunds r WHERE r.payment_id = p.id AND r.status <> 'failed'), 0) AS BIGINT) \
             FROM payments p",
        )
        .fetch_all(p)
        .await?
    }))
}

/// What the customer owes, the credit and the retainer it holds, in `currency`.
pub async fn customer_balances(
    db: &Db,
    customer_id: &str,
    currency: &str,
) -> Result<(i64, i64, i64)> {
    let sql = format!(
        "SELECT \
         CAST(COALESCE((SELECT SUM(amount_due) FROM invoices WHERE customer_id = $1 AND currency = $2 \
              AND status IN {}), 0) AS BIGINT), \
         CAST(COALESCE((SELECT SUM(remaining) FROM credit_notes WHERE customer_id = $1 AND currency = $2), 0) AS BIGINT), \
         CAST(COALESCE((SELECT SUM(remaining) FROM retainers WHERE customer_id = $1 AND currency = $2), 0) AS BIGINT)",
        collectible()
    );
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_one(p)
            .await?
    }))
}

/// The same balances as [`customer_balances`], read inside a transaction: what the customer owes
/// and the credit it holds right after the change being written.
pub async fn owed_and_credit_in(
    tx: &mut super::Tx,
    customer_id: &str,
    currency: &str,
) -> Result<(i64, i64)> {
    let sql = format!(
        "SELECT \
         CAST(COALESCE((SELECT SUM(amount_due) FROM invoices WHERE customer_id = $1 AND currency = $2 \
              AND status IN {}), 0) AS BIGINT), \
         CAST(COALESCE((SELECT SUM(remaining) FROM credit_notes WHERE customer_id = $1 AND currency = $2), 0) AS BIGINT)",
        collectible()
    );
    Ok(super::on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_one(&mut *c)
            .await?
    }))
}
