//! Money given back on a payment. A refund reverses its payment: by default the invoices it
//! paid reopen (newest first, and what was left over as credit is taken back from there); with
//! `billing.refunds = "credit"` the invoices stay settled and the customer gets the amount as
//! credit instead. Each refund is unique on the gateway's refund id, so hearing of it twice
//! (the gateway's event listing it again, a replayed webhook) records it once; one the daemon
//! asked for itself (`outgoing`) is known by its own id in the refund's metadata. Only
//! refunds that succeeded count.

pub mod outgoing;

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
    let mut refunds: Vec<(String, i64)> = Vec::new();
    for r in &event.refunds {
        // A refund still pending, failed or canceled moved no money (yet).
        if r.status.as_deref().is_some_and(|s| s != "succeeded") {
            continue;
        }
        if let Some(ours) = &r.ours
            && rows::ours_of_payment(tx, ours, &payment.id)
                .await?
                .is_some()
        {
            // One the daemon sent: the gateway tells its outcome before our call's answer did.
            if let Some(o) = rows::lock_outgoing(tx, ours).await? {
                outgoing::succeeded(tx, &o, &r.id, now).await?;
            }
            continue;
        }
        refunds.push((r.id.clone(), r.amount));
    }
    // What counts as refunded already includes the daemon's own refunds still pending.
    let payment = payments::lock_by_gateway_id(tx, source, pi_id)
        .await?
        .unwrap_or(payment);
    let already = payment.amount_refunded;
    let total_refunded = event.amount_refunded.min(payment.amount);
    if event.refunds.is_empty() && total_refunded > already {
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
            status: rows::status::SUCCEEDED,
            idempotency_key: None,
            retainer_id: None,
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
            "refund",
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
pub(crate) async fn reverse_payment(
    tx: &mut Tx,
    payment_id: &str,
    customer_id: &str,
    currency: &str,
    amount: i64,
    to_credit: bool,
    refund_id: &str,
    kind: &str,
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
                // A retainer invoice paid by this payment loses that much of its deposit.
                super::retainers::reverse_deposit(tx, &part.id, part.amount, Some(payment_id), now)
                    .await?;
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
                        kind,
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
                // it back, from the invoices it paid since if it was spent.
                let mut left = from_credit;
                for (note, _) in balances::lock_overpayment_credit(tx, payment_id).await? {
                    if left == 0 {
                        break;
                    }
                    left -= credits::take_back(
                        tx,
                        Pool::Credit,
                        &note,
                        customer_id,
                        currency,
                        left,
                        kind,
                        Some(payment_id),
                        now,
                    )
                    .await?;
                }
                if left > 0 {
                    return Err(Error::permanent(format!(
                        "refund {refund_id}: the credit payment {payment_id} left is short by {left}"
                    )));
                }
            }
        }
    }
    Ok(())
}
