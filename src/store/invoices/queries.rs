//! The invoice reads the rules and the sweep ask for: lists, sums, what is due, and what
//! charging an invoice needs to know.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use settled_jobs::job::WorkKind;
use sqlx::FromRow;

use super::INVOICE_COLUMNS;
use super::InvoiceRow;
use crate::store::bulk;
use crate::store::dialect::collectible;
use crate::store::work_failures::SetAside;
use crate::store::{Db, Result, Tx, ms, on_db, on_tx};

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
) -> Result<Vec<InvoiceRow>> {
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
    Ok(on_db!(db, p => {
        let mut q = sqlx::query_as::<_, InvoiceRow>(sqlx::AssertSqlSafe(sql.as_str()));
        for b in &binds {
            q = q.bind(b.clone());
        }
        q.bind(limit).fetch_all(p).await?
    }))
}

/// The (subscription, period start) pairs among `periods` that already have an invoice.
pub async fn already_billed(
    tx: &mut Tx,
    periods: &HashSet<(String, i64)>,
) -> Result<HashSet<(String, i64)>> {
    if periods.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids: Vec<&str> = periods.iter().map(|(s, _)| s.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // The period starts of a batch are few (usually one), so they go in as literals.
    let starts: std::collections::BTreeSet<i64> = periods.iter().map(|(_, s)| *s).collect();
    let starts = starts
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<(String, i64)> = bulk::select_by_ids(tx, &ids, |ids| {
        format!(
            "SELECT subscription_id, period_start FROM invoices WHERE subscription_id {ids} \
             AND period_start IN ({starts})"
        )
    })
    .await?;
    Ok(rows.into_iter().filter(|r| periods.contains(r)).collect())
}

/// What each customer owes in each currency over its collectible invoices.
pub async fn outstanding_many(
    tx: &mut Tx,
    customer_ids: &[&str],
) -> Result<HashMap<(String, String), i64>> {
    let statuses = collectible();
    let rows: Vec<(String, String, i64)> = bulk::select_by_ids(tx, customer_ids, |ids| {
        format!(
            "SELECT customer_id, currency, CAST(COALESCE(SUM(amount_due), 0) AS BIGINT) FROM invoices \
             WHERE customer_id {ids} AND status IN {statuses} GROUP BY customer_id, currency"
        )
    })
    .await?;
    Ok(rows.into_iter().map(|(c, cur, v)| ((c, cur), v)).collect())
}

/// What the customer owes in `currency` over its collectible invoices, inside `tx`.
pub async fn outstanding(tx: &mut Tx, customer_id: &str, currency: &str) -> Result<i64> {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(amount_due), 0) AS BIGINT) FROM invoices WHERE customer_id = $1 \
         AND currency = $2 AND status IN {}",
        collectible()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_one(&mut *c)
            .await?
    }))
}

/// Invoices due at or before `cutoff` that have no late fee yet, oldest due first.
pub async fn owing_late_fee(db: &Db, cutoff: DateTime<Utc>, limit: i64) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT id FROM invoices WHERE late_fee_at IS NULL AND status IN {} AND amount_due > 0 \
         AND kind <> 'late_fee' AND due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
        collectible()
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(cutoff))
            .bind(limit)
            .fetch_all(p)
            .await?
    }))
}

/// Drafts whose review window has passed by `now`, oldest first.
pub async fn drafts_due(db: &Db, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT id FROM invoices WHERE status = 'draft' AND finalize_at IS NOT NULL \
             AND finalize_at <= $1 ORDER BY finalize_at LIMIT $2",
        )
        .bind(ms(now))
        .bind(limit)
        .fetch_all(p)
        .await?
    }))
}

/// What charging an invoice needs to know, read (and, with `lock`, locked) in `tx`.
#[derive(Debug, Clone, FromRow)]
pub struct ChargeFacts {
    pub status: String,
    pub amount_due: i64,
    pub currency: String,
    pub customer_id: String,
    pub invoice_auto_charge: bool,
    pub customer_auto_charge: bool,
    pub gateway_customer_id: Option<String>,
    /// The customer's default payment method (spm_...), if it has one.
    pub default_method: Option<String>,
}

pub async fn charge_facts(tx: &mut Tx, id: &str, lock: bool) -> Result<Option<ChargeFacts>> {
    let lock = if lock {
        tx.lock_rows_of("i")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT i.status, i.amount_due, i.currency, i.customer_id, i.auto_charge AS invoice_auto_charge, \
         c.auto_charge AS customer_auto_charge, c.gateway_customer_id, \
         (SELECT pm.id FROM payment_methods pm WHERE pm.customer_id = c.id AND pm.is_default \
          AND pm.removed_at IS NULL) AS default_method \
         FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.id = $1{lock}"
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Claims drafts whose review window has passed by `now`, leaving out those set aside and those
/// another batch holds; locked for the rest of `tx`.
pub async fn claim_drafts(
    tx: &mut Tx,
    now: DateTime<Utc>,
    wall_now: i64,
    limit: i64,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT id FROM invoices i WHERE status = 'draft' AND finalize_at IS NOT NULL \
         AND finalize_at <= $1 AND {} ORDER BY finalize_at, id LIMIT $3{}",
        crate::store::work_failures::not_set_aside(WorkKind::Drafts, "i.id", "$2"),
        tx.skip_locked()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// Claims invoices due at or before `cutoff` that have no late fee yet, leaving out those set
/// aside and those another batch holds; locked for the rest of `tx`.
pub async fn claim_late_fees(
    tx: &mut Tx,
    cutoff: DateTime<Utc>,
    wall_now: i64,
    limit: i64,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT id FROM invoices i WHERE late_fee_at IS NULL AND status IN {} AND amount_due > 0 \
         AND kind <> 'late_fee' AND due_at IS NOT NULL AND due_at <= $1 AND {} \
         ORDER BY due_at, id LIMIT $3{}",
        collectible(),
        crate::store::work_failures::not_set_aside(WorkKind::LateFees, "i.id", "$2"),
        tx.skip_locked()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(cutoff))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// How many drafts are due by `now` and how many invoices owe a late fee by `cutoff` (None: late
/// fees are off).
pub async fn due_counts(
    db: &Db,
    now: DateTime<Utc>,
    late_fee_cutoff: Option<DateTime<Utc>>,
) -> Result<(i64, i64)> {
    let set_aside = SetAside::Reported;
    let sql = format!(
        "SELECT COUNT(*) FROM invoices i WHERE status = 'draft' AND finalize_at IS NOT NULL \
         AND finalize_at <= $1 AND {}",
        set_aside.condition(WorkKind::Drafts, "i.id", "$2")
    );
    let drafts: i64 = on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(set_aside.value())
            .fetch_one(p)
            .await?
    });
    let fees = match late_fee_cutoff {
        None => 0,
        Some(cutoff) => {
            let sql = format!(
                "SELECT COUNT(*) FROM invoices i WHERE late_fee_at IS NULL AND status IN {} \
                 AND amount_due > 0 AND kind <> 'late_fee' AND due_at IS NOT NULL AND due_at <= $1 \
                 AND {}",
                collectible(),
                set_aside.condition(WorkKind::LateFees, "i.id", "$2")
            );
            on_db!(db, p => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(ms(cutoff))
                    .bind(set_aside.value())
                    .fetch_one(p)
                    .await?
            })
        }
    };
    Ok((drafts, fees))
}

/// How many invoices there are (a catch-up's progress counts the ones it writes).
pub async fn count(db: &Db) -> Result<i64> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar("SELECT COUNT(*) FROM invoices")
            .fetch_one(p)
            .await?
    }))
}
