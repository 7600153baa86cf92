//! Reads for a list page: the rows hanging off every item of a page (an invoice page's lines,
//! payments and charge attempts) in one query per 500 items rather than one per item, so a
//! page of a thousand costs a handful of queries. Read-only; each table's writer stays its own
//! module.

use sqlx::FromRow;

use super::charge_attempts::{ATTEMPT_COLUMNS, AttemptRow};
use super::invoices::{LINE_COLUMNS, LineRow};
use super::payments::{PAYMENT_COLUMNS, PaymentRow};
use super::{Db, Result, on_db, placeholders};

/// A line with the invoice it belongs to.
#[derive(Debug, Clone, FromRow)]
pub struct InvoiceLine {
    pub invoice_id: String,
    #[sqlx(flatten)]
    pub line: LineRow,
}

/// The lines of every invoice in `ids`, in one query per 500 invoices (a list page's lines),
/// ordered by invoice and position.
pub async fn lines_of_many(db: &Db, ids: &[String]) -> Result<Vec<InvoiceLine>> {
    let mut all = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT invoice_id, {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id IN ({}) \
             ORDER BY invoice_id, position",
            placeholders(1, chunk.len())
        );
        let rows: Vec<InvoiceLine> = on_db!(db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(p).await?
        });
        all.extend(rows);
    }
    Ok(all)
}

/// A payment with the invoice it was listed for (one payment may pay several).
#[derive(Debug, Clone, FromRow)]
pub struct InvoicePayment {
    pub for_invoice: String,
    #[sqlx(flatten)]
    pub payment: PaymentRow,
}

/// The payments of every invoice in `ids` (made for it or allocated to it), as `list` gives
/// them for one invoice, in one query per 500 invoices.
pub async fn payments_of_invoices(db: &Db, ids: &[String]) -> Result<Vec<InvoicePayment>> {
    let mut all = Vec::new();
    for chunk in ids.chunks(500) {
        let list = placeholders(1, chunk.len());
        let sql = format!(
            "SELECT x.for_invoice, p.* FROM (\
               SELECT id AS payment_id, invoice_id AS for_invoice FROM payments \
                 WHERE invoice_id IN ({list}) \
               UNION SELECT payment_id, invoice_id FROM payment_allocations \
                 WHERE invoice_id IN ({list})) x \
             JOIN (SELECT {PAYMENT_COLUMNS}, created_at FROM payments) p ON p.id = x.payment_id \
             ORDER BY x.for_invoice, p.created_at, p.id"
        );
        let rows: Vec<InvoicePayment> = on_db!(db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(p).await?
        });
        all.extend(rows);
    }
    Ok(all)
}

/// The attempts of every invoice in `ids`, by invoice and attempt, in one query per 500.
pub async fn attempts_of_invoices(db: &Db, ids: &[String]) -> Result<Vec<AttemptRow>> {
    let mut all = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id IN ({}) \
             ORDER BY invoice_id, attempt",
            placeholders(1, chunk.len())
        );
        let rows: Vec<AttemptRow> = on_db!(db, p => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()));
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(p).await?
        });
        all.extend(rows);
    }
    Ok(all)
}
