//! Retainer deposits: a paid retainer invoice, whatever paid it, holds one deposit
//! ([`deposit_if_paid`]); it is spent on invoices (automatically on finalising when the
//! customer opted in, or on demand) and unused deposits can be refunded, newest first, through
//! the payments that funded them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::money::decimal_text;
use settled_jobs::status::{Account, InvoiceKind};

use super::ledger::{self, Entry};
use super::{Billing, Error, Result, credits};
use crate::store::balances::{self, Pool};
use crate::store::refunds::{self, NewRefund};
use crate::store::{Tx, invoices, payments};

/// Applies up to `limit` (all that fits when None) of the customer's retainer to one of its
/// open invoices.
pub async fn apply(
    b: &Billing,
    customer_id: &str,
    invoice_id: &str,
    limit: Option<i64>,
) -> Result<()> {
    let inv = invoices::get(&b.db, invoice_id)
        .await?
        .ok_or_else(|| Error::invalid("invoice_id", format!("no invoice {invoice_id}")))?;
    if inv.customer_id != customer_id {
        return Err(Error::invalid(
            "invoice_id",
            format!("invoice {} belongs to another customer", inv.id),
        ));
    }
    if inv.kind == InvoiceKind::Retainer.as_str() {
        return Err(Error::conflict(
            "retainer_invoice",
            format!(
                "invoice {} is a retainer invoice; it cannot be paid from the retainer",
                inv.id
            ),
        ));
    }
    if !inv.status().is_collectible() {
        return Err(Error::conflict(
            "invoice_not_open",
            format!("invoice {} is {}; nothing to apply to", inv.id, inv.status),
        ));
    }
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let available =
        balances::available(&mut tx, Pool::Retainer, customer_id, &inv.currency).await?;
    let due = invoices::get_in(&mut tx, invoice_id)
        .await?
        .map_or(0, |i| i.amount_due);
    if let Some(l) = limit {
        if l > available {
            return Err(Error::conflict(
                "insufficient_retainer",
                format!(
                    "{} is more than the {} retainer balance",
                    decimal_text(l, &inv.currency),
                    decimal_text(available, &inv.currency)
                ),
            ));
        }
        if l > due {
            return Err(Error::invalid(
                "amount",
                format!("is more than the {} due", decimal_text(due, &inv.currency)),
            ));
        }
    }
    if available == 0 {
        return Err(Error::conflict(
            "insufficient_retainer",
            format!(
                "customer {customer_id} has no retainer balance in {}",
                inv.currency
            ),
        ));
    }
    credits::apply(&mut tx, Pool::Retainer, invoice_id, limit, now).await?;
    tx.commit().await?;
    Ok(())
}

/// One part of a retainer refund: a refund of one payment that funded a deposit (through its
/// gateway, or recorded for an offline payment), or, with no `id`, what of the deposit no
/// payment funded (credit it was paid with), paid back by other means.
#[derive(Debug, Clone, Serialize)]
pub struct RefundPart {
    pub id: Option<String>,
    pub retainer_id: String,
    pub amount: i64,
    pub gateway_refund_id: Option<String>,
    /// pending, succeeded or failed.
    pub status: String,
    pub failure_reason: Option<String>,
}

/// Refunds `amount` of the customer's unused retainer, newest deposit first, each through the
/// payments that funded it (newest first): a gateway payment through its gateway, an offline one
/// by record. The balance is taken and the refunds committed (gateway ones `pending`, with their
/// keys) before any gateway is called; then each is sent and recorded, and one that fails gives
/// its amount back to the deposit. No transaction is open during a call.
pub async fn refund(b: &Billing, customer_id: &str, amount: i64) -> Result<Vec<RefundPart>> {
    let customer = crate::store::customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let currency = customer.currency.as_str();
    let now = b.now();
    let mut tx = b.db.begin().await?;
    crate::store::customers::lock(&mut tx, customer_id).await?;
    let deposits = balances::lock_deposits_newest_first(&mut tx, customer_id, currency).await?;
    let available: i64 = deposits.iter().map(|d| d.2).sum();
    if available < amount {
        return Err(Error::conflict(
            "insufficient_retainer",
            format!(
                "{} is more than the unused retainer",
                decimal_text(amount, currency)
            ),
        ));
    }
    let mut left = amount;
    let mut parts = Vec::new();
    let mut to_send = Vec::new();
    for (retainer_id, invoice_id, remaining) in deposits {
        if left == 0 {
            break;
        }
        let take = remaining.min(left);
        left -= take;
        if !balances::take(&mut tx, Pool::Retainer, &retainer_id, take).await? {
            return Err(Error::permanent(format!(
                "retainer {retainer_id} holds less than it did a moment ago"
            )));
        }
        ledger::record(
            &mut tx,
            &[Entry {
                customer_id,
                currency,
                account: Account::Retainer,
                kind: "retainer_refunded",
                amount: -take,
                invoice_id: None,
                payment_id: None,
                object_id: Some(&retainer_id),
                memo: None,
                at: now,
            }],
        )
        .await?;
        let funding = match &invoice_id {
            Some(inv) => payments::funding_of(&mut tx, inv).await?,
            None => Vec::new(),
        };
        let mut rest = take;
        for (payment_id, gateway, gateway_payment_id, allocated, refundable) in funding {
            let part = rest.min(allocated).min(refundable);
            if part <= 0 {
                continue;
            }
            rest -= part;
            let through_gateway =
                gateway_payment_id.is_some() && crate::gateway::supports(&gateway);
            if through_gateway && b.gateways.get(&gateway).is_none() {
                return Err(Error::conflict(
                    "gateway_not_configured",
                    format!("the retainer was paid through {gateway}, which is not configured"),
                ));
            }
            let refund_id = new_id(prefix::REFUND);
            let key = super::refunds::outgoing::next_key(&mut tx, &payment_id).await?;
            let recorded_by = if through_gateway {
                gateway.as_str()
            } else {
                crate::gateway::OFFLINE
            };
            refunds::insert(
                &mut tx,
                &NewRefund {
                    id: &refund_id,
                    payment_id: &payment_id,
                    amount: part,
                    currency,
                    gateway: recorded_by,
                    gateway_refund_id: None,
                    to_credit: false,
                    reason: Some("retainer refund"),
                    at: now,
                    status: if through_gateway {
                        refunds::status::PENDING
                    } else {
                        refunds::status::SUCCEEDED
                    },
                    idempotency_key: through_gateway.then_some(key.as_str()),
                    retainer_id: Some(&retainer_id),
                },
            )
            .await?;
            payments::add_refunded(&mut tx, &payment_id, part).await?;
            if through_gateway {
                // Sent by this request: the refunds' drain leaves it alone meanwhile.
                let wall = crate::store::wall_ms();
                let until = wall + super::refunds::outgoing::in_flight_ms(b);
                refunds::mark_sent(&mut tx, &refund_id, wall, Some(until)).await?;
                to_send.push(refund_id.clone());
            } else {
                crate::outbox::refund(&mut tx, &refund_id, now).await?;
            }
            parts.push(RefundPart {
                id: Some(refund_id),
                retainer_id: retainer_id.clone(),
                amount: part,
                gateway_refund_id: None,
                status: if through_gateway {
                    refunds::status::PENDING.into()
                } else {
                    refunds::status::SUCCEEDED.into()
                },
                failure_reason: None,
            });
        }
        if rest > 0 {
            parts.push(RefundPart {
                id: None,
                retainer_id: retainer_id.clone(),
                amount: rest,
                gateway_refund_id: None,
                status: refunds::status::SUCCEEDED.into(),
                failure_reason: None,
            });
        }
    }
    tx.commit().await?;
    tracing::info!(customer_id, amount, "retainer refund committed");
    for (id, sent) in super::refunds::outgoing::send_now(b, &to_send).await? {
        let Some(part) = parts.iter_mut().find(|p| p.id.as_deref() == Some(&id)) else {
            continue;
        };
        use super::refunds::outgoing::Sent;
        match sent {
            Sent::Succeeded { gateway_refund_id } => {
                part.status = refunds::status::SUCCEEDED.into();
                part.gateway_refund_id = Some(gateway_refund_id).filter(|g| !g.is_empty());
            }
            Sent::Failed { reason } => {
                part.status = refunds::status::FAILED.into();
                part.failure_reason = Some(reason);
            }
            Sent::Pending => {}
        }
    }
    Ok(parts)
}

/// A retainer invoice was reopened by `amount` (a payment on it refunded or reversed, or it was
/// voided): that much of its deposit goes, from what is left of it first, then from the invoices
/// it paid, which are due again.
pub async fn reverse_deposit(
    tx: &mut Tx,
    invoice_id: &str,
    amount: i64,
    payment_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some((retainer_id, had, _)) = balances::deposit_of_invoice(tx, invoice_id).await? else {
        return Ok(());
    };
    let take = amount.min(had);
    if take <= 0 {
        return Ok(());
    }
    let Some(inv) = invoices::get_in(tx, invoice_id).await? else {
        return Ok(());
    };
    let _taken = credits::take_back(
        tx,
        Pool::Retainer,
        &retainer_id,
        &inv.customer_id,
        &inv.currency,
        take,
        "retainer_reversed",
        payment_id,
        now,
    )
    .await?;
    tracing::info!(invoice_id, retainer_id = %retainer_id, amount = take, "retainer deposit reversed");
    Ok(())
}
