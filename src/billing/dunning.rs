//! What follows a failed automatic charge, and what an invoice left unpaid too long costs. The
//! rules (which declines are hard, when the next attempt falls due, how much a late fee is) are
//! in `settled_jobs::dunning`; this applies them to the books.

use chrono::{DateTime, Utc};
use settled_jobs::dunning::{is_hard_decline, next_attempt_at};
use settled_jobs::job::Job;
use settled_jobs::money::Currency;
use settled_jobs::status::Account;

use super::ledger::{self, Entry};
use super::{Billing, Error, Result};
use crate::store::charge_attempts::{self as attempts, AttemptRow, NewAttempt};
use crate::store::{Tx, from_ms, invoices, queue};

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
            if at <= now {
                queue::enqueue(
                    tx,
                    &Job::ChargeInvoice {
                        invoice_id: invoice_id.to_string(),
                        attempt: next_attempt.attempt,
                    },
                    b.max_attempts(),
                )
                .await?;
            }
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

/// Invoices owed a late fee, for the sweep (only when late fees are configured).
pub async fn late_fee_jobs(b: &Billing, now: DateTime<Utc>) -> Result<Vec<Job>> {
    let c = &b.config.billing;
    if c.late_fee_amount.is_empty() && c.late_fee_percent.is_empty() {
        return Ok(Vec::new());
    }
    let cutoff = now - chrono::Duration::days(i64::from(c.late_fee_days));
    let ids = invoices::owing_late_fee(&b.db, cutoff, 5000).await?;
    Ok(ids
        .into_iter()
        .map(|invoice_id| Job::ApplyLateFee { invoice_id })
        .collect())
}

/// The apply_late_fee job: once per invoice, a `late_fee` line for the configured fee, added to
/// the total and the amount due, and recorded in the ledger.
pub async fn apply_late_fee(b: &Billing, invoice_id: &str) -> Result<()> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some((customer_id, currency, due, Some(due_at), number)) =
        invoices::lock_owing_late_fee(&mut tx, invoice_id).await?
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
    invoices::add_late_fee(&mut tx, invoice_id, fee, now).await?;
    ledger::record(
        &mut tx,
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
    tx.commit().await?;
    tracing::info!(invoice_id, fee, "late fee added");
    Ok(())
}
