//! What a stored event does to the books. Called by the process_event job inside one transaction
//! per event; returns whether the event was applied or deliberately ignored (and why).
//!
//! Every effect is keyed so that applying an event twice, or hearing the same fact from our own
//! charge reply and from its webhook, changes nothing the second time: payments are unique on the
//! PaymentIntent, refunds on the gateway's refund id, attempts close only once.

use chrono::{DateTime, Utc};
use serde_json::Value;
use settled_jobs::error::JobError;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::money::{Currency, Money};

use crate::app::State;
use crate::charges::{self, AttemptRow, ChargeFailure};
use crate::payments::{self, NewPayment, Recorded};
use crate::store::{Tx, ms, on_tx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Processed,
    /// Stored but nothing to do (unknown type, unknown invoice ...): the reason is shown to operators.
    Ignored(String),
}

fn db(e: sqlx::Error) -> JobError {
    JobError::Transient(anyhow::Error::new(e).context("database error"))
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The id of an expandable field: `"ch_1"` or `{"id": "ch_1", ...}`.
fn id_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// Applies one Stripe event (the parsed JSON body) in the caller's transaction.
pub async fn stripe_event(
    state: &State,
    tx: &mut Tx,
    event: &Value,
) -> Result<EventOutcome, JobError> {
    let kind = text(event, "type").unwrap_or("");
    let object = &event["data"]["object"];
    let now = state.clock.now();
    match kind {
        "payment_intent.succeeded" => intent_succeeded(state, tx, object, now).await,
        "payment_intent.payment_failed" => intent_failed(state, tx, object, now).await,
        "charge.refunded" => charge_refunded(state, tx, object, now).await,
        "charge.dispute.created" | "charge.dispute.closed" => {
            dispute(tx, object, kind == "charge.dispute.created", now).await
        }
        other => Ok(EventOutcome::Ignored(format!(
            "event type {other} is not handled"
        ))),
    }
}

/// Our attempt a PaymentIntent belongs to, from its metadata.
async fn attempt_of(tx: &mut Tx, pi: &Value) -> Result<Option<AttemptRow>, JobError> {
    let meta = &pi["metadata"];
    let attempt: Option<i64> = text(meta, "attempt").and_then(|a| a.parse().ok());
    let found = match (text(meta, "invoice_id"), text(meta, "charge_id"), attempt) {
        (Some(invoice), _, Some(n)) => charges::find_attempt(tx, Some(invoice), n, "")
            .await
            .map_err(db)?,
        (None, Some(charge), _) => charges::find_attempt(tx, None, 0, charge)
            .await
            .map_err(db)?,
        _ => None,
    };
    Ok(found)
}

/// A customer of ours by the gateway's customer id.
async fn customer_by_gateway_id(
    tx: &mut Tx,
    gateway_customer: &str,
) -> Result<Option<String>, JobError> {
    let found: Option<String> = on_tx!(tx, c => {
        sqlx::query_scalar("SELECT id FROM customers WHERE gateway_customer_id = $1 ORDER BY created_at LIMIT 1")
            .bind(gateway_customer)
            .fetch_optional(&mut *c)
            .await
            .map_err(db)?
    });
    Ok(found)
}

async fn intent_succeeded(
    state: &State,
    tx: &mut Tx,
    pi: &Value,
    now: DateTime<Utc>,
) -> Result<EventOutcome, JobError> {
    let Some(pi_id) = text(pi, "id") else {
        return Ok(EventOutcome::Ignored("the PaymentIntent has no id".into()));
    };
    let amount = pi["amount_received"].as_i64().unwrap_or(0);
    let currency = text(pi, "currency").unwrap_or("").to_uppercase();
    if amount <= 0 || Currency::parse(&currency).is_err() {
        return Ok(EventOutcome::Ignored(format!(
            "PaymentIntent {pi_id} received no usable amount"
        )));
    }
    if let Some(attempt) = attempt_of(tx, pi).await? {
        // Ours: the same recording as the charge reply, so whichever comes second finds it done.
        if attempt.status != "succeeded" {
            let result = settled_jobs::gateway::ChargeResult {
                payment_intent_id: pi_id.to_string(),
                status: settled_jobs::gateway::ChargeStatus::Succeeded,
                amount_received: amount,
                currency: currency.clone(),
                decline_code: None,
                failure_message: None,
            };
            charges::record_success(state, tx, &attempt, &result, now)
                .await
                .map_err(db)?;
        }
        return Ok(EventOutcome::Processed);
    }
    // Not one of our attempts: a portal's "Pay Now", or a payment made at the gateway directly.
    let invoice_id = text(&pi["metadata"], "invoice_id");
    let (customer_id, invoice_id) = match invoice_id {
        Some(inv) => {
            let owner: Option<String> = on_tx!(tx, c => {
                sqlx::query_scalar("SELECT customer_id FROM invoices WHERE id = $1")
                    .bind(inv)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(db)?
            });
            match owner {
                Some(owner) => (owner, Some(inv)),
                None => {
                    return Ok(EventOutcome::Ignored(format!(
                        "PaymentIntent {pi_id} names invoice {inv}, which is unknown"
                    )));
                }
            }
        }
        None => {
            let by_meta = text(&pi["metadata"], "customer_id").map(str::to_string);
            let customer = match (by_meta, id_of(pi, "customer")) {
                (Some(c), _) => Some(c),
                (None, Some(g)) => customer_by_gateway_id(tx, g).await?,
                (None, None) => None,
            };
            match customer {
                Some(c) => (c, None),
                None => {
                    return Ok(EventOutcome::Ignored(format!(
                        "PaymentIntent {pi_id} names no invoice and no known customer"
                    )));
                }
            }
        }
    };
    let recorded = payments::record(
        tx,
        &NewPayment {
            customer_id: &customer_id,
            invoice_id,
            amount,
            currency: &currency,
            gateway: "stripe",
            gateway_payment_id: Some(pi_id),
            method: "card",
            reference: text(pi, "description"),
            brand: None,
            last4: None,
            at: now,
            unapplied: invoice_id.is_none(),
        },
        now,
    )
    .await
    .map_err(db)?;
    if let Recorded::Existing(id) = recorded {
        tracing::debug!(payment_id = %id, "payment already recorded");
    }
    Ok(EventOutcome::Processed)
}

/// Events that arrived before the payment they are about (a refund or dispute overtaking its
/// payment) wait as `received`; once the payment is recorded they run again at once.
pub async fn wake_waiting(tx: &mut Tx, payment_intent_id: &str) -> Result<(), sqlx::Error> {
    let pattern = format!("%\"{payment_intent_id}\"%");
    let waiting: Vec<(String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "UPDATE webhook_events SET replays = replays + 1, status = 'received', error = NULL \
             WHERE source = 'stripe' AND status IN ('received', 'failed') \
             AND type IN ('charge.refunded', 'charge.dispute.created', 'charge.dispute.closed') \
             AND body LIKE $1 RETURNING id, replays",
        )
        .bind(&pattern)
        .fetch_all(&mut *c)
        .await?
    });
    for (event_id, round) in waiting {
        crate::store::queue::enqueue_round(
            tx,
            &settled_jobs::job::Job::ProcessEvent { event_id },
            round as u32,
            crate::store::queue::default_max_attempts(),
        )
        .await?;
    }
    Ok(())
}

async fn intent_failed(
    state: &State,
    tx: &mut Tx,
    pi: &Value,
    now: DateTime<Utc>,
) -> Result<EventOutcome, JobError> {
    let Some(pi_id) = text(pi, "id") else {
        return Ok(EventOutcome::Ignored("the PaymentIntent has no id".into()));
    };
    let Some(attempt) = attempt_of(tx, pi).await? else {
        return Ok(EventOutcome::Ignored(format!(
            "PaymentIntent {pi_id} is not a charge attempt of this daemon"
        )));
    };
    // A failure never undoes a success: the gateway does not fail a succeeded PaymentIntent, so
    // a failure arriving after the success is old news.
    let paid: Option<String> = on_tx!(tx, c => {
        sqlx::query_scalar("SELECT id FROM payments WHERE gateway = 'stripe' AND gateway_payment_id = $1")
            .bind(pi_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db)?
    });
    if paid.is_some() || attempt.status == "succeeded" || attempt.status == "failed" {
        return Ok(EventOutcome::Processed);
    }
    let err = &pi["last_payment_error"];
    let failure = ChargeFailure {
        code: text(err, "decline_code")
            .or_else(|| text(err, "code"))
            .unwrap_or("card_declined")
            .to_string(),
        message: text(err, "message")
            .unwrap_or("the charge did not go through")
            .to_string(),
        payment_intent_id: Some(pi_id.to_string()),
    };
    charges::mark_failed(state, tx, &attempt, &failure, now)
        .await
        .map_err(db)?;
    Ok(EventOutcome::Processed)
}

async fn charge_refunded(
    state: &State,
    tx: &mut Tx,
    charge: &Value,
    now: DateTime<Utc>,
) -> Result<EventOutcome, JobError> {
    let Some(pi_id) = id_of(charge, "payment_intent") else {
        return Ok(EventOutcome::Ignored(
            "the refunded charge has no PaymentIntent".into(),
        ));
    };
    let lock = tx.lock_rows();
    let sql = format!(
        "SELECT id, customer_id, invoice_id, amount, amount_refunded, currency FROM payments \
         WHERE gateway = 'stripe' AND gateway_payment_id = $1{lock}"
    );
    type PaymentFacts = (String, String, Option<String>, i64, i64, String);
    let payment: Option<PaymentFacts> = on_tx!(tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(pi_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db)?
    });
    let Some((payment_id, customer_id, _, amount, already, currency)) = payment else {
        // The refund overtook its payment: try again once the payment is recorded.
        return Err(JobError::Transient(anyhow::anyhow!(
            "the payment of PaymentIntent {pi_id} is not recorded yet"
        )));
    };
    let total_refunded = charge["amount_refunded"].as_i64().unwrap_or(0).min(amount);
    let mut refunds: Vec<(String, i64)> = charge["refunds"]["data"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|r| Some((text(r, "id")?.to_string(), r["amount"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default();
    if refunds.is_empty() && total_refunded > already {
        // An event without the refund list: one refund for the difference, keyed by the charge.
        let key = format!("{}:{total_refunded}", text(charge, "id").unwrap_or(pi_id));
        refunds.push((key, total_refunded - already));
    }
    let to_credit = state.config.billing.refunds == "credit";
    let mut added = 0i64;
    for (refund_id, refund_amount) in refunds {
        if refund_amount <= 0 || already + added + refund_amount > amount {
            continue;
        }
        let id = new_id(prefix::REFUND);
        let inserted = on_tx!(tx, c => {
            sqlx::query(
                "INSERT INTO refunds (id, payment_id, amount, currency, gateway, gateway_refund_id, to_credit, at) \
                 VALUES ($1, $2, $3, $4, 'stripe', $5, $6, $7) ON CONFLICT (gateway, gateway_refund_id) DO NOTHING",
            )
            .bind(&id)
            .bind(&payment_id)
            .bind(refund_amount)
            .bind(&currency)
            .bind(&refund_id)
            .bind(to_credit)
            .bind(ms(now))
            .execute(&mut *c)
            .await
            .map_err(db)?
            .rows_affected()
        });
        if inserted == 0 {
            continue;
        }
        added += refund_amount;
        reverse_payment(
            tx,
            &payment_id,
            &customer_id,
            &currency,
            refund_amount,
            to_credit,
            &id,
            now,
        )
        .await
        .map_err(db)?;
        crate::outbox::refund(tx, &id, now).await.map_err(db)?;
    }
    if added > 0 {
        on_tx!(tx, c => {
            sqlx::query(
                "UPDATE payments SET amount_refunded = amount_refunded + $2, \
                 status = CASE WHEN disputed THEN 'disputed' WHEN amount_refunded + $2 >= amount THEN 'refunded' \
                 ELSE 'partially_refunded' END WHERE id = $1",
            )
            .bind(&payment_id)
            .bind(added)
            .execute(&mut *c)
            .await
            .map_err(db)?;
        });
        tracing::info!(payment_id = %payment_id, refunded = added, "refund recorded");
    }
    Ok(EventOutcome::Processed)
}

/// Undoes `amount` of a payment: by default the invoices it paid reopen (newest allocation first);
/// with `billing.refunds = "credit"` the invoices stay settled and the customer is given the
/// amount as credit instead.
#[allow(clippy::too_many_arguments)]
async fn reverse_payment(
    tx: &mut Tx,
    payment_id: &str,
    customer_id: &str,
    currency: &str,
    amount: i64,
    to_credit: bool,
    refund_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if to_credit {
        payments::add_credit(
            tx,
            customer_id,
            currency,
            amount,
            "refund",
            Some(refund_id),
            &format!("Refund {refund_id} of payment {payment_id} kept as credit"),
            now,
        )
        .await?;
        return Ok(());
    }
    let allocations: Vec<(String, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.invoice_id, a.amount FROM payment_allocations a JOIN invoices i ON i.id = a.invoice_id \
             WHERE a.payment_id = $1 ORDER BY i.due_at DESC, i.id DESC",
        )
        .bind(payment_id)
        .fetch_all(&mut *c)
        .await?
    });
    let mut left = amount;
    for (invoice_id, allocated) in allocations {
        if left == 0 {
            break;
        }
        let back = left.min(allocated);
        on_tx!(tx, c => {
            sqlx::query(
                "UPDATE invoices SET amount_paid = amount_paid - $2, amount_due = amount_due + $2, \
                 status = CASE WHEN status IN ('void', 'uncollectible') THEN status \
                 WHEN amount_paid - $2 > 0 THEN 'partially_paid' ELSE 'open' END, \
                 paid_at = NULL, updated_at = $3 WHERE id = $1",
            )
            .bind(&invoice_id)
            .bind(back)
            .bind(ms(now))
            .execute(&mut *c)
            .await?;
            if back == allocated {
                sqlx::query("DELETE FROM payment_allocations WHERE payment_id = $1 AND invoice_id = $2")
                    .bind(payment_id)
                    .bind(&invoice_id)
                    .execute(&mut *c)
                    .await?;
            } else {
                sqlx::query("UPDATE payment_allocations SET amount = amount - $3 WHERE payment_id = $1 AND invoice_id = $2")
                    .bind(payment_id)
                    .bind(&invoice_id)
                    .bind(back)
                    .execute(&mut *c)
                    .await?;
            }
        });
        payments::ledger(
            tx,
            customer_id,
            currency,
            "receivable",
            "refund",
            back,
            Some(&invoice_id),
            Some(payment_id),
            Some(refund_id),
            None,
            now,
        )
        .await?;
        left -= back;
    }
    if left > 0 {
        // The rest of the payment had become credit (an overpayment): the refund takes it back.
        payments::ledger(
            tx,
            customer_id,
            currency,
            "credit",
            "refund",
            -left,
            None,
            Some(payment_id),
            Some(refund_id),
            None,
            now,
        )
        .await?;
        on_tx!(tx, c => {
            sqlx::query(
                "UPDATE credit_notes SET remaining = remaining - $2 WHERE source_id = $1 AND source = 'overpayment' AND remaining >= $2",
            )
            .bind(payment_id)
            .bind(left)
            .execute(&mut *c)
            .await?;
        });
    }
    Ok(())
}

async fn dispute(
    tx: &mut Tx,
    dispute: &Value,
    opened: bool,
    _now: DateTime<Utc>,
) -> Result<EventOutcome, JobError> {
    let pi = id_of(dispute, "payment_intent");
    let charge = id_of(dispute, "charge");
    let Some(pi_id) = pi else {
        return Ok(EventOutcome::Ignored(format!(
            "dispute on charge {} names no PaymentIntent",
            charge.unwrap_or("?")
        )));
    };
    let status = text(dispute, "status").unwrap_or("");
    let sql = if opened {
        "UPDATE payments SET disputed = TRUE, status = 'disputed' WHERE gateway = 'stripe' AND gateway_payment_id = $1"
    } else if status == "won" || status == "warning_closed" {
        "UPDATE payments SET disputed = FALSE, status = CASE WHEN amount_refunded >= amount THEN 'refunded' \
         WHEN amount_refunded > 0 THEN 'partially_refunded' ELSE 'succeeded' END \
         WHERE gateway = 'stripe' AND gateway_payment_id = $1"
    } else {
        // Lost: the money went back to the cardholder; the payment stays marked disputed.
        "UPDATE payments SET disputed = TRUE, status = 'disputed' WHERE gateway = 'stripe' AND gateway_payment_id = $1"
    };
    let changed = on_tx!(tx, c => {
        sqlx::query(sql)
            .bind(pi_id)
            .execute(&mut *c)
            .await
            .map_err(db)?
            .rows_affected()
    });
    if changed == 0 {
        return Err(JobError::Transient(anyhow::anyhow!(
            "the payment of PaymentIntent {pi_id} is not recorded yet"
        )));
    }
    let amount = dispute["amount"].as_i64().unwrap_or(0);
    if opened {
        tracing::warn!(
            payment_intent = pi_id,
            amount,
            reason = text(dispute, "reason").unwrap_or(""),
            "payment disputed; respond at the gateway"
        );
    } else {
        tracing::warn!(payment_intent = pi_id, status, "dispute closed");
    }
    Ok(EventOutcome::Processed)
}

/// Applies one Standard Webhooks event from `source` in the caller's transaction:
/// `payment.received` `{invoice_id | invoice_number, amount, currency, reference}` records a
/// payment (unique on the event id within the source).
pub async fn standard_event(
    state: &State,
    tx: &mut Tx,
    source: &str,
    event: &Value,
) -> Result<EventOutcome, JobError> {
    let kind = text(event, "type").unwrap_or("");
    if kind != "payment.received" {
        return Ok(EventOutcome::Ignored(format!(
            "event type {kind} is not handled"
        )));
    }
    let data = &event["data"];
    let event_id = text(event, "id")
        .or_else(|| text(data, "id"))
        .or_else(|| text(data, "reference"))
        .unwrap_or("");
    let now = state.clock.now();
    let invoice: Option<(String, String)> =
        match (text(data, "invoice_id"), text(data, "invoice_number")) {
            (Some(id), _) => on_tx!(tx, c => {
                sqlx::query_as("SELECT id, customer_id FROM invoices WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(db)?
            }),
            (None, Some(number)) => on_tx!(tx, c => {
                sqlx::query_as("SELECT id, customer_id FROM invoices WHERE number = $1")
                    .bind(number)
                    .fetch_optional(&mut *c)
                    .await
                    .map_err(db)?
            }),
            (None, None) => {
                return Ok(EventOutcome::Ignored(
                    "payment.received names no invoice_id or invoice_number".into(),
                ));
            }
        };
    let Some((invoice_id, customer_id)) = invoice else {
        return Ok(EventOutcome::Ignored(
            "payment.received names an unknown invoice".into(),
        ));
    };
    let currency = text(data, "currency").unwrap_or("").to_uppercase();
    let Ok(cur) = Currency::parse(&currency) else {
        return Ok(EventOutcome::Ignored(format!(
            "payment.received has no valid currency ({currency:?})"
        )));
    };
    let amount = match data.get("amount") {
        Some(Value::String(s)) => Money::parse(s, cur).ok().map(|m| m.minor),
        _ => None,
    };
    let Some(amount) = amount.filter(|a| *a > 0) else {
        return Ok(EventOutcome::Ignored(
            "payment.received needs a positive amount as a decimal string".into(),
        ));
    };
    let key = if event_id.is_empty() {
        None
    } else {
        Some(event_id)
    };
    payments::record(
        tx,
        &NewPayment {
            customer_id: &customer_id,
            invoice_id: Some(&invoice_id),
            amount,
            currency: cur.code(),
            gateway: source,
            gateway_payment_id: key,
            method: "bank_transfer",
            reference: text(data, "reference"),
            brand: None,
            last4: None,
            at: now,
            unapplied: false,
        },
        now,
    )
    .await
    .map_err(db)?;
    Ok(EventOutcome::Processed)
}
