//! The ledger: every money movement as append-only rows on three accounts per customer and
//! currency, written in the same transaction as the change it records. This module is the only
//! one that writes ledger rows.
//!
//! - `receivable`: what the customer owes = the amount due of its open invoices;
//! - `credit`: credit it holds = the remaining amount of its credit notes;
//! - `retainer`: unused deposits = the remaining amount of its retainers.
//!
//! The invariant [`check`] proves (and `GET /v1/ledger/check` reports):
//! - per customer and currency, Σ receivable = Σ amount_due of open, partially paid and past-due
//!   invoices; Σ credit = Σ remaining of credit notes; Σ retainer = Σ remaining of retainers;
//! - per invoice, amount_due = total − credits_applied − retainer_applied − Σ its payment
//!   allocations (a refund that reopens an invoice takes its part of the allocation back), and
//!   amount_paid = Σ its allocations; an invoice is `paid` exactly when nothing is due;
//! - no credit note or retainer holds less than zero or more than it started with;
//! - per payment, Σ refunds = amount_refunded ≤ amount.

use std::collections::BTreeMap;

use settled_jobs::status::Account;

use super::Result;
use crate::store::{self, Db, Tx, audit};

pub use crate::store::ledger::Entry;

/// Appends the movements, in order, in the caller's transaction.
pub async fn record(tx: &mut Tx, entries: &[Entry<'_>]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    store::ledger::insert_many(tx, entries).await?;
    Ok(())
}

/// Problems found when the ledger's sums are compared with the records they summarise; empty
/// when every cent is accounted for.
pub async fn check(db: &Db) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for account in Account::ALL {
        let records = match account {
            Account::Receivable => audit::receivable_sums(db).await?,
            Account::Credit => audit::credit_sums(db).await?,
            Account::Retainer => audit::retainer_sums(db).await?,
        };
        let mut sums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for (c, cur, v) in store::ledger::sums(db, *account).await? {
            sums.entry((c, cur)).or_default().0 += v;
        }
        for (c, cur, v) in records {
            sums.entry((c, cur)).or_default().1 += v;
        }
        for ((customer, currency), (in_ledger, in_records)) in sums {
            if in_ledger != in_records {
                problems.push(format!(
                    "{customer} {currency} {account}: ledger {in_ledger}, records {in_records}"
                ));
            }
        }
    }
    for (id, status, total, credits, retainer, paid, due, allocated) in
        audit::invoice_figures(db).await?
    {
        if paid != allocated || due != total - credits - retainer - allocated || due < 0 {
            problems.push(format!(
                "invoice {id} ({status}): total {total} - credit {credits} - retainer {retainer} - paid {allocated} \
                 should be the amount due {due} (amount_paid {paid})"
            ));
        }
        if (due == 0) != (status == "paid") && status != "uncollectible" {
            problems.push(format!("invoice {id} is {status} with {due} due"));
        }
    }
    let impossible = audit::impossible_balances(db).await?;
    if impossible > 0 {
        problems.push(format!(
            "{impossible} credit notes or retainers hold an impossible balance"
        ));
    }
    for (id, amount, refunded, refunds) in audit::payment_refunds(db).await? {
        if refunded != refunds || refunded > amount {
            problems.push(format!(
                "payment {id}: {amount} received, {refunded} marked refunded, refunds total {refunds}"
            ));
        }
    }
    Ok(problems)
}
