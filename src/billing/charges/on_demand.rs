//! Charges asked for now (an operator, a portal's "Pay Now"): an invoice, in full or in part, or
//! a customer's whole balance, with a saved card. The attempt is committed first with its key,
//! like every attempt; a second charge while one is in flight is refused.

use settled_jobs::gateway::GatewayError;
use settled_jobs::status::AttemptStatus;

use super::send;
use crate::billing::{Billing, Error, Result};
use crate::store::charge_attempts::{self as attempts, AttemptRow, NewAttempt, Of};
use crate::store::{customers, invoices, payment_methods};

/// How a charge asked for now ended.
#[derive(Debug)]
pub enum Charged {
    /// The money is in (the attempt, now succeeded).
    Succeeded(AttemptRow),
    /// The gateway's answer is not known yet; it is asked again under the same key.
    Unknown(AttemptRow),
}

/// The saved method to charge: the one named (it must be this customer's) or the default.
async fn method_to_charge(b: &Billing, customer_id: &str, named: Option<&str>) -> Result<String> {
    match named {
        Some(pm) => payment_methods::get(&b.db, customer_id, pm)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| {
                Error::invalid(
                    "payment_method",
                    format!("{pm} is not a saved payment method of customer {customer_id}"),
                )
            }),
        None => payment_methods::default_of(&b.db, customer_id)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| {
                Error::conflict(
                    "no_payment_method",
                    format!("customer {customer_id} has no default payment method"),
                )
            }),
    }
}

fn gateway_ready(b: &Billing) -> Result<()> {
    if b.gateways.is_empty() {
        return Err(Error::conflict(
            "gateway_not_configured",
            "no payment gateway is configured (stripe.api_key)",
        ));
    }
    Ok(())
}

/// Sends an attempt claimed for an on-demand charge and reads back what was recorded: a decline
/// is an error (402), an answer not known yet is [`Charged::Unknown`].
async fn run_now(b: &Billing, attempt: AttemptRow) -> Result<Charged> {
    send(b, &attempt.id)
        .await
        .map_err(|e| Error::permanent(format!("recording charge attempt {}: {e}", attempt.id)))?;
    let after = attempts::get(&b.db, &attempt.id)
        .await?
        .ok_or_else(|| Error::permanent("the charge attempt vanished"))?;
    match after.status() {
        AttemptStatus::Failed if after.decline_code.as_deref() == Some(super::REJECTED) => {
            Err(Error::Gateway(GatewayError::Invalid {
                message: after
                    .failure_message
                    .clone()
                    .unwrap_or_else(|| "the gateway rejected the charge".into()),
                param: None,
            }))
        }
        AttemptStatus::Failed => Err(Error::Gateway(GatewayError::Declined {
            code: "card_declined".into(),
            decline_code: after.decline_code.clone(),
            message: after
                .failure_message
                .clone()
                .unwrap_or_else(|| "the charge was declined".into()),
            payment_intent_id: after.gateway_payment_id.clone(),
        })),
        AttemptStatus::Succeeded => Ok(Charged::Succeeded(after)),
        _ => Ok(Charged::Unknown(after)),
    }
}

/// Charges `amount` (all that is due when None) of an invoice now with a saved method (the
/// default when None).
pub async fn charge_now(
    b: &Billing,
    invoice_id: &str,
    amount: Option<i64>,
    payment_method: Option<&str>,
) -> Result<Charged> {
    let inv = invoices::get(&b.db, invoice_id)
        .await?
        .ok_or_else(|| Error::not_found("invoice", invoice_id))?;
    if !inv.status().is_collectible() || inv.amount_due == 0 {
        return Err(Error::conflict(
            "invoice_not_chargeable",
            format!(
                "invoice {invoice_id} is {} with nothing to charge",
                inv.status
            ),
        ));
    }
    let amount = amount.unwrap_or(inv.amount_due);
    if amount > inv.amount_due {
        return Err(Error::invalid("amount", "is more than the amount due"));
    }
    let pm = method_to_charge(b, &inv.customer_id, payment_method).await?;
    gateway_ready(b)?;
    let now = b.now();
    let mut tx = b.db.begin().await?;
    // Re-check under the locks (the customer, then the invoice): the amount due may have moved
    // since the read above.
    customers::lock(&mut tx, &inv.customer_id).await?;
    let locked = invoices::lock(&mut tx, invoice_id)
        .await?
        .ok_or_else(|| Error::not_found("invoice", invoice_id))?;
    if locked.status != inv.status || locked.amount_due < amount {
        return Err(Error::conflict(
            "invoice_changed",
            format!("invoice {invoice_id} changed while the charge was prepared; try again"),
        ));
    }
    let busy = || {
        Error::conflict(
            "charge_in_progress",
            format!(
                "a charge of invoice {invoice_id} is in progress; its outcome is not known yet"
            ),
        )
    };
    if attempts::in_flight(&mut tx, Of::Invoice(invoice_id)).await? {
        return Err(busy());
    }
    let attempt = attempts::insert(
        &mut tx,
        &NewAttempt {
            invoice_id: Some(invoice_id),
            customer_id: &inv.customer_id,
            amount,
            currency: &inv.currency,
            payment_method_id: Some(&pm),
            automatic: false,
            scheduled_at: now,
            started: true,
        },
        now,
    )
    .await?;
    if !attempts::reserve(&mut tx, &attempt.id, &[invoice_id.to_string()]).await? {
        return Err(busy());
    }
    tx.commit().await?;
    run_now(b, attempt).await
}

/// Charges everything the customer owes in its currency in one payment, allocated to its open
/// invoices oldest due first.
pub async fn charge_balance(
    b: &Billing,
    customer_id: &str,
    payment_method: Option<&str>,
) -> Result<Charged> {
    let customer = customers::get_row(&b.db, customer_id)
        .await?
        .ok_or_else(|| Error::not_found("customer", customer_id))?;
    let pm = method_to_charge(b, customer_id, payment_method).await?;
    gateway_ready(b)?;
    let now = b.now();
    let mut tx = b.db.begin().await?;
    customers::lock(&mut tx, customer_id).await?;
    let covered = invoices::lock_open_of(&mut tx, customer_id, &customer.currency).await?;
    let outstanding = invoices::outstanding(&mut tx, customer_id, &customer.currency).await?;
    if outstanding <= 0 {
        return Err(Error::conflict(
            "nothing_outstanding",
            format!(
                "customer {customer_id} owes nothing in {}",
                customer.currency
            ),
        ));
    }
    let busy = || {
        Error::conflict(
            "charge_in_progress",
            format!(
                "a charge for customer {customer_id} or one of its invoices is in progress; its outcome is not known yet"
            ),
        )
    };
    if attempts::in_flight(&mut tx, Of::Customer(customer_id)).await? {
        return Err(busy());
    }
    let attempt = attempts::insert(
        &mut tx,
        &NewAttempt {
            invoice_id: None,
            customer_id,
            amount: outstanding,
            currency: &customer.currency,
            payment_method_id: Some(&pm),
            automatic: false,
            scheduled_at: now,
            started: true,
        },
        now,
    )
    .await?;
    let covered: Vec<String> = covered.into_iter().map(|(id, _)| id).collect();
    if !attempts::reserve(&mut tx, &attempt.id, &covered).await? {
        return Err(busy());
    }
    tx.commit().await?;
    run_now(b, attempt).await
}
