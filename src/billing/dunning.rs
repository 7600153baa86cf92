//! What follows a failed automatic charge, and what an invoice left unpaid too long costs. The
//! rules (which declines are hard, when the next attempt falls due, how much a late fee is) are
//! in `settled_jobs::dunning`; this applies them to the books.

use chrono::{DateTime, Utc};
use settled_jobs::dunning::{is_hard_decline, next_attempt_at};
use settled_jobs::job::WorkKind;
use settled_jobs::money::Currency;
use settled_jobs::status::Account;

use super::ledger::{self, Entry};
use super::{Billing, Error, Result};
use crate::store::charge_attempts::{self as attempts, AttemptRow, NewAttempt};
use crate::store::{Tx, from_ms, invoices, wall_ms, work_failures};

#[derive(Debug, Clone)]
pub struct ChargeFailure {
    pub code: String,
    pub message: String,
    pub payment_intent_id: Option<String>,
}

/// Closes a failed attempt and, for automatic ones, walks the dunning schedule: the next attempt
/// on its date, or — after a hard decline or the last retry — the invoice is past due.
pub async fn mark_failed(
    b: &Billing,
    tx: &mut Tx,
    a: &AttemptRow,
    f: &ChargeFailure,
    now: DateTime<Utc>,
) -> Result<()> {
    attempts::set_failed(
        tx,
        &a.id,
        &f.code,
        &f.message,
        f.payment_intent_id.as_deref(),
        now,
    )
    .await?;
    work_failures::clear(tx, WorkKind::Charges, &[&a.id]).await?;
    tracing::info!(
        invoice_id = a.invoice_id.as_deref().unwrap_or(""),
        customer_id = %a.customer_id,
        attempt = a.attempt,
        decline_code = %f.code,
        "charge failed"
    );
    let Some(invoice_id) = a.invoice_id.as_deref() else {
        return Ok(());
    };
    if !a.automatic {
        return Ok(());
    }
    let failures = attempts::automatic_failures(tx, invoice_id).await?;
    let hard = is_hard_decline(&f.code, None);
    let next = if hard {
        None
    } else {
        next_attempt_at(
            &b.config.billing.retry_days,
            failures as usize,
            from_ms(a.scheduled_at),
        )
    };
    match next {
        Some(at) => {
            let due = invoices::get_in(tx, invoice_id)
                .await?
                .map(|i| i.amount_due)
                .unwrap_or(a.amount);
            let next_attempt = attempts::insert(
                tx,
                &NewAttempt {
                    invoice_id: Some(invoice_id),
                    customer_id: &a.customer_id,
                    amount: due,
                    currency: &a.currency,
                    payment_method_id: None,
                    automatic: true,
                    scheduled_at: at,
                    started: false,
                },
                now,
            )
            .await?;
            attempts::set_next_attempt_at(tx, &a.id, at).await?;
            tracing::debug!(
                invoice_id,
                attempt = next_attempt.attempt,
                "next automatic charge scheduled"
            );
            crate::outbox::payment_failed(tx, invoice_id, a.attempt, Some(at), now).await?;
        }
        None => {
            invoices::set_past_due(tx, invoice_id, now).await?;
            tracing::warn!(
                invoice_id,
                customer_id = %a.customer_id,
                hard_decline = hard,
                decline_code = %f.code,
                "dunning ended; the invoice is past due"
            );
            crate::outbox::payment_failed(tx, invoice_id, a.attempt, None, now).await?;
            crate::outbox::final_notice(tx, invoice_id, now).await?;
        }
    }
    Ok(())
}

/// The cutoff of late fees at `now`: invoices due before it owe one (None: late fees are off).
pub fn late_fee_cutoff(b: &Billing, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let c = &b.config.billing;
    if c.late_fee_amount.is_empty() && c.late_fee_percent.is_empty() {
        return None;
    }
    Some(now - chrono::Duration::days(i64::from(c.late_fee_days)))
}

/// One batch of overdue invoices owed a late fee: each gets its fee in a savepoint of its own, in
/// one transaction. Returns how many it took.
pub async fn drain_late_fees(b: &Billing) -> Result<usize> {
    let now = b.now();
    let Some(cutoff) = late_fee_cutoff(b, now) else {
        return Ok(0);
    };
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let ids = invoices::claim_late_fees(&mut tx, cutoff, wall, 100).await?;
    let mut done = Vec::new();
    for id in &ids {
        tx.savepoint().await?;
        match apply_late_fee(b, &mut tx, id, now).await {
            Ok(()) => {
                tx.release_savepoint().await?;
                done.push(id.as_str());
            }
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                work_failures::set_aside(
                    &mut tx,
                    WorkKind::LateFees,
                    id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::error!(invoice_id = %id, error = %e, "late fee set aside");
            }
        }
    }
    work_failures::clear(&mut tx, WorkKind::LateFees, &done).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Once per invoice, a `late_fee` line for the configured fee, added to the total and the
/// amount due, and recorded in the ledger, in the caller's transaction.
async fn apply_late_fee(
    b: &Billing,
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some((customer_id, currency, due, Some(due_at), number)) =
        invoices::lock_owing_late_fee(tx, invoice_id).await?
    else {
        return Ok(());
    };
    let days = i64::from(b.config.billing.late_fee_days);
    if from_ms(due_at) + chrono::Duration::days(days) > now {
        return Ok(());
    }
    let cur = Currency::parse(&currency)
        .map_err(|e| Error::permanent(format!("invoice {invoice_id}: {e}")))?;
    let Some(fee) = b.config.billing.late_fee(cur) else {
        return Ok(());
    };
    let fee = fee
        .amount(due)
        .map_err(|e| Error::permanent(format!("late fee for {invoice_id}: {e}")))?;
    if fee <= 0 {
        return Ok(());
    }
    invoices::add_late_fee(tx, invoice_id, fee, now).await?;
    ledger::record(
        tx,
        &[Entry {
            customer_id: &customer_id,
            currency: &currency,
            account: Account::Receivable,
            kind: "late_fee",
            amount: fee,
            invoice_id: Some(invoice_id),
            payment_id: None,
            object_id: None,
            memo: number.as_deref(),
            at: now,
        }],
    )
    .await?;
    tracing::info!(invoice_id, fee, "late fee added");
    Ok(())
}
