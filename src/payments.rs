//! Recording money that came in, whatever brought it (our own charge's reply, a gateway webhook, an
//! operator's record of a wire transfer): one payment row, unique on (gateway, gateway payment id),
//! spread over the invoice it names or the customer's open invoices oldest due first, the excess
//! kept as credit, every movement in the ledger, all in the caller's transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use settled_jobs::ids::{new_id, prefix};
use sqlx::FromRow;

use crate::http::invoices::{amount, rfc3339_ms};
use crate::store::{Db, Tx, ms, on_db, on_tx};

/// Invoice statuses that still expect money.
pub const COLLECTIBLE: &str = "('open', 'partially_paid', 'past_due')";

#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    pub customer_id: &'a str,
    /// The invoice the payer meant; None = toward the customer's whole balance.
    pub invoice_id: Option<&'a str>,
    pub amount: i64,
    pub currency: &'a str,
    /// "stripe", "offline", or a Standard Webhooks source name.
    pub gateway: &'a str,
    /// The gateway's id (pi_...); None for offline records, which are never deduplicated.
    pub gateway_payment_id: Option<&'a str>,
    /// card, wire, check, cash, other, bank_transfer ...
    pub method: &'a str,
    pub reference: Option<&'a str>,
    pub brand: Option<&'a str>,
    pub last4: Option<&'a str>,
    pub at: DateTime<Utc>,
    /// Keep it all as credit instead of paying open invoices (money that came with no invoice).
    pub unapplied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new payment with this id.
    New(String),
    /// The gateway payment was already recorded (our reply and its webhook both tell it).
    Existing(String),
}

impl Recorded {
    pub fn id(&self) -> &str {
        match self {
            Recorded::New(id) | Recorded::Existing(id) => id,
        }
    }
}

/// One ledger row in the caller's transaction. `account` is receivable (what the customer owes),
/// credit (credit it holds) or retainer (unused deposits); amounts are signed.
#[allow(clippy::too_many_arguments)]
pub async fn ledger(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    account: &str,
    kind: &str,
    amount: i64,
    invoice_id: Option<&str>,
    payment_id: Option<&str>,
    object_id: Option<&str>,
    memo: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO ledger_entries (id, customer_id, currency, account, kind, amount, invoice_id, \
             payment_id, object_id, memo, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(new_id(prefix::LEDGER))
        .bind(customer_id)
        .bind(currency)
        .bind(account)
        .bind(kind)
        .bind(amount)
        .bind(invoice_id)
        .bind(payment_id)
        .bind(object_id)
        .bind(memo)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Records a payment and applies it. Idempotent on (gateway, gateway payment id).
pub async fn record(
    tx: &mut Tx,
    p: &NewPayment<'_>,
    now: DateTime<Utc>,
) -> Result<Recorded, sqlx::Error> {
    let id = new_id(prefix::PAYMENT);
    let inserted: Option<String> = on_tx!(tx, c => {
        sqlx::query_scalar(
            "INSERT INTO payments (id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
             method, reference, brand, last4, status, at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'succeeded', $12, $13) \
             ON CONFLICT (gateway, gateway_payment_id) DO NOTHING RETURNING id",
        )
        .bind(&id)
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
    if inserted.is_none() {
        let existing: String = on_tx!(tx, c => {
            sqlx::query_scalar("SELECT id FROM payments WHERE gateway = $1 AND gateway_payment_id = $2")
                .bind(p.gateway)
                .bind(p.gateway_payment_id)
                .fetch_one(&mut *c)
                .await?
        });
        return Ok(Recorded::Existing(existing));
    }
    allocate(tx, &id, p, now).await?;
    crate::outbox::receipt(tx, &id, now).await?;
    if let (Some(pi), "stripe") = (p.gateway_payment_id, p.gateway) {
        crate::events::apply::wake_waiting(tx, pi).await?;
    }
    tracing::info!(
        payment_id = %id,
        customer_id = %p.customer_id,
        invoice_id = p.invoice_id.unwrap_or(""),
        gateway = p.gateway,
        "payment recorded"
    );
    Ok(Recorded::New(id))
}

/// Spreads a new payment over the invoice it names, or over the customer's open invoices in its
/// currency oldest due first; what is left becomes credit.
async fn allocate(
    tx: &mut Tx,
    payment_id: &str,
    p: &NewPayment<'_>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let lock = tx.lock_rows();
    let targets: Vec<(String, i64)> = match p.invoice_id {
        _ if p.unapplied => Vec::new(),
        Some(invoice_id) => {
            let sql = format!(
                "SELECT id, amount_due FROM invoices WHERE id = $1 AND currency = $2 \
                 AND status IN {COLLECTIBLE} AND amount_due > 0{lock}"
            );
            on_tx!(tx, c => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(invoice_id)
                    .bind(p.currency)
                    .fetch_all(&mut *c)
                    .await?
            })
        }
        None => {
            let sql = format!(
                "SELECT id, amount_due FROM invoices WHERE customer_id = $1 AND currency = $2 \
                 AND status IN {COLLECTIBLE} AND amount_due > 0 \
                 ORDER BY due_at, finalized_at, id{lock}"
            );
            on_tx!(tx, c => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(p.customer_id)
                    .bind(p.currency)
                    .fetch_all(&mut *c)
                    .await?
            })
        }
    };
    let mut left = p.amount;
    for (invoice_id, due) in targets {
        if left == 0 {
            break;
        }
        let applied = left.min(due);
        apply_to_invoice(tx, &invoice_id, payment_id, applied, now).await?;
        ledger(
            tx,
            p.customer_id,
            p.currency,
            "receivable",
            "payment",
            -applied,
            Some(&invoice_id),
            Some(payment_id),
            None,
            p.reference,
            now,
        )
        .await?;
        left -= applied;
    }
    if left > 0 {
        add_credit(
            tx,
            p.customer_id,
            p.currency,
            left,
            "overpayment",
            Some(payment_id),
            &format!("Excess of payment {payment_id}"),
            now,
        )
        .await?;
    }
    Ok(())
}

/// Adds `applied` to an invoice's payments: the invoice is `paid` once nothing is due (a paid
/// retainer invoice adds to the retainer balance), otherwise `partially_paid` (a past-due invoice
/// stays past due). Scheduled automatic attempts that never started are dropped once it is paid.
pub async fn apply_to_invoice(
    tx: &mut Tx,
    invoice_id: &str,
    payment_id: &str,
    applied: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (status, kind, customer_id, currency): (String, String, String, String) = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE invoices SET amount_paid = amount_paid + $2, amount_due = amount_due - $2, \
             status = CASE WHEN amount_due - $2 = 0 THEN 'paid' WHEN status = 'past_due' THEN 'past_due' \
             ELSE 'partially_paid' END, \
             paid_at = CASE WHEN amount_due - $2 = 0 THEN $3 ELSE paid_at END, updated_at = $3 \
             WHERE id = $1 RETURNING status, kind, customer_id, currency",
        )
        .bind(invoice_id)
        .bind(applied)
        .bind(ms(now))
        .fetch_one(&mut *c)
        .await?
    });
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ($1, $2, $3) \
             ON CONFLICT (payment_id, invoice_id) DO UPDATE SET amount = payment_allocations.amount + excluded.amount",
        )
        .bind(payment_id)
        .bind(invoice_id)
        .bind(applied)
        .execute(&mut *c)
        .await?;
        if status == "paid" {
            sqlx::query(
                "DELETE FROM charge_attempts WHERE invoice_id = $1 AND status = 'pending' AND started_at IS NULL",
            )
            .bind(invoice_id)
            .execute(&mut *c)
            .await?;
        }
    });
    if kind == "retainer" {
        let retainer_id = new_id(prefix::RETAINER);
        on_tx!(tx, c => {
            sqlx::query(
                "INSERT INTO retainers (id, customer_id, invoice_id, payment_id, amount, remaining, currency, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
            )
            .bind(&retainer_id)
            .bind(&customer_id)
            .bind(invoice_id)
            .bind(payment_id)
            .bind(applied)
            .bind(&currency)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
        });
        ledger(
            tx,
            &customer_id,
            &currency,
            "retainer",
            "retainer_deposit",
            applied,
            Some(invoice_id),
            Some(payment_id),
            Some(&retainer_id),
            None,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Credit the customer holds, spent oldest first; returns the credit note's id.
#[allow(clippy::too_many_arguments)]
pub async fn add_credit(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    amount: i64,
    source: &str,
    source_id: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let id = new_id(prefix::CREDIT_NOTE);
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO credit_notes (id, customer_id, amount, remaining, currency, source, source_id, reason, created_at) \
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(customer_id)
        .bind(amount)
        .bind(currency)
        .bind(source)
        .bind(source_id)
        .bind(reason)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    ledger(
        tx,
        customer_id,
        currency,
        "credit",
        source,
        amount,
        None,
        source_id,
        Some(&id),
        Some(reason),
        now,
    )
    .await?;
    Ok(id)
}

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

const PAYMENT_COLUMNS: &str = "id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
     method, reference, brand, last4, status, amount_refunded, at";

#[derive(Debug, Serialize)]
pub struct PaymentView {
    pub id: String,
    pub object: &'static str,
    pub invoice_id: Option<String>,
    pub customer_id: String,
    pub amount: String,
    pub currency: String,
    pub gateway: String,
    pub gateway_payment_id: Option<String>,
    pub method: String,
    pub reference: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub status: String,
    pub amount_refunded: String,
    pub at: String,
}

impl From<PaymentRow> for PaymentView {
    fn from(r: PaymentRow) -> Self {
        PaymentView {
            amount: amount(r.amount, &r.currency),
            amount_refunded: amount(r.amount_refunded, &r.currency),
            at: rfc3339_ms(r.at),
            id: r.id,
            object: "payment",
            invoice_id: r.invoice_id,
            customer_id: r.customer_id,
            currency: r.currency,
            gateway: r.gateway,
            gateway_payment_id: r.gateway_payment_id,
            method: r.method,
            reference: r.reference,
            brand: r.brand,
            last4: r.last4,
            status: r.status,
        }
    }
}

/// Payments oldest first, filtered by customer and/or invoice (an invoice's payments include
/// balance payments allocated to it).
pub async fn list(
    db: &Db,
    customer_id: Option<&str>,
    invoice_id: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments p WHERE ($1 IS NULL OR customer_id = $1) \
         AND ($2 IS NULL OR invoice_id = $2 OR EXISTS (SELECT 1 FROM payment_allocations a \
              WHERE a.payment_id = p.id AND a.invoice_id = $2)) \
         AND ($3 IS NULL OR (created_at, id) > (SELECT created_at, id FROM payments WHERE id = $3)) \
         ORDER BY created_at, id LIMIT $4"
    );
    on_db!(db, p => {
        sqlx::query_as::<_, PaymentRow>(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(invoice_id)
            .bind(starting_after)
            .bind(limit)
            .fetch_all(p)
            .await
    })
}

/// The payment a gateway payment (pi_...) was recorded as, if it was.
pub async fn by_gateway_id(
    db: &Db,
    gateway: &str,
    gateway_payment_id: &str,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE gateway = $1 AND gateway_payment_id = $2"
    );
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(gateway).bind(gateway_payment_id).fetch_optional(p).await)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await)
}
