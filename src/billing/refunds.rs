//! Money given back on a payment. A refund reverses its payment: by default the invoices it
//! paid reopen (newest first, and what was left over as credit is taken back from there); with
//! `billing.refunds = "credit"` the invoices stay settled and the customer gets the amount as
//! credit instead. Each refund is unique on the gateway's refund id, so hearing of it twice
//! (the gateway's event listing it again, a replayed webhook) records it once.

use chrono::{DateTime, Utc};
use settled_jobs::allocation::{Reversal, reverse};
use settled_jobs::event::Refunded;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::status::{Account, CreditSource};

use super::ledger::{self, Entry};
use super::{Billing, Error, Result, credits};
use crate::store::balances::{self, Pool};
use crate::store::refunds::{self as rows, NewRefund};
use crate::store::{Tx, invoices, payments};

/// Applies a gateway's account of a payment's refunds: every refund it lists (or, when it lists
/// none, one for the difference) that is not recorded yet.
pub async fn refunded(
    b: &Billing,
    tx: &mut Tx,
    source: &str,
    event: &Refunded,
    now: DateTime<Utc>,
) -> Result<()> {
    let pi_id = event.gateway_payment_id.as_str();
    let Some(payment) = payments::lock_by_gateway_id(tx, source, pi_id).await? else {
        // The refund overtook its payment: try again once the payment is recorded.
        return Err(Error::WaitingFor(pi_id.to_string()));
    };
    let already = payment.amount_refunded;
    let total_refunded = event.amount_refunded.min(payment.amount);
    let mut refunds: Vec<(String, i64)> = event
        .refunds
        .iter()
        .map(|r| (r.id.clone(), r.amount))
        .collect();
    if refunds.is_empty() && total_refunded > already {
        // An event without the refund list: one refund for the difference, keyed by the charge.
        let key = format!(
            "{}:{total_refunded}",
            event.charge_id.as_deref().unwrap_or(pi_id)
        );
        refunds.push((key, total_refunded - already));
    }
    let to_credit = b.config.billing.refunds == "credit";
    let mut added = 0i64;
    for (refund_id, amount) in refunds {
        if amount <= 0 || already + added + amount > payment.amount {
            continue;
        }
        let id = new_id(prefix::REFUND);
        let new = NewRefund {
            id: &id,
            payment_id: &payment.id,
            amount,
            currency: &payment.currency,
            gateway: source,
            gateway_refund_id: Some(&refund_id),
            to_credit,
            reason: None,
            at: now,
        };
        if !rows::insert(tx, &new).await? {
            continue;
        }
        added += amount;
        reverse_payment(
            tx,
            &payment.id,
            &payment.customer_id,
            &payment.currency,
            amount,
            to_credit,
            &id,
            now,
        )
        .await?;
        crate::outbox::refund(tx, &id, now).await?;
    }
    if added > 0 {
        payments::add_refunded(tx, &payment.id, added).await?;
        tracing::info!(payment_id = %payment.id, refunded = added, "refund recorded");
    }
    Ok(())
}

/// Undoes `amount` of a payment (see the module's description).
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
) -> Result<()> {
    let allocations = payments::allocations_newest_first(tx, payment_id).await?;
    let reversal = reverse(
        amount,
        to_credit,
        allocations.iter().map(|(id, a)| (id.as_str(), *a)),
    );
    match reversal {
        Reversal::ToCredit { amount } => {
            credits::add_credit(
                tx,
                customer_id,
                currency,
                amount,
                CreditSource::Refund,
                Some(refund_id),
                &format!("Refund {refund_id} of payment {payment_id} kept as credit"),
                now,
            )
            .await?;
        }
        Reversal::Reopen { parts, from_credit } => {
            for part in &parts {
                invoices::take_back_payment(tx, &part.id, part.amount, now).await?;
                let whole = allocations
                    .iter()
                    .any(|(id, a)| *id == part.id && *a == part.amount);
                payments::deallocate(tx, payment_id, &part.id, part.amount, whole).await?;
                ledger::record(
                    tx,
                    &[Entry {
                        customer_id,
                        currency,
                        account: Account::Receivable,
                        kind: "refund",
                        amount: part.amount,
                        invoice_id: Some(&part.id),
                        payment_id: Some(payment_id),
                        object_id: Some(refund_id),
                        memo: None,
                        at: now,
                    }],
                )
                .await?;
            }
            if from_credit > 0 {
                // The rest of the payment had become credit (an overpayment): the refund takes
                // it back.
                ledger::record(
                    tx,
                    &[Entry {
                        customer_id,
                        currency,
                        account: Account::Credit,
                        kind: "refund",
                        amount: -from_credit,
                        invoice_id: None,
                        payment_id: Some(payment_id),
                        object_id: Some(refund_id),
                        memo: None,
                        at: now,
                    }],
                )
                .await?;
                take_back_overpayment(tx, payment_id, from_credit).await?;
            }
        }
    }
    Ok(())
}

/// Takes `amount` back out of the credit a payment's excess became.
async fn take_back_overpayment(tx: &mut Tx, payment_id: &str, amount: i64) -> Result<()> {
    for (note, remaining) in balances::lock_overpayment_credit(tx, payment_id).await? {
        if remaining >= amount {
            balances::take(tx, Pool::Credit, &note, amount).await?;
            return Ok(());
        }
    }
    Ok(())
}
