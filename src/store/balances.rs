//! Money the customer holds with the business: credit notes and retainer deposits, and what of
//! them was applied to invoices. The only writer of `credit_notes`, `credit_applications`,
//! `retainers` and `retainer_applications`; the two pools work the same way (spent oldest first,
//! given back when an invoice is voided), so one set of statements serves both.

use chrono::{DateTime, Utc};
use settled_jobs::ids::new_id;
use sqlx::FromRow;

use super::{Db, Result, Tx, ms, on_db, on_tx};

/// Which pool of held money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Credit notes: issued by an operator, or left over from payments and refunds.
    Credit,
    /// Retainer deposits: paid retainer invoices.
    Retainer,
}

impl Pool {
    fn table(self) -> &'static str {
        match self {
            Pool::Credit => "credit_notes",
            Pool::Retainer => "retainers",
        }
    }

    fn applications(self) -> &'static str {
        match self {
            Pool::Credit => "credit_applications",
            Pool::Retainer => "retainer_applications",
        }
    }

    fn source_column(self) -> &'static str {
        match self {
            Pool::Credit => "credit_note_id",
            Pool::Retainer => "retainer_id",
        }
    }

    fn application_prefix(self) -> &'static str {
        match self {
            Pool::Credit => "capp",
            Pool::Retainer => "rapp",
        }
    }
}

/// Issues a credit note of `amount`, all of it remaining.
#[allow(clippy::too_many_arguments)]
pub async fn insert_credit_note(
    tx: &mut Tx,
    id: &str,
    customer_id: &str,
    currency: &str,
    amount: i64,
    source: &str,
    source_id: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO credit_notes (id, customer_id, amount, remaining, currency, source, source_id, reason, created_at) \
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
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
    Ok(())
}

/// The deposit a retainer invoice made, locked: (id, amount, remaining).
pub async fn deposit_of_invoice(
    tx: &mut Tx,
    invoice_id: &str,
) -> Result<Option<(String, i64, i64)>> {
    let sql = format!(
        "SELECT id, amount - reversed, remaining FROM retainers WHERE invoice_id = $1{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Makes the deposit of a paid retainer invoice `amount`: a new one, or (after part of it was
/// taken back and the invoice paid again) the existing one grown back. Returns the deposit's id
/// and how much it grew (0: it was that much already).
#[allow(clippy::too_many_arguments)]
pub async fn set_deposit(
    tx: &mut Tx,
    customer_id: &str,
    invoice_id: &str,
    payment_id: Option<&str>,
    currency: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(String, i64)> {
    if let Some((id, had, _)) = deposit_of_invoice(tx, invoice_id).await? {
        let grow = amount - had;
        if grow > 0 {
            on_tx!(tx, c => {
                sqlx::query(
                    "UPDATE retainers SET \
                     amount = amount + CASE WHEN $2 > reversed THEN $2 - reversed ELSE 0 END, \
                     reversed = CASE WHEN $2 > reversed THEN 0 ELSE reversed - $2 END, \
                     remaining = remaining + $2 WHERE id = $1",
                )
                .bind(&id)
                .bind(grow)
                .execute(&mut *c)
                .await?;
            });
        }
        return Ok((id, grow.max(0)));
    }
    let id = new_id(settled_jobs::ids::prefix::RETAINER);
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO retainers (id, customer_id, invoice_id, payment_id, amount, remaining, currency, created_at) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
        )
        .bind(&id)
        .bind(customer_id)
        .bind(invoice_id)
        .bind(payment_id)
        .bind(amount)
        .bind(currency)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    Ok((id, amount))
}

/// Takes `amount` away from one entry for good (a refund of what it came from, a payment
/// reversed): first what is left of it, then, newest first, what of it was applied to invoices.
/// A retainer deposit also shrinks by what is taken. Returns how much was taken (less than
/// `amount` when the entry holds less) and each invoice that lost an application and by how
/// much; the caller reopens them.
pub async fn take_back(
    tx: &mut Tx,
    pool: Pool,
    entry_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(i64, Vec<(String, i64)>)> {
    let table = pool.table();
    let select = format!(
        "SELECT remaining FROM {table} WHERE id = $1{}",
        tx.lock_rows()
    );
    let remaining: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(select.as_str()))
            .bind(entry_id)
            .fetch_one(&mut *c)
            .await?
    });
    let from_remaining = remaining.min(amount).max(0);
    let shrink = match pool {
        Pool::Retainer => ", reversed = reversed + $2",
        Pool::Credit => "",
    };
    let update = format!("UPDATE {table} SET remaining = remaining - $2{shrink} WHERE id = $1");
    if from_remaining > 0 {
        on_tx!(tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                .bind(entry_id)
                .bind(from_remaining)
                .execute(&mut *c)
                .await?;
        });
    }
    let mut left = amount - from_remaining;
    let mut released = Vec::new();
    if left <= 0 {
        return Ok((from_remaining, released));
    }
    let applications = format!(
        "SELECT id, invoice_id, amount FROM {} WHERE {} = $1 AND released_at IS NULL \
         ORDER BY created_at DESC, id DESC{}",
        pool.applications(),
        pool.source_column(),
        tx.lock_rows()
    );
    let applied: Vec<(String, String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(applications.as_str()))
            .bind(entry_id)
            .fetch_all(&mut *c)
            .await?
    });
    let whole = format!(
        "UPDATE {} SET released_at = $2 WHERE id = $1",
        pool.applications()
    );
    let part = format!(
        "UPDATE {} SET amount = amount - $2 WHERE id = $1",
        pool.applications()
    );
    let shrink_entry = format!("UPDATE {table} SET reversed = reversed + $2 WHERE id = $1");
    for (application, invoice_id, applied) in applied {
        if left == 0 {
            break;
        }
        let take = applied.min(left);
        on_tx!(tx, c => {
            if take == applied {
                sqlx::query(sqlx::AssertSqlSafe(whole.as_str()))
                    .bind(&application)
                    .bind(ms(now))
                    .execute(&mut *c)
                    .await?;
            } else {
                sqlx::query(sqlx::AssertSqlSafe(part.as_str()))
                    .bind(&application)
                    .bind(take)
                    .execute(&mut *c)
                    .await?;
            }
            if pool == Pool::Retainer {
                sqlx::query(sqlx::AssertSqlSafe(shrink_entry.as_str()))
                    .bind(entry_id)
                    .bind(take)
                    .execute(&mut *c)
                    .await?;
            }
        });
        released.push((invoice_id, take));
        left -= take;
    }
    Ok((amount - left, released))
}

/// Gives `amount` back to an entry (a refund of it that failed).
pub async fn give_back(tx: &mut Tx, pool: Pool, entry_id: &str, amount: i64) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET remaining = remaining + $2 WHERE id = $1",
        pool.table()
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(entry_id)
            .bind(amount)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// The pool's entries of the customer in `currency` with something left, oldest first, locked:
/// (id, remaining).
pub async fn lock_available(
    tx: &mut Tx,
    pool: Pool,
    customer_id: &str,
    currency: &str,
) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT id, remaining FROM {} WHERE customer_id = $1 AND currency = $2 AND remaining > 0 \
         ORDER BY created_at, id{}",
        pool.table(),
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// What is left in the pool for the customer in `currency`.
pub async fn available(tx: &mut Tx, pool: Pool, customer_id: &str, currency: &str) -> Result<i64> {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM {} WHERE customer_id = $1 AND currency = $2",
        pool.table()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_one(&mut *c)
            .await?
    }))
}

/// What is left in each pool for many customers, per (customer, currency).
pub async fn available_many(
    tx: &mut Tx,
    pool: Pool,
    customer_ids: &[&str],
) -> Result<std::collections::HashMap<(String, String), i64>> {
    let table = pool.table();
    let rows: Vec<(String, String, i64)> = super::bulk::select_by_ids(tx, customer_ids, |ids| {
        format!(
            "SELECT customer_id, currency, CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM {table} \
             WHERE customer_id {ids} AND remaining > 0 GROUP BY customer_id, currency"
        )
    })
    .await?;
    Ok(rows.into_iter().map(|(c, cur, v)| ((c, cur), v)).collect())
}

/// Spends `amount` of one entry on an invoice: its remaining goes down and the application is
/// recorded.
pub async fn spend_on(
    tx: &mut Tx,
    pool: Pool,
    entry_id: &str,
    invoice_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let spend = format!(
        "UPDATE {} SET remaining = remaining - $2 WHERE id = $1",
        pool.table()
    );
    let record = format!(
        "INSERT INTO {} (id, {}, invoice_id, amount, created_at) VALUES ($1, $2, $3, $4, $5)",
        pool.applications(),
        pool.source_column()
    );
    on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(spend.as_str()))
            .bind(entry_id)
            .bind(amount)
            .execute(&mut *c)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(record.as_str()))
            .bind(new_id(pool.application_prefix()))
            .bind(entry_id)
            .bind(invoice_id)
            .bind(amount)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Takes `amount` out of one entry without applying it anywhere (a refund of it); false when the
/// entry holds less.
pub async fn take(tx: &mut Tx, pool: Pool, entry_id: &str, amount: i64) -> Result<bool> {
    let sql = format!(
        "UPDATE {} SET remaining = remaining - $2 WHERE id = $1 AND remaining >= $2",
        pool.table()
    );
    let changed = on_tx!(tx, c => {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(entry_id)
            .bind(amount)
            .execute(&mut *c)
            .await?
            .rows_affected()
    });
    Ok(changed == 1)
}

/// Gives back everything of the pool applied to an invoice: each application is marked released
/// and its amount returns to its entry. Returns (entry id, amount) of each.
pub async fn release_from(
    tx: &mut Tx,
    pool: Pool,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<(String, i64)>> {
    let select = format!(
        "SELECT id, {}, amount FROM {} WHERE invoice_id = $1 AND released_at IS NULL",
        pool.source_column(),
        pool.applications()
    );
    let applied: Vec<(String, String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(select.as_str()))
            .bind(invoice_id)
            .fetch_all(&mut *c)
            .await?
    });
    let mark = format!(
        "UPDATE {} SET released_at = $2 WHERE id = $1",
        pool.applications()
    );
    let give_back = format!(
        "UPDATE {} SET remaining = remaining + $2 WHERE id = $1",
        pool.table()
    );
    let mut released = Vec::with_capacity(applied.len());
    for (application, entry, amount) in applied {
        on_tx!(tx, c => {
            sqlx::query(sqlx::AssertSqlSafe(mark.as_str()))
                .bind(&application)
                .bind(ms(now))
                .execute(&mut *c)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(give_back.as_str()))
                .bind(&entry)
                .bind(amount)
                .execute(&mut *c)
                .await?;
        });
        released.push((entry, amount));
    }
    Ok(released)
}

/// The credit a payment's excess became, locked: (id, remaining), oldest first.
pub async fn lock_overpayment_credit(tx: &mut Tx, payment_id: &str) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT id, remaining FROM credit_notes WHERE source = 'overpayment' AND source_id = $1 \
         ORDER BY created_at, id{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(payment_id)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// The customer's unused deposits in `currency`, newest first, locked: (retainer id, the
/// retainer invoice that made it, remaining).
pub async fn lock_deposits_newest_first(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
) -> Result<Vec<(String, Option<String>, i64)>> {
    let sql = format!(
        "SELECT r.id, r.invoice_id, r.remaining FROM retainers r \
         WHERE r.customer_id = $1 AND r.currency = $2 AND r.remaining > 0 \
         ORDER BY r.created_at DESC, r.id DESC{}",
        tx.lock_rows()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(customer_id)
            .bind(currency)
            .fetch_all(&mut *c)
            .await?
    }))
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct CreditNoteRow {
    pub id: String,
    pub customer_id: String,
    pub amount: i64,
    pub remaining: i64,
    pub currency: String,
    pub source: String,
    pub reason: String,
    pub created_at: i64,
}

const CREDIT_NOTE_COLUMNS: &str =
    "id, customer_id, amount, remaining, currency, source, reason, created_at";

pub async fn credit_note(db: &Db, id: &str) -> Result<Option<CreditNoteRow>> {
    let sql = format!("SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

pub async fn credit_note_in(tx: &mut Tx, id: &str) -> Result<Option<CreditNoteRow>> {
    let sql = format!("SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The customer's credit notes, oldest first.
pub async fn credit_notes_of(db: &Db, customer_id: &str) -> Result<Vec<CreditNoteRow>> {
    let sql = format!(
        "SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE customer_id = $1 ORDER BY created_at, id"
    );
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).fetch_all(p).await?),
    )
}
