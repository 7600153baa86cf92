//! Recording money that came in, whatever brought it (our own charge's reply, a gateway webhook,
//! an operator's record of a wire transfer): one payment row, unique on (gateway, gateway payment
//! id), spread over the invoice it names or the customer's open invoices oldest due first, the
//! excess kept as credit, every movement in the ledger, the receipt in the outbox, all in the
//! caller's transaction.

use chrono::{DateTime, Utc};
use settled_jobs::allocation::fill;
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::status::{Account, CreditSource, InvoiceKind, InvoiceStatus};

use super::ledger::{self, Entry};
use super::{Billing, Error, Result, credits};
use crate::store::payments::{self as rows, NewRow, PaymentRow};
use crate::store::{Tx, charge_attempts, customers, invoices, webhook_events};

pub use crate::gateway::OFFLINE;

#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    pub customer_id: &'a str,
    /// The invoice the payer meant; None = toward the customer's whole balance.
    pub invoice_id: Option<&'a str>,
    pub amount: i64,
    pub currency: &'a str,
    /// The gateway's name, "offline", or a Standard Webhooks source name.
    pub gateway: &'a str,
    /// The gateway's id (pi_...); None for offline records, which are never deduplicated.
    pub gateway_payment_id: Option<&'a str>,
    /// card, wire, check, cash, other, bank_transfer ...
    pub method: &'a str,
    pub reference: Option<&'a str>,
    pub brand: Option<&'a str>,
    pub last4: Option<&'a str>,
    pub at: DateTime<Utc>,
    /// Keep it all as credit instead of paying open invoices (money that came with no invoice).
    pub unapplied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new payment with this id.
    New(String),
    /// The gateway payment was already recorded (our reply and its webhook both tell it).
    Existing(String),
}

impl Recorded {
    pub fn id(&self) -> &str {
        match self {
            Recorded::New(id) | Recorded::Existing(id) => id,
        }
    }
}

/// Records a payment and applies it. Idempotent on (gateway, gateway payment id). Refused (and
/// nothing written): money from a gateway without the gateway's id for it (it could not be
/// told apart from a second delivery), and money for an invoice in another currency (it would
/// become credit in a currency nothing is billed in).
pub async fn record(tx: &mut Tx, p: &NewPayment<'_>, now: DateTime<Utc>) -> Result<Recorded> {
    if p.gateway != OFFLINE && p.gateway_payment_id.is_none_or(str::is_empty) {
        return Err(Error::permanent(format!(
            "a payment from {} carries no id of its own; it is not recorded",
            p.gateway
        )));
    }
    if let Some(invoice_id) = p.invoice_id
        && let Some(inv) = invoices::get_in(tx, invoice_id).await?
        && inv.currency != p.currency
    {
        return Err(Error::permanent(format!(
            "the payment is in {} but invoice {invoice_id} is in {}; it is not recorded",
            p.currency, inv.currency
        )));
    }
    let id = new_id(prefix::PAYMENT);
    let row = NewRow {
        id: &id,
        customer_id: p.customer_id,
        invoice_id: p.invoice_id,
        amount: p.amount,
        currency: p.currency,
        gateway: p.gateway,
        gateway_payment_id: p.gateway_payment_id,
        method: p.method,
        reference: p.reference,
        brand: p.brand,
        last4: p.last4,
        at: p.at,
    };
    if !rows::insert(tx, &row, now).await? {
        let existing = match p.gateway_payment_id {
            Some(gid) => rows::id_by_gateway_id(tx, p.gateway, gid).await?,
            None => None,
        };
        let existing = existing.ok_or_else(|| {
            Error::permanent(format!(
                "payment {:?} of {} neither new nor recorded",
                p.gateway_payment_id, p.gateway
            ))
        })?;
        return Ok(Recorded::Existing(existing));
    }
    allocate(tx, &id, p, now).await?;
    crate::outbox::receipt(tx, &id, now).await?;
    // A refund or dispute of this payment that arrived first is waiting for it.
    if let Some(gid) = p.gateway_payment_id {
        webhook_events::wake_waiting(tx, p.gateway, gid).await?;
    }
    tracing::info!(
        payment_id = %id,
        customer_id = %p.customer_id,
        invoice_id = p.invoice_id.unwrap_or(""),
        gateway = p.gateway,
        "payment recorded"
    );
    Ok(Recorded::New(id))
}

/// Spreads a new payment over the invoice it names, or over the customer's open invoices in its
/// currency oldest due first; what is left becomes credit.
async fn allocate(
    tx: &mut Tx,
    payment_id: &str,
    p: &NewPayment<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    // The lock order of every money path: the customer, then its invoices by id.
    customers::lock(tx, p.customer_id).await?;
    let targets: Vec<(String, i64)> = match p.invoice_id {
        _ if p.unapplied => Vec::new(),
        Some(invoice_id) => invoices::lock_collectible(tx, invoice_id, p.currency)
            .await?
            .into_iter()
            .collect(),
        None => invoices::lock_open_of(tx, p.customer_id, p.currency).await?,
    };
    let spread = fill(
        p.amount,
        targets.iter().map(|(id, due)| (id.as_str(), *due)),
    );
    for part in &spread.parts {
        apply_to_invoice(tx, &part.id, payment_id, part.amount, now).await?;
        ledger::record(
            tx,
            &[Entry {
                customer_id: p.customer_id,
                currency: p.currency,
                account: Account::Receivable,
                kind: "payment",
                amount: -part.amount,
                invoice_id: Some(&part.id),
                payment_id: Some(payment_id),
                object_id: None,
                memo: p.reference,
                at: now,
            }],
        )
        .await?;
    }
    if spread.rest > 0 {
        credits::add_credit(
            tx,
            p.customer_id,
            p.currency,
            spread.rest,
            CreditSource::Overpayment,
            Some(payment_id),
            &format!("Excess of payment {payment_id}"),
            now,
        )
        .await?;
    }
    Ok(())
}

/// Adds `applied` of a payment to an invoice: it is `paid` once nothing is due (a paid retainer
/// invoice makes its deposit), otherwise `partially_paid`. Scheduled automatic
/// attempts that never started are dropped once it is paid.
pub async fn apply_to_invoice(
    tx: &mut Tx,
    invoice_id: &str,
    payment_id: &str,
    applied: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let paid = invoices::add_payment(tx, invoice_id, applied, now).await?;
    rows::allocate(tx, payment_id, invoice_id, applied).await?;
    if paid.status == InvoiceStatus::Paid {
        charge_attempts::drop_unsent_of(tx, invoice_id).await?;
        if paid.kind == InvoiceKind::Retainer.as_str() {
            super::deposits::deposit_if_paid(tx, invoice_id, Some(payment_id), now).await?;
        }
    }
    Ok(())
}

/// An operator's record of money that arrived by other means (wire, cheque, cash), toward an
/// invoice or the whole balance; returns the payment.
pub async fn record_offline(
    b: &Billing,
    customer_id: &str,
    invoice_id: Option<&str>,
    amount: i64,
    currency: &str,
    method: &str,
    reference: Option<&str>,
) -> Result<PaymentRow> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let recorded = record(
        &mut tx,
        &NewPayment {
            customer_id,
            invoice_id,
            amount,
            currency,
            gateway: OFFLINE,
            gateway_payment_id: None,
            method,
            reference,
            brand: None,
            last4: None,
            at: now,
            unapplied: false,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    rows::get(&b.db, recorded.id())
        .await?
        .ok_or_else(|| Error::permanent("the payment vanished after it was recorded"))
}
