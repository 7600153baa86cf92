//! Retainer deposits: a paid retainer invoice adds to the customer's retainer balance
//! (`payments::apply_to_invoice`); it is spent on invoices (automatically on finalising when the
//! customer opted in, or on demand) and unused deposits can be refunded, newest first, through
//! the gateway that took them or by record.

use serde::Serialize;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::money::decimal_text;
use settled_jobs::status::Account;

use super::ledger::{self, Entry};
use super::{Billing, Error, Result, credits};
use crate::store::balances::{self, Pool};
use crate::store::refunds::{self, NewRefund};
use crate::store::{invoices, payments};

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

/// One deposit's part of a retainer refund.
#[derive(Debug, Clone, Serialize)]
pub struct RefundPart {
    pub id: String,
    pub retainer_id: String,
    pub amount: i64,
    pub gateway_refund_id: Option<String>,
}

/// Refunds `amount` of the customer's unused retainer, newest deposit first: through the gateway
/// when the deposit was paid there (under a key derived from the deposit and its remaining
/// balance, so a retried request never refunds twice), by record otherwise.
pub async fn refund(b: &Billing, customer_id: &str, amount: i64) -> Result<Vec<RefundPart>> {
    let customer = crate::store::customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let currency = customer.currency.as_str();
    let now = b.now();
    let mut tx = b.db.begin().await?;
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
    for (retainer_id, payment_id, remaining, gateway_name) in deposits {
        if left == 0 {
            break;
        }
        let take = remaining.min(left);
        left -= take;
        let gateway = b.gateways.get(&gateway_name).cloned();
        let mut gateway_refund = None;
        if payment_id.is_some() && crate::gateway::supports(&gateway_name) {
            let gw = gateway.ok_or_else(|| {
                Error::conflict(
                    "gateway_not_configured",
                    format!(
                        "the retainer was paid through {gateway_name}, which is not configured"
                    ),
                )
            })?;
            let (remaining, pi) = balances::deposit_facts(&mut tx, &retainer_id).await?;
            let key = format!("settled:{retainer_id}:refund:{remaining}:{take}");
            let refund = gw
                .refund(pi.as_deref().unwrap_or_default(), take, &key)
                .await?;
            gateway_refund = Some(refund);
        }
        balances::take(&mut tx, Pool::Retainer, &retainer_id, take).await?;
        let refund_id = new_id(prefix::REFUND);
        if let Some(payment_id) = payment_id.as_deref() {
            let recorded_by = if gateway_refund.is_some() {
                gateway_name.as_str()
            } else {
                super::payments::OFFLINE
            };
            refunds::insert(
                &mut tx,
                &NewRefund {
                    id: &refund_id,
                    payment_id,
                    amount: take,
                    currency,
                    gateway: recorded_by,
                    gateway_refund_id: gateway_refund.as_deref(),
                    to_credit: false,
                    reason: Some("retainer refund"),
                    at: now,
                },
            )
            .await?;
            payments::add_refunded(&mut tx, payment_id, take).await?;
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
                payment_id: payment_id.as_deref(),
                object_id: Some(&retainer_id),
                memo: None,
                at: now,
            }],
        )
        .await?;
        if payment_id.is_some() {
            crate::outbox::refund(&mut tx, &refund_id, now).await?;
        }
        parts.push(RefundPart {
            id: refund_id,
            retainer_id,
            amount: take,
            gateway_refund_id: gateway_refund,
        });
    }
    tx.commit().await?;
    tracing::info!(customer_id, amount, "retainer refunded");
    Ok(parts)
}
