//! What a stored gateway event does to the books, and the process_event job that applies one
//! inside one transaction. Every effect is keyed so that applying an event twice, or hearing the
//! same fact from our own charge reply and from its webhook, changes nothing the second time:
//! payments are unique on the gateway payment, refunds on the gateway's refund id, attempts close
//! only once.

use chrono::{DateTime, Utc};
use settled_jobs::event::{
    AttemptRef, Dispute, DisputePhase, GatewayEvent, InvoiceRef, Parsed, PaymentFailed,
    PaymentReceived, PaymentSucceeded,
};
use settled_jobs::gateway::{ChargeResult, ChargeStatus};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::job::WorkKind;
use settled_jobs::money::{Currency, Money};
use settled_jobs::status::{AttemptStatus, EventStatus};

use super::dunning::{self, ChargeFailure};
use super::payments::{self, NewPayment, Recorded};
use super::{Billing, Error, Result, charges, refunds};
use crate::store::charge_attempts::{self as attempts, AttemptRow};
use crate::store::refunds as refund_rows;
use crate::store::{
    Tx, customers, invoices, ms, payments as payment_rows, wall_ms, webhook_events, work_failures,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Processed,
    /// Stored but nothing to do (unknown type, unknown invoice ...): the reason is shown to
    /// operators.
    Ignored(String),
}

/// Events one batch takes at most.
const BATCH: i64 = 200;

/// One batch of stored events: claims up to [`BATCH`] unprocessed ones (oldest first, leaving
/// out those set aside and those another batch holds) and applies each in a savepoint of its own,
/// all in one transaction, so a burst of deliveries costs a few commits. An event that cannot be
/// applied yet (its payment is not recorded) waits and is set aside; one that never can be (its
/// body is unreadable) is `failed` with the reason. Returns how many it took.
pub async fn drain(b: &Billing) -> Result<usize> {
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let rows = webhook_events::claim(&mut tx, wall, b.batch_size(BATCH as usize) as i64).await?;
    let now = ms(b.now());
    let mut done: Vec<&str> = Vec::new();
    let mut counted: Vec<(&str, &'static str)> = Vec::with_capacity(rows.len());
    for row in &rows {
        tx.savepoint().await?;
        match apply_row(b, &mut tx, row).await {
            Ok(outcome) => {
                let (status, reason) = match outcome {
                    EventOutcome::Processed => (EventStatus::Processed, None),
                    EventOutcome::Ignored(reason) => (EventStatus::Ignored, Some(reason)),
                };
                webhook_events::set_outcome(
                    &mut tx,
                    &row.id,
                    status.as_str(),
                    reason.as_deref(),
                    now,
                )
                .await?;
                tx.release_savepoint().await?;
                done.push(&row.id);
                counted.push((&row.kind, status.as_str()));
                tracing::info!(source = %row.source, kind = %row.kind, event = %row.id, outcome = status.as_str(), "webhook event applied");
            }
            // The database itself failed: the whole batch is tried again later.
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e @ (Error::WaitingFor(_) | Error::Later(_) | Error::Store(_))) => {
                tx.rollback_to_savepoint().await?;
                if let Error::WaitingFor(pi) = &e {
                    webhook_events::wait_for(&mut tx, &row.id, pi).await?;
                }
                let tries = work_failures::set_aside(
                    &mut tx,
                    WorkKind::Events,
                    &row.id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::info!(source = %row.source, kind = %row.kind, event = %row.id, tries, reason = %e, "webhook event waits");
            }
            Err(e) => {
                // Nothing of the failed attempt stays; the failure itself is recorded.
                tx.rollback_to_savepoint().await?;
                let message = e.to_string();
                webhook_events::set_outcome(
                    &mut tx,
                    &row.id,
                    EventStatus::Failed.as_str(),
                    Some(&message),
                    now,
                )
                .await?;
                done.push(&row.id);
                counted.push((&row.kind, "failed"));
                tracing::error!(source = %row.source, kind = %row.kind, event = %row.id, error = %message, "webhook event failed");
            }
        }
    }
    work_failures::clear(&mut tx, WorkKind::Events, &done).await?;
    tx.commit().await?;
    for (kind, outcome) in counted {
        crate::metrics::event_processed(kind, outcome);
    }
    Ok(rows.len())
}

/// Parses one stored event with its source's adapter and applies it.
async fn apply_row(
    b: &Billing,
    tx: &mut Tx,
    row: &webhook_events::EventRow,
) -> Result<EventOutcome> {
    match serde_json::from_str::<serde_json::Value>(&row.body) {
        Ok(body) => match crate::gateway::parse_event(&row.source, &body, &row.event_id) {
            Parsed::Event(event) => apply(b, tx, &row.source, &event).await,
            Parsed::Ignored(reason) => Ok(EventOutcome::Ignored(reason)),
            Parsed::Malformed(reason) => Err(Error::permanent(reason)),
        },
        Err(e) => Err(Error::permanent(format!(
            "the stored body is not JSON: {e}"
        ))),
    }
}

/// Applies one event from `source` in the caller's transaction.
pub async fn apply(
    b: &Billing,
    tx: &mut Tx,
    source: &str,
    event: &GatewayEvent,
) -> Result<EventOutcome> {
    let now = b.now();
    match event {
        GatewayEvent::PaymentSucceeded(p) => succeeded(tx, source, p, now).await,
        GatewayEvent::PaymentFailed(f) => failed(b, tx, source, f, now).await,
        GatewayEvent::Refunded(r) => {
            refunds::refunded(b, tx, source, r, now).await?;
            Ok(EventOutcome::Processed)
        }
        GatewayEvent::Dispute(d) => dispute(tx, source, d, now).await,
        GatewayEvent::PaymentReceived(p) => received(tx, source, p, now).await,
    }
}

/// Our attempt a gateway payment belongs to, locked.
async fn attempt_of(tx: &mut Tx, r: &Option<AttemptRef>) -> Result<Option<AttemptRow>> {
    Ok(match r {
        Some(AttemptRef::Invoice {
            invoice_id,
            attempt,
        }) => attempts::lock(tx, Some(invoice_id), *attempt, "").await?,
        Some(AttemptRef::Balance { charge_id }) => attempts::lock(tx, None, 0, charge_id).await?,
        None => None,
    })
}

async fn succeeded(
    tx: &mut Tx,
    source: &str,
    p: &PaymentSucceeded,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    let pi_id = p.gateway_payment_id.as_str();
    if let Some(attempt) = attempt_of(tx, &p.attempt).await? {
        // Ours: the same recording as the charge reply, so whichever comes second finds it done.
        if attempt.status() != AttemptStatus::Succeeded {
            let result = ChargeResult {
                payment_intent_id: pi_id.to_string(),
                status: ChargeStatus::Succeeded,
                amount_received: p.amount,
                currency: p.currency.clone(),
                decline_code: None,
                failure_message: None,
            };
            charges::record_success(tx, source, &attempt, &result, now).await?;
        }
        return Ok(EventOutcome::Processed);
    }
    // Not one of our attempts: a portal's "Pay Now", or a payment made at the gateway directly.
    let (customer_id, invoice_id) = match &p.invoice_id {
        Some(inv) => match invoices::get_in(tx, inv).await? {
            Some(row) => (row.customer_id, Some(inv.as_str())),
            None => {
                return Ok(EventOutcome::Ignored(format!(
                    "PaymentIntent {pi_id} names invoice {inv}, which is unknown"
                )));
            }
        },
        None => {
            let customer = match (&p.customer_id, &p.gateway_customer_id) {
                (Some(c), _) => Some(c.clone()),
                (None, Some(g)) => customers::by_gateway_customer(tx, g).await?,
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
            amount: p.amount,
            currency: &p.currency,
            gateway: source,
            gateway_payment_id: Some(pi_id),
            method: "card",
            reference: p.description.as_deref(),
            brand: None,
            last4: None,
            at: now,
            unapplied: invoice_id.is_none(),
        },
        now,
    )
    .await?;
    if let Recorded::Existing(id) = recorded {
        tracing::debug!(payment_id = %id, "payment already recorded");
    }
    Ok(EventOutcome::Processed)
}

async fn failed(
    b: &Billing,
    tx: &mut Tx,
    source: &str,
    f: &PaymentFailed,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    let pi_id = f.gateway_payment_id.as_str();
    let Some(attempt) = attempt_of(tx, &f.attempt).await? else {
        return Ok(EventOutcome::Ignored(format!(
            "PaymentIntent {pi_id} is not a charge attempt of this daemon"
        )));
    };
    // A failure never undoes a success: the gateway does not fail a succeeded payment, so a
    // failure arriving after the success is old news.
    let paid = payment_rows::id_by_gateway_id(tx, source, pi_id).await?;
    if paid.is_some() || attempt.is_closed() {
        return Ok(EventOutcome::Processed);
    }
    let failure = ChargeFailure {
        code: f.code.clone(),
        message: f.message.clone(),
        payment_intent_id: Some(pi_id.to_string()),
    };
    dunning::mark_failed(b, tx, &attempt, &failure, now).await?;
    Ok(EventOutcome::Processed)
}

/// A dispute opened or closed. Lost, the money went back to the cardholder: the payment stays
/// marked disputed and is reversed by the disputed amount, once (keyed by the dispute's id among
/// the payment's refunds): the invoices it paid are due again and the ledger says so.
async fn dispute(
    tx: &mut Tx,
    source: &str,
    d: &Dispute,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    let Some(pi_id) = d.gateway_payment_id.as_deref() else {
        return Ok(EventOutcome::Ignored(format!(
            "dispute on charge {} names no PaymentIntent",
            d.charge_id.as_deref().unwrap_or("?")
        )));
    };
    let disputed = !matches!(d.phase, DisputePhase::Won);
    let Some(payment) = payment_rows::lock_by_gateway_id(tx, source, pi_id).await? else {
        return Err(Error::WaitingFor(pi_id.to_string()));
    };
    payment_rows::set_disputed(tx, source, pi_id, disputed).await?;
    if d.phase == DisputePhase::Lost {
        let amount = d
            .amount
            .min(payment.amount - payment.amount_refunded)
            .max(0);
        let key =
            d.id.clone()
                .unwrap_or_else(|| format!("dispute:{}", d.charge_id.as_deref().unwrap_or(pi_id)));
        let id = new_id(prefix::REFUND);
        let recorded = amount > 0
            && refund_rows::insert(
                tx,
                &refund_rows::NewRefund {
                    id: &id,
                    payment_id: &payment.id,
                    amount,
                    currency: &payment.currency,
                    gateway: source,
                    gateway_refund_id: Some(&key),
                    to_credit: false,
                    reason: Some("dispute lost"),
                    at: now,
                    status: refund_rows::status::SUCCEEDED,
                    idempotency_key: None,
                    retainer_id: None,
                },
            )
            .await?;
        if recorded {
            payment_rows::add_refunded(tx, &payment.id, amount).await?;
            refunds::reverse_payment(
                tx,
                &payment.id,
                &payment.customer_id,
                &payment.currency,
                amount,
                false,
                &id,
                "dispute_lost",
                now,
            )
            .await?;
            tracing::error!(
                payment_id = %payment.id,
                customer_id = %payment.customer_id,
                payment_intent = pi_id,
                amount,
                "dispute lost: the payment is reversed and what it paid is due again"
            );
            crate::metrics::dispute_lost(&payment.currency, amount);
        }
    }
    if d.phase == DisputePhase::Opened {
        tracing::warn!(
            payment_intent = pi_id,
            amount = d.amount,
            reason = d.reason.as_deref().unwrap_or(""),
            "payment disputed; respond at the gateway"
        );
    } else {
        tracing::warn!(payment_intent = pi_id, status = %d.status, "dispute closed");
    }
    Ok(EventOutcome::Processed)
}

/// `payment.received` from a Standard Webhooks source: a payment toward an invoice, unique on
/// the event's id within the source.
async fn received(
    tx: &mut Tx,
    source: &str,
    p: &PaymentReceived,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    let invoice = match &p.invoice {
        InvoiceRef::Id(id) => invoices::get_in(tx, id).await?,
        InvoiceRef::Number(number) => invoices::by_number_in(tx, number).await?,
    };
    let Some(invoice) = invoice else {
        return Ok(EventOutcome::Ignored(
            "payment.received names an unknown invoice".into(),
        ));
    };
    let Ok(cur) = Currency::parse(&p.currency) else {
        return Ok(EventOutcome::Ignored(format!(
            "payment.received has no valid currency ({:?})",
            p.currency
        )));
    };
    let amount = p
        .amount
        .as_deref()
        .and_then(|s| Money::parse(s, cur).ok())
        .map(|m| m.minor);
    let Some(amount) = amount.filter(|a| *a > 0) else {
        return Ok(EventOutcome::Ignored(
            "payment.received needs a positive amount as a decimal string".into(),
        ));
    };
    payments::record(
        tx,
        &NewPayment {
            customer_id: &invoice.customer_id,
            invoice_id: Some(&invoice.id),
            amount,
            currency: cur.code(),
            gateway: source,
            gateway_payment_id: p.payment_key.as_deref(),
            method: "bank_transfer",
            reference: p.reference.as_deref(),
            brand: None,
            last4: None,
            at: now,
            unapplied: false,
        },
        now,
    )
    .await?;
    Ok(EventOutcome::Processed)
}
