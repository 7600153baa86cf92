//! The facts an email is about, read in the transaction of the event that causes it and stored
//! with the outbox row as JSON. A send or a resend renders from this snapshot, never from the
//! live rows, so a receipt shows the balance right after its payment however much later it goes.

use serde::{Deserialize, Serialize};

use crate::store::{Tx, on_tx};

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
}

pub async fn customer(tx: &mut Tx, id: &str) -> Result<Option<CustomerSnap>, sqlx::Error> {
    let row: Option<(String, String, String, String, String)> = on_tx!(tx, c => {
        sqlx::query_as("SELECT id, name, email, timezone, currency FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    });
    Ok(
        row.map(|(id, name, email, timezone, currency)| CustomerSnap {
            id,
            name,
            email,
            timezone,
            currency,
        }),
    )
}

/// Every billing contact, in the order the customer gave them.
pub async fn recipients(tx: &mut Tx, customer_id: &str) -> Result<Vec<String>, sqlx::Error> {
    on_tx!(tx, c => {
        sqlx::query_scalar(
            "SELECT email FROM customer_billing_emails WHERE customer_id = $1 ORDER BY position",
        )
        .bind(customer_id)
        .fetch_all(&mut *c)
        .await
    })
}

#[derive(sqlx::FromRow)]
struct InvoiceRead {
    id: String,
    number: Option<String>,
    kind: String,
    status: String,
    currency: String,
    period_start: Option<i64>,
    period_end: Option<i64>,
    subtotal: i64,
    tax: i64,
    total: i64,
    credits_applied: i64,
    retainer_applied: i64,
    amount_paid: i64,
    amount_due: i64,
    due_at: Option<i64>,
    finalized_at: Option<i64>,
    customer_id: String,
    created_at: i64,
}

/// The invoice with its lines, and its customer's id.
pub async fn invoice(tx: &mut Tx, id: &str) -> Result<Option<(InvoiceSnap, String)>, sqlx::Error> {
    let row: Option<InvoiceRead> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, number, kind, status, currency, period_start, period_end, subtotal, tax, total, \
             credits_applied, retainer_applied, amount_paid, amount_due, due_at, finalized_at, customer_id, \
             created_at FROM invoices WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    });
    let Some(r) = row else {
        return Ok(None);
    };
    let lines: Vec<(String, String, i64, i64, Option<String>)> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT description, quantity, unit_amount, amount, tax_rate FROM invoice_lines \
             WHERE invoice_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *c)
        .await?
    });
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
            .map(
                |(description, quantity, unit_amount, amount, tax_rate)| LineSnap {
                    description,
                    quantity,
                    unit_amount,
                    amount,
                    tax_rate,
                },
            )
            .collect(),
    };
    Ok(Some((snap, r.customer_id)))
}

/// The payment and its customer's id.
pub async fn payment(
    tx: &mut Tx,
    id: &str,
) -> Result<Option<(PaymentSnap, String, Option<String>)>, sqlx::Error> {
    type Row = (
        String,
        i64,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        String,
        Option<String>,
    );
    let row: Option<Row> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, amount, currency, gateway, method, reference, brand, last4, at, customer_id, \
             invoice_id FROM payments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.map(
        |(
            id,
            amount,
            currency,
            gateway,
            method,
            reference,
            brand,
            last4,
            at,
            customer,
            invoice,
        )| {
            let card = card(brand, last4);
            (
                PaymentSnap {
                    id,
                    amount,
                    currency,
                    gateway,
                    method,
                    reference,
                    card,
                    at,
                },
                customer,
                invoice,
            )
        },
    ))
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
) -> Result<Vec<AllocationSnap>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, i64, i64)> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.invoice_id, i.number, a.amount, i.amount_due FROM payment_allocations a \
             JOIN invoices i ON i.id = a.invoice_id WHERE a.payment_id = $1 \
             ORDER BY i.created_at, i.id",
        )
        .bind(payment_id)
        .fetch_all(&mut *c)
        .await?
    });
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
    let row: Option<(Option<String>, i64)> = on_tx!(tx, c => {
        sqlx::query_as("SELECT number, amount_due FROM invoices WHERE id = $1")
            .bind(invoice_id)
            .fetch_optional(&mut *c)
            .await?
    });
    Ok(row
        .map(|(number, due)| AllocationSnap {
            invoice_id: invoice_id.to_string(),
            number,
            amount,
            amount_due_after: due,
        })
        .into_iter()
        .collect())
}

/// What the customer owes over every open invoice, and the credit it holds, in its currency.
pub async fn balances(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
) -> Result<(i64, i64), sqlx::Error> {
    on_tx!(tx, c => {
        let outstanding: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_due), 0) AS BIGINT) FROM invoices WHERE customer_id = $1 \
             AND currency = $2 AND status IN ('open', 'partially_paid', 'past_due')",
        )
        .bind(customer_id)
        .bind(currency)
        .fetch_one(&mut *c)
        .await?;
        let credit: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM credit_notes WHERE customer_id = $1 \
             AND currency = $2",
        )
        .bind(customer_id)
        .bind(currency)
        .fetch_one(&mut *c)
        .await?;
        Ok((outstanding, credit))
    })
}

pub async fn refund(tx: &mut Tx, id: &str) -> Result<Option<(RefundSnap, String)>, sqlx::Error> {
    type Row = (String, String, i64, String, bool, Option<String>, i64);
    let row: Option<Row> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, payment_id, amount, currency, to_credit, reason, at FROM refunds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.map(
        |(id, payment_id, amount, currency, to_credit, reason, at)| {
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
        },
    ))
}

pub async fn credit_note(
    tx: &mut Tx,
    id: &str,
) -> Result<Option<(CreditNoteSnap, String)>, sqlx::Error> {
    type Row = (String, i64, i64, String, String, String, i64, String);
    let row: Option<Row> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, amount, remaining, currency, source, reason, created_at, customer_id \
             FROM credit_notes WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.map(
        |(id, amount, remaining, currency, source, reason, created_at, customer)| {
            (
                CreditNoteSnap {
                    id,
                    amount,
                    remaining,
                    currency,
                    source,
                    reason,
                    created_at,
                },
                customer,
            )
        },
    ))
}

/// The failed charge attempt: why it was declined and which card it was.
pub async fn charge_attempt(
    tx: &mut Tx,
    invoice_id: &str,
    attempt: i64,
) -> Result<Option<(Option<String>, Option<CardSnap>)>, sqlx::Error> {
    type Row = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT a.decline_code, a.failure_message, pm.brand, pm.last4 FROM charge_attempts a \
             LEFT JOIN payment_methods pm ON pm.id = a.payment_method_id \
             WHERE a.invoice_id = $1 AND a.attempt = $2",
        )
        .bind(invoice_id)
        .bind(attempt)
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.map(|(code, message, brand, last4)| {
        let decline = message.or(code.map(|c| c.replace('_', " ")));
        (decline, card(brand, last4))
    }))
}

/// The customer's default card, if it has one that is not removed.
pub async fn default_card(tx: &mut Tx, customer_id: &str) -> Result<Option<CardSnap>, sqlx::Error> {
    let row: Option<(String, String)> = on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT brand, last4 FROM payment_methods WHERE customer_id = $1 AND is_default \
             AND removed_at IS NULL",
        )
        .bind(customer_id)
        .fetch_optional(&mut *c)
        .await?
    });
    Ok(row.and_then(|(b, l)| card(Some(b), Some(l))))
}
