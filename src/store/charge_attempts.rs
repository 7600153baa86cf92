//! Charge attempts: one row per gateway charge, committed before its call with the
//! Idempotency-Key it is sent under, and the reservations an attempt in flight holds on the
//! invoices it may pay. The only writer of `charge_attempts` and `charge_reservations`.
//!
//! An attempt is *in flight* from the moment it is marked sent until its outcome is recorded
//! (succeeded or failed). While in flight it holds one reservation per invoice it may pay (an
//! invoice's own attempt: that invoice; a balance charge: every invoice it covers), taken in the
//! transaction that marks it sent ([`reserve`]) and dropped in the one that closes it. The
//! reservation's primary key is the invoice, so whichever path charges second (the drain, an
//! operator, a portal, a balance charge) is refused by the database itself; a scheduled attempt
//! is not even claimed while its invoice is reserved.

use chrono::{DateTime, Utc};
use settled_jobs::dunning::idempotency_key;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::job::WorkKind;
use settled_jobs::status::AttemptStatus;
use sqlx::FromRow;

use super::bulk::{self, Arg};
use super::work_failures::SetAside;
use super::{Db, Result, Tx, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub id: String,
    pub invoice_id: Option<String>,
    pub customer_id: String,
    pub attempt: i64,
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub payment_method_id: Option<String>,
    pub automatic: bool,
    pub status: String,
    pub decline_code: Option<String>,
    pub failure_message: Option<String>,
    pub gateway_payment_id: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub scheduled_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub sent_wall_ms: Option<i64>,
    /// The gateway refused a resend while the outcome was unknown: look the charge up first.
    pub look_up: bool,
}

impl AttemptRow {
    pub fn status(&self) -> AttemptStatus {
        AttemptStatus::parse(&self.status).unwrap_or(AttemptStatus::Unknown)
    }

    /// Succeeded or failed: nothing more will happen to it.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.status(),
            AttemptStatus::Succeeded | AttemptStatus::Failed
        )
    }
}

pub(crate) const ATTEMPT_COLUMNS: &str = "id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, \
     payment_method_id, automatic, status, decline_code, failure_message, gateway_payment_id, \
     next_attempt_at, scheduled_at, started_at, finished_at, sent_wall_ms, look_up";

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct NewAttempt<'a> {
    pub invoice_id: Option<&'a str>,
    pub customer_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub payment_method_id: Option<&'a str>,
    pub automatic: bool,
    pub scheduled_at: DateTime<Utc>,
    /// Set for on-demand charges, which are sent at once by the caller.
    pub started: bool,
}

/// Inserts the next attempt (numbered after every earlier one of the invoice) and returns it.
pub async fn insert(tx: &mut Tx, a: &NewAttempt<'_>, now: DateTime<Utc>) -> Result<AttemptRow> {
    let id = new_id(prefix::CHARGE_ATTEMPT);
    let number: i64 = match a.invoice_id {
        Some(invoice_id) => on_tx!(tx, c => {
            sqlx::query_scalar("SELECT COALESCE(MAX(attempt), 0) + 1 FROM charge_attempts WHERE invoice_id = $1")
                .bind(invoice_id)
                .fetch_one(&mut *c)
                .await?
        }),
        None => 1,
    };
    let key = idempotency_key(a.invoice_id.unwrap_or(&id), number);
    let (started_at, sent) = if a.started {
        (Some(ms(now)), Some(wall_ms()))
    } else {
        (None, None)
    };
    let sql = format!(
        "INSERT INTO charge_attempts (id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, \
         payment_method_id, automatic, status, scheduled_at, started_at, sent_wall_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $12) RETURNING {ATTEMPT_COLUMNS}"
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&id)
            .bind(a.invoice_id)
            .bind(a.customer_id)
            .bind(number)
            .bind(&key)
            .bind(a.amount)
            .bind(a.currency)
            .bind(a.payment_method_id)
            .bind(a.automatic)
            .bind(ms(a.scheduled_at))
            .bind(started_at)
            .bind(sent)
            .fetch_one(&mut *c)
            .await?
    }))
}

/// A first automatic attempt of a newly finalised invoice, scheduled for `now`.
pub struct FirstAttempt<'a> {
    pub invoice_id: &'a str,
    pub customer_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
}

/// Inserts first automatic attempts (attempt 1 of each invoice) in a few statements.
pub async fn insert_first_many(
    tx: &mut Tx,
    attempts: &[FirstAttempt<'_>],
    now: DateTime<Utc>,
) -> Result<()> {
    const COLUMNS: [&str; 10] = [
        "id",
        "invoice_id",
        "customer_id",
        "attempt",
        "idempotency_key",
        "amount",
        "currency",
        "automatic",
        "status",
        "scheduled_at",
    ];
    let rows: Vec<Vec<Arg>> = attempts
        .iter()
        .map(|a| {
            vec![
                Arg::from(new_id(prefix::CHARGE_ATTEMPT)),
                Arg::from(a.invoice_id),
                Arg::from(a.customer_id),
                Arg::from(1i64),
                Arg::from(idempotency_key(a.invoice_id, 1)),
                Arg::from(a.amount),
                Arg::from(a.currency),
                Arg::from(true),
                Arg::from(AttemptStatus::Pending.as_str()),
                Arg::from(ms(now)),
            ]
        })
        .collect();
    bulk::insert(tx, "charge_attempts", &COLUMNS, &rows, "").await?;
    Ok(())
}

/// An attempt by (invoice, number) or, for balance charges, by its id; locked for update.
pub async fn lock(
    tx: &mut Tx,
    invoice_id: Option<&str>,
    attempt: i64,
    id: &str,
) -> Result<Option<AttemptRow>> {
    let lock = tx.lock_rows();
    let sql = match invoice_id {
        Some(_) => format!(
            "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id = $1 AND attempt = $2{lock}"
        ),
        None => format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1{lock}"),
    };
    Ok(on_tx!(tx, c => {
        let q = sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql.as_str()));
        match invoice_id {
            Some(inv) => q.bind(inv).bind(attempt).fetch_optional(&mut *c).await?,
            None => q.bind(id).fetch_optional(&mut *c).await?,
        }
    }))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<AttemptRow>> {
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1");
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await?),
    )
}

/// The attempt, read inside `tx`.
pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<AttemptRow>> {
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1");
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Attempts of an invoice in order, for the invoice view.
pub async fn of_invoice(db: &Db, invoice_id: &str) -> Result<Vec<AttemptRow>> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id = $1 ORDER BY attempt"
    );
    Ok(
        on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(invoice_id).fetch_all(p).await?),
    )
}

/// What sending an attempt needs besides its row: the gateway customer, the card's token and
/// gateway, and the invoice's number.
#[derive(Debug, FromRow)]
pub struct SendContext {
    pub gateway_customer_id: Option<String>,
    pub token: Option<String>,
    pub gateway: Option<String>,
    pub number: Option<String>,
}

const SEND_CONTEXT: &str = "SELECT c.gateway_customer_id, pm.token, pm.gateway, i.number FROM charge_attempts a \
     JOIN customers c ON c.id = a.customer_id \
     LEFT JOIN payment_methods pm ON pm.id = a.payment_method_id \
     LEFT JOIN invoices i ON i.id = a.invoice_id WHERE a.id = $1";

/// [`send_context`] inside `tx`.
pub async fn send_context_in(tx: &mut Tx, id: &str) -> Result<SendContext> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(SEND_CONTEXT).bind(id).fetch_one(&mut *c).await?
    }))
}

pub async fn send_context(db: &Db, id: &str) -> Result<SendContext> {
    Ok(on_db!(db, p => sqlx::query_as(SEND_CONTEXT).bind(id).fetch_one(p).await?))
}

/// Claims a scheduled attempt of an invoice just before its call: the invoice is reserved, its
/// amount and method are fixed, and it is marked sent (by the daemon's clock and the real wall
/// clock). False, and nothing changed, when another attempt holds the invoice.
pub async fn claim(
    tx: &mut Tx,
    a: &AttemptRow,
    amount: i64,
    payment_method_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let id = a.id.as_str();
    if let Some(invoice_id) = &a.invoice_id
        && !reserve(tx, id, std::slice::from_ref(invoice_id)).await?
    {
        return Ok(false);
    }
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET amount = $2, payment_method_id = $3, started_at = $4, sent_wall_ms = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(amount)
        .bind(payment_method_id)
        .bind(ms(now))
        .bind(wall_ms())
        .execute(&mut *c)
        .await?;
    });
    Ok(true)
}

/// Deletes one attempt that was never sent (its key was never used).
pub async fn delete_unsent(tx: &mut Tx, id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("DELETE FROM charge_attempts WHERE id = $1 AND started_at IS NULL")
            .bind(id)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Drops an invoice's scheduled attempts that were never sent (it was paid or voided).
pub async fn drop_unsent_of(tx: &mut Tx, invoice_id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "DELETE FROM charge_attempts WHERE invoice_id = $1 AND status = 'pending' AND started_at IS NULL",
        )
        .bind(invoice_id)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Takes the reservations of `invoice_ids` for the attempt `attempt_id`, in id order. False (and
/// nothing taken that was not already this attempt's) when another attempt holds one of them:
/// the caller must not send, and rolls its transaction back or skips the attempt.
pub async fn reserve(tx: &mut Tx, attempt_id: &str, invoice_ids: &[String]) -> Result<bool> {
    let mut ids: Vec<&String> = invoice_ids.iter().collect();
    ids.sort();
    ids.dedup();
    let mut taken = Vec::new();
    for invoice_id in ids {
        let added = on_tx!(tx, c => {
            sqlx::query(
                "INSERT INTO charge_reservations (invoice_id, attempt_id) VALUES ($1, $2) \
                 ON CONFLICT (invoice_id) DO NOTHING",
            )
            .bind(invoice_id)
            .bind(attempt_id)
            .execute(&mut *c)
            .await?
            .rows_affected()
        });
        if added == 1 {
            taken.push(invoice_id.clone());
            continue;
        }
        if reserved_by(tx, invoice_id).await?.as_deref() != Some(attempt_id) {
            for id in &taken {
                on_tx!(tx, c => {
                    sqlx::query("DELETE FROM charge_reservations WHERE invoice_id = $1 AND attempt_id = $2")
                        .bind(id)
                        .bind(attempt_id)
                        .execute(&mut *c)
                        .await?;
                });
            }
            return Ok(false);
        }
    }
    Ok(true)
}

/// The attempt holding the invoice's reservation, if one is in flight.
pub async fn reserved_by(tx: &mut Tx, invoice_id: &str) -> Result<Option<String>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar("SELECT attempt_id FROM charge_reservations WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// Drops an attempt's reservations (its outcome is recorded).
async fn release(tx: &mut Tx, attempt_id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("DELETE FROM charge_reservations WHERE attempt_id = $1")
            .bind(attempt_id)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

pub async fn set_unknown(tx: &mut Tx, id: &str, message: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE charge_attempts SET status = 'unknown', failure_message = $2, lease_until = NULL WHERE id = $1")
            .bind(id)
            .bind(message)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

pub async fn set_succeeded(
    tx: &mut Tx,
    id: &str,
    gateway_payment_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET status = 'succeeded', gateway_payment_id = $2, finished_at = $3, \
             decline_code = NULL, failure_message = NULL, lease_until = NULL, look_up = FALSE \
             WHERE id = $1",
        )
        .bind(id)
        .bind(gateway_payment_id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    release(tx, id).await
}

pub async fn set_failed(
    tx: &mut Tx,
    id: &str,
    code: &str,
    message: &str,
    gateway_payment_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET status = 'failed', decline_code = $2, failure_message = $3, \
             gateway_payment_id = COALESCE($4, gateway_payment_id), finished_at = $5, \
             started_at = COALESCE(started_at, $5), lease_until = NULL, look_up = FALSE WHERE id = $1",
        )
        .bind(id)
        .bind(code)
        .bind(message)
        .bind(gateway_payment_id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    release(tx, id).await
}

/// Marks an unknown attempt to be looked up by its metadata before it is sent again.
pub async fn set_look_up(tx: &mut Tx, id: &str) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE charge_attempts SET look_up = TRUE WHERE id = $1")
            .bind(id)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

pub async fn set_next_attempt_at(tx: &mut Tx, id: &str, at: DateTime<Utc>) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE charge_attempts SET next_attempt_at = $2 WHERE id = $1")
            .bind(id)
            .bind(ms(at))
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// How many automatic attempts of the invoice have failed.
pub async fn automatic_failures(tx: &mut Tx, invoice_id: &str) -> Result<i64> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM charge_attempts WHERE invoice_id = $1 AND automatic AND status = 'failed'",
        )
        .bind(invoice_id)
        .fetch_one(&mut *c)
        .await?
    }))
}

/// Whose attempts to look at for one in flight.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    Invoice(&'a str),
    Customer(&'a str),
}

/// True when an attempt was sent and its outcome is not recorded yet: a second charge now could
/// take the money twice. For an invoice, that is its reservation (held by its own attempt or by a
/// balance charge covering it); for a customer, any attempt of its in flight.
pub async fn in_flight(tx: &mut Tx, of: Of<'_>) -> Result<bool> {
    let (column, id) = match of {
        Of::Invoice(id) => return Ok(reserved_by(tx, id).await?.is_some()),
        Of::Customer(id) => ("customer_id", id),
    };
    let sql = format!(
        "SELECT COUNT(*) FROM charge_attempts WHERE {column} = $1 \
         AND (status = 'unknown' OR (status = 'pending' AND started_at IS NOT NULL))"
    );
    let n: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_one(&mut *c)
            .await?
    });
    Ok(n > 0)
}

/// The failed attempt's decline (message, else code) and the brand and last 4 of its card.
pub async fn decline_of(
    tx: &mut Tx,
    invoice_id: &str,
    attempt: i64,
) -> Result<
    Option<(
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    )>,
> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.decline_code, a.failure_message, pm.brand, pm.last4 FROM charge_attempts a \
             LEFT JOIN payment_methods pm ON pm.id = a.payment_method_id \
             WHERE a.invoice_id = $1 AND a.attempt = $2",
        )
        .bind(invoice_id)
        .bind(attempt)
        .fetch_optional(&mut *c)
        .await?
    }))
}

/// Claims scheduled attempts whose time has come (by `now`), leaving out those set aside, those
/// under another batch's lease and (PostgreSQL) those another batch holds; locked for the rest
/// of `tx`.
pub async fn claim_scheduled(
    tx: &mut Tx,
    now: DateTime<Utc>,
    wall_now: i64,
    limit: i64,
) -> Result<Vec<AttemptRow>> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts a WHERE status = 'pending' \
         AND started_at IS NULL AND scheduled_at <= $1 AND (lease_until IS NULL OR lease_until < $2) \
         AND NOT EXISTS (SELECT 1 FROM charge_reservations r WHERE r.invoice_id = a.invoice_id) \
         AND {} ORDER BY scheduled_at, id LIMIT $3{}",
        super::work_failures::not_set_aside(WorkKind::Charges, "a.id", "$2"),
        tx.skip_locked()
    );
    Ok(on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    }))
}

/// Claims attempts whose outcome is not recorded: `unknown` ones, and ones sent before
/// `sent_before_wall_ms` whose sender never recorded what came back (it died). Each is leased
/// until `lease_until` so no other batch sends it meanwhile.
pub async fn claim_unresolved(
    tx: &mut Tx,
    sent_before_wall_ms: i64,
    wall_now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<AttemptRow>> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts a WHERE (status = 'unknown' \
         OR (status = 'pending' AND started_at IS NOT NULL AND COALESCE(sent_wall_ms, 0) < $1)) \
         AND (lease_until IS NULL OR lease_until < $2) AND {} \
         ORDER BY scheduled_at, id LIMIT $3{}",
        super::work_failures::not_set_aside(WorkKind::Charges, "a.id", "$2"),
        tx.skip_locked()
    );
    let rows: Vec<AttemptRow> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(sent_before_wall_ms)
            .bind(wall_now)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    });
    for a in &rows {
        set_lease(tx, &a.id, Some(lease_until)).await?;
    }
    Ok(rows)
}

/// Holds (or, with None, releases) an attempt for one batch's call.
pub async fn set_lease(tx: &mut Tx, id: &str, until: Option<i64>) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE charge_attempts SET lease_until = $2 WHERE id = $1")
            .bind(id)
            .bind(until)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Attempts whose work is not done by `now`: scheduled ones whose time has come (unless
/// reported failed), and every one sent without a recorded outcome, however long it has been
/// unknown (money in flight is never done).
pub async fn due_count(db: &Db, now: DateTime<Utc>) -> Result<i64> {
    let set_aside = SetAside::Reported;
    let sql = format!(
        "SELECT COUNT(*) FROM charge_attempts a WHERE (status = 'pending' AND started_at IS NULL \
         AND scheduled_at <= $1 AND {}) OR status = 'unknown' \
         OR (status = 'pending' AND started_at IS NOT NULL)",
        set_aside.condition(WorkKind::Charges, "a.id", "$2")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(set_aside.value())
            .fetch_one(p)
            .await?
    }))
}

/// Whether an attempt can be claimed now.
pub async fn claimable(
    db: &Db,
    now: DateTime<Utc>,
    wall_now: i64,
    sent_before_wall_ms: i64,
) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM charge_attempts a WHERE ((status = 'pending' AND started_at IS NULL \
         AND scheduled_at <= $1 \
         AND NOT EXISTS (SELECT 1 FROM charge_reservations r WHERE r.invoice_id = a.invoice_id)) \
         OR status = 'unknown' \
         OR (status = 'pending' AND started_at IS NOT NULL AND COALESCE(sent_wall_ms, 0) < $3)) \
         AND (lease_until IS NULL OR lease_until < $2) AND {})",
        super::work_failures::not_set_aside(WorkKind::Charges, "a.id", "$2")
    );
    Ok(on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(now))
            .bind(wall_now)
            .bind(sent_before_wall_ms)
            .fetch_one(p)
            .await?
    }))
}
