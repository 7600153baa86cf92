//! The email outbox: one row per message, written in the same transaction as the event that causes
//! it, unique on (template, subject object, attempt), and a send_email job enqueued beside it.
//!
//! The entry points take the caller's open transaction; none of them sends anything. They read the
//! facts the message is about into a snapshot stored with the row, so a send, a retry or a resend
//! renders the same message. The send job renders a row and hands it to the mailer; temporary
//! failures are tried again with a growing delay, permanent ones leave the row `failed` with the
//! reason for the operator (`GET /v1/emails?status=failed`, `settled emails retry`).

pub mod pdf;
pub mod render;
pub mod snapshot;

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use settled_jobs::error::JobError;
use settled_jobs::invoice::build_lines;
use settled_jobs::job::Job;
use settled_jobs::mailer::{MailError, OutgoingEmail};

use crate::app::State;
use crate::store::emails::{self, EmailRow, NewEmail, Outcome};
use crate::store::subscriptions::{SUBSCRIPTION_COLUMNS, SubscriptionRow, subscription_from_row};
use crate::store::{Db, Tx, from_ms, ms, on_db, on_tx};
use snapshot::{ChargeSnap, LineSnap, Snapshot, StatementLineSnap, StatementSnap};

/// Every kind of message, which is also the name of its templates.
pub const TEMPLATES: &[&str] = &[
    "invoice",
    "receipt",
    "payment_failed",
    "final_notice",
    "refund",
    "credit_note",
    "upcoming_charge",
    "statement",
];

/// Tries at one message before a temporary failure counts as permanent (about three days with
/// the delays of [`retry_delay`]).
pub const MAX_TRIES: i64 = 80;

/// Delay before try `tries + 1` after `tries` temporary failures: 2 s doubling up to an hour.
pub fn retry_delay(tries: i64) -> Duration {
    let exp = tries.clamp(1, 12) as u32;
    Duration::from_secs((1u64 << exp).min(3600))
}

struct Subject<'a> {
    template: &'static str,
    subject_id: &'a str,
    attempt: i64,
    invoice_id: Option<&'a str>,
    payment_id: Option<&'a str>,
}

/// Writes the row (unless it exists) with every billing contact and the snapshot, and enqueues
/// its send job, all in `tx`.
async fn write(
    tx: &mut Tx,
    what: Subject<'_>,
    snap: &Snapshot,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let recipients = snapshot::recipients(tx, &snap.customer.id).await?;
    let context = serde_json::to_string(snap).unwrap_or_else(|_| "null".into());
    let new = NewEmail {
        template: what.template,
        subject_id: what.subject_id,
        attempt: what.attempt,
        customer_id: &snap.customer.id,
        invoice_id: what.invoice_id,
        payment_id: what.payment_id,
        recipients: &recipients,
        subject: "",
        context: &context,
    };
    match emails::insert(tx, &new, now).await? {
        Some(id) => tracing::info!(
            email_id = %id,
            template = what.template,
            subject_id = %what.subject_id,
            "email queued"
        ),
        None => tracing::debug!(
            template = what.template,
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
) -> Result<Option<Snapshot>, sqlx::Error> {
    let Some(customer) = snapshot::customer(tx, customer_id).await? else {
        tracing::warn!(customer_id, "no such customer; no email written");
        return Ok(None);
    };
    let (outstanding, credit_balance) = snapshot::balances(tx, customer_id, currency).await?;
    Ok(Some(Snapshot {
        at: ms(now),
        customer,
        outstanding,
        credit_balance,
        ..Snapshot::default()
    }))
}

fn missing(what: &str, id: &str) -> Result<(), sqlx::Error> {
    tracing::warn!(
        what,
        id,
        "the email's subject does not exist; no email written"
    );
    Ok(())
}

/// An invoice was finalised: send it to every billing contact.
pub async fn invoice_issued(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some((invoice, customer_id)) = snapshot::invoice(tx, invoice_id).await? else {
        return missing("invoice", invoice_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &invoice.currency, now).await? else {
        return Ok(());
    };
    snap.invoice = Some(invoice);
    let what = Subject {
        template: "invoice",
        subject_id: invoice_id,
        attempt: 0,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A payment was recorded (card, webhook or offline): a receipt. Call it after the payment and
/// its allocation are applied, so the receipt shows what is left to pay right after it.
pub async fn receipt(tx: &mut Tx, payment_id: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let Some((payment, customer_id, invoice_id)) = snapshot::payment(tx, payment_id).await? else {
        return missing("payment", payment_id);
    };
    let allocations =
        snapshot::allocations(tx, payment_id, invoice_id.as_deref(), payment.amount).await?;
    let invoice_id = invoice_id.or_else(|| allocations.first().map(|a| a.invoice_id.clone()));
    let invoice = match &invoice_id {
        Some(id) => snapshot::invoice(tx, id).await?.map(|(i, _)| i),
        None => None,
    };
    let Some(mut snap) = base(tx, &customer_id, &payment.currency, now).await? else {
        return Ok(());
    };
    snap.at = payment.at;
    snap.payment = Some(payment);
    snap.allocations = allocations;
    snap.invoice = invoice;
    let what = Subject {
        template: "receipt",
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
) -> Result<(), sqlx::Error> {
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
        template: "payment_failed",
        subject_id: invoice_id,
        attempt,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// Dunning gave up: the invoice is past due.
pub async fn final_notice(
    tx: &mut Tx,
    invoice_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some((invoice, customer_id)) = snapshot::invoice(tx, invoice_id).await? else {
        return missing("invoice", invoice_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &invoice.currency, now).await? else {
        return Ok(());
    };
    snap.invoice = Some(invoice);
    let what = Subject {
        template: "final_notice",
        subject_id: invoice_id,
        attempt: 0,
        invoice_id: Some(invoice_id),
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// A refund was recorded.
pub async fn refund(tx: &mut Tx, refund_id: &str, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let Some((refund, payment_id)) = snapshot::refund(tx, refund_id).await? else {
        return missing("refund", refund_id);
    };
    let Some((payment, customer_id, invoice_id)) = snapshot::payment(tx, &payment_id).await? else {
        return missing("payment", &payment_id);
    };
    let invoice = match &invoice_id {
        Some(id) => snapshot::invoice(tx, id).await?.map(|(i, _)| i),
        None => None,
    };
    let Some(mut snap) = base(tx, &customer_id, &refund.currency, now).await? else {
        return Ok(());
    };
    snap.at = refund.at;
    snap.refund = Some(refund);
    snap.payment = Some(payment);
    snap.invoice = invoice;
    let what = Subject {
        template: "refund",
        subject_id: refund_id,
        attempt: 0,
        invoice_id: invoice_id.as_deref(),
        payment_id: Some(&payment_id),
    };
    write(tx, what, &snap, now).await
}

/// A credit note was issued.
pub async fn credit_note(
    tx: &mut Tx,
    credit_note_id: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some((note, customer_id)) = snapshot::credit_note(tx, credit_note_id).await? else {
        return missing("credit note", credit_note_id);
    };
    let Some(mut snap) = base(tx, &customer_id, &note.currency, now).await? else {
        return Ok(());
    };
    snap.at = note.created_at;
    snap.credit_note = Some(note);
    let what = Subject {
        template: "credit_note",
        subject_id: credit_note_id,
        attempt: 0,
        invoice_id: None,
        payment_id: None,
    };
    write(tx, what, &snap, now).await
}

/// Due outbox work: rows whose first try never ran, upcoming-charge reminders whose time has
/// come (`reminder_days` before the period's start; 0 = none), and monthly statements.
pub async fn due_jobs(
    db: &Db,
    reminder_days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Job>, sqlx::Error> {
    let mut jobs = due_statements(db, now).await?;
    if reminder_days == 0 {
        return Ok(jobs);
    }
    let lead = chrono::Duration::days(i64::from(reminder_days));
    let due: Vec<(String, i64)> = on_db!(db, p => {
        sqlx::query_as(
            "SELECT s.id, s.next_period_start FROM subscriptions s \
             JOIN customers c ON c.id = s.customer_id \
             WHERE s.status = 'active' AND s.auto_charge AND c.auto_charge \
             AND s.next_period_start > $1 AND s.next_period_start <= $2 \
             AND EXISTS (SELECT 1 FROM payment_methods pm WHERE pm.customer_id = c.id \
                         AND pm.is_default AND pm.removed_at IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'upcoming_charge' \
                             AND e.subject_id = s.id AND e.attempt = s.next_period_start) \
             ORDER BY s.next_period_start LIMIT 5000",
        )
        .bind(ms(now))
        .bind(ms(now + lead))
        .fetch_all(p)
        .await?
    });
    jobs.extend(due.into_iter().map(
        |(subscription_id, period_start)| Job::RemindUpcomingCharge {
            subscription_id,
            period_start,
        },
    ));
    Ok(jobs)
}

/// A calendar month in one time zone: its number as yyyymm (202701 = January 2027), its first
/// instant and the next month's first instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMonth {
    pub month: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A customer's time zone; a name the zone database does not know counts as UTC, as in the
/// templates.
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(chrono_tz::UTC)
}

fn previous(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn following(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

/// The first instant of a month in `tz`: local midnight on the 1st, or the first local time
/// that exists when midnight falls into a daylight-saving gap.
fn month_start(tz: Tz, year: i32, month: u32) -> Option<DateTime<Utc>> {
    let day = NaiveDate::from_ymd_opt(year, month, 1)?;
    (0..24 * 4).find_map(|quarter| {
        let local = day.and_hms_opt(quarter / 4, (quarter % 4) * 15, 0)?;
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

impl LocalMonth {
    /// The month `yyyymm` in `tz`.
    pub fn of(tz: Tz, yyyymm: i64) -> Option<LocalMonth> {
        let year = i32::try_from(yyyymm / 100).ok()?;
        let month = u32::try_from(yyyymm % 100).ok()?;
        let from = month_start(tz, year, month)?;
        let (ny, nm) = following(year, month);
        let to = month_start(tz, ny, nm)?;
        Some(LocalMonth {
            month: yyyymm,
            from,
            to,
        })
    }

    /// The last month that has ended at `now` in `tz`: the one whose statement is due.
    pub fn last_ended(tz: Tz, now: DateTime<Utc>) -> Option<LocalMonth> {
        let local = now.with_timezone(&tz);
        let (mut year, mut month) = (local.year(), local.month());
        if month_start(tz, year, month)? > now {
            (year, month) = previous(year, month);
        }
        let (py, pm) = previous(year, month);
        LocalMonth::of(tz, i64::from(py) * 100 + i64::from(pm))
    }
}

/// Bounds that hold in every time zone at `now`: no month later than the first has ended
/// anywhere yet, and no zone's current month began after the second. Local time runs from
/// UTC-12 to UTC+14, so the latest month to have ended is the one before the month of
/// now + 14 h, and every current month began by 12 h after that month's first day in UTC.
fn statement_bounds(now: DateTime<Utc>) -> (i64, DateTime<Utc>) {
    let ahead = now + chrono::Duration::hours(14);
    let (py, pm) = previous(ahead.year(), ahead.month());
    let began = NaiveDate::from_ymd_opt(ahead.year(), ahead.month(), 1)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .map(|t| t.and_utc())
        .map_or(now, |t| t.min(now));
    (i64::from(py) * 100 + i64::from(pm), began)
}

/// Customers owed a statement: opted in before the last month ended in their time zone, and
/// without a statement of that month yet.
async fn due_statements(db: &Db, now: DateTime<Utc>) -> Result<Vec<Job>, sqlx::Error> {
    // One query finds the time zones with a customer who may be owed one; most of the month
    // it finds none.
    let (latest, began) = statement_bounds(now);
    let zones: Vec<String> = on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT DISTINCT c.timezone FROM customers c \
             WHERE c.statement_emails AND c.statement_emails_since < $1 \
             AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'statement' \
                             AND e.subject_id = c.id AND e.attempt >= $2)",
        )
        .bind(ms(began))
        .bind(latest)
        .fetch_all(p)
        .await?
    });
    let mut jobs = Vec::new();
    for name in zones {
        let Some(last) = LocalMonth::last_ended(zone(&name), now) else {
            continue;
        };
        let ids: Vec<String> = on_db!(db, p => {
            sqlx::query_scalar(
                "SELECT c.id FROM customers c \
                 WHERE c.statement_emails AND c.timezone = $1 AND c.statement_emails_since < $2 \
                 AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.template = 'statement' \
                                 AND e.subject_id = c.id AND e.attempt >= $3) \
                 ORDER BY c.id LIMIT 5000",
            )
            .bind(&name)
            .bind(ms(last.to))
            .bind(last.month)
            .fetch_all(p)
            .await?
        });
        jobs.extend(ids.into_iter().map(|customer_id| Job::SendStatement {
            customer_id,
            month: last.month,
        }));
        if jobs.len() >= 5000 {
            break;
        }
    }
    Ok(jobs)
}

fn transient(e: sqlx::Error) -> JobError {
    JobError::Transient(anyhow::Error::new(e).context("database error"))
}

/// The remind_upcoming_charge job: if the period will still be charged automatically, write its
/// reminder (once: unique on subscription and period start).
pub async fn remind_upcoming_charge(
    state: &State,
    subscription_id: &str,
    period_start: i64,
) -> Result<(), JobError> {
    let days = state.config.email.reminder_days;
    if days == 0 {
        return Ok(());
    }
    let now = state.clock.now();
    let mut tx = state.db.begin().await.map_err(transient)?;
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1");
    let row: Option<SubscriptionRow> = on_tx!(&mut tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(subscription_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(transient)?
    });
    let Some(row) = row else {
        return Err(JobError::permanent(format!(
            "no subscription {subscription_id}"
        )));
    };
    let start = from_ms(period_start);
    let lead = chrono::Duration::days(i64::from(days));
    if row.status != "active"
        || !row.auto_charge
        || row.next_period_start != Some(period_start)
        || start <= now
        || start - lead > now
    {
        return Ok(());
    }
    let customer_auto: Option<bool> = on_tx!(&mut tx, c => {
        sqlx::query_scalar("SELECT auto_charge FROM customers WHERE id = $1")
            .bind(&row.customer_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(transient)?
    });
    if customer_auto != Some(true) {
        return Ok(());
    }
    let Some(card) = snapshot::default_card(&mut tx, &row.customer_id)
        .await
        .map_err(transient)?
    else {
        return Ok(());
    };
    let sub = subscription_from_row(row.clone())?;
    let (lines, totals) = build_lines(&sub.items).map_err(JobError::permanent)?;
    let period_end = sub
        .schedule
        .to_schedule()
        .ok()
        .and_then(|s| s.next_after(start))
        .map(ms);
    let Some(mut snap) = base(&mut tx, &row.customer_id, &row.currency, now)
        .await
        .map_err(transient)?
    else {
        return Ok(());
    };
    snap.charge = Some(ChargeSnap {
        subscription_id: sub.id.clone(),
        currency: sub.currency.clone(),
        period_start,
        period_end,
        subtotal: totals.subtotal,
        tax: totals.tax,
        total: totals.total,
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
        card: Some(card),
    });
    let what = Subject {
        template: "upcoming_charge",
        subject_id: subscription_id,
        attempt: period_start,
        invoice_id: None,
        payment_id: None,
    };
    write(&mut tx, what, &snap, now).await.map_err(transient)?;
    tx.commit().await.map_err(transient)
}

/// The send_statement job: if the customer still wants statements, had opted in before the month
/// ended and the month has ended in its time zone, write the month's statement (once: unique on
/// customer and month).
pub async fn send_statement(state: &State, customer_id: &str, month: i64) -> Result<(), JobError> {
    let now = state.clock.now();
    let row: Option<(String, String, bool, Option<i64>)> = on_db!(&state.db, p => {
        sqlx::query_as(
            "SELECT timezone, currency, statement_emails, statement_emails_since FROM customers \
             WHERE id = $1",
        )
        .bind(customer_id)
        .fetch_optional(p)
        .await
        .map_err(transient)?
    });
    let Some((timezone, currency, wanted, since)) = row else {
        return Err(JobError::permanent(format!("no customer {customer_id}")));
    };
    let Some(period) = LocalMonth::of(zone(&timezone), month) else {
        return Err(JobError::permanent(format!("no month {month}")));
    };
    let opted_in_before = since.is_some_and(|since| since < ms(period.to));
    if !wanted || !opted_in_before || period.to > now {
        return Ok(());
    }
    let statement = crate::credits::statement(
        &state.db,
        customer_id,
        &currency,
        ms(period.from),
        ms(period.to),
    )
    .await
    .map_err(transient)?;
    let mut tx = state.db.begin().await.map_err(transient)?;
    let Some(mut snap) = base(&mut tx, customer_id, &currency, now)
        .await
        .map_err(transient)?
    else {
        return Ok(());
    };
    snap.statement = Some(StatementSnap {
        month,
        currency,
        from: ms(period.from),
        to: ms(period.to),
        opening: statement.opening,
        closing: statement.closing,
        lines: statement
            .entries
            .into_iter()
            .map(|e| StatementLineSnap {
                at: e.at,
                kind: e.kind.to_string(),
                reference: e.reference,
                amount: e.amount,
                balance: e.balance,
            })
            .collect(),
    });
    let what = Subject {
        template: "statement",
        subject_id: customer_id,
        attempt: month,
        invoice_id: None,
        payment_id: None,
    };
    write(&mut tx, what, &snap, now).await.map_err(transient)?;
    tx.commit().await.map_err(transient)
}

/// The addresses a message can go to, and a note naming the ones it cannot.
fn deliverable(recipients: &str) -> (Vec<String>, Option<String>) {
    let list: Vec<String> = serde_json::from_str(recipients).unwrap_or_default();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for address in list {
        if address.parse::<lettre::Address>().is_ok() {
            ok.push(address);
        } else {
            refused.push(address);
        }
    }
    let note = (!refused.is_empty()).then(|| {
        format!(
            "undeliverable address{} left out: {}",
            if refused.len() > 1 { "es" } else { "" },
            refused.join(", ")
        )
    });
    (ok, note)
}

/// Builds the message a row stands for: its recipients, rendered subject, text, HTML and PDFs.
pub fn message(state: &State, row: &EmailRow) -> Result<(OutgoingEmail, Option<String>), String> {
    let snap: Snapshot = serde_json::from_str(&row.context)
        .map_err(|e| format!("the stored context is unreadable: {e}"))?;
    let rendered = render::render(&state.config, &row.template, &snap)
        .map_err(|e| format!("cannot render the {} template: {e}", row.template))?;
    let (to, note) = deliverable(&row.recipients);
    let business = &state.config.business;
    let email = OutgoingEmail {
        message_id: row.message_id.clone(),
        date: Some(from_ms(if snap.at > 0 { snap.at } else { row.created_at })),
        from: state.config.email.from.clone(),
        reply_to: (!business.support_email.is_empty()).then(|| business.support_email.clone()),
        to,
        subject: rendered.subject,
        text: rendered.text,
        html: Some(rendered.html),
        attachments: rendered.attachments,
    };
    Ok((email, note))
}

/// The send_email job: one try at one row, if it is still pending after exactly `expected`
/// tries (anything else means another try already happened: nothing to do).
pub async fn send(state: &State, email_id: &str, expected: i64) -> Result<(), JobError> {
    let Some(row) = emails::get(&state.db, email_id).await.map_err(transient)? else {
        return Err(JobError::permanent(format!("no email {email_id}")));
    };
    if row.status != "pending" || row.attempts != expected {
        return Ok(());
    }
    let (email, note) = match message(state, &row) {
        Ok(built) => built,
        Err(reason) => return finish(state, &row, "", Outcome::Failed { reason: &reason }).await,
    };
    if email.to.is_empty() {
        let reason = match note {
            Some(n) => format!("no deliverable address: {n}"),
            None => "no deliverable address: the customer has no billing contact".to_string(),
        };
        return finish(
            state,
            &row,
            &email.subject,
            Outcome::Failed { reason: &reason },
        )
        .await;
    }
    let result = state.mailer.send(&email).await;
    let now = state.clock.now();
    match result {
        Ok(()) => {
            tracing::info!(email_id, template = %row.template, "email sent");
            let outcome = Outcome::Sent {
                at: now,
                note: note.as_deref(),
            };
            finish(state, &row, &email.subject, outcome).await
        }
        Err(MailError::Permanent(reason)) => {
            tracing::warn!(email_id, template = %row.template, reason = %reason, "email refused");
            finish(
                state,
                &row,
                &email.subject,
                Outcome::Failed { reason: &reason },
            )
            .await
        }
        Err(MailError::Transient(reason)) => {
            let tries = row.attempts + 1;
            if tries >= MAX_TRIES {
                let reason = format!("gave up after {tries} tries: {reason}");
                return finish(
                    state,
                    &row,
                    &email.subject,
                    Outcome::Failed { reason: &reason },
                )
                .await;
            }
            let delay = retry_delay(tries);
            tracing::warn!(
                email_id,
                template = %row.template,
                reason = %reason,
                retry_in_s = delay.as_secs(),
                "email not sent; it will be tried again"
            );
            let outcome = Outcome::Retry {
                reason: &reason,
                delay,
            };
            finish(state, &row, &email.subject, outcome).await
        }
    }
}

async fn finish(
    state: &State,
    row: &EmailRow,
    subject: &str,
    outcome: Outcome<'_>,
) -> Result<(), JobError> {
    crate::metrics::email_finished(&row.template, &outcome);
    emails::finish(&state.db, &row.id, row.attempts, subject, outcome)
        .await
        .map_err(transient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(11), Duration::from_secs(2048));
        assert_eq!(retry_delay(12), Duration::from_secs(3600));
        assert_eq!(retry_delay(70), Duration::from_secs(3600));
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_statement_month_is_the_last_one_to_end_in_the_customers_time_zone() {
        let cases: &[(&str, &str, i64, &str, &str)] = &[
            (
                "UTC",
                "2027-02-01T00:00:00Z",
                202701,
                "2027-01-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
            ),
            (
                "UTC",
                "2027-01-31T23:59:59Z",
                202612,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "UTC",
                "2027-01-01T00:00:00Z",
                202612,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // Tokyo (UTC+9) begins February at 15:00 UTC on January 31.
            (
                "Asia/Tokyo",
                "2027-01-31T14:59:59Z",
                202612,
                "2026-11-30T15:00:00Z",
                "2026-12-31T15:00:00Z",
            ),
            (
                "Asia/Tokyo",
                "2027-01-31T15:00:00Z",
                202701,
                "2026-12-31T15:00:00Z",
                "2027-01-31T15:00:00Z",
            ),
            // New York: March is EST (UTC-5), April EDT (UTC-4).
            (
                "America/New_York",
                "2027-04-01T03:59:59Z",
                202702,
                "2027-02-01T05:00:00Z",
                "2027-03-01T05:00:00Z",
            ),
            (
                "America/New_York",
                "2027-04-01T04:00:00Z",
                202703,
                "2027-03-01T05:00:00Z",
                "2027-04-01T04:00:00Z",
            ),
            // Paraguay moved its clocks from 00:00 to 01:00 on 1 October 2017: October began at
            // 01:00 local time, the same instant as midnight before the change.
            (
                "America/Asuncion",
                "2017-11-15T00:00:00Z",
                201710,
                "2017-10-01T04:00:00Z",
                "2017-11-01T03:00:00Z",
            ),
            (
                "Not/A_Zone",
                "2027-02-01T00:00:00Z",
                202701,
                "2027-01-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
            ),
        ];
        for (tz, now, month, from, to) in cases {
            let m = LocalMonth::last_ended(zone(tz), utc(now)).unwrap();
            assert_eq!(
                (m.month, m.from, m.to),
                (*month, utc(from), utc(to)),
                "{tz} at {now}"
            );
            assert_eq!(LocalMonth::of(zone(tz), *month), Some(m));
        }
        assert_eq!(LocalMonth::of(chrono_tz::UTC, 202713), None);
        assert_eq!(LocalMonth::of(chrono_tz::UTC, 202700), None);
    }

    #[test]
    fn the_sweeps_bounds_hold_in_every_time_zone() {
        let mut now = utc("2026-12-28T00:00:00Z");
        while now < utc("2027-03-05T00:00:00Z") {
            let (latest, began) = statement_bounds(now);
            for tz in chrono_tz::TZ_VARIANTS {
                let m = LocalMonth::last_ended(tz, now).unwrap();
                assert!(m.to <= now, "{tz} at {now}");
                assert!(m.month <= latest, "{tz} at {now}: {} > {latest}", m.month);
                assert!(m.to <= began, "{tz} at {now}: {} > {began}", m.to);
            }
            now += chrono::Duration::hours(2);
        }
    }

    #[test]
    fn undeliverable_addresses_are_left_out_and_named() {
        let (ok, note) =
            deliverable(r#"["ap@acme.example", "not an address", "cfo@acme.example"]"#);
        assert_eq!(ok, vec!["ap@acme.example", "cfo@acme.example"]);
        assert_eq!(
            note.as_deref(),
            Some("undeliverable address left out: not an address")
        );
        let (ok, note) = deliverable("[]");
        assert!(ok.is_empty() && note.is_none());
    }
}

/// The entry points against a real database on both backends: what the money paths will call.
#[cfg(test)]
mod db_tests {
    use super::*;
    use crate::config::Config;
    use crate::store::on_db;

    use crate::store::testing::open;

    const FIXTURE: &[&str] = &[
        "INSERT INTO customers (id, email, name, currency, timezone, created_at, updated_at) \
         VALUES ('cus_1', 'ap@acme.example', 'Acme Corp', 'EUR', 'Europe/Berlin', 0, 0)",
        "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES \
         ('cus_1', 0, 'ap@acme.example'), ('cus_1', 1, 'cfo@acme.example')",
        "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, exp_year, \
         is_default, created_at) VALUES ('spm_1', 'cus_1', 'stripe', 'pm_1', 'visa', '4242', 12, 2030, TRUE, 0)",
        "INSERT INTO invoices (id, number, customer_id, status, currency, subtotal, tax, total, amount_paid, \
         amount_due, due_at, finalized_at, created_at, updated_at) VALUES ('in_1', 'INV-2027-000042', \
         'cus_1', 'partially_paid', 'EUR', 10000, 0, 10000, 4000, 6000, 1801440000000, 1801440000000, \
         1801440000000, 1801440000000)",
        "INSERT INTO invoice_lines (id, invoice_id, position, description, quantity, unit_amount, amount) \
         VALUES ('il_1', 'in_1', 0, 'Hosting', '1', 10000, 10000)",
        "INSERT INTO payments (id, customer_id, invoice_id, amount, currency, gateway, gateway_payment_id, \
         method, brand, last4, status, at, created_at) VALUES ('pay_1', 'cus_1', 'in_1', 4000, 'EUR', \
         'stripe', 'pi_1', 'card', 'visa', '4242', 'succeeded', 1801474200000, 1801474200000)",
        "INSERT INTO payment_allocations (payment_id, invoice_id, amount) VALUES ('pay_1', 'in_1', 4000)",
        "INSERT INTO refunds (id, payment_id, amount, currency, gateway, to_credit, reason, at) VALUES \
         ('re_1', 'pay_1', 1000, 'EUR', 'stripe', FALSE, 'duplicate', 1801474200000)",
        "INSERT INTO credit_notes (id, customer_id, amount, remaining, currency, source, reason, created_at) \
         VALUES ('cn_1', 'cus_1', 2500, 2500, 'EUR', 'manual', 'Goodwill', 1801474200000)",
        "INSERT INTO charge_attempts (id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, \
         payment_method_id, status, decline_code, next_attempt_at, scheduled_at) VALUES ('ca_1', 'in_1', \
         'cus_1', 1, 'settled:in_1:1', 6000, 'EUR', 'spm_1', 'failed', 'insufficient_funds', \
         1801656000000, 1801474200000)",
    ];

    async fn entry_points_write_one_row_each_and_enqueue_its_job(postgres: bool) {
        let t = open(postgres).await;
        for sql in FIXTURE {
            on_db!(&t.db, p => {
                sqlx::query(sqlx::AssertSqlSafe(*sql)).execute(p).await.unwrap();
            });
        }
        let now = from_ms(1_801_474_200_000);
        for _ in 0..2 {
            // Twice: a retried job or a replayed webhook writes nothing new.
            let mut tx = t.db.begin().await.unwrap();
            invoice_issued(&mut tx, "in_1", now).await.unwrap();
            receipt(&mut tx, "pay_1", now).await.unwrap();
            let next = Some(from_ms(1_801_656_000_000));
            payment_failed(&mut tx, "in_1", 1, next, now).await.unwrap();
            final_notice(&mut tx, "in_1", now).await.unwrap();
            refund(&mut tx, "re_1", now).await.unwrap();
            credit_note(&mut tx, "cn_1", now).await.unwrap();
            // A subject that does not exist writes nothing and fails nothing.
            receipt(&mut tx, "pay_missing", now).await.unwrap();
            tx.commit().await.unwrap();
        }
        let rows = emails::list(&t.db, &emails::EmailFilter::default(), 100, None)
            .await
            .unwrap();
        let mut kinds: Vec<&str> = rows.iter().map(|r| r.template.as_str()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                "credit_note",
                "final_notice",
                "invoice",
                "payment_failed",
                "receipt",
                "refund"
            ]
        );
        assert_eq!(
            crate::store::queue::unfinished(&t.db).await.unwrap(),
            6,
            "one send job per row"
        );

        let config = Config::load_from(
            None,
            [(
                "SETTLED__BUSINESS__NAME".to_string(),
                "Example Ltd".to_string(),
            )],
        )
        .unwrap();
        for row in &rows {
            assert_eq!(row.recipients, r#"["ap@acme.example","cfo@acme.example"]"#);
            assert_eq!(row.customer_id.as_deref(), Some("cus_1"));
            let snap: Snapshot = serde_json::from_str(&row.context).unwrap();
            let r = render::render(&config, &row.template, &snap)
                .unwrap_or_else(|e| panic!("{}: {e}", row.template));
            match row.template.as_str() {
                "receipt" => {
                    assert_eq!(r.subject, "Receipt for INV-2027-000042");
                    assert!(r.text.contains("Still to pay:    €60.00"), "{}", r.text);
                    assert!(r.text.contains("Visa ending in 4242"), "{}", r.text);
                    assert_eq!(row.payment_id.as_deref(), Some("pay_1"));
                    assert_eq!(row.invoice_id.as_deref(), Some("in_1"));
                }
                "payment_failed" => {
                    assert_eq!(row.attempt, 1);
                    assert!(r.text.contains("insufficient funds"), "{}", r.text);
                    assert!(r.text.contains("3 February 2027"), "{}", r.text);
                }
                "refund" => assert_eq!(r.subject, "Refund of €10.00 from Example Ltd"),
                "credit_note" => assert!(r.text.contains("Credit balance:  €25.00")),
                "final_notice" => assert!(r.text.contains("Amount due:      €60.00")),
                _ => assert_eq!(r.subject, "Invoice INV-2027-000042 from Example Ltd"),
            }
        }
        let unsent = emails::unsent_without_job(&t.db, now).await.unwrap();
        assert!(unsent.is_empty(), "each row's job is queued: {unsent:?}");
        let lost = format!("DELETE FROM {}", crate::store::queue::table(&t.db));
        on_db!(&t.db, p => {
            sqlx::query(sqlx::AssertSqlSafe(lost.as_str())).execute(p).await.unwrap();
        });
        let unsent = emails::unsent_without_job(&t.db, now).await.unwrap();
        assert_eq!(unsent.len(), 6, "the sweep finds rows whose job was lost");
    }

    #[tokio::test]
    async fn entry_points_on_sqlite() {
        entry_points_write_one_row_each_and_enqueue_its_job(false).await;
    }

    #[tokio::test]
    async fn entry_points_on_postgres() {
        entry_points_write_one_row_each_and_enqueue_its_job(true).await;
    }
}
