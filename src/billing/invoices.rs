//! An invoice's life from draft to void: one-off invoices, finalising (a gapless number, the
//! ledger, credit and retainer applied, the invoice email, the first automatic charge, all in
//! one transaction), drafts whose review window has passed, and voiding.

use chrono::{DateTime, Utc};
use settled_jobs::invoice::format_number;
use settled_jobs::job::WorkKind;
use settled_jobs::records::NewInvoice;
use settled_jobs::status::{Account, InvoiceStatus};

use super::ledger::{self, Entry};
use super::{Billing, Error, Result, charges, credits};
use crate::store::balances::Pool;
use crate::store::charge_attempts::{self as attempts, Of};
use crate::store::{Tx, invoices, payments, wall_ms, work_failures};

/// Writes a one-off invoice and finalises it at once (unless it has a review window).
pub async fn create(b: &Billing, inv: &NewInvoice) -> Result<()> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    insert(b, &mut tx, inv, now).await?;
    tx.commit().await?;
    tracing::info!(invoice_id = %inv.id, customer_id = %inv.customer_id, "invoice created");
    Ok(())
}

/// Inserts the invoice and its lines in `tx`; finalises it at once unless it has a draft window.
/// Returns false when the period already has its invoice (the natural key held).
pub async fn insert(
    b: &Billing,
    tx: &mut Tx,
    inv: &NewInvoice,
    now: DateTime<Utc>,
) -> Result<bool> {
    if !invoices::insert_draft(tx, inv, now).await? {
        return Ok(false);
    }
    if inv.finalize_at.is_none() {
        finalize(b, tx, &inv.id, now).await?;
    }
    Ok(true)
}

/// Numbers a draft from the gapless sequence and opens it, in the caller's transaction: the
/// ledger row, credit then retainer applied, the invoice email, the first automatic charge. A
/// paid-in-full invoice (total 0) is paid at once.
pub async fn finalize(
    b: &Billing,
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let seq = invoices::take_numbers(tx, 1).await?;
    let number = format_number(&b.config.billing.number_format, now, seq);
    let Some(opened) = invoices::open_draft(tx, invoice_id, &number, now).await? else {
        // Not a draft any more: the numbering must not advance, so the transaction must fail.
        return Err(crate::store::Error::not_found().into());
    };
    ledger::record(
        tx,
        &[Entry {
            customer_id: &opened.customer_id,
            currency: &opened.currency,
            account: Account::Receivable,
            kind: "invoice",
            amount: opened.total,
            invoice_id: Some(invoice_id),
            payment_id: None,
            object_id: None,
            memo: Some(&number),
            at: now,
        }],
    )
    .await?;
    credits::on_finalized(tx, invoice_id, &opened.customer_id, now).await?;
    crate::outbox::invoice_issued(tx, invoice_id, now).await?;
    charges::schedule_first(tx, invoice_id, now).await?;
    Ok(())
}

/// One batch of drafts whose review window has passed: each gets its number in a savepoint of
/// its own, in one transaction. Returns how many it took.
pub async fn drain_drafts(b: &Billing) -> Result<usize> {
    let now = b.now();
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let ids = invoices::claim_drafts(&mut tx, now, wall, 100).await?;
    let mut done = Vec::new();
    for id in &ids {
        tx.savepoint().await?;
        match finalize(b, &mut tx, id, now).await {
            Ok(()) => {
                tx.release_savepoint().await?;
                done.push(id.as_str());
            }
            Err(Error::Store(e)) if !e.blames_the_data() && !e.is_not_found() => {
                return Err(Error::Store(e));
            }
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                work_failures::set_aside(&mut tx, WorkKind::Drafts, id, &e.to_string(), wall, None)
                    .await?;
                tracing::error!(invoice_id = %id, error = %e, "draft set aside");
            }
        }
    }
    work_failures::clear(&mut tx, WorkKind::Drafts, &done).await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Voids an invoice without payments: applied credit and retainer go back to the customer, the
/// amount leaves what the customer owes, scheduled charges are dropped.
pub async fn void(b: &Billing, invoice_id: &str) -> Result<()> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some(inv) = invoices::lock(&mut tx, invoice_id).await? else {
        return Err(Error::not_found("invoice", invoice_id));
    };
    let allocated = payments::allocations_to(&mut tx, invoice_id).await?;
    if inv.amount_paid > 0 || allocated > 0 {
        return Err(Error::conflict(
            "invoice_has_payments",
            format!("invoice {invoice_id} has payments recorded; refund them instead of voiding"),
        ));
    }
    let status = inv.status();
    if !matches!(
        status,
        InvoiceStatus::Draft | InvoiceStatus::Open | InvoiceStatus::PastDue | InvoiceStatus::Paid
    ) {
        return Err(Error::conflict(
            "invoice_not_voidable",
            format!("invoice {invoice_id} is {status}"),
        ));
    }
    if attempts::in_flight(&mut tx, Of::Invoice(invoice_id)).await? {
        return Err(Error::conflict(
            "charge_in_progress",
            format!(
                "a charge of invoice {invoice_id} is in progress; its outcome is not known yet"
            ),
        ));
    }
    // A paid retainer invoice's deposit goes with it (from the invoices it paid, if spent).
    super::retainers::reverse_deposit(&mut tx, invoice_id, inv.total, None, now).await?;
    for pool in [Pool::Credit, Pool::Retainer] {
        credits::release(
            &mut tx,
            pool,
            invoice_id,
            &inv.customer_id,
            &inv.currency,
            now,
        )
        .await?;
    }
    if status != InvoiceStatus::Draft {
        ledger::record(
            &mut tx,
            &[Entry {
                customer_id: &inv.customer_id,
                currency: &inv.currency,
                account: Account::Receivable,
                kind: "void",
                amount: -inv.total,
                invoice_id: Some(invoice_id),
                payment_id: None,
                object_id: None,
                memo: inv.number.as_deref(),
                at: now,
            }],
        )
        .await?;
    }
    invoices::set_void(&mut tx, invoice_id, now).await?;
    attempts::drop_unsent_of(&mut tx, invoice_id).await?;
    tx.commit().await?;
    tracing::info!(invoice_id, "invoice voided");
    Ok(())
}
