//! Retainer deposits as they are made: a retainer invoice that became paid, however it was paid,
//! holds one deposit. Below `credits`, `payments` and `retainers`, which all may pay an invoice.

use chrono::{DateTime, Utc};
use settled_jobs::status::{Account, InvoiceKind, InvoiceStatus};

use super::Result;
use super::ledger::{self, Entry};
use crate::store::{Tx, balances, invoices};

/// A retainer invoice that is paid, whatever paid it (payments, credit), holds one deposit of
/// what it charged for the retainer: its total less any late fee. Called where an invoice may
/// have become paid; does nothing for other invoices. Paid again after part of its deposit was
/// taken back, the deposit grows back.
pub async fn deposit_if_paid(
    tx: &mut Tx,
    invoice_id: &str,
    payment_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(inv) = invoices::get_in(tx, invoice_id).await? else {
        return Ok(());
    };
    if inv.kind != InvoiceKind::Retainer.as_str() || inv.status() != InvoiceStatus::Paid {
        return Ok(());
    }
    let deposit = inv.total - invoices::late_fees_of(tx, invoice_id).await?;
    if deposit <= 0 {
        return Ok(());
    }
    let (retainer_id, grew) = balances::set_deposit(
        tx,
        &inv.customer_id,
        invoice_id,
        payment_id,
        &inv.currency,
        deposit,
        now,
    )
    .await?;
    if grew > 0 {
        ledger::record(
            tx,
            &[Entry {
                customer_id: &inv.customer_id,
                currency: &inv.currency,
                account: Account::Retainer,
                kind: "retainer_deposit",
                amount: grew,
                invoice_id: Some(invoice_id),
                payment_id,
                object_id: Some(&retainer_id),
                memo: None,
                at: now,
            }],
        )
        .await?;
        tracing::info!(invoice_id, retainer_id = %retainer_id, amount = grew, "retainer deposit made");
    }
    Ok(())
}
