//! Payments and how each was spread over invoices: the only writer of `payments` and
//! `payment_allocations`. A payment is unique on (gateway, gateway payment id), whoever tells of
//! it first (our charge's reply or a webhook).

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, Result, Tx, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct PaymentRow {
    pub id: String,
    pub customer_id: String,
    pub invoice_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub gateway: String,
    pub gateway_payment_id: Option<String>,
    pub method: String,
    pub reference: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub status: String,
    pub amount_refunded: i64,
    pub at: i64,
}

pub(crate) const PAYMENT_COLUMNS: &str = "id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
     method, reference, brand, last4, status, amount_refunded, at";

/// A payment row to write.
#[derive(Debug, Clone)]
pub struct NewRow<'a> {
    pub id: &'a str,
    pub customer_id: &'a str,
    pub invoice_id: Option<&'a str>,
    pub amount: i64,
    pub currency: &'a str,
    pub gateway: &'a str,
    pub gateway_payment_id: Option<&'a str>,
    pub method: &'a str,
    pub reference: Option<&'a str>,
    pub brand: Option<&'a str>,
    pub last4: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// Inserts the payment unless (gateway, gateway payment id) is recorded already; returns
/// whether it was new.
pub async fn insert(tx: &mut Tx, p: &NewRow<'_>, now: DateTime<Utc>) -> Result<bool> {
    let inserted: Option<String> = on_tx!(tx, c => {
        sqlx::query_scalar(
            "INSERT INTO payments (id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
             method, reference, brand, last4, status, at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'succeeded', $12, $13) \
             ON CONFLICT (gateway, gateway_payment_id) DO NOTHING RETURNING id",
        )
        .bind(p.id)
        .bind(p.customer_id)
        .bind(p.invoice_id)
        .bind(p.amount)
        .bind(p.currency)
        .bind(p.gateway)
        .bind(p.gateway_payment_id)
        .bind(p.method)
        .bind(p.reference)
        .bind(p.brand)
        .bind(p.last4)
        .bind(ms(p.at))
        .bind(ms(now))
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(inserted.is_some())
}

/// Our id of a gateway payment already recorded, inside `tx`.
pub async fn id_by_gateway_id(
    tx: &mut Tx,
    gateway: &str,
    gateway_payment_id: &str,
) -> Result<Option<String>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar("SELECT id FROM payments WHERE gateway = $1 AND gateway_payment_id = $2")
            .bind(gateway)
            .bind(gateway_payment_id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The payment of a gateway payment, locked for the rest of `tx`.
pub async fn lock_by_gateway_id(
    tx: &mut Tx,
    gateway: &str,
    gateway_payment_id: &str,
) -> Result<Option<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE gateway = $1 AND gateway_payment_id = $2{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(gateway)
            .bind(gateway_payment_id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// One payment by id, locked.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Adds `amount` to an invoice's share of a payment.
pub async fn allocate(tx: &mut Tx, payment_id: &str, invoice_id: &str, amount: i64) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ($1, $2, $3) \
             ON CONFLICT (payment_id, invoice_id) DO UPDATE SET amount = payment_allocations.amount + excluded.amount",
        )
        .bind(payment_id)
        .bind(invoice_id)
        .bind(amount)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Takes `amount` of a payment's allocation to an invoice back (a refund); the allocation goes
/// when nothing of it is left.
pub async fn deallocate(
    tx: &mut Tx,
    payment_id: &str,
    invoice_id: &str,
    amount: i64,
    whole: bool,
) -> Result<()> {
    on_tx!(tx, c => {
        if whole {
            sqlx::query("DELETE FROM payment_allocations WHERE payment_id = $1 AND invoice_id = $2")
                .bind(payment_id)
                .bind(invoice_id)
                .execute(&mut *c)
                .await?;
        } else {
            sqlx::query("UPDATE payment_allocations SET amount = amount - $3 WHERE payment_id = $1 AND invoice_id = $2")
                .bind(payment_id)
                .bind(invoice_id)
                .bind(amount)
                .execute(&mut *c)
                .await?;
        }
    });
    Ok(())
}

/// A payment's allocations, newest due invoice first (the order a refund reopens them in).
pub async fn allocations_newest_first(tx: &mut Tx, payment_id: &str) -> Result<Vec<(String, i64)>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.invoice_id, a.amount FROM payment_allocations a JOIN invoices i ON i.id = a.invoice_id \
             WHERE a.payment_id = $1 ORDER BY i.due_at DESC, i.id DESC",
        )
        .bind(payment_id)
        .fetch_all(&mut *c)
        .await?
    }))
}

/// A payment's allocations with each invoice's number and what it owes now, in invoice order:
/// (invoice id, number, amount, amount due).
pub async fn allocations_with_due(
    tx: &mut Tx,
    payment_id: &str,
) -> Result<Vec<(String, Option<String>, i64, i64)>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.invoice_id, i.number, a.amount, i.amount_due FROM payment_allocations a \
             JOIN invoices i ON i.id = a.invoice_id WHERE a.payment_id = $1 \
             ORDER BY i.created_at, i.id",
        )
        .bind(payment_id)
        .fetch_all(&mut *c)
        .await?
    }))
}

/// How many payments are allocated to the invoice.
pub async fn allocations_to(tx: &mut Tx, invoice_id: &str) -> Result<i64> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar("SELECT COUNT(*) FROM payment_allocations WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(&mut *c)
            .await?
    }))
}

/// Counts `amount` more as refunded on the payment (less, when negative: a refund that failed).
pub async fn add_refunded(tx: &mut Tx, payment_id: &str, amount: i64) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE payments SET amount_refunded = amount_refunded + $2, \
             status = CASE WHEN disputed THEN 'disputed' WHEN amount_refunded + $2 >= amount THEN 'refunded' \
             WHEN amount_refunded + $2 <= 0 THEN 'succeeded' ELSE 'partially_refunded' END WHERE id = $1",
        )
        .bind(payment_id)
        .bind(amount)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Marks a gateway payment disputed (`true`), or clears the dispute (`false`: won); returns
/// whether the payment is recorded.
pub async fn set_disputed(
    tx: &mut Tx,
    gateway: &str,
    gateway_payment_id: &str,
    disputed: bool,
) -> Result<bool> {
    let sql = if disputed {
        "UPDATE payments SET disputed = TRUE, status = 'disputed' WHERE gateway = $1 AND gateway_payment_id = $2"
    } else {
        "UPDATE payments SET disputed = FALSE, status = CASE WHEN amount_refunded >= amount THEN 'refunded' \
         WHEN amount_refunded > 0 THEN 'partially_refunded' ELSE 'succeeded' END \
         WHERE gateway = $1 AND gateway_payment_id = $2"
    };
    let changed = on_tx!(tx, c => {
        sqlx::query(sql)
            .bind(gateway)
            .bind(gateway_payment_id)
            .execute(&mut *c)
            .await?
            .rows_affected()
    });
    Ok(changed > 0)
}

/// Payments oldest first, filtered by customer and/or invoice (an invoice's payments include
/// balance payments allocated to it).
pub async fn list(
    db: &Db,
    customer_id: Option<&str>,
    invoice_id: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments p WHERE ($1 IS NULL OR customer_id = $1) \
         AND ($2 IS NULL OR invoice_id = $2 OR EXISTS (SELECT 1 FROM payment_allocations a \
              WHERE a.payment_id = p.id AND a.invoice_id = $2)) \
         AND ($3 IS NULL OR (created_at, id) > (SELECT created_at, id FROM payments WHERE id = $3)) \
         ORDER BY created_at, id LIMIT $4"
    );
    Ok(on_db!(db, p => {
        sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(invoice_id)
            .bind(starting_after)
            .bind(limit)
            .fetch_all(p)
            .await?
    }))
}

/// The payment a gateway payment (pi_...) was recorded as, if it was.
pub async fn by_gateway_id(
    db: &Db,
    gateway: &str,
    gateway_payment_id: &str,
) -> Result<Option<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE gateway = $1 AND gateway_payment_id = $2"
    );
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(gateway).bind(gateway_payment_id).fetch_optional(p).await?),
    )
}

pub async fn get(db: &Db, id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

/// The payment, read inside `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// What paid an invoice, newest first, locked: (payment id, gateway, gateway payment id, amount
/// allocated to the invoice, amount of the payment not refunded yet).
pub async fn funding_of(
    tx: &mut Tx,
    invoice_id: &str,
) -> Result<Vec<(String, String, Option<String>, i64, i64)>> {
    let sql = format!(
        "SELECT p.id, p.gateway, p.gateway_payment_id, a.amount, p.amount - p.amount_refunded \
         FROM payment_allocations a JOIN payments p ON p.id = a.payment_id \
         WHERE a.invoice_id = $1 ORDER BY p.at DESC, p.id DESC{}",
        tx.lock_rows_of("p")
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_all(&mut *c)
            .await?
    }))
}
