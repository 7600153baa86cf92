//! Invoices and their lines: the only writer of `invoices`, `invoice_lines` and the gapless
//! `invoice_sequences`, one row at a time or many at once (the batch writer calls the same
//! functions), and the reads the API and the billing rules need.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::records::NewInvoice;
use settled_jobs::status::InvoiceStatus;
use sqlx::FromRow;

use super::bulk::{self, Arg};
use super::dialect::collectible;
use super::{Db, Result, Tx, ms, on_db, on_tx};

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

impl InvoiceRow {
    /// The stored status; a value the schema's CHECK would refuse reads as `void`.
    pub fn status(&self) -> InvoiceStatus {
        InvoiceStatus::parse(&self.status).unwrap_or(InvoiceStatus::Void)
    }
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

pub(crate) const LINE_COLUMNS: &str =
    "id, position, kind, description, quantity, unit_amount, amount, tax_rate";

const INVOICE_INSERT: [&str; 20] = [
    "id",
    "number",
    "customer_id",
    "subscription_id",
    "kind",
    "status",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "tax",
    "total",
    "amount_due",
    "auto_charge",
    "due_at",
    "finalize_at",
    "finalized_at",
    "paid_at",
    "created_at",
    "updated_at",
];

const LINE_INSERT: [&str; 9] = [
    "id",
    "invoice_id",
    "position",
    "kind",
    "description",
    "quantity",
    "unit_amount",
    "amount",
    "tax_rate",
];

/// The status an invoice opens with: nothing to pay (a total of 0) is paid at once.
pub fn opening_status(inv: &NewInvoice) -> InvoiceStatus {
    if inv.total == 0 {
        InvoiceStatus::Paid
    } else {
        InvoiceStatus::Open
    }
}

/// One invoice to insert: a draft when `number` is None, else finalised at `now` with it.
pub struct Insert<'a> {
    pub invoice: &'a NewInvoice,
    pub number: Option<&'a str>,
}

fn invoice_row(i: &Insert<'_>, now: DateTime<Utc>) -> Vec<Arg> {
    let inv = i.invoice;
    let status = match i.number {
        None => InvoiceStatus::Draft,
        Some(_) => opening_status(inv),
    };
    let finalized_at = i.number.map(|_| ms(now));
    let paid_at = (status == InvoiceStatus::Paid).then(|| ms(now));
    vec![
        Arg::from(inv.id.as_str()),
        Arg::from(i.number.map(str::to_string)),
        Arg::from(inv.customer_id.as_str()),
        Arg::from(inv.subscription_id.clone()),
        Arg::from(inv.kind.as_str()),
        Arg::from(status.as_str()),
        Arg::from(inv.currency.as_str()),
        Arg::from(inv.period.map(|p| ms(p.0))),
        Arg::from(inv.period.map(|p| ms(p.1))),
        Arg::from(inv.subtotal),
        Arg::from(inv.tax),
        Arg::from(inv.total),
        Arg::from(inv.total),
        Arg::from(inv.auto_charge),
        Arg::from(Some(ms(inv.due_at))),
        Arg::from(inv.finalize_at.map(ms)),
        Arg::from(finalized_at),
        Arg::from(paid_at),
        Arg::from(ms(now)),
        Arg::from(ms(now)),
    ]
}

fn line_rows(rows: &mut Vec<Vec<Arg>>, inv: &NewInvoice) {
    for (position, line) in inv.lines.iter().enumerate() {
        rows.push(vec![
            Arg::from(new_id(prefix::INVOICE_LINE)),
            Arg::from(inv.id.as_str()),
            Arg::from(position as i64),
            Arg::from("item"),
            Arg::from(line.description.as_str()),
            Arg::from(line.quantity.as_str()),
            Arg::from(line.unit_amount),
            Arg::from(line.amount),
            Arg::from(line.tax_rate.clone()),
        ]);
    }
}

/// Inserts invoices with their lines in a few statements. A period that already has its
/// invoice keeps it (the natural key holds); returns the ids of the invoices written.
pub async fn insert_many(
    tx: &mut Tx,
    invoices: &[Insert<'_>],
    now: DateTime<Utc>,
) -> Result<HashSet<String>> {
    let rows: Vec<Vec<Arg>> = invoices.iter().map(|i| invoice_row(i, now)).collect();
    let written: HashSet<String> = bulk::insert_returning(
        tx,
        "invoices",
        &INVOICE_INSERT,
        &rows,
        "ON CONFLICT (subscription_id, period_start) DO NOTHING",
    )
    .await?
    .into_iter()
    .collect();
    let mut lines = Vec::new();
    for i in invoices.iter().filter(|i| written.contains(&i.invoice.id)) {
        line_rows(&mut lines, i.invoice);
    }
    bulk::insert(tx, "invoice_lines", &LINE_INSERT, &lines, "").await?;
    Ok(written)
}

/// Inserts one draft with its lines; false when its period already has an invoice.
pub async fn insert_draft(tx: &mut Tx, inv: &NewInvoice, now: DateTime<Utc>) -> Result<bool> {
    let written = insert_many(
        tx,
        &[Insert {
            invoice: inv,
            number: None,
        }],
        now,
    )
    .await?;
    Ok(written.contains(&inv.id))
}

/// Takes `count` consecutive numbers from the gapless sequence and returns the first. The
/// sequence row stays locked until the caller's transaction ends, so numbers are never skipped:
/// a transaction that rolls back gives its numbers back.
pub async fn take_numbers(tx: &mut Tx, count: i64) -> Result<i64> {
    Ok(on_tx!(tx, c => {
        sqlx::query("INSERT INTO invoice_sequences (name, next_value) VALUES ('invoice', 1) ON CONFLICT (name) DO NOTHING")
            .execute(&mut *c)
            .await?;
        sqlx::query_scalar("UPDATE invoice_sequences SET next_value = next_value + $1 WHERE name = 'invoice' RETURNING next_value - $1")
            .bind(count)
            .fetch_one(&mut *c)
            .await?
    }))
}

/// A draft that was just opened: whose it is, in which currency, for how much.
pub struct Opened {
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
}

/// Numbers a draft and opens it (paid at once when nothing is due). None when it is not a draft
/// (any more): the caller must not commit the number it took.
pub async fn open_draft(
    tx: &mut Tx,
    id: &str,
    number: &str,
    now: DateTime<Utc>,
) -> Result<Option<Opened>> {
    let row: Option<(String, String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE invoices SET number = $2, status = CASE WHEN amount_due = 0 THEN 'paid' ELSE 'open' END, \
             finalized_at = $3, paid_at = CASE WHEN amount_due = 0 THEN $3 ELSE NULL END, updated_at = $3 \
             WHERE id = $1 AND status = 'draft' RETURNING customer_id, currency, total",
        )
        .bind(id)
        .bind(number)
        .bind(ms(now))
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.map(|(customer_id, currency, total)| Opened {
        customer_id,
        currency,
        total,
    }))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<InvoiceRow>> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

/// The invoice, read inside `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<InvoiceRow>> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The invoice, locked for the rest of `tx`.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<Option<InvoiceRow>> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The invoice whose number is `number`, inside `tx`.
pub async fn by_number_in(tx: &mut Tx, number: &str) -> Result<Option<InvoiceRow>> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE number = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(number)
            .fetch_optional(&mut *c)
            .await?
    }))
}

pub async fn lines(db: &Db, invoice_id: &str) -> Result<Vec<LineRow>> {
    let sql =
        format!("SELECT {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = $1 ORDER BY position");
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_all(p)
            .await?
    }))
}

/// The invoice's lines, read inside `tx`.
pub async fn lines_in(tx: &mut Tx, invoice_id: &str) -> Result<Vec<LineRow>> {
    let sql =
        format!("SELECT {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = $1 ORDER BY position");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// A collectible invoice with something due, locked: (id, amount due).
pub async fn lock_collectible(
    tx: &mut Tx,
    id: &str,
    currency: &str,
) -> Result<Option<(String, i64)>> {
    let sql = format!(
        "SELECT id, amount_due FROM invoices WHERE id = $1 AND currency = $2 \
         AND status IN {} AND amount_due > 0{}",
        collectible(),
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .bind(currency)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The customer's collectible invoices in `currency` with something due, oldest due first,
/// locked (in id order, the lock order of every money path): (id, amount due).
pub async fn lock_open_of(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT id, amount_due, due_at, finalized_at FROM invoices WHERE customer_id = $1 \
         AND currency = $2 AND status IN {} AND amount_due > 0 ORDER BY id{}",
        collectible(),
        tx.lock_rows()
    );
    let mut rows: Vec<(String, i64, Option<i64>, Option<i64>)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_all(&mut *c)
            .await?
    });
    // No due date sorts last (as PostgreSQL orders NULLs), on both backends.
    let key = |v: Option<i64>| (v.is_none(), v);
    rows.sort_by(|a, b| (key(a.2), key(a.3), &a.0).cmp(&(key(b.2), key(b.3), &b.0)));
    Ok(rows.into_iter().map(|r| (r.0, r.1)).collect())
}

/// What one payment's allocation did to an invoice.
pub struct Paid {
    pub status: InvoiceStatus,
    pub kind: String,
    pub customer_id: String,
    pub currency: String,
}

/// Adds `amount` of a payment: the invoice is `paid` once nothing is due, otherwise
/// `partially_paid` (a past-due invoice stays past due).
pub async fn add_payment(tx: &mut Tx, id: &str, amount: i64, now: DateTime<Utc>) -> Result<Paid> {
    let (status, kind, customer_id, currency): (String, String, String, String) = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE invoices SET amount_paid = amount_paid + $2, amount_due = amount_due - $2, \
             status = CASE WHEN amount_due - $2 = 0 THEN 'paid' WHEN status = 'past_due' THEN 'past_due' \
             ELSE 'partially_paid' END, \
             paid_at = CASE WHEN amount_due - $2 = 0 THEN $3 ELSE paid_at END, updated_at = $3 \
             WHERE id = $1 RETURNING status, kind, customer_id, currency",
        )
        .bind(id)
        .bind(amount)
        .bind(ms(now))
        .fetch_one(&mut *c)
        .await?
    });
    Ok(Paid {
        status: InvoiceStatus::parse(&status).unwrap_or(InvoiceStatus::Open),
        kind,
        customer_id,
        currency,
    })
}

/// Takes `amount` of a payment back off the invoice (a refund): it reopens for that much,
/// partly paid when some payment is left on it. A void or uncollectible invoice keeps its status.
pub async fn take_back_payment(
    tx: &mut Tx,
    id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE invoices SET amount_paid = amount_paid - $2, amount_due = amount_due + $2, \
             status = CASE WHEN status IN ('void', 'uncollectible') THEN status \
             WHEN amount_paid - $2 > 0 THEN 'partially_paid' ELSE 'open' END, \
             paid_at = NULL, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(amount)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Which balance paid part of an invoice, and so which column shows it.
#[derive(Debug, Clone, Copy)]
pub enum AppliedFrom {
    Credit,
    Retainer,
}

impl AppliedFrom {
    fn column(self) -> &'static str {
        match self {
            AppliedFrom::Credit => "credits_applied",
            AppliedFrom::Retainer => "retainer_applied",
        }
    }
}

/// Takes `amount` off the amount due on behalf of credit or retainer; the invoice is paid once
/// nothing is due. Returns the status after.
pub async fn reduce_due(
    tx: &mut Tx,
    id: &str,
    from: AppliedFrom,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    let column = from.column();
    let sql = format!(
        "UPDATE invoices SET {column} = {column} + $2, amount_due = amount_due - $2, \
         status = CASE WHEN amount_due - $2 = 0 THEN 'paid' ELSE status END, \
         paid_at = CASE WHEN amount_due - $2 = 0 THEN $3 ELSE paid_at END, updated_at = $3 \
         WHERE id = $1 RETURNING status"
    );
    let status: String = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .bind(amount)
            .bind(ms(now))
            .fetch_one(&mut *c)
            .await?
    });
    Ok(InvoiceStatus::parse(&status).unwrap_or(InvoiceStatus::Open))
}

/// Gives `amount` of credit or retainer applied to the invoice back (the balance it came from is
/// being taken away): it is due again, and reopens (partly paid when something else is left on
/// it). A void or uncollectible invoice keeps its status.
pub async fn unapply(
    tx: &mut Tx,
    id: &str,
    from: AppliedFrom,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let column = from.column();
    let sql = format!(
        "UPDATE invoices SET {column} = {column} - $2, amount_due = amount_due + $2, \
         status = CASE WHEN status IN ('void', 'uncollectible') THEN status \
         WHEN amount_paid + credits_applied + retainer_applied - $2 > 0 THEN 'partially_paid' \
         ELSE 'open' END, paid_at = NULL, updated_at = $3 WHERE id = $1"
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .bind(amount)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// The late fees added to an invoice, in minor units.
pub async fn late_fees_of(tx: &mut Tx, id: &str) -> Result<i64> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM invoice_lines \
             WHERE invoice_id = $1 AND kind = 'late_fee'",
        )
        .bind(id)
        .fetch_one(&mut *c)
        .await?
    }))
}

/// Voids the invoice: nothing is due and no balance stays applied to it.
pub async fn set_void(tx: &mut Tx, id: &str, now: DateTime<Utc>) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE invoices SET status = 'void', amount_due = 0, credits_applied = 0, retainer_applied = 0, \
             voided_at = $2, updated_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Dunning gave up: a collectible invoice becomes past due.
pub async fn set_past_due(tx: &mut Tx, id: &str, now: DateTime<Utc>) -> Result<()> {
    let sql = format!(
        "UPDATE invoices SET status = 'past_due', updated_at = $2 WHERE id = $1 AND status IN {}",
        collectible()
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Adds the late fee as a `late_fee` line, to the total and the amount due, once.
pub async fn add_late_fee(tx: &mut Tx, id: &str, fee: i64, now: DateTime<Utc>) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, unit_amount, amount, tax_rate) \
             VALUES ($1, $2, (SELECT COALESCE(MAX(position), -1) + 1 FROM invoice_lines WHERE invoice_id = $2), \
             'late_fee', 'Late fee', '1', $3, $3, NULL)",
        )
        .bind(new_id(prefix::INVOICE_LINE))
        .bind(id)
        .bind(fee)
        .execute(&mut *c)
        .await?;
        sqlx::query(
            "UPDATE invoices SET subtotal = subtotal + $2, total = total + $2, amount_due = amount_due + $2, \
             late_fee_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(fee)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// An invoice still owed a late fee, locked: (customer, currency, amount due, due at, number).
pub async fn lock_owing_late_fee(
    tx: &mut Tx,
    id: &str,
) -> Result<Option<(String, String, i64, Option<i64>, Option<String>)>> {
    let sql = format!(
        "SELECT customer_id, currency, amount_due, due_at, number FROM invoices WHERE id = $1 \
         AND late_fee_at IS NULL AND status IN {} AND amount_due > 0{}",
        collectible(),
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

mod queries;
pub use queries::*;
