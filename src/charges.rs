//! Charging saved cards: attempts, their one gateway call each, unknown outcomes, dunning and late
//! fees.
//!
//! An attempt is a row committed *before* its gateway call, carrying the Idempotency-Key
//! `settled:{invoice}:{attempt}`. Every send of that attempt (the first, a retry after a crash, a
//! resolve after a timeout) builds the same request from the row under the same key, so the gateway
//! charges at most once per attempt. The outcome is recorded in one transaction with the payment
//! it produced; an outcome nobody could read is `unknown` and a resolve_charge job asks again.

use chrono::{DateTime, Utc};
use settled_jobs::dunning::{idempotency_key, is_hard_decline, next_attempt_at};
use settled_jobs::error::JobError;
use settled_jobs::gateway::{ChargeRequest, ChargeResult, ChargeStatus, GatewayError};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::job::Job;
use settled_jobs::money::Currency;
use sqlx::FromRow;

use crate::app::State;
use crate::payments::{self, COLLECTIBLE, NewPayment};
use crate::store::{Db, Tx, from_ms, ms, on_db, on_tx, queue};

/// After this long (wall clock) the gateway may have forgotten an idempotency key: an unknown
/// outcome is then looked up by the charge's metadata before anything is sent again.
const KEY_MEMORY_MS: i64 = 23 * 3600 * 1000;

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
}

const ATTEMPT_COLUMNS: &str = "id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, \
     payment_method_id, automatic, status, decline_code, failure_message, gateway_payment_id, \
     next_attempt_at, scheduled_at, started_at, finished_at, sent_wall_ms";

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(anyhow::Error::new(e).context("database error"))
}

/// The job that runs an attempt: the invoice's own for automatic ones, or the balance charge's.
fn resolve_job(a: &AttemptRow) -> Job {
    match &a.invoice_id {
        Some(invoice_id) => Job::ResolveCharge {
            invoice_id: invoice_id.clone(),
            attempt: a.attempt,
        },
        None => Job::ResolveBalanceCharge {
            charge_id: a.id.clone(),
        },
    }
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
pub async fn insert_attempt(
    tx: &mut Tx,
    a: &NewAttempt<'_>,
    now: DateTime<Utc>,
) -> Result<AttemptRow, sqlx::Error> {
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
    on_tx!(tx, c => {
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
            .await
    })
}

/// Called when an invoice is finalised: if auto-charge is on for the invoice (its subscription)
/// and the customer, and the customer has a default payment method, schedule the first attempt
/// now and enqueue it in the same transaction.
pub async fn on_finalized(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "SELECT i.amount_due, i.currency, i.customer_id, i.auto_charge, c.auto_charge, \
         (SELECT pm.id FROM payment_methods pm WHERE pm.customer_id = c.id AND pm.is_default \
          AND pm.removed_at IS NULL) \
         FROM invoices i JOIN customers c ON c.id = i.customer_id \
         WHERE i.id = $1 AND i.status IN {COLLECTIBLE}"
    );
    let row: Option<(i64, String, String, bool, bool, Option<String>)> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(invoice_id)
        .fetch_optional(&mut *c)
        .await?
    });
    let Some((due, currency, customer_id, invoice_auto, customer_auto, pm)) = row else {
        return Ok(());
    };
    if due <= 0 || !invoice_auto || !customer_auto || pm.is_none() {
        if invoice_auto && due > 0 {
            tracing::info!(
                invoice_id,
                customer_id = %customer_id,
                auto_charge = customer_auto,
                has_default_method = pm.is_some(),
                "invoice not charged automatically"
            );
        }
        return Ok(());
    }
    let a = insert_attempt(
        tx,
        &NewAttempt {
            invoice_id: Some(invoice_id),
            customer_id: &customer_id,
            amount: due,
            currency: &currency,
            payment_method_id: None,
            automatic: true,
            scheduled_at: now,
            started: false,
        },
        now,
    )
    .await?;
    queue::push(
        tx,
        &Job::ChargeInvoice {
            invoice_id: invoice_id.to_string(),
            attempt: a.attempt,
        },
    )
    .await?;
    Ok(())
}

/// An attempt by (invoice, number) or, for balance charges, by its id; locked for update.
pub async fn find_attempt(
    tx: &mut Tx,
    invoice_id: Option<&str>,
    attempt: i64,
    id: &str,
) -> Result<Option<AttemptRow>, sqlx::Error> {
    lock_attempt(tx, invoice_id, (attempt, id)).await
}

async fn lock_attempt(
    tx: &mut Tx,
    invoice_id: Option<&str>,
    attempt_or_id: (i64, &str),
) -> Result<Option<AttemptRow>, sqlx::Error> {
    let lock = tx.lock_rows();
    let sql = match invoice_id {
        Some(_) => format!(
            "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id = $1 AND attempt = $2{lock}"
        ),
        None => format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1{lock}"),
    };
    on_tx!(tx, c => {
        let q = sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql.as_str()));
        match invoice_id {
            Some(inv) => q.bind(inv).bind(attempt_or_id.0).fetch_optional(&mut *c).await,
            None => q.bind(attempt_or_id.1).fetch_optional(&mut *c).await,
        }
    })
}

/// The charge_invoice job: claim a scheduled attempt (fixing its amount and payment method at the
/// last moment before the call), send it, record what came back.
pub async fn charge_invoice(state: &State, invoice_id: &str, attempt: i64) -> Result<(), JobError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await.map_err(transient)?;
    let Some(a) = lock_attempt(&mut tx, Some(invoice_id), (attempt, ""))
        .await
        .map_err(transient)?
    else {
        // Dropped because the invoice was settled before its turn came.
        return Ok(());
    };
    match a.status.as_str() {
        "succeeded" | "failed" => return Ok(()),
        "unknown" => {
            drop(tx);
            return send(state, &a.id, false).await;
        }
        _ => {}
    }
    if a.started_at.is_some() {
        // Claimed by a run that did not live to record the outcome: same key, same request.
        drop(tx);
        return send(state, &a.id, false).await;
    }
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT i.status, i.amount_due, i.auto_charge, c.auto_charge, c.gateway_customer_id, \
         (SELECT pm.id FROM payment_methods pm WHERE pm.customer_id = c.id AND pm.is_default AND pm.removed_at IS NULL) \
         FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.id = $1{}",
        if lock.is_empty() {
            ""
        } else {
            " FOR UPDATE OF i"
        }
    );
    let inv: (String, i64, bool, bool, Option<String>, Option<String>) = on_tx!(&mut tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_one(&mut *c)
            .await
            .map_err(transient)?
    });
    let (status, due, invoice_auto, customer_auto, gateway_customer, default_pm) = inv;
    let collectible = ["open", "partially_paid", "past_due"].contains(&status.as_str());
    let switched_off = a.automatic && (!invoice_auto || !customer_auto);
    if !collectible || due <= 0 || switched_off {
        // Never sent, so its key was never used: the attempt can simply go.
        on_tx!(&mut tx, c => {
            sqlx::query("DELETE FROM charge_attempts WHERE id = $1")
                .bind(&a.id)
                .execute(&mut *c)
                .await
                .map_err(transient)?;
        });
        tx.commit().await.map_err(transient)?;
        tracing::info!(
            invoice_id,
            attempt,
            status = %status,
            auto_charge_off = switched_off,
            "scheduled charge dropped: nothing to charge automatically"
        );
        return Ok(());
    }
    let pm = a.payment_method_id.clone().or(default_pm);
    let problem = if state.gateway.is_none() {
        Some(("gateway_not_configured", "no payment gateway is configured"))
    } else if pm.is_none() {
        Some((
            "no_payment_method",
            "the customer has no default payment method",
        ))
    } else if gateway_customer.is_none() {
        Some((
            "no_gateway_customer",
            "the customer has no customer at the gateway",
        ))
    } else {
        None
    };
    if let Some((code, message)) = problem {
        let failed = ChargeFailure {
            code: code.to_string(),
            message: message.to_string(),
            payment_intent_id: None,
        };
        mark_failed(state, &mut tx, &a, &failed, now)
            .await
            .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        return Ok(());
    }
    let amount = if a.automatic { due } else { a.amount.min(due) };
    on_tx!(&mut tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET amount = $2, payment_method_id = $3, started_at = $4, sent_wall_ms = $5 \
             WHERE id = $1",
        )
        .bind(&a.id)
        .bind(amount)
        .bind(&pm)
        .bind(ms(now))
        .bind(wall_ms())
        .execute(&mut *c)
        .await
        .map_err(transient)?;
    });
    tx.commit().await.map_err(transient)?;
    send(state, &a.id, false).await
}

/// The resolve_charge job: an attempt whose outcome is unknown is asked again under its own key.
pub async fn resolve_charge(
    state: &State,
    invoice_id: Option<&str>,
    attempt: i64,
    charge_id: &str,
) -> Result<(), JobError> {
    let mut tx = state.db.begin().await.map_err(transient)?;
    let a = lock_attempt(&mut tx, invoice_id, (attempt, charge_id))
        .await
        .map_err(transient)?;
    drop(tx);
    match a {
        Some(a) if a.status == "unknown" || (a.status == "pending" && a.started_at.is_some()) => {
            send(state, &a.id, true).await
        }
        _ => Ok(()),
    }
}

#[derive(Debug, FromRow)]
struct SendContext {
    gateway_customer_id: Option<String>,
    token: Option<String>,
    number: Option<String>,
}

/// The request an attempt stands for. Built only from the attempt's row (and the ids it names), so
/// every send carries identical parameters.
fn request_for(a: &AttemptRow, ctx: &SendContext) -> Option<ChargeRequest> {
    let mut metadata = vec![("attempt".to_string(), a.attempt.to_string())];
    let description = match &a.invoice_id {
        Some(inv) => {
            metadata.push(("invoice_id".to_string(), inv.clone()));
            format!(
                "Invoice {}",
                ctx.number.clone().unwrap_or_else(|| inv.clone())
            )
        }
        None => {
            metadata.push(("charge_id".to_string(), a.id.clone()));
            metadata.push(("customer_id".to_string(), a.customer_id.clone()));
            "Account balance".to_string()
        }
    };
    metadata.sort();
    Some(ChargeRequest {
        idempotency_key: a.idempotency_key.clone(),
        amount: a.amount,
        currency: a.currency.clone(),
        gateway_customer_id: ctx.gateway_customer_id.clone()?,
        payment_method: ctx.token.clone()?,
        description,
        metadata,
    })
}

/// Sends a claimed attempt and records the outcome. With `resolving`, an outcome that is still
/// unknown is an error, so the queue asks again later with backoff.
pub async fn send(state: &State, attempt_id: &str, resolving: bool) -> Result<(), JobError> {
    let a = get_attempt(&state.db, attempt_id)
        .await
        .map_err(transient)?
        .ok_or_else(|| JobError::permanent(format!("no charge attempt {attempt_id}")))?;
    let ctx: SendContext = on_db!(&state.db, p => {
        sqlx::query_as(
            "SELECT c.gateway_customer_id, pm.token, i.number FROM charge_attempts a \
             JOIN customers c ON c.id = a.customer_id \
             LEFT JOIN payment_methods pm ON pm.id = a.payment_method_id \
             LEFT JOIN invoices i ON i.id = a.invoice_id WHERE a.id = $1",
        )
        .bind(attempt_id)
        .fetch_one(p)
        .await
        .map_err(transient)?
    });
    let Some(gateway) = state.gateway.clone() else {
        return Err(JobError::Transient(anyhow::anyhow!(
            "no payment gateway is configured; charge attempt {attempt_id} waits for one"
        )));
    };
    let Some(request) = request_for(&a, &ctx) else {
        return Err(JobError::permanent(format!(
            "charge attempt {attempt_id} has no payment method or gateway customer"
        )));
    };
    let forgotten = a
        .sent_wall_ms
        .is_some_and(|sent| wall_ms() - sent > KEY_MEMORY_MS);
    let result = if forgotten {
        match gateway.find_charge(&request.metadata).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => gateway.charge(&request).await,
            Err(e) => Err(e),
        }
    } else {
        gateway.charge(&request).await
    };
    let unknown = matches!(&result, Err(GatewayError::Unknown(_)))
        || matches!(&result, Ok(r) if r.status == ChargeStatus::Pending);
    record_outcome(state, attempt_id, result).await?;
    if unknown && resolving {
        return Err(JobError::Transient(anyhow::anyhow!(
            "the outcome of charge attempt {attempt_id} is still unknown"
        )));
    }
    Ok(())
}

pub async fn get_attempt(db: &Db, id: &str) -> Result<Option<AttemptRow>, sqlx::Error> {
    let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE id = $1");
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(p).await)
}

/// Attempts of an invoice in order, for the invoice view.
pub async fn attempts_of(db: &Db, invoice_id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE invoice_id = $1 ORDER BY attempt"
    );
    on_db!(db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(invoice_id).fetch_all(p).await)
}

#[derive(Debug, Clone)]
pub struct ChargeFailure {
    pub code: String,
    pub message: String,
    pub payment_intent_id: Option<String>,
}

/// Writes what the gateway said, in one transaction with its consequences.
async fn record_outcome(
    state: &State,
    attempt_id: &str,
    result: Result<ChargeResult, GatewayError>,
) -> Result<(), JobError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await.map_err(transient)?;
    let Some(a) = lock_attempt(&mut tx, None, (0, attempt_id))
        .await
        .map_err(transient)?
    else {
        return Err(JobError::permanent(format!(
            "charge attempt {attempt_id} vanished"
        )));
    };
    if a.status == "succeeded" || a.status == "failed" {
        // Already recorded (by a webhook or a concurrent resolve).
        return Ok(());
    }
    let counted = crate::metrics::ChargeOutcome::of(&a.currency, a.amount, &result);
    match result {
        Ok(r) if r.status == ChargeStatus::Succeeded => {
            record_success(state, &mut tx, &a, &r, now)
                .await
                .map_err(transient)?;
        }
        Ok(r) if r.status == ChargeStatus::Failed => {
            let failure = ChargeFailure {
                code: r.decline_code.unwrap_or_else(|| "card_declined".into()),
                message: r
                    .failure_message
                    .unwrap_or_else(|| "the charge did not go through".into()),
                payment_intent_id: Some(r.payment_intent_id),
            };
            mark_failed(state, &mut tx, &a, &failure, now)
                .await
                .map_err(transient)?;
        }
        Ok(r) => {
            mark_unknown(&mut tx, &a, &format!("the charge is {:?}", r.status), now)
                .await
                .map_err(transient)?;
        }
        Err(GatewayError::Declined {
            code,
            decline_code,
            message,
            payment_intent_id,
        }) => {
            let failure = ChargeFailure {
                code: decline_code.unwrap_or(code),
                message,
                payment_intent_id,
            };
            mark_failed(state, &mut tx, &a, &failure, now)
                .await
                .map_err(transient)?;
        }
        Err(GatewayError::Invalid { message, .. }) => {
            let failure = ChargeFailure {
                code: "invalid_request".into(),
                message,
                payment_intent_id: None,
            };
            mark_failed(state, &mut tx, &a, &failure, now)
                .await
                .map_err(transient)?;
        }
        Err(GatewayError::NotConfigured) => {
            let failure = ChargeFailure {
                code: "gateway_not_configured".into(),
                message: "no payment gateway is configured".into(),
                payment_intent_id: None,
            };
            mark_failed(state, &mut tx, &a, &failure, now)
                .await
                .map_err(transient)?;
        }
        Err(GatewayError::Unknown(message)) => {
            tracing::warn!(
                charge_attempt_id = %a.id,
                invoice_id = a.invoice_id.as_deref().unwrap_or(""),
                attempt = a.attempt,
                error = %message,
                "charge outcome unknown; it will be asked again under the same key"
            );
            mark_unknown(&mut tx, &a, &message, now)
                .await
                .map_err(transient)?;
        }
    }
    tx.commit().await.map_err(transient)?;
    counted.record();
    Ok(())
}

async fn mark_unknown(
    tx: &mut Tx,
    a: &AttemptRow,
    message: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => {
        sqlx::query("UPDATE charge_attempts SET status = 'unknown', failure_message = $2 WHERE id = $1")
            .bind(&a.id)
            .bind(message)
            .execute(&mut *c)
            .await?;
    });
    queue::push(tx, &resolve_job(a)).await?;
    Ok(())
}

/// Records the payment a succeeded charge made (once, whoever tells first) and closes the attempt.
pub async fn record_success(
    _state: &State,
    tx: &mut Tx,
    a: &AttemptRow,
    r: &ChargeResult,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let card: Option<(String, String)> = match &a.payment_method_id {
        Some(pm) => on_tx!(tx, c => {
            sqlx::query_as("SELECT brand, last4 FROM payment_methods WHERE id = $1")
                .bind(pm)
                .fetch_optional(&mut *c)
                .await?
        }),
        None => None,
    };
    let currency = if r.currency.is_empty() {
        a.currency.clone()
    } else {
        r.currency.clone()
    };
    let received = if r.amount_received > 0 {
        r.amount_received
    } else {
        a.amount
    };
    let payment = payments::record(
        tx,
        &NewPayment {
            customer_id: &a.customer_id,
            invoice_id: a.invoice_id.as_deref(),
            amount: received,
            currency: &currency,
            gateway: "stripe",
            gateway_payment_id: Some(&r.payment_intent_id),
            method: "card",
            reference: None,
            brand: card.as_ref().map(|c| c.0.as_str()),
            last4: card.as_ref().map(|c| c.1.as_str()),
            at: now,
            unapplied: false,
        },
        now,
    )
    .await?;
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET status = 'succeeded', gateway_payment_id = $2, finished_at = $3, \
             decline_code = NULL, failure_message = NULL WHERE id = $1",
        )
        .bind(&a.id)
        .bind(&r.payment_intent_id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    tracing::info!(
        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
        customer_id = %a.customer_id,
        attempt = a.attempt,
        payment_id = %payment.id(),
        "charge succeeded"
    );
    Ok(())
}

/// Closes a failed attempt and, for automatic ones, walks the dunning schedule: the next attempt
/// on its date, or — after a hard decline or the last retry — the invoice is past due.
pub async fn mark_failed(
    state: &State,
    tx: &mut Tx,
    a: &AttemptRow,
    f: &ChargeFailure,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => {
        sqlx::query(
            "UPDATE charge_attempts SET status = 'failed', decline_code = $2, failure_message = $3, \
             gateway_payment_id = COALESCE($4, gateway_payment_id), finished_at = $5, \
             started_at = COALESCE(started_at, $5) WHERE id = $1",
        )
        .bind(&a.id)
        .bind(&f.code)
        .bind(&f.message)
        .bind(&f.payment_intent_id)
        .bind(ms(now))
        .execute(&mut *c)
        .await?;
    });
    tracing::info!(
        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
        customer_id = %a.customer_id,
        attempt = a.attempt,
        decline_code = %f.code,
        "charge failed"
    );
    let Some(invoice_id) = a.invoice_id.as_deref() else {
        return Ok(());
    };
    if !a.automatic {
        return Ok(());
    }
    let failures: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM charge_attempts WHERE invoice_id = $1 AND automatic AND status = 'failed'",
        )
        .bind(invoice_id)
        .fetch_one(&mut *c)
        .await?
    });
    let hard = is_hard_decline(&f.code, None);
    let next = if hard {
        None
    } else {
        next_attempt_at(
            &state.config.billing.retry_days,
            failures as usize,
            from_ms(a.scheduled_at),
        )
    };
    match next {
        Some(at) => {
            let due: i64 = on_tx!(tx, c => {
                sqlx::query_scalar("SELECT amount_due FROM invoices WHERE id = $1")
                    .bind(invoice_id)
                    .fetch_one(&mut *c)
                    .await?
            });
            let next_attempt = insert_attempt(
                tx,
                &NewAttempt {
                    invoice_id: Some(invoice_id),
                    customer_id: &a.customer_id,
                    amount: due,
                    currency: &a.currency,
                    payment_method_id: None,
                    automatic: true,
                    scheduled_at: at,
                    started: false,
                },
                now,
            )
            .await?;
            on_tx!(tx, c => {
                sqlx::query("UPDATE charge_attempts SET next_attempt_at = $2 WHERE id = $1")
                    .bind(&a.id)
                    .bind(ms(at))
                    .execute(&mut *c)
                    .await?;
            });
            if at <= now {
                queue::push(
                    tx,
                    &Job::ChargeInvoice {
                        invoice_id: invoice_id.to_string(),
                        attempt: next_attempt.attempt,
                    },
                )
                .await?;
            }
            crate::outbox::payment_failed(tx, invoice_id, a.attempt, Some(at), now).await?;
        }
        None => {
            let sql = format!(
                "UPDATE invoices SET status = 'past_due', updated_at = $2 WHERE id = $1 AND status IN {COLLECTIBLE}"
            );
            on_tx!(tx, c => {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(invoice_id)
                    .bind(ms(now))
                    .execute(&mut *c)
                    .await?;
            });
            tracing::warn!(
                invoice_id,
                customer_id = %a.customer_id,
                hard_decline = hard,
                decline_code = %f.code,
                "dunning ended; the invoice is past due"
            );
            crate::outbox::payment_failed(tx, invoice_id, a.attempt, None, now).await?;
            crate::outbox::final_notice(tx, invoice_id, now).await?;
        }
    }
    Ok(())
}

/// Due charge work for the sweep: scheduled attempts whose time has come, unknown outcomes, and
/// attempts that were sent but never recorded (their sender died) once they are older than any
/// request could still be running. An attempt in flight is left alone, so the sweep never sends a
/// second copy of a request that is still waiting for its answer.
pub async fn due_jobs(
    db: &Db,
    config: &crate::config::Config,
    now: DateTime<Utc>,
) -> Result<Vec<Job>, sqlx::Error> {
    let in_flight_for = (config.stripe.request_timeout_seconds as i64 + 30) * 1000;
    type Due = (Option<String>, i64, String, String, Option<i64>);
    let rows: Vec<Due> = on_db!(db, p => {
        sqlx::query_as(
            "SELECT invoice_id, attempt, id, status, started_at FROM charge_attempts \
             WHERE (status = 'pending' AND started_at IS NULL AND scheduled_at <= $1) \
             OR status = 'unknown' \
             OR (status = 'pending' AND started_at IS NOT NULL AND COALESCE(sent_wall_ms, 0) < $2) \
             ORDER BY scheduled_at LIMIT 5000",
        )
        .bind(ms(now))
        .bind(wall_ms() - in_flight_for)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(invoice_id, attempt, id, status, started_at)| {
            match (invoice_id, status.as_str(), started_at) {
                (Some(invoice_id), "pending", None) => Job::ChargeInvoice {
                    invoice_id,
                    attempt,
                },
                (Some(invoice_id), _, _) => Job::ResolveCharge {
                    invoice_id,
                    attempt,
                },
                (None, _, _) => Job::ResolveBalanceCharge { charge_id: id },
            }
        })
        .collect())
}

/// Invoices owed a late fee, for the sweep (only when late fees are configured).
pub async fn late_fee_jobs(
    db: &Db,
    config: &crate::config::Config,
    now: DateTime<Utc>,
) -> Result<Vec<Job>, sqlx::Error> {
    let b = &config.billing;
    if b.late_fee_amount.is_empty() && b.late_fee_percent.is_empty() {
        return Ok(Vec::new());
    }
    let cutoff = now - chrono::Duration::days(i64::from(b.late_fee_days));
    let sql = format!(
        "SELECT id FROM invoices WHERE late_fee_at IS NULL AND status IN {COLLECTIBLE} AND amount_due > 0 \
         AND kind <> 'late_fee' AND due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT 5000"
    );
    let ids: Vec<String> = on_db!(db, p => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(ms(cutoff))
            .fetch_all(p)
            .await?
    });
    Ok(ids
        .into_iter()
        .map(|invoice_id| Job::ApplyLateFee { invoice_id })
        .collect())
}

/// The apply_late_fee job: once per invoice, a `late_fee` line for the configured fee, added to the
/// total and the amount due, and recorded in the ledger.
pub async fn apply_late_fee(state: &State, invoice_id: &str) -> Result<(), JobError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await.map_err(transient)?;
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT customer_id, currency, amount_due, due_at, number FROM invoices WHERE id = $1 \
         AND late_fee_at IS NULL AND status IN {COLLECTIBLE} AND amount_due > 0{lock}"
    );
    type Overdue = (String, String, i64, Option<i64>, Option<String>);
    let row: Option<Overdue> = on_tx!(&mut tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(transient)?
    });
    let Some((customer_id, currency, due, Some(due_at), number)) = row else {
        return Ok(());
    };
    let days = i64::from(state.config.billing.late_fee_days);
    if from_ms(due_at) + chrono::Duration::days(days) > now {
        return Ok(());
    }
    let cur = Currency::parse(&currency)
        .map_err(|e| JobError::permanent(format!("invoice {invoice_id}: {e}")))?;
    let Some(fee) = state.config.billing.late_fee(cur) else {
        return Ok(());
    };
    let fee = fee
        .amount(due)
        .map_err(|e| JobError::permanent(format!("late fee for {invoice_id}: {e}")))?;
    if fee <= 0 {
        return Ok(());
    }
    on_tx!(&mut tx, c => {
        sqlx::query(
            "INSERT INTO invoice_lines (id, invoice_id, position, kind, description, quantity, unit_amount, amount, tax_rate) \
             VALUES ($1, $2, (SELECT COALESCE(MAX(position), -1) + 1 FROM invoice_lines WHERE invoice_id = $2), \
             'late_fee', 'Late fee', '1', $3, $3, NULL)",
        )
        .bind(new_id(prefix::INVOICE_LINE))
        .bind(invoice_id)
        .bind(fee)
        .execute(&mut *c)
        .await
        .map_err(transient)?;
        sqlx::query(
            "UPDATE invoices SET subtotal = subtotal + $2, total = total + $2, amount_due = amount_due + $2, \
             late_fee_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(invoice_id)
        .bind(fee)
        .bind(ms(now))
        .execute(&mut *c)
        .await
        .map_err(transient)?;
    });
    payments::ledger(
        &mut tx,
        &customer_id,
        &currency,
        "receivable",
        "late_fee",
        fee,
        Some(invoice_id),
        None,
        None,
        number.as_deref(),
        now,
    )
    .await
    .map_err(transient)?;
    tx.commit().await.map_err(transient)?;
    tracing::info!(invoice_id, fee, "late fee added");
    Ok(())
}
