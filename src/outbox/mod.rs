//! The email outbox: one row per message, written in the same transaction as the event that
//! causes it, unique on (template, subject object, attempt), and a send_email job enqueued beside
//! it.
//!
//! The entry points here take the caller's open transaction; none of them sends anything. They
//! read the facts the message is about into a snapshot stored with the row (`snapshot`), so a
//! send, a retry or a resend renders the same message. `send` renders a row (`render`, `view`,
//! `pdf`) and hands it to the mailer; temporary failures are tried again with a growing delay,
//! permanent ones leave the row `failed` with the reason for the operator.

pub mod pdf;
pub mod render;
pub mod send;
pub mod snapshot;
pub mod view;

use chrono::{DateTime, Utc};
use settled_jobs::template::Template;

use crate::store::emails::{self, NewEmail};
use crate::store::{Result, Tx, audit, customers, ms, payments, refunds};
use snapshot::{ChargeSnap, Snapshot, StatementSnap};

pub use send::{MAX_TRIES, retry_delay};

/// What a message is about: its template, the object it is unique on, and which one of its
/// kind (an attempt number, a period, a month).
struct Subject<'a> {
    template: Template,
    subject_id: &'a str,
    attempt: i64,
    invoice_id: Option<&'a str>,
    payment_id: Option<&'a str>,
}

/// Writes the row (unless it exists) with every billing contact and the snapshot, and enqueues
/// its send job, all in `tx`.
async fn write(tx: &mut Tx, what: Subject<'_>, snap: &Snapshot, now: DateTime<Utc>) -> Result<()> {
    let recipients = customers::recipients(tx, &snap.customer.id).await?;
    write_to(tx, what, snap, &recipients, now).await
}

/// Writes the row (unless it exists) to `recipients` only.
async fn write_to(
    tx: &mut Tx,
    what: Subject<'_>,
    snap: &Snapshot,
    recipients: &[String],
    now: DateTime<Utc>,
) -> Result<()> {
    let context = serde_json::to_string(snap).unwrap_or_else(|_| "null".into());
    let new = NewEmail {
        template: what.template,
        subject_id: what.subject_id,
        attempt: what.attempt,
        customer_id: &snap.customer.id,
        invoice_id: what.invoice_id,
        payment_id: what.payment_id,
        recipients,
        subject: "",
        context: &context,
    };
    match emails::insert(tx, &new, now).await? {
        Some(id) => tracing::info!(
            email_id = %id,
            template = %what.template,
            subject_id = %what.subject_id,
            "email queued"
        ),
        None => tracing::debug!(
            template = %what.template,
            subject_id = %what.subject_id,
            "email already queued"
        ),
    }
    Ok(())
}

/// The snapshot's common part: who, and their balances right now.
async fn base(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<Option<Snapshot>> {
    let Some(customer) = customers::get_in(tx, customer_id).await? else {
        tracing::warn!(customer_id, "no such customer; no email written");
        return Ok(None);
    };
    let (outstanding, credit_balance) =
        audit::owed_and_credit_in(tx, customer_id, currency).await?;
    Ok(Some(Snapshot {
        at: ms(now),
        customer: snapshot::customer_of(&customer),
        outstanding,
        credit_balance,
        ..Snapshot::default()
    }))
}

fn missing(what: &str, id: &str) -> Result<()> {
    tracing::warn!(
        what,
        id,
        "the email's subject does not exist; no email written"
    );
    Ok(())
}

/// An invoice was finalised: send it to every billing contact.
pub async fn invoice_issued(tx: &mut Tx, invoice_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some((invoice, customer_id)) = snapshot::invoice(tx, invoice_id).await? else {
        return missing("invoice", invoice_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &invoice.currency, now).await? else {
        return Ok(());
    };
    snap.invoice = Some(invoice);
    let what = Subject {
        template: Template::Invoice,
        subject_id: invoice_id,
        attempt: 0,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A payment was recorded (card, webhook or offline): a receipt. Call it after the payment and
/// its allocation are applied, so the receipt shows what is left to pay right after it.
pub async fn receipt(tx: &mut Tx, payment_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some(row) = payments::get_in(tx, payment_id).await? else {
        return missing("payment", payment_id);
    };
    let payment = snapshot::payment_of(&row);
    let allocations =
        snapshot::allocations(tx, payment_id, row.invoice_id.as_deref(), payment.amount).await?;
    let invoice_id = row
        .invoice_id
        .clone()
        .or_else(|| allocations.first().map(|a| a.invoice_id.clone()));
    let invoice = match &invoice_id {
        Some(id) => snapshot::invoice(tx, id).await?.map(|(i, _)| i),
        None => None,
    };
    let Some(mut snap) = base(tx, &row.customer_id, &payment.currency, now).await? else {
        return Ok(());
    };
    snap.at = payment.at;
    snap.payment = Some(payment);
    snap.allocations = allocations;
    snap.invoice = invoice;
    let what = Subject {
        template: Template::Receipt,
        subject_id: payment_id,
        attempt: 0,
        invoice_id: invoice_id.as_deref(),
        payment_id: Some(payment_id),
    };
    write(tx, what, &snap, now).await
}

/// An automatic charge failed and dunning will try again at `next_attempt_at`.
pub async fn payment_failed(
    tx: &mut Tx,
    invoice_id: &str,
    attempt: i64,
    next_attempt_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some((invoice, customer_id)) = snapshot::invoice(tx, invoice_id).await? else {
        return missing("invoice", invoice_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &invoice.currency, now).await? else {
        return Ok(());
    };
    if let Some((decline, card)) = snapshot::charge_attempt(tx, invoice_id, attempt).await? {
        snap.decline = decline;
        snap.card = card;
    }
    snap.invoice = Some(invoice);
    snap.attempt = Some(attempt);
    snap.next_attempt_at = next_attempt_at.map(ms);
    let what = Subject {
        template: Template::PaymentFailed,
        subject_id: invoice_id,
        attempt,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// Dunning gave up: the invoice is past due.
pub async fn final_notice(tx: &mut Tx, invoice_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some((invoice, customer_id)) = snapshot::invoice(tx, invoice_id).await? else {
        return missing("invoice", invoice_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &invoice.currency, now).await? else {
        return Ok(());
    };
    snap.invoice = Some(invoice);
    let what = Subject {
        template: Template::FinalNotice,
        subject_id: invoice_id,
        attempt: 0,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A refund was recorded.
pub async fn refund(tx: &mut Tx, refund_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some(facts) = refunds::get_in(tx, refund_id).await? else {
        return missing("refund", refund_id);
    };
    let (refund, payment_id) = snapshot::refund_of(facts);
    let Some(row) = payments::get_in(tx, &payment_id).await? else {
        return missing("payment", &payment_id);
    };
    let invoice = match &row.invoice_id {
        Some(id) => snapshot::invoice(tx, id).await?.map(|(i, _)| i),
        None => None,
    };
    let Some(mut snap) = base(tx, &row.customer_id, &refund.currency, now).await? else {
        return Ok(());
    };
    snap.at = refund.at;
    snap.refund = Some(refund);
    snap.payment = Some(snapshot::payment_of(&row));
    snap.invoice = invoice;
    let what = Subject {
        template: Template::Refund,
        subject_id: refund_id,
        attempt: 0,
        invoice_id: row.invoice_id.as_deref(),
        payment_id: Some(&payment_id),
    };
    write(tx, what, &snap, now).await
}

/// A credit note was issued.
pub async fn credit_note(tx: &mut Tx, credit_note_id: &str, now: DateTime<Utc>) -> Result<()> {
    let Some(row) = crate::store::balances::credit_note_in(tx, credit_note_id).await? else {
        return missing("credit note", credit_note_id);
    };
    let note = snapshot::credit_note_of(&row);
    let Some(mut snap) = base(tx, &row.customer_id, &note.currency, now).await? else {
        return Ok(());
    };
    snap.at = note.created_at;
    snap.credit_note = Some(note);
    let what = Subject {
        template: Template::CreditNote,
        subject_id: credit_note_id,
        attempt: 0,
        invoice_id: None,
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// The upcoming automatic charge of a subscription's period (once per period).
pub async fn upcoming_charge(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    charge: ChargeSnap,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(mut snap) = base(tx, customer_id, currency, now).await? else {
        return Ok(());
    };
    let subscription_id = charge.subscription_id.clone();
    let period_start = charge.period_start;
    snap.charge = Some(charge);
    let what = Subject {
        template: Template::UpcomingCharge,
        subject_id: &subscription_id,
        attempt: period_start,
        invoice_id: None,
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A month's statement of account (once per customer and month).
pub async fn statement(
    tx: &mut Tx,
    customer_id: &str,
    currency: &str,
    statement: StatementSnap,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(mut snap) = base(tx, customer_id, currency, now).await? else {
        return Ok(());
    };
    let month = statement.month;
    snap.statement = Some(statement);
    let what = Subject {
        template: Template::Statement,
        subject_id: customer_id,
        attempt: month,
        invoice_id: None,
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A billing contact asked to sign in to the portal: a one-time link, to that address alone
/// (`customer_id` is one of the accounts it receives bills for).
pub async fn sign_in(
    tx: &mut Tx,
    token_id: &str,
    email: &str,
    customer_id: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some(customer) = customers::get_in(tx, customer_id).await? else {
        return missing("customer", customer_id);
    };
    let snap = Snapshot {
        at: ms(now),
        customer: snapshot::customer_of(&customer),
        sign_in: Some(snapshot::SignInSnap {
            token_id: token_id.to_string(),
            expires_at: ms(expires_at),
        }),
        ..Snapshot::default()
    };
    let what = Subject {
        template: Template::SignIn,
        subject_id: token_id,
        attempt: 0,
        invoice_id: None,
        payment_id: None,
    };
    write_to(tx, what, &snap, &[email.to_string()], now).await
}

/// A statement of account as PDF, for any period (`GET /v1/customers/{id}/statement` with
/// `Accept: application/pdf`), laid out as the invoice and receipt PDFs are.
pub fn statement_pdf(
    config: &crate::config::Config,
    customer: &crate::store::customers::CustomerRow,
    statement: StatementSnap,
    now: DateTime<Utc>,
) -> Vec<u8> {
    let snap = Snapshot {
        at: ms(now),
        customer: snapshot::customer_of(customer),
        statement: Some(statement),
        ..Snapshot::default()
    };
    pdf::statement(&view::view(config, &snap, pdf::money_for_pdf))
}

/// The PDF a message carries (the invoice's, the receipt's), rendered from the snapshot stored
/// with that message, so it is byte for byte the attachment its recipients got. `None` when no
/// such message was written (an invoice not finalised yet).
pub async fn document(
    db: &crate::store::Db,
    config: &crate::config::Config,
    template: Template,
    subject_id: &str,
) -> Result<Option<Result<settled_jobs::mailer::Attachment, String>>> {
    let Some(row) = emails::first_of(db, template.name(), subject_id).await? else {
        return Ok(None);
    };
    if row.context.is_empty() {
        // Pruned by retention (`retention.email_body_days`): nothing left to draw it from.
        return Ok(None);
    }
    let rendered = serde_json::from_str::<Snapshot>(&row.context)
        .map_err(|e| format!("the stored snapshot is unreadable: {e}"))
        .and_then(|snap| render::render(config, &row.template, &snap));
    Ok(Some(rendered.and_then(|r| {
        r.attachments
            .into_iter()
            .find(|a| a.content_type == "application/pdf")
            .ok_or_else(|| format!("the {} message carries no PDF", row.template))
    })))
}

#[cfg(test)]
mod tests;
