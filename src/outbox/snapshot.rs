//! The facts an email is about, read in the transaction of the event that causes it and stored
//! with the outbox row as JSON. A send or a resend renders from this snapshot, never from the
//! live rows, so a receipt shows the balance right after its payment however much later it goes.
//! The rows come from `store`; this turns them into the snapshot's plain types.

use serde::{Deserialize, Serialize};

use crate::store::customers::CustomerRow;
use crate::store::payments::PaymentRow;
use crate::store::refunds::RefundFacts;
use crate::store::{Result, Tx, charge_attempts, invoices, payments};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerSnap {
    pub id: String,
    pub name: String,
    pub email: String,
    pub timezone: String,
    pub currency: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LineSnap {
    pub description: String,
    pub quantity: String,
    pub unit_amount: i64,
    pub amount: i64,
    pub tax_rate: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InvoiceSnap {
    pub id: String,
    pub number: Option<String>,
    pub kind: String,
    pub status: String,
    pub currency: String,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub credits_applied: i64,
    pub retainer_applied: i64,
    pub amount_paid: i64,
    pub amount_due: i64,
    pub due_at: Option<i64>,
    pub finalized_at: Option<i64>,
    pub created_at: i64,
    pub lines: Vec<LineSnap>,
}

/// A card as the gateway describes it: brand and last 4 only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CardSnap {
    pub brand: String,
    pub last4: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentSnap {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub gateway: String,
    pub method: String,
    pub reference: Option<String>,
    pub card: Option<CardSnap>,
    pub at: i64,
}

/// What part of a payment went to one invoice, and what that invoice still owed right after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocationSnap {
    pub invoice_id: String,
    pub number: Option<String>,
    pub amount: i64,
    pub amount_due_after: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefundSnap {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub to_credit: bool,
    pub reason: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreditNoteSnap {
    pub id: String,
    pub amount: i64,
    pub remaining: i64,
    pub currency: String,
    pub source: String,
    pub reason: String,
    pub created_at: i64,
}

/// The next automatic charge of a subscription, as the reminder announces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChargeSnap {
    pub subscription_id: String,
    pub currency: String,
    pub period_start: i64,
    pub period_end: Option<i64>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub lines: Vec<LineSnap>,
    pub card: Option<CardSnap>,
}

/// One line of a monthly statement: a movement and the balance right after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatementLineSnap {
    pub at: i64,
    /// invoice, payment, credit, refund, retainer or adjustment.
    pub kind: String,
    pub reference: String,
    /// What the customer owes more (positive) or less (negative).
    pub amount: i64,
    pub balance: i64,
}

/// The statement of account of one calendar month in the customer's time zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatementSnap {
    /// The month as yyyymm (202701 = January 2027).
    pub month: i64,
    pub currency: String,
    /// The month's first instant, and the next month's first instant (exclusive).
    pub from: i64,
    pub to: i64,
    /// What the customer owed, net of credit and deposits, when the month began and ended.
    pub opening: i64,
    pub closing: i64,
    pub lines: Vec<StatementLineSnap>,
}

/// Everything any template may need; each kind fills its part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// When the event happened (the message's Date).
    pub at: i64,
    pub customer: CustomerSnap,
    pub invoice: Option<InvoiceSnap>,
    pub payment: Option<PaymentSnap>,
    pub allocations: Vec<AllocationSnap>,
    pub refund: Option<RefundSnap>,
    pub credit_note: Option<CreditNoteSnap>,
    pub charge: Option<ChargeSnap>,
    pub statement: Option<StatementSnap>,
    /// payment_failed: the failed attempt, when the next one is due, why the card was declined.
    pub attempt: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub decline: Option<String>,
    pub card: Option<CardSnap>,
    /// What the customer owes over all open invoices right after the event.
    pub outstanding: i64,
    /// Unspent credit right after the event.
    pub credit_balance: i64,
    /// sign_in: the one-time token the link carries, and when it stops working.
    pub sign_in: Option<SignInSnap>,
}

/// A sign-in link's token (the link itself is signed when rendered, see `crate::portal::links`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInSnap {
    pub token_id: String,
    pub expires_at: i64,
}

pub fn customer_of(row: &CustomerRow) -> CustomerSnap {
    CustomerSnap {
        id: row.id.clone(),
        name: row.name.clone(),
        email: row.email.clone(),
        timezone: row.timezone.clone(),
        currency: row.currency.clone(),
    }
}

/// The invoice with its lines, and its customer's id.
pub async fn invoice(tx: &mut Tx, id: &str) -> Result<Option<(InvoiceSnap, String)>> {
    let Some(r) = invoices::get_in(tx, id).await? else {
        return Ok(None);
    };
    let lines = invoices::lines_in(tx, id).await?;
    let snap = InvoiceSnap {
        id: r.id,
        number: r.number,
        kind: r.kind,
        status: r.status,
        currency: r.currency,
        period_start: r.period_start,
        period_end: r.period_end,
        subtotal: r.subtotal,
        tax: r.tax,
        total: r.total,
        credits_applied: r.credits_applied,
        retainer_applied: r.retainer_applied,
        amount_paid: r.amount_paid,
        amount_due: r.amount_due,
        due_at: r.due_at,
        finalized_at: r.finalized_at,
        created_at: r.created_at,
        lines: lines
            .into_iter()
            .map(|l| LineSnap {
                description: l.description,
                quantity: l.quantity,
                unit_amount: l.unit_amount,
                amount: l.amount,
                tax_rate: l.tax_rate,
            })
            .collect(),
    };
    Ok(Some((snap, r.customer_id)))
}

pub fn payment_of(row: &PaymentRow) -> PaymentSnap {
    PaymentSnap {
        id: row.id.clone(),
        amount: row.amount,
        currency: row.currency.clone(),
        gateway: row.gateway.clone(),
        method: row.method.clone(),
        reference: row.reference.clone(),
        card: card(row.brand.clone(), row.last4.clone()),
        at: row.at,
    }
}

/// Brand and last 4 when both are known; nothing else about a card is ever shown.
pub fn card(brand: Option<String>, last4: Option<String>) -> Option<CardSnap> {
    match (brand, last4) {
        (Some(brand), Some(last4)) if !last4.is_empty() => Some(CardSnap {
            brand,
            last4: last4
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        }),
        _ => None,
    }
}

/// How a payment was spread over invoices, with each invoice's amount due as it stands now (in
/// the payment's own transaction, that is right after it).
pub async fn allocations(
    tx: &mut Tx,
    payment_id: &str,
    invoice_id: Option<&str>,
    amount: i64,
) -> Result<Vec<AllocationSnap>> {
    let rows = payments::allocations_with_due(tx, payment_id).await?;
    if !rows.is_empty() {
        return Ok(rows
            .into_iter()
            .map(|(invoice_id, number, amount, due)| AllocationSnap {
                invoice_id,
                number,
                amount,
                amount_due_after: due,
            })
            .collect());
    }
    let Some(invoice_id) = invoice_id else {
        return Ok(Vec::new());
    };
    Ok(invoices::get_in(tx, invoice_id)
        .await?
        .map(|inv| AllocationSnap {
            invoice_id: invoice_id.to_string(),
            number: inv.number,
            amount,
            amount_due_after: inv.amount_due,
        })
        .into_iter()
        .collect())
}

pub fn refund_of(facts: RefundFacts) -> (RefundSnap, String) {
    let (id, payment_id, amount, currency, to_credit, reason, at) = facts;
    (
        RefundSnap {
            id,
            amount,
            currency,
            to_credit,
            reason,
            at,
        },
        payment_id,
    )
}

pub fn credit_note_of(row: &crate::store::balances::CreditNoteRow) -> CreditNoteSnap {
    CreditNoteSnap {
        id: row.id.clone(),
        amount: row.amount,
        remaining: row.remaining,
        currency: row.currency.clone(),
        source: row.source.clone(),
        reason: row.reason.clone(),
        created_at: row.created_at,
    }
}

/// The failed charge attempt: why it was declined and which card it was.
pub async fn charge_attempt(
    tx: &mut Tx,
    invoice_id: &str,
    attempt: i64,
) -> Result<Option<(Option<String>, Option<CardSnap>)>> {
    let row = charge_attempts::decline_of(tx, invoice_id, attempt).await?;
    Ok(row.map(|(code, message, brand, last4)| {
        let decline = message.or(code.map(|c| c.replace('_', " ")));
        (decline, card(brand, last4))
    }))
}
