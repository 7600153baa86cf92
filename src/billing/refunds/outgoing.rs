//! Refunds the daemon asks a gateway for (an unused retainer paid back, an operator's refund of
//! a payment). Like a charge, each is committed first (`pending`, with its Idempotency-Key
//! `settled:refund:{payment}:{n}` for the payment's n-th refund of ours, and what it takes: the payment's refundable amount, a retainer's
//! balance), then sent with no transaction open, then recorded: `succeeded` (a payment refund
//! reverses the payment now), `failed` (what it took is given back) or, when the answer is not
//! known, left pending and asked again under the same key by the refunds' drain. A gateway event
//! that reports the refund first (it names our id in the refund's metadata) records it the same
//! way, once.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use settled_jobs::gateway::{GatewayError, RefundRequest, RefundResult, RefundStatus};
use settled_jobs::job::WorkKind;
use settled_jobs::status::Account;

use super::reverse_payment;
use crate::billing::ledger::{self, Entry};
use crate::billing::{Billing, Error, Result};
use crate::store::balances::{self, Pool};
use crate::store::refunds::{self as rows, Outgoing};
use crate::store::{Tx, payments, wall_ms, work_failures};

/// Refunds one drain batch claims at most, and calls in flight at once.
const BATCH: i64 = 50;
const CALLS_IN_FLIGHT: usize = 16;

/// The Idempotency-Key of the next refund of `payment_id` sent through its gateway:
/// `settled:refund:{payment}:{n}`, n counting that payment's refunds of ours from 1. Taken in
/// the transaction that writes the refund, with the payment locked; the keys are unique in the
/// schema, so two refunds can never share one.
pub async fn next_key(tx: &mut Tx, payment_id: &str) -> Result<String> {
    let n = rows::keyed_count(tx, payment_id).await? + 1;
    Ok(format!("settled:refund:{payment_id}:{n}"))
}

/// How a refund the daemon sent stands after its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Succeeded {
        gateway_refund_id: String,
    },
    Failed {
        reason: String,
    },
    /// Not known yet; the refunds' drain asks again.
    Pending,
}

/// How long a sent refund may still be waiting for its answer: until then nobody sends it again.
pub fn in_flight_ms(b: &Billing) -> i64 {
    (b.config.stripe.request_timeout_seconds as i64 + 30) * 1000
}

/// Sends refunds committed pending by the caller, now, and records each outcome.
pub async fn send_now(b: &Billing, ids: &[String]) -> Result<Vec<(String, Sent)>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(r) = rows::outgoing(&b.db, id).await? else {
            continue;
        };
        let result = call(b, &r).await;
        let sent = record(b, &r, result).await?;
        out.push((id.clone(), sent));
    }
    Ok(out)
}

/// One batch of pending refunds nobody is sending: claimed with a lease, sent concurrently with
/// no transaction open, each outcome recorded. Returns how many it took.
pub async fn drain(b: &Billing) -> Result<usize> {
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let claimed = rows::claim_pending(
        &mut tx,
        wall - in_flight_ms(b),
        wall,
        wall + in_flight_ms(b),
        b.batch_size(BATCH as usize) as i64,
    )
    .await?;
    tx.commit().await?;
    let n = claimed.len();
    let mut calls = futures::stream::iter(claimed)
        .map(|r| async move {
            let result = call(b, &r).await;
            (r, result)
        })
        .buffer_unordered(CALLS_IN_FLIGHT);
    while let Some((r, result)) = calls.next().await {
        record(b, &r, result).await?;
    }
    Ok(n)
}

async fn call(b: &Billing, r: &Outgoing) -> std::result::Result<RefundResult, GatewayError> {
    let Some(gateway) = b.gateways.get(&r.gateway).cloned() else {
        return Err(GatewayError::Unknown(format!(
            "no payment gateway {} is configured; refund {} waits for one",
            r.gateway, r.id
        )));
    };
    let (Some(pi), Some(key)) = (&r.gateway_payment_id, &r.idempotency_key) else {
        return Err(GatewayError::Invalid {
            message: format!("refund {} names no gateway payment or key", r.id),
            param: None,
        });
    };
    gateway
        .refund(&RefundRequest {
            idempotency_key: key.clone(),
            payment_intent_id: pi.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            metadata: vec![("refund_id".to_string(), r.id.clone())],
        })
        .await
}

/// Records what the gateway said about one refund, in a transaction of its own.
async fn record(
    b: &Billing,
    r: &Outgoing,
    result: std::result::Result<RefundResult, GatewayError>,
) -> Result<Sent> {
    let now = b.now();
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let Some(current) = rows::lock_outgoing(&mut tx, &r.id).await? else {
        return Err(Error::permanent(format!("refund {} vanished", r.id)));
    };
    if current.status != rows::status::PENDING {
        // Recorded already (its webhook came first).
        tx.commit().await?;
        return Ok(match current.status.as_str() {
            rows::status::FAILED => Sent::Failed {
                reason: "failed".into(),
            },
            _ => Sent::Succeeded {
                gateway_refund_id: String::new(),
            },
        });
    }
    let sent = match result {
        Ok(res) if res.status == RefundStatus::Succeeded => {
            succeeded(&mut tx, &current, &res.refund_id, now).await?;
            Sent::Succeeded {
                gateway_refund_id: res.refund_id,
            }
        }
        Ok(res) if res.status == RefundStatus::Failed => {
            let reason = res
                .failure_reason
                .unwrap_or_else(|| "the gateway could not refund the payment".into());
            failed(&mut tx, &current, &reason, now).await?;
            Sent::Failed { reason }
        }
        Err(GatewayError::Invalid { message, .. })
        | Err(GatewayError::Declined { message, .. }) => {
            failed(&mut tx, &current, &message, now).await?;
            Sent::Failed { reason: message }
        }
        Ok(_) => {
            waiting(
                &mut tx,
                &current,
                "the refund is not settled at the gateway yet",
                wall,
            )
            .await?;
            Sent::Pending
        }
        Err(e) => {
            waiting(&mut tx, &current, &e.to_string(), wall).await?;
            Sent::Pending
        }
    };
    tx.commit().await?;
    Ok(sent)
}

async fn waiting(tx: &mut Tx, r: &Outgoing, why: &str, wall: i64) -> Result<()> {
    rows::clear_lease(tx, &r.id).await?;
    let tries = work_failures::set_aside(tx, WorkKind::Refunds, &r.id, why, wall, None).await?;
    tracing::warn!(refund_id = %r.id, tries, reason = why, "refund outcome not known; asked again under the same key");
    Ok(())
}

/// A pending refund went through (our call's answer, or the gateway's event): recorded once.
pub async fn succeeded(
    tx: &mut Tx,
    r: &Outgoing,
    gateway_refund_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if !rows::set_succeeded(tx, &r.id, gateway_refund_id).await? {
        return Ok(());
    }
    work_failures::clear(tx, WorkKind::Refunds, &[&r.id]).await?;
    if r.retainer_id.is_none() {
        reverse_payment(
            tx,
            &r.payment_id,
            &r.customer_id,
            &r.currency,
            r.amount,
            r.to_credit,
            &r.id,
            "refund",
            now,
        )
        .await?;
    }
    crate::outbox::refund(tx, &r.id, now).await?;
    tracing::info!(refund_id = %r.id, payment_id = %r.payment_id, amount = r.amount, "refund succeeded");
    Ok(())
}

/// A pending refund did not go through: what it took is given back.
async fn failed(tx: &mut Tx, r: &Outgoing, reason: &str, now: DateTime<Utc>) -> Result<()> {
    if !rows::set_failed(tx, &r.id, reason).await? {
        return Ok(());
    }
    work_failures::clear(tx, WorkKind::Refunds, &[&r.id]).await?;
    payments::add_refunded(tx, &r.payment_id, -r.amount).await?;
    if let Some(retainer_id) = &r.retainer_id {
        balances::give_back(tx, Pool::Retainer, retainer_id, r.amount).await?;
        ledger::record(
            tx,
            &[Entry {
                customer_id: &r.customer_id,
                currency: &r.currency,
                account: Account::Retainer,
                kind: "retainer_refund_failed",
                amount: r.amount,
                invoice_id: None,
                payment_id: Some(&r.payment_id),
                object_id: Some(retainer_id),
                memo: None,
                at: now,
            }],
        )
        .await?;
    }
    tracing::error!(refund_id = %r.id, payment_id = %r.payment_id, reason, "refund failed at the gateway; nothing was paid back");
    Ok(())
}

/// An operator's refund of a payment (`POST /v1/payments/{id}/refunds`): all of what is not
/// refunded yet when `amount` is None. A payment taken through a gateway is refunded there
/// (committed pending with its key, then sent; the payment is reversed once it succeeded); any
/// other (a wire, a bank transfer) is recorded as paid back by other means and reversed at once.
/// Reversed, the invoices it paid are due again, or with `as_credit` the amount becomes credit.
/// Returns the refund's id and how it stands.
pub async fn refund_payment(
    b: &Billing,
    payment_id: &str,
    amount: Option<i64>,
    reason: Option<&str>,
    as_credit: bool,
) -> Result<(String, Sent)> {
    let payment = payments::get(&b.db, payment_id)
        .await?
        .ok_or_else(|| Error::not_found("payment", payment_id))?;
    let now = b.now();
    let mut tx = b.db.begin().await?;
    crate::store::customers::lock(&mut tx, &payment.customer_id).await?;
    let payment = payments::lock(&mut tx, payment_id)
        .await?
        .ok_or_else(|| Error::not_found("payment", payment_id))?;
    let refundable = payment.amount - payment.amount_refunded;
    let amount = amount.unwrap_or(refundable);
    if refundable <= 0 {
        return Err(Error::conflict(
            "payment_refunded",
            format!("payment {payment_id} is refunded in full already"),
        ));
    }
    if amount > refundable {
        return Err(Error::invalid(
            "amount",
            format!(
                "is more than the {} left to refund",
                settled_jobs::money::decimal_text(refundable, &payment.currency)
            ),
        ));
    }
    let through_gateway =
        payment.gateway_payment_id.is_some() && crate::gateway::supports(&payment.gateway);
    if through_gateway && b.gateways.get(&payment.gateway).is_none() {
        return Err(Error::conflict(
            "gateway_not_configured",
            format!(
                "the payment was taken through {}, which is not configured",
                payment.gateway
            ),
        ));
    }
    let id = settled_jobs::ids::new_id(settled_jobs::ids::prefix::REFUND);
    let idempotency_key = next_key(&mut tx, payment_id).await?;
    rows::insert(
        &mut tx,
        &rows::NewRefund {
            id: &id,
            payment_id,
            amount,
            currency: &payment.currency,
            gateway: if through_gateway {
                &payment.gateway
            } else {
                crate::gateway::OFFLINE
            },
            gateway_refund_id: None,
            to_credit: as_credit,
            reason,
            at: now,
            status: if through_gateway {
                rows::status::PENDING
            } else {
                rows::status::SUCCEEDED
            },
            idempotency_key: through_gateway.then_some(idempotency_key.as_str()),
            retainer_id: None,
        },
    )
    .await?;
    payments::add_refunded(&mut tx, payment_id, amount).await?;
    if !through_gateway {
        reverse_payment(
            &mut tx,
            payment_id,
            &payment.customer_id,
            &payment.currency,
            amount,
            as_credit,
            &id,
            "refund",
            now,
        )
        .await?;
        crate::outbox::refund(&mut tx, &id, now).await?;
        tx.commit().await?;
        tracing::info!(refund_id = %id, payment_id, amount, "refund recorded as paid back by other means");
        return Ok((
            id,
            Sent::Succeeded {
                gateway_refund_id: String::new(),
            },
        ));
    }
    // Sent by this request: the refunds' drain leaves it alone meanwhile.
    let wall = wall_ms();
    rows::mark_sent(&mut tx, &id, wall, Some(wall + in_flight_ms(b))).await?;
    tx.commit().await?;
    let sent = send_now(b, std::slice::from_ref(&id))
        .await?
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .unwrap_or(Sent::Pending);
    Ok((id, sent))
}
