//! Charging saved cards: attempts and their one gateway call each, unknown outcomes, and charges
//! an operator (or a portal) asks for.
//!
//! An attempt is a row committed *before* its gateway call, carrying the Idempotency-Key
//! `settled:{invoice}:{attempt}`. Every send of that attempt (the first, a retry after a crash, a
//! resolve after a timeout) builds the same request from the row under the same key, so the
//! gateway charges at most once per attempt. The outcome is recorded in a new transaction with
//! the payment it produced; an outcome nobody could read is `unknown`, set aside with a backoff,
//! and asked again under the same key by a later drain until the gateway answers.
//!
//! A drain of charges ([`drain`]) works in three steps: one transaction claims a batch (scheduled
//! attempts whose time has come are decided, fixed and marked sent; unknown and abandoned ones
//! are leased), the calls run concurrently with no transaction open, and their outcomes are
//! recorded a chunk per transaction.

use chrono::{DateTime, Utc};
use settled_jobs::gateway::{ChargeRequest, ChargeResult, ChargeStatus, GatewayError};
use settled_jobs::job::WorkKind;
use settled_jobs::status::InvoiceStatus;

use super::dunning::{self, ChargeFailure};
use super::payments::{self, NewPayment};
use super::{Billing, Error, Result};
use crate::store::charge_attempts::{self as attempts, AttemptRow, NewAttempt, SendContext};
use crate::store::{Tx, invoices, payment_methods, wall_ms, work_failures};

/// After this long (wall clock) the gateway may have forgotten an idempotency key: an unknown
/// outcome is then looked up by the charge's metadata before anything is sent again.
const KEY_MEMORY_MS: i64 = 23 * 3600 * 1000;

/// Attempts one drain batch claims at most.
const BATCH: i64 = 100;

/// Outcomes recorded per transaction.
const RECORD_CHUNK: usize = 50;

/// The decline code of an attempt the gateway rejected as a wrong request (a 4xx other than a
/// card error): failed, but no decline of the card.
pub const REJECTED: &str = "rejected";

/// Called when an invoice is finalised: if auto-charge is on for the invoice (its subscription)
/// and the customer, and the customer has a default payment method, schedule the first attempt
/// now (the next drain of charges sends it).
pub async fn schedule_first(tx: &mut Tx, invoice_id: &str, now: DateTime<Utc>) -> Result<()> {
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
    tracing::debug!(
        invoice_id,
        attempt = a.attempt,
        "first automatic charge scheduled"
    );
    Ok(())
}

/// What one call came back with: the gateway's name and answer, or why it could not be made.
type Call = std::result::Result<(String, std::result::Result<ChargeResult, GatewayError>), Error>;

/// Makes an attempt's one gateway call from its row (or, when the gateway may have forgotten its
/// key, looks the charge up by its metadata first). No transaction is open meanwhile.
async fn call(b: &Billing, a: &AttemptRow, ctx: &SendContext) -> Call {
    let gateway_name = ctx
        .gateway
        .clone()
        .unwrap_or_else(|| b.gateways.default_name().to_string());
    let Some(gateway) = b.gateways.get(&gateway_name).cloned() else {
        return Err(Error::later(format!(
            "no payment gateway {gateway_name} is configured; charge attempt {} waits for one",
            a.id
        )));
    };
    let Some(request) = request_for(a, ctx) else {
        return Err(Error::permanent(format!(
            "charge attempt {} has no payment method or gateway customer",
            a.id
        )));
    };
    let forgotten = a.look_up
        || a.sent_wall_ms
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
    Ok((gateway.name().to_string(), result))
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

/// Sends one attempt claimed by its caller (an on-demand charge) and records the outcome.
pub async fn send(b: &Billing, attempt_id: &str) -> Result<()> {
    let a = attempts::get(&b.db, attempt_id)
        .await?
        .ok_or_else(|| Error::permanent(format!("no charge attempt {attempt_id}")))?;
    let ctx = attempts::send_context(&b.db, attempt_id).await?;
    let (gateway, result) = call(b, &a, &ctx).await?;
    let now = b.now();
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let counted = record_in(b, &mut tx, attempt_id, &gateway, result, false, now, wall).await?;
    tx.commit().await?;
    if let Some(c) = counted {
        c.record();
    }
    Ok(())
}

/// Writes what the gateway said about one attempt, with its consequences, in `tx`. Returns the
/// metric to count once committed (None when the outcome was recorded already, by a webhook or
/// another batch).
#[allow(clippy::too_many_arguments)]
async fn record_in(
    b: &Billing,
    tx: &mut Tx,
    attempt_id: &str,
    gateway: &str,
    result: std::result::Result<ChargeResult, GatewayError>,
    resolving: bool,
    now: DateTime<Utc>,
    wall: i64,
) -> Result<Option<crate::metrics::ChargeOutcome>> {
    let Some(a) = attempts::lock(tx, None, 0, attempt_id).await? else {
        return Err(Error::permanent(format!(
            "charge attempt {attempt_id} vanished"
        )));
    };
    if a.is_closed() {
        // Already recorded (by a webhook or a concurrent resolve).
        attempts::set_lease(tx, &a.id, None).await?;
        work_failures::clear(tx, WorkKind::Charges, &[&a.id]).await?;
        return Ok(None);
    }
    let counted = crate::metrics::ChargeOutcome::of(&a.currency, a.amount, &result);
    let mut unknown = None;
    match result {
        Ok(r) if r.status == ChargeStatus::Succeeded => {
            record_success(tx, gateway, &a, &r, now).await?;
        }
        Ok(r) if r.status == ChargeStatus::Failed => {
            let failure = ChargeFailure {
                code: r.decline_code.unwrap_or_else(|| "card_declined".into()),
                message: r
                    .failure_message
                    .unwrap_or_else(|| "the charge did not go through".into()),
                payment_intent_id: Some(r.payment_intent_id),
            };
            dunning::mark_failed(b, tx, &a, &failure, now).await?;
        }
        Ok(r) => unknown = Some(format!("the charge is {:?}", r.status)),
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
            dunning::mark_failed(b, tx, &a, &failure, now).await?;
        }
        Err(GatewayError::Invalid { message, .. }) if resolving => {
            // The same request was sent before and may have charged: a refusal of the resend
            // says nothing about the first. Look the charge up before sending anything again.
            attempts::set_look_up(tx, &a.id).await?;
            unknown = Some(format!("the gateway refused the resend: {message}"));
        }
        Err(GatewayError::Invalid { message, param }) => {
            // Our request is wrong (an amount the gateway does not take, a currency the account
            // cannot charge): no card was charged and no dunning step is spent on it.
            let message = match param {
                Some(p) => format!("{p}: {message}"),
                None => message,
            };
            attempts::set_failed(tx, &a.id, REJECTED, &message, None, now).await?;
            work_failures::clear(tx, WorkKind::Charges, &[&a.id]).await?;
            tracing::error!(
                charge_attempt_id = %a.id,
                invoice_id = a.invoice_id.as_deref().unwrap_or(""),
                customer_id = %a.customer_id,
                attempt = a.attempt,
                error = %message,
                "the gateway rejected the charge request; nothing was charged and no retry is scheduled"
            );
        }
        Err(GatewayError::NotConfigured) => {
            let failure = ChargeFailure {
                code: "gateway_not_configured".into(),
                message: "no payment gateway is configured".into(),
                payment_intent_id: None,
            };
            dunning::mark_failed(b, tx, &a, &failure, now).await?;
        }
        Err(GatewayError::Unknown(message)) => unknown = Some(message),
    }
    match unknown {
        Some(message) => {
            tracing::warn!(
                charge_attempt_id = %a.id,
                invoice_id = a.invoice_id.as_deref().unwrap_or(""),
                attempt = a.attempt,
                resolving,
                error = %message,
                "charge outcome unknown; it will be asked again under the same key"
            );
            attempts::set_unknown(tx, &a.id, &message).await?;
            work_failures::set_aside(tx, WorkKind::Charges, &a.id, &message, wall, None).await?;
        }
        None => work_failures::clear(tx, WorkKind::Charges, &[&a.id]).await?,
    }
    Ok(Some(counted))
}

/// Records the payment a succeeded charge made (once, whoever tells first) and closes the
/// attempt.
pub async fn record_success(
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
    work_failures::clear(tx, WorkKind::Charges, &[&a.id]).await?;
    tracing::info!(
        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
        customer_id = %a.customer_id,
        attempt = a.attempt,
        payment_id = %payment.id(),
        "charge succeeded"
    );
    Ok(())
}

mod drain;
mod on_demand;
pub use drain::drain;
pub use on_demand::{Charged, charge_balance, charge_now};
