//! Charging saved cards: attempts and their one gateway call each, unknown outcomes, and charges
//! an operator (or a portal) asks for.
//!
//! An attempt is a row committed *before* its gateway call, carrying the Idempotency-Key
//! `settled:{invoice}:{attempt}`. Every send of that attempt (the first, a retry after a crash, a
//! resolve after a timeout) builds the same request from the row under the same key, so the
//! gateway charges at most once per attempt. The outcome is recorded in a new transaction with
//! the payment it produced; an outcome nobody could read is `unknown` and a resolve_charge job
//! asks again.

use chrono::{DateTime, Utc};
use settled_jobs::gateway::{ChargeRequest, ChargeResult, ChargeStatus, GatewayError};
use settled_jobs::job::Job;
use settled_jobs::status::{AttemptStatus, InvoiceStatus};

use super::dunning::{self, ChargeFailure};
use super::payments::{self, NewPayment};
use super::{Billing, Error, Result};
use crate::store::charge_attempts::{self as attempts, AttemptRow, NewAttempt, SendContext};
use crate::store::{Tx, invoices, payment_methods, queue};

/// After this long (wall clock) the gateway may have forgotten an idempotency key: an unknown
/// outcome is then looked up by the charge's metadata before anything is sent again.
const KEY_MEMORY_MS: i64 = 23 * 3600 * 1000;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The job that resolves an attempt: the invoice's own, or the balance charge's.
pub fn resolve_job(a: &AttemptRow) -> Job {
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

/// Called when an invoice is finalised: if auto-charge is on for the invoice (its subscription)
/// and the customer, and the customer has a default payment method, schedule the first attempt
/// now and enqueue it in the same transaction.
pub async fn schedule_first(
    b: &Billing,
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(f) = invoices::charge_facts(tx, invoice_id, false).await? else {
        return Ok(());
    };
    let collectible = InvoiceStatus::parse(&f.status).is_some_and(InvoiceStatus::is_collectible);
    if !collectible {
        return Ok(());
    }
    let due = f.amount_due;
    if due <= 0 || !f.invoice_auto_charge || !f.customer_auto_charge || f.default_method.is_none() {
        if f.invoice_auto_charge && due > 0 {
            tracing::info!(
                invoice_id,
                customer_id = %f.customer_id,
                auto_charge = f.customer_auto_charge,
                has_default_method = f.default_method.is_some(),
                "invoice not charged automatically"
            );
        }
        return Ok(());
    }
    let a = attempts::insert(
        tx,
        &NewAttempt {
            invoice_id: Some(invoice_id),
            customer_id: &f.customer_id,
            amount: due,
            currency: &f.currency,
            payment_method_id: None,
            automatic: true,
            scheduled_at: now,
            started: false,
        },
        now,
    )
    .await?;
    queue::enqueue(
        tx,
        &Job::ChargeInvoice {
            invoice_id: invoice_id.to_string(),
            attempt: a.attempt,
        },
        b.max_attempts(),
    )
    .await?;
    Ok(())
}

/// The charge_invoice job: claim a scheduled attempt (fixing its amount and payment method at the
/// last moment before the call), send it, record what came back.
pub async fn charge_invoice(b: &Billing, invoice_id: &str, attempt: i64) -> Result<()> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some(a) = attempts::lock(&mut tx, Some(invoice_id), attempt, "").await? else {
        // Dropped because the invoice was settled before its turn came.
        return Ok(());
    };
    match a.status() {
        AttemptStatus::Succeeded | AttemptStatus::Failed => return Ok(()),
        AttemptStatus::Unknown => {
            drop(tx);
            return send(b, &a.id, false).await;
        }
        AttemptStatus::Pending => {}
    }
    if a.started_at.is_some() {
        // Claimed by a run that did not live to record the outcome: same key, same request.
        drop(tx);
        return send(b, &a.id, false).await;
    }
    let f = invoices::charge_facts(&mut tx, invoice_id, true)
        .await?
        .ok_or_else(|| Error::permanent(format!("no invoice {invoice_id}")))?;
    let collectible = InvoiceStatus::parse(&f.status).is_some_and(InvoiceStatus::is_collectible);
    let switched_off = a.automatic && (!f.invoice_auto_charge || !f.customer_auto_charge);
    if !collectible || f.amount_due <= 0 || switched_off {
        // Never sent, so its key was never used: the attempt can simply go.
        attempts::delete_unsent(&mut tx, &a.id).await?;
        tx.commit().await?;
        tracing::info!(
            invoice_id,
            attempt,
            status = %f.status,
            auto_charge_off = switched_off,
            "scheduled charge dropped: nothing to charge automatically"
        );
        return Ok(());
    }
    let pm = a.payment_method_id.clone().or(f.default_method.clone());
    let problem = if b.gateways.is_empty() {
        Some(("gateway_not_configured", "no payment gateway is configured"))
    } else if pm.is_none() {
        Some((
            "no_payment_method",
            "the customer has no default payment method",
        ))
    } else if f.gateway_customer_id.is_none() {
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
        dunning::mark_failed(b, &mut tx, &a, &failed, now).await?;
        tx.commit().await?;
        return Ok(());
    }
    let amount = if a.automatic {
        f.amount_due
    } else {
        a.amount.min(f.amount_due)
    };
    attempts::claim(&mut tx, &a.id, amount, pm.as_deref(), now).await?;
    tx.commit().await?;
    send(b, &a.id, false).await
}

/// The resolve_charge job: an attempt whose outcome is unknown is asked again under its own key.
pub async fn resolve_charge(
    b: &Billing,
    invoice_id: Option<&str>,
    attempt: i64,
    charge_id: &str,
) -> Result<()> {
    let mut tx = b.db.begin().await?;
    let a = attempts::lock(&mut tx, invoice_id, attempt, charge_id).await?;
    drop(tx);
    match a {
        Some(a)
            if a.status() == AttemptStatus::Unknown
                || (a.status() == AttemptStatus::Pending && a.started_at.is_some()) =>
        {
            send(b, &a.id, true).await
        }
        _ => Ok(()),
    }
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
pub async fn send(b: &Billing, attempt_id: &str, resolving: bool) -> Result<()> {
    let a = attempts::get(&b.db, attempt_id)
        .await?
        .ok_or_else(|| Error::permanent(format!("no charge attempt {attempt_id}")))?;
    let ctx = attempts::send_context(&b.db, attempt_id).await?;
    let gateway_name = ctx
        .gateway
        .clone()
        .unwrap_or_else(|| b.gateways.default_name().to_string());
    let Some(gateway) = b.gateways.get(&gateway_name).cloned() else {
        return Err(Error::later(format!(
            "no payment gateway is configured; charge attempt {attempt_id} waits for one"
        )));
    };
    let Some(request) = request_for(&a, &ctx) else {
        return Err(Error::permanent(format!(
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
    record_outcome(b, attempt_id, gateway.name(), result).await?;
    if unknown && resolving {
        return Err(Error::later(format!(
            "the outcome of charge attempt {attempt_id} is still unknown"
        )));
    }
    Ok(())
}

/// Writes what the gateway said, in one transaction with its consequences.
async fn record_outcome(
    b: &Billing,
    attempt_id: &str,
    gateway: &str,
    result: std::result::Result<ChargeResult, GatewayError>,
) -> Result<()> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some(a) = attempts::lock(&mut tx, None, 0, attempt_id).await? else {
        return Err(Error::permanent(format!(
            "charge attempt {attempt_id} vanished"
        )));
    };
    if a.is_closed() {
        // Already recorded (by a webhook or a concurrent resolve).
        return Ok(());
    }
    let counted = crate::metrics::ChargeOutcome::of(&a.currency, a.amount, &result);
    match result {
        Ok(r) if r.status == ChargeStatus::Succeeded => {
            record_success(b, &mut tx, gateway, &a, &r, now).await?;
        }
        Ok(r) if r.status == ChargeStatus::Failed => {
            let failure = ChargeFailure {
                code: r.decline_code.unwrap_or_else(|| "card_declined".into()),
                message: r
                    .failure_message
                    .unwrap_or_else(|| "the charge did not go through".into()),
                payment_intent_id: Some(r.payment_intent_id),
            };
            dunning::mark_failed(b, &mut tx, &a, &failure, now).await?;
        }
        Ok(r) => {
            mark_unknown(b, &mut tx, &a, &format!("the charge is {:?}", r.status)).await?;
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
            dunning::mark_failed(b, &mut tx, &a, &failure, now).await?;
        }
        Err(GatewayError::Invalid { message, .. }) => {
            let failure = ChargeFailure {
                code: "invalid_request".into(),
                message,
                payment_intent_id: None,
            };
            dunning::mark_failed(b, &mut tx, &a, &failure, now).await?;
        }
        Err(GatewayError::NotConfigured) => {
            let failure = ChargeFailure {
                code: "gateway_not_configured".into(),
                message: "no payment gateway is configured".into(),
                payment_intent_id: None,
            };
            dunning::mark_failed(b, &mut tx, &a, &failure, now).await?;
        }
        Err(GatewayError::Unknown(message)) => {
            tracing::warn!(
                charge_attempt_id = %a.id,
                invoice_id = a.invoice_id.as_deref().unwrap_or(""),
                attempt = a.attempt,
                error = %message,
                "charge outcome unknown; it will be asked again under the same key"
            );
            mark_unknown(b, &mut tx, &a, &message).await?;
        }
    }
    tx.commit().await?;
    counted.record();
    Ok(())
}

async fn mark_unknown(b: &Billing, tx: &mut Tx, a: &AttemptRow, message: &str) -> Result<()> {
    attempts::set_unknown(tx, &a.id, message).await?;
    queue::enqueue(tx, &resolve_job(a), b.max_attempts()).await?;
    Ok(())
}

/// Records the payment a succeeded charge made (once, whoever tells first) and closes the
/// attempt.
pub async fn record_success(
    b: &Billing,
    tx: &mut Tx,
    gateway: &str,
    a: &AttemptRow,
    r: &ChargeResult,
    now: DateTime<Utc>,
) -> Result<()> {
    let card = match &a.payment_method_id {
        Some(pm) => payment_methods::card(tx, pm).await?,
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
        b,
        tx,
        &NewPayment {
            customer_id: &a.customer_id,
            invoice_id: a.invoice_id.as_deref(),
            amount: received,
            currency: &currency,
            gateway,
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
    attempts::set_succeeded(tx, &a.id, &r.payment_intent_id, now).await?;
    tracing::info!(
        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
        customer_id = %a.customer_id,
        attempt = a.attempt,
        payment_id = %payment.id(),
        "charge succeeded"
    );
    Ok(())
}

/// Due charge work for the sweep: scheduled attempts whose time has come, unknown outcomes, and
/// attempts that were sent but never recorded (their sender died) once they are older than any
/// request could still be running. An attempt in flight is left alone, so the sweep never sends a
/// second copy of a request that is still waiting for its answer.
pub async fn due_jobs(b: &Billing, now: DateTime<Utc>) -> Result<Vec<Job>> {
    let in_flight_for = (b.config.stripe.request_timeout_seconds as i64 + 30) * 1000;
    let rows = attempts::due(&b.db, now, wall_ms() - in_flight_for, 5000).await?;
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

mod on_demand;
pub use on_demand::{Charged, charge_balance, charge_now};
