//! The ledger's rows: append-only, one per money movement on one account. Written only through
//! `billing::ledger` (which decides what each movement records); the reads serve the statement
//! of account and the ledger check.

use chrono::{DateTime, Utc};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::status::Account;

use super::bulk::{self, Arg};
use super::{Db, Result, Tx, ms, on_db};

/// One movement on one of a customer's accounts; amounts are signed minor units.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub customer_id: &'a str,
    pub currency: &'a str,
    pub account: Account,
    pub kind: &'a str,
    pub amount: i64,
    pub invoice_id: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    pub object_id: Option<&'a str>,
    pub memo: Option<&'a str>,
    pub at: DateTime<Utc>,
}

const COLUMNS: [&str; 11] = [
    "id",
    "customer_id",
    "currency",
    "account",
    "kind",
    "amount",
    "invoice_id",
    "payment_id",
    "object_id",
    "memo",
    "at",
];

/// Appends entries in a few statements (one on PostgreSQL), in order.
pub(crate) async fn insert_many(tx: &mut Tx, entries: &[Entry<'_>]) -> Result<()> {
    let rows: Vec<Vec<Arg>> = entries
        .iter()
        .map(|e| {
            vec![
                Arg::from(new_id(prefix::LEDGER)),
                Arg::from(e.customer_id),
                Arg::from(e.currency),
                Arg::from(e.account.as_str()),
                Arg::from(e.kind),
                Arg::from(e.amount),
                Arg::from(e.invoice_id.map(str::to_string)),
                Arg::from(e.payment_id.map(str::to_string)),
                Arg::from(e.object_id.map(str::to_string)),
                Arg::from(e.memo.map(str::to_string)),
                Arg::from(ms(e.at)),
            ]
        })
        .collect();
    bulk::insert(tx, "ledger_entries", &COLUMNS, &rows, "").await?;
    Ok(())
}

/// Σ amount per (customer, currency) of one account.
pub async fn sums(db: &Db, account: Account) -> Result<Vec<(String, String, i64)>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT customer_id, currency, CAST(SUM(amount) AS BIGINT) FROM ledger_entries \
             WHERE account = $1 GROUP BY customer_id, currency",
        )
        .bind(account.as_str())
        .fetch_all(p)
        .await?
    }))
}

/// What the customer owes, net of credit and deposits: receivable rows count as they are, credit
/// and retainer rows against it.
const NET: &str = "CASE WHEN account = 'receivable' THEN amount ELSE -amount END";

/// The customer's net balance in `currency` from every movement before `before`.
pub async fn net_before(db: &Db, customer_id: &str, currency: &str, before: i64) -> Result<i64> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM({NET}), 0) AS BIGINT) FROM ledger_entries \
             WHERE customer_id = $1 AND currency = $2 AND at < $3"
        )))
        .bind(customer_id)
        .bind(currency)
        .bind(before)
        .fetch_one(p)
        .await?
    }))
}

/// One row as the statement reads it: (at, kind, net amount, invoice, payment, object, memo).
pub type Movement = (
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The customer's movements in `currency` within `[from, to)`, in the order they were written.
pub async fn movements(
    db: &Db,
    customer_id: &str,
    currency: &str,
    from: i64,
    to: i64,
) -> Result<Vec<Movement>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT at, kind, {NET}, invoice_id, payment_id, object_id, memo FROM ledger_entries \
             WHERE customer_id = $1 AND currency = $2 AND at >= $3 AND at < $4 ORDER BY at, seq"
        )))
        .bind(customer_id)
        .bind(currency)
        .bind(from)
        .bind(to)
        .fetch_all(p)
        .await?
    }))
}
