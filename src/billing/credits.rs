//! Credit the customer holds (credit notes, overpayments, refunds kept as credit) and how held
//! money is spent on invoices: oldest first, up to what the invoice owes, each piece recorded as
//! an application so voiding the invoice gives it back. Retainer deposits are spent the same way
//! (`retainers` calls [`apply`] with the retainer pool).

use chrono::{DateTime, Utc};
use settled_jobs::allocation::fill;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::status::{Account, CreditSource, InvoiceKind, InvoiceStatus};

use super::ledger::{self, Entry};
use super::{Billing, Result};
use crate::store::balances::{self, Pool};
use crate::store::invoices::{self, AppliedFrom};
use crate::store::{Tx, charge_attempts, customers};

/// The ledger words for one pool: its account and what applying and releasing it are called.
struct Words {
    account: Account,
    applied: &'static str,
    released: &'static str,
    column: AppliedFrom,
}

fn words(pool: Pool) -> Words {
    match pool {
        Pool::Credit => Words {
            account: Account::Credit,
            applied: "credit_applied",
            released: "credit_released",
            column: AppliedFrom::Credit,
        },
        Pool::Retainer => Words {
            account: Account::Retainer,
            applied: "retainer_applied",
            released: "retainer_released",
            column: AppliedFrom::Retainer,
        },
    }
}

/// Issues credit of `amount` (a credit note) and records it; returns the credit note's id.
#[allow(clippy::too_many_arguments)]
pub async fn add_credit(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    amount: i64,
    source: CreditSource,
    source_id: Option<&str>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<String> {
    let id = new_id(prefix::CREDIT_NOTE);
    balances::insert_credit_note(
        tx,
        &id,
        customer_id,
        currency,
        amount,
        source.as_str(),
        source_id,
        reason,
        now,
    )
    .await?;
    ledger::record(
        tx,
        &[Entry {
            customer_id,
            currency,
            account: Account::Credit,
            kind: source.as_str(),
            amount,
            invoice_id: None,
            payment_id: source_id,
            object_id: Some(&id),
            memo: Some(reason),
            at: now,
        }],
    )
    .await?;
    Ok(id)
}

/// Takes `amount` of one entry of `pool` away for good (the payment it came from was refunded or
/// reversed): from what is left of it first, then from what of it was applied to invoices, newest
/// first, which reopen for that much. Records every movement; `kind` names the ledger row of the
/// amount leaving. Returns how much was taken (less when the entry held less).
#[allow(clippy::too_many_arguments)]
pub async fn take_back(
    tx: &mut Tx,
    pool: Pool,
    entry_id: &str,
    customer_id: &str,
    currency: &str,
    amount: i64,
    kind: &str,
    payment_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<i64> {
    if amount <= 0 {
        return Ok(0);
    }
    let w = words(pool);
    let (taken, released) = balances::take_back(tx, pool, entry_id, amount, now).await?;
    for (invoice_id, x) in released {
        invoices::unapply(tx, &invoice_id, w.column, x, now).await?;
        let entry = |account| Entry {
            customer_id,
            currency,
            account,
            kind: w.released,
            amount: x,
            invoice_id: Some(&invoice_id),
            payment_id: None,
            object_id: Some(entry_id),
            memo: None,
            at: now,
        };
        ledger::record(tx, &[entry(Account::Receivable), entry(w.account)]).await?;
        tracing::info!(
            invoice_id = %invoice_id,
            amount = x,
            source = w.account.as_str(),
            "balance taken back from an invoice; it is due again"
        );
    }
    ledger::record(
        tx,
        &[Entry {
            customer_id,
            currency,
            account: w.account,
            kind,
            amount: -taken,
            invoice_id: None,
            payment_id,
            object_id: Some(entry_id),
            memo: None,
            at: now,
        }],
    )
    .await?;
    Ok(taken)
}

/// Spends up to `limit` (all that fits when None) of the customer's `pool` on a collectible
/// invoice, oldest first: each piece is an application, its entry goes down, and both ledger
/// accounts move; the invoice's amount due goes down by the total, which is returned. A
/// retainer invoice is never paid from the retainer; one paid from credit makes its deposit.
pub async fn apply(
    tx: &mut Tx,
    pool: Pool,
    invoice_id: &str,
    limit: Option<i64>,
    now: DateTime<Utc>,
) -> Result<i64> {
    let Some(inv) = invoices::lock(tx, invoice_id).await? else {
        return Ok(0);
    };
    if !inv.status().is_collectible() {
        return Ok(0);
    }
    if pool == Pool::Retainer && inv.kind == InvoiceKind::Retainer.as_str() {
        return Ok(0);
    }
    let want = limit.map_or(inv.amount_due, |l| l.min(inv.amount_due));
    let available = balances::lock_available(tx, pool, &inv.customer_id, &inv.currency).await?;
    let spread = fill(
        want,
        available.iter().map(|(id, left)| (id.as_str(), *left)),
    );
    let w = words(pool);
    for part in &spread.parts {
        balances::spend_on(tx, pool, &part.id, invoice_id, part.amount, now).await?;
        let entry = |account| Entry {
            customer_id: &inv.customer_id,
            currency: &inv.currency,
            account,
            kind: w.applied,
            amount: -part.amount,
            invoice_id: Some(invoice_id),
            payment_id: None,
            object_id: Some(&part.id),
            memo: None,
            at: now,
        };
        ledger::record(tx, &[entry(Account::Receivable), entry(w.account)]).await?;
    }
    let total = spread.placed();
    if total > 0 {
        let status = invoices::reduce_due(tx, invoice_id, w.column, total, now).await?;
        if status == InvoiceStatus::Paid {
            charge_attempts::drop_unsent_of(tx, invoice_id).await?;
            super::deposits::deposit_if_paid(tx, invoice_id, None, now).await?;
        }
        tracing::info!(
            invoice_id,
            applied = total,
            source = w.account.as_str(),
            "balance applied"
        );
    }
    Ok(total)
}

/// Gives back everything of `pool` applied to an invoice: each application is released, its
/// amount returns to the entry, and both ledger accounts move back.
pub async fn release(
    tx: &mut Tx,
    pool: Pool,
    invoice_id: &str,
    customer_id: &str,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let w = words(pool);
    for (entry_id, amount) in balances::release_from(tx, pool, invoice_id, now).await? {
        let entry = |account| Entry {
            customer_id,
            currency,
            account,
            kind: w.released,
            amount,
            invoice_id: Some(invoice_id),
            payment_id: None,
            object_id: Some(&entry_id),
            memo: None,
            at: now,
        };
        ledger::record(tx, &[entry(Account::Receivable), entry(w.account)]).await?;
    }
    Ok(())
}

/// On finalising: credit first, then the retainer if the customer opted in.
pub async fn on_finalized(
    tx: &mut Tx,
    invoice_id: &str,
    customer_id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    apply(tx, Pool::Credit, invoice_id, None, now).await?;
    let opted_in = customers::get_in(tx, customer_id)
        .await?
        .is_some_and(|c| c.apply_retainer);
    if opted_in {
        apply(tx, Pool::Retainer, invoice_id, None, now).await?;
    }
    Ok(())
}

/// `POST /v1/credit_notes`: issues credit to a customer in its currency, with its email.
pub async fn issue_credit_note(
    b: &Billing,
    customer_id: &str,
    currency: &str,
    amount: i64,
    reason: &str,
) -> Result<String> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let id = add_credit(
        &mut tx,
        customer_id,
        currency,
        amount,
        CreditSource::Manual,
        None,
        reason,
        now,
    )
    .await?;
    crate::outbox::credit_note(&mut tx, &id, now).await?;
    tx.commit().await?;
    tracing::info!(credit_note_id = %id, customer_id, "credit note issued");
    Ok(id)
}
