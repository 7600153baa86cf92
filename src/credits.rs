//! Money the customer holds with the business besides its invoices: credit (credit notes,
//! overpayments, refunds kept as credit) and retainer deposits; applying them to invoices, voiding,
//! the statement of account, and the ledger invariant.
//!
//! The ledger has three accounts per customer and currency, each the sum of its rows:
//! - `receivable`: what the customer owes = the amount due of its open invoices;
//! - `credit`: credit it holds = the remaining amount of its credit notes;
//! - `retainer`: unused deposits = the remaining amount of its retainers.
//!
//! Every movement writes its rows in the same transaction as the change. The invariant, proved by
//! [`check`] (and `GET /v1/ledger/check`) after every money-moving test:
//! - per customer and currency, Σ receivable = Σ amount_due of open, partially paid and past-due
//!   invoices; Σ credit = Σ remaining of credit notes; Σ retainer = Σ remaining of retainers;
//! - per invoice, amount_due = total − credits_applied − retainer_applied − Σ its payment
//!   allocations (a refund that reopens an invoice takes its part of the allocation back), and
//!   amount_paid = Σ its allocations; an invoice is `paid` exactly when nothing is due;
//! - no credit note or retainer holds less than zero or more than it started with;
//! - per payment, Σ refunds = amount_refunded ≤ amount.

use chrono::{DateTime, Utc};
use serde::Serialize;
use settled_jobs::ids::{new_id, prefix};

use crate::payments::{self, COLLECTIBLE};
use crate::store::{Db, Tx, ms, on_db, on_tx};

/// Takes `amount` off an invoice's amount due on behalf of credit or retainer (`column` is
/// `credits_applied` or `retainer_applied`); the invoice is paid once nothing is due.
async fn reduce_due(
    tx: &mut Tx,
    invoice_id: &str,
    column: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE invoices SET {column} = {column} + $2, amount_due = amount_due - $2, \
         status = CASE WHEN amount_due - $2 = 0 THEN 'paid' ELSE status END, \
         paid_at = CASE WHEN amount_due - $2 = 0 THEN $3 ELSE paid_at END, updated_at = $3 WHERE id = $1"
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .bind(amount)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
        sqlx::query(
            "DELETE FROM charge_attempts WHERE invoice_id = $1 AND status = 'pending' AND started_at IS NULL \
             AND EXISTS (SELECT 1 FROM invoices WHERE id = $1 AND status = 'paid')",
        )
        .bind(invoice_id)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// The invoice's owner, currency and amount due, locked; None unless it is collectible.
async fn collectible(
    tx: &mut Tx,
    invoice_id: &str,
) -> Result<Option<(String, String, i64)>, sqlx::Error> {
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT customer_id, currency, amount_due FROM invoices WHERE id = $1 AND status IN {COLLECTIBLE}{lock}"
    );
    on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await
    })
}

/// Applies the customer's credit in the invoice's currency, oldest first; returns the amount.
pub async fn apply_credit(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    apply(tx, &CREDIT, invoice_id, None, now).await
}

/// Applies up to `limit` (all that fits when None) of the customer's retainer balance, oldest
/// deposit first; returns the amount.
pub async fn apply_retainer(
    tx: &mut Tx,
    invoice_id: &str,
    limit: Option<i64>,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    apply(tx, &RETAINER, invoice_id, limit, now).await
}

/// Spends up to `limit` (all that fits when None) of the customer's balances of `source` on a
/// collectible invoice, oldest first: each piece is an application row, its balance goes down, and
/// both ledger accounts move; the invoice's amount due goes down by the total.
async fn apply(
    tx: &mut Tx,
    source: &Source,
    invoice_id: &str,
    limit: Option<i64>,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let Some((customer_id, currency, due)) = collectible(tx, invoice_id).await? else {
        return Ok(0);
    };
    let mut want = limit.map_or(due, |l| l.min(due));
    let lock = tx.lock_rows();
    let select = format!(
        "SELECT id, remaining FROM {} WHERE customer_id = $1 AND currency = $2 AND remaining > 0 \
         ORDER BY created_at, id{lock}",
        source.balances
    );
    let balances: Vec<(String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
            .bind(&customer_id)
            .bind(&currency)
            .fetch_all(&mut *c)
            .await?
    });
    let spend = format!(
        "UPDATE {} SET remaining = remaining - $2 WHERE id = $1",
        source.balances
    );
    let record = format!(
        "INSERT INTO {} (id, {}, invoice_id, amount, created_at) VALUES ($1, $2, $3, $4, $5)",
        source.applications, source.source_column
    );
    let mut total = 0;
    for (from, remaining) in balances {
        if want == 0 {
            break;
        }
        let take = remaining.min(want);
        on_tx!(tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(spend.as_str()))
                .bind(&from)
                .bind(take)
                .execute(&mut *c)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(record.as_str()))
                .bind(new_id(source.application_prefix))
                .bind(&from)
                .bind(invoice_id)
                .bind(take)
                .bind(ms(now))
                .execute(&mut *c)
                .await?;
        });
        for account in ["receivable", source.account] {
            payments::ledger(
                tx,
                &customer_id,
                &currency,
                account,
                source.applied,
                -take,
                Some(invoice_id),
                None,
                Some(&from),
                None,
                now,
            )
            .await?;
        }
        want -= take;
        total += take;
    }
    if total > 0 {
        reduce_due(tx, invoice_id, source.invoice_column, total, now).await?;
        tracing::info!(
            invoice_id,
            applied = total,
            source = source.account,
            "balance applied"
        );
    }
    Ok(total)
}

/// On finalising: credit first, then the retainer if the customer opted in.
pub async fn on_finalized(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    apply_credit(tx, invoice_id, now).await?;
    let opted_in: bool = on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT c.apply_retainer FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.id = $1",
        )
        .bind(invoice_id)
        .fetch_one(&mut *c)
        .await?
    });
    if opted_in {
        apply_retainer(tx, invoice_id, None, now).await?;
    }
    Ok(())
}

/// Where money applied to an invoice comes from: credit notes or retainer deposits.
struct Source {
    applications: &'static str,
    application_prefix: &'static str,
    source_column: &'static str,
    balances: &'static str,
    account: &'static str,
    /// The invoice column that shows how much of it this source paid.
    invoice_column: &'static str,
    applied: &'static str,
    released: &'static str,
}

const CREDIT: Source = Source {
    applications: "credit_applications",
    application_prefix: "capp",
    source_column: "credit_note_id",
    balances: "credit_notes",
    account: "credit",
    invoice_column: "credits_applied",
    applied: "credit_applied",
    released: "credit_released",
};

const RETAINER: Source = Source {
    applications: "retainer_applications",
    application_prefix: "rapp",
    source_column: "retainer_id",
    balances: "retainers",
    account: "retainer",
    invoice_column: "retainer_applied",
    applied: "retainer_applied",
    released: "retainer_released",
};

/// Gives back everything of `source` applied to an invoice: each application is marked released,
/// its amount returns to the credit note or deposit, and both ledger accounts move back.
async fn release(
    tx: &mut Tx,
    source: &Source,
    invoice_id: &str,
    customer_id: &str,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let select = format!(
        "SELECT id, {}, amount FROM {} WHERE invoice_id = $1 AND released_at IS NULL",
        source.source_column, source.applications
    );
    let applied: Vec<(String, String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
            .bind(invoice_id)
            .fetch_all(&mut *c)
            .await?
    });
    let mark = format!(
        "UPDATE {} SET released_at = $2 WHERE id = $1",
        source.applications
    );
    let give_back = format!(
        "UPDATE {} SET remaining = remaining + $2 WHERE id = $1",
        source.balances
    );
    for (application, from, amount) in applied {
        on_tx!(tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(mark.as_str()))
                .bind(&application)
                .bind(ms(now))
                .execute(&mut *c)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(give_back.as_str()))
                .bind(&from)
                .bind(amount)
                .execute(&mut *c)
                .await?;
        });
        for account in ["receivable", source.account] {
            payments::ledger(
                tx,
                customer_id,
                currency,
                account,
                source.released,
                amount,
                Some(invoice_id),
                None,
                Some(&from),
                None,
                now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Why an invoice cannot be voided, if it cannot.
pub enum VoidRefusal {
    NotFound,
    Status(String),
    HasPayments,
    ChargeInProgress,
}

/// Voids an invoice without payments: applied credit and retainer go back to the customer, the
/// amount leaves what the customer owes, scheduled charges are dropped.
pub async fn void(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), VoidRefusal>, sqlx::Error> {
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT customer_id, currency, status, total, amount_paid, number FROM invoices WHERE id = $1{lock}"
    );
    type Row = (String, String, String, i64, i64, Option<String>);
    let row: Option<Row> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await?
    });
    let Some((customer_id, currency, status, total, paid, number)) = row else {
        return Ok(Err(VoidRefusal::NotFound));
    };
    let payments: i64 = on_tx!(tx, c => {
        sqlx::query_scalar("SELECT COUNT(*) FROM payment_allocations WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(&mut *c)
            .await?
    });
    if paid > 0 || payments > 0 {
        return Ok(Err(VoidRefusal::HasPayments));
    }
    if !["draft", "open", "past_due", "paid"].contains(&status.as_str()) {
        return Ok(Err(VoidRefusal::Status(status)));
    }
    let in_flight: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM charge_attempts WHERE invoice_id = $1 \
             AND (status = 'unknown' OR (status = 'pending' AND started_at IS NOT NULL))",
        )
        .bind(invoice_id)
        .fetch_one(&mut *c)
        .await?
    });
    if in_flight > 0 {
        return Ok(Err(VoidRefusal::ChargeInProgress));
    }
    for source in [&CREDIT, &RETAINER] {
        release(tx, source, invoice_id, &customer_id, &currency, now).await?;
    }
    if status != "draft" {
        payments::ledger(
            tx,
            &customer_id,
            &currency,
            "receivable",
            "void",
            -total,
            Some(invoice_id),
            None,
            None,
            number.as_deref(),
            now,
        )
        .await?;
    }
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE invoices SET status = 'void', amount_due = 0, credits_applied = 0, retainer_applied = 0, \
             voided_at = $2, updated_at = $2 WHERE id = $1",
        )
        .bind(invoice_id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
        sqlx::query("DELETE FROM charge_attempts WHERE invoice_id = $1 AND status = 'pending' AND started_at IS NULL")
            .bind(invoice_id)
            .execute(&mut *c)
            .await?;
    });
    tracing::info!(invoice_id, "invoice voided");
    Ok(Ok(()))
}

/// Problems found when the ledger's sums are compared with the tables they summarise; empty when
/// every cent is accounted for.
pub async fn check(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let checks = [
        (
            "receivable",
            format!(
                "SELECT customer_id, currency, CAST(SUM(amount_due) AS BIGINT) FROM invoices \
                 WHERE status IN {COLLECTIBLE} GROUP BY customer_id, currency"
            ),
        ),
        (
            "credit",
            "SELECT customer_id, currency, CAST(SUM(remaining) AS BIGINT) FROM credit_notes \
             GROUP BY customer_id, currency"
                .to_string(),
        ),
        (
            "retainer",
            "SELECT customer_id, currency, CAST(SUM(remaining) AS BIGINT) FROM retainers \
             GROUP BY customer_id, currency"
                .to_string(),
        ),
    ];
    let mut problems = Vec::new();
    for (account, table_sql) in checks {
        let ledger: Vec<(String, String, i64)> = on_db!(db, p => {
            sqlx::query_as(
                "SELECT customer_id, currency, CAST(SUM(amount) AS BIGINT) FROM ledger_entries \
                 WHERE account = $1 GROUP BY customer_id, currency",
            )
            .bind(account)
            .fetch_all(p)
            .await?
        });
        let tables: Vec<(String, String, i64)> = on_db!(db, p => {
            sqlx::query_as(sqlx::AssertSqlSafe(table_sql.as_str())).fetch_all(p).await?
        });
        let mut sums: std::collections::BTreeMap<(String, String), (i64, i64)> =
            std::collections::BTreeMap::new();
        for (c, cur, v) in ledger {
            sums.entry((c, cur)).or_default().0 += v;
        }
        for (c, cur, v) in tables {
            sums.entry((c, cur)).or_default().1 += v;
        }
        for ((customer, currency), (in_ledger, in_tables)) in sums {
            if in_ledger != in_tables {
                problems.push(format!(
                    "{customer} {currency} {account}: ledger {in_ledger}, records {in_tables}"
                ));
            }
        }
    }
    // Every invoice's amount due is exactly its total less credit and retainer applied and less
    // what payments still pay on it (refunds that reopened it have taken their part back), and
    // its amount paid is what its payments' allocations say.
    type InvoiceFacts = (String, String, i64, i64, i64, i64, i64, i64);
    let invoices: Vec<InvoiceFacts> = on_db!(db, p => {
        sqlx::query_as(
            "SELECT i.id, i.status, i.total, i.credits_applied, i.retainer_applied, i.amount_paid, i.amount_due, \
             CAST(COALESCE((SELECT SUM(a.amount) FROM payment_allocations a WHERE a.invoice_id = i.id), 0) AS BIGINT) \
             FROM invoices i WHERE i.status NOT IN ('draft', 'void')",
        )
        .fetch_all(p)
        .await?
    });
    for (id, status, total, credits, retainer, paid, due, allocated) in invoices {
        if paid != allocated || due != total - credits - retainer - allocated || due < 0 {
            problems.push(format!(
                "invoice {id} ({status}): total {total} - credit {credits} - retainer {retainer} - paid {allocated} \
                 should be the amount due {due} (amount_paid {paid})"
            ));
        }
        if (due == 0) != (status == "paid") && status != "uncollectible" {
            problems.push(format!("invoice {id} is {status} with {due} due"));
        }
    }
    // No balance is ever negative.
    let negative: i64 = on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM credit_notes WHERE remaining < 0 OR remaining > amount) \
             + (SELECT COUNT(*) FROM retainers WHERE remaining < 0 OR remaining > amount)",
        )
        .fetch_one(p)
        .await?
    });
    if negative > 0 {
        problems.push(format!(
            "{negative} credit notes or retainers hold an impossible balance"
        ));
    }
    // Every refund is on its payment, and no payment gives back more than it took.
    let payments: Vec<(String, i64, i64, i64)> = on_db!(db, p => {
        sqlx::query_as(
            "SELECT p.id, p.amount, p.amount_refunded, \
             CAST(COALESCE((SELECT SUM(r.amount) FROM refunds r WHERE r.payment_id = p.id), 0) AS BIGINT) \
             FROM payments p",
        )
        .fetch_all(p)
        .await?
    });
    for (id, amount, refunded, refunds) in payments {
        if refunded != refunds || refunded > amount {
            problems.push(format!(
                "payment {id}: {amount} received, {refunded} marked refunded, refunds total {refunds}"
            ));
        }
    }
    Ok(problems)
}

/// One line of a statement of account.
#[derive(Debug, Clone, Serialize)]
pub struct StatementEntry {
    pub at: i64,
    pub kind: &'static str,
    pub reference: String,
    /// What the customer owes more (positive) or less (negative), net of credit and deposits.
    pub amount: i64,
    pub balance: i64,
}

pub struct Statement {
    pub opening: i64,
    pub entries: Vec<StatementEntry>,
    pub closing: i64,
}

fn category(kind: &str) -> &'static str {
    match kind {
        "invoice" => "invoice",
        "payment" | "overpayment" => "payment",
        "manual" | "credit_note" => "credit",
        "refund" => "refund",
        "retainer_deposit" | "retainer_applied" | "retainer_refunded" | "retainer_released" => {
            "retainer"
        }
        _ => "adjustment",
    }
}

/// The customer's account in `currency` between `from` (inclusive) and `to` (exclusive): the
/// balance it owes net of credit and deposits, every movement that changed it, and the running
/// balance. Rows written together for one movement (a payment that partly became credit) are one
/// line; movements that only move money between the customer's own balances are left out.
pub async fn statement(
    db: &Db,
    customer_id: &str,
    currency: &str,
    from: i64,
    to: i64,
) -> Result<Statement, sqlx::Error> {
    let net = "CASE WHEN account = 'receivable' THEN amount ELSE -amount END";
    let opening: i64 = on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM({net}), 0) AS BIGINT) FROM ledger_entries \
             WHERE customer_id = $1 AND currency = $2 AND at < $3"
        )))
        .bind(customer_id)
        .bind(currency)
        .bind(from)
        .fetch_one(p)
        .await?
    });
    type LedgerRow = (
        i64,
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<LedgerRow> = on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT at, kind, {net}, invoice_id, payment_id, object_id, memo FROM ledger_entries \
             WHERE customer_id = $1 AND currency = $2 AND at >= $3 AND at < $4 ORDER BY at, seq"
        )))
        .bind(customer_id)
        .bind(currency)
        .bind(from)
        .bind(to)
        .fetch_all(p)
        .await?
    });
    type Group = (Option<String>, Option<String>);
    let mut entries: Vec<(StatementEntry, Group)> = Vec::new();
    for (at, kind, amount, invoice_id, payment_id, object_id, memo) in rows {
        let cat = category(&kind);
        let group = (payment_id.clone(), object_id.clone());
        if let Some((last, last_group)) = entries.last_mut()
            && last.at == at
            && last.kind == cat
            && *last_group == group
            && (payment_id.is_some() || object_id.is_some())
        {
            last.amount += amount;
            continue;
        }
        let reference = memo
            .or(payment_id.clone())
            .or(object_id.clone())
            .or(invoice_id)
            .unwrap_or_default();
        entries.push((
            StatementEntry {
                at,
                kind: cat,
                reference,
                amount,
                balance: 0,
            },
            group,
        ));
    }
    let mut balance = opening;
    let mut out = Vec::new();
    for (mut e, _) in entries {
        if e.amount == 0 {
            continue;
        }
        balance += e.amount;
        e.balance = balance;
        out.push(e);
    }
    Ok(Statement {
        opening,
        entries: out,
        closing: balance,
    })
}

/// Refunds `amount` of the customer's unused retainer, newest deposit first: through the gateway
/// when the deposit was paid there, by record otherwise. Returns the refunds written as
/// (refund id, payment id, amount, gateway refund id).
pub async fn take_retainer_for_refund(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    amount: i64,
) -> Result<Option<Vec<(String, Option<String>, i64, String)>>, sqlx::Error> {
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT r.id, r.payment_id, r.remaining, COALESCE(p.gateway, 'offline') FROM retainers r \
         LEFT JOIN payments p ON p.id = r.payment_id \
         WHERE r.customer_id = $1 AND r.currency = $2 AND r.remaining > 0 ORDER BY r.created_at DESC, r.id DESC{}",
        if lock.is_empty() {
            ""
        } else {
            " FOR UPDATE OF r"
        }
    );
    let deposits: Vec<(String, Option<String>, i64, String)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_all(&mut *c)
            .await?
    });
    let available: i64 = deposits.iter().map(|d| d.2).sum();
    if available < amount {
        return Ok(None);
    }
    let mut left = amount;
    let mut out = Vec::new();
    for (retainer_id, payment_id, remaining, gateway) in deposits {
        if left == 0 {
            break;
        }
        let take = remaining.min(left);
        out.push((retainer_id, payment_id, take, gateway));
        left -= take;
    }
    Ok(Some(out))
}

/// Records a retainer refund (after the gateway, when there was one, said yes).
#[allow(clippy::too_many_arguments)]
pub async fn record_retainer_refund(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    retainer_id: &str,
    payment_id: Option<&str>,
    amount: i64,
    gateway: &str,
    gateway_refund_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let refund_id = new_id(prefix::REFUND);
    on_tx!(tx, c => {
        sqlx::query("UPDATE retainers SET remaining = remaining - $2 WHERE id = $1")
            .bind(retainer_id)
            .bind(amount)
            .execute(&mut *c)
            .await?;
        if let Some(payment_id) = payment_id {
            sqlx::query(
                "INSERT INTO refunds (id, payment_id, amount, currency, gateway, gateway_refund_id, reason, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'retainer refund', $7)",
            )
            .bind(&refund_id)
            .bind(payment_id)
            .bind(amount)
            .bind(currency)
            .bind(gateway)
            .bind(gateway_refund_id)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
            sqlx::query(
                "UPDATE payments SET amount_refunded = amount_refunded + $2, \
                 status = CASE WHEN disputed THEN 'disputed' WHEN amount_refunded + $2 >= amount THEN 'refunded' \
                 ELSE 'partially_refunded' END WHERE id = $1",
            )
            .bind(payment_id)
            .bind(amount)
            .execute(&mut *c)
            .await?;
        }
    });
    payments::ledger(
        tx,
        customer_id,
        currency,
        "retainer",
        "retainer_refunded",
        -amount,
        None,
        payment_id,
        Some(retainer_id),
        None,
        now,
    )
    .await?;
    if payment_id.is_some() {
        crate::outbox::refund(tx, &refund_id, now).await?;
    }
    Ok(refund_id)
}
