//! Recurring invoices, written in batches. A drain of due periods ([`drain`]) claims up to
//! `jobs.batch_size` subscriptions whose next period has started and writes all their invoices in one
//! transaction, so a thousand subscriptions falling due at once cost a few dozen statements and
//! a couple of commits instead of a thousand transactions queueing for the gapless number.
//!
//! A batch keeps every promise of the single invoice: the subscriptions are locked (in id order,
//! so two daemons never deadlock), each period is decided by [`settled_jobs::generate::decide`]
//! from the locked row, numbers come from the sequence in the same transaction, and finalising
//! does what [`super::invoices::finalize`] does: the ledger row, the invoice email, the first
//! automatic charge attempt, through the same store functions. Invoices of a customer with credit
//! or a retainer to apply go through `finalize` itself, so balances are spent in exactly one
//! place. If a batch fails, its periods are written one at a time, so one bad subscription cannot
//! hold up the rest.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use settled_jobs::generate::{Decision, Generated, decide};
use settled_jobs::invoice::format_number;
use settled_jobs::job::WorkKind;
use settled_jobs::records::{NewInvoice, Subscription};
use settled_jobs::status::{Account, InvoiceStatus};
use settled_jobs::template::Template;

use super::ledger::{self, Entry};
use super::{Billing, Error, Result};
use crate::outbox::snapshot::{self, InvoiceSnap, LineSnap, Snapshot};
use crate::store::balances::{self, Pool};
use crate::store::charge_attempts::{self, FirstAttempt};
use crate::store::emails::{self, NewEmail};
use crate::store::invoices::{self, Insert, opening_status};
use crate::store::subscriptions::{self, subscription_from_row};
use crate::store::{Tx, customers, from_ms, ms, wall_ms, work_failures};

/// One due period to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub subscription_id: String,
    pub period_start: DateTime<Utc>,
}

/// What became of one period.
pub type Outcome = Result<Generated>;

/// One batch of due periods: claims up to `jobs.batch_size` of them and writes their invoices in one
/// transaction (a period that fails by itself is set aside in the same transaction, with its own
/// next try). Returns how many periods it took; 0 when none was due.
///
/// When the batch as a whole fails because of something in its rows (a constraint refuses one,
/// a panic), the periods are taken again one at a time, so only the ones to blame are set aside;
/// when it fails because the database is busy or away, the error is returned and the batch is
/// simply tried again later.
pub async fn drain(b: &Billing) -> Result<usize> {
    let most = b.batch_size(usize::MAX);
    match batch(b, most as i64).await {
        Ok(n) => Ok(n),
        Err(Failure::Batch(e)) => Err(e),
        Err(Failure::Period(e)) => {
            tracing::warn!(
                error = %e,
                "writing a batch of invoices failed; writing its periods one at a time"
            );
            let mut done = 0;
            for _ in 0..most {
                match batch(b, 1).await {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(Failure::Batch(e)) => return Err(e),
                    Err(Failure::Period(e)) => {
                        set_aside_next_due(b, &e).await?;
                        done += 1;
                    }
                }
            }
            Ok(done)
        }
    }
}

/// Sets aside, in a transaction of its own, the period a failed one-period batch took (it is
/// the first claimable one).
async fn set_aside_next_due(b: &Billing, e: &Error) -> Result<()> {
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    if let Some((id, _)) = subscriptions::claim_due(&mut tx, b.now(), wall, 1)
        .await?
        .into_iter()
        .next()
    {
        let tries =
            work_failures::set_aside(&mut tx, WorkKind::Periods, &id, &e.to_string(), wall, None)
                .await?;
        tracing::error!(subscription_id = %id, tries, error = %e, "period set aside");
    }
    tx.commit().await?;
    Ok(())
}

/// Why a batch's transaction failed.
#[derive(Debug)]
enum Failure {
    /// Something about the rows written (a constraint refused one, a panic): one of the periods
    /// may be to blame, so they are written again one at a time.
    Period(Error),
    /// The database was busy, unreachable or chose this transaction to break a deadlock: nothing
    /// is wrong with the periods, and writing them one at a time would only wait longer.
    Batch(Error),
}

/// Claims up to `limit` due periods and writes them, in one transaction.
async fn batch(b: &Billing, limit: i64) -> Result<usize, Failure> {
    let run = async {
        let now = b.now();
        let wall = wall_ms();
        let mut tx = b.db.begin().await?;
        let claimed = subscriptions::claim_due(&mut tx, now, wall, limit).await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok::<_, Error>(0);
        }
        let periods: Vec<Period> = claimed
            .into_iter()
            .map(|(subscription_id, start)| Period {
                subscription_id,
                period_start: from_ms(start),
            })
            .collect();
        let outcomes = write(b, &mut tx, &periods, now).await?;
        let mut done: Vec<&str> = Vec::new();
        let (mut invoices, mut skipped) = (0, 0);
        for (p, outcome) in periods.iter().zip(&outcomes) {
            match outcome {
                Ok(g) => {
                    done.push(&p.subscription_id);
                    match g {
                        Generated::Invoice(_) => invoices += 1,
                        Generated::Skipped => skipped += 1,
                        Generated::Stale => {}
                    }
                }
                Err(e) => {
                    let tries = work_failures::set_aside(
                        &mut tx,
                        WorkKind::Periods,
                        &p.subscription_id,
                        &e.to_string(),
                        wall,
                        None,
                    )
                    .await?;
                    tracing::error!(
                        subscription_id = %p.subscription_id,
                        tries,
                        error = %e,
                        "period set aside"
                    );
                }
            }
        }
        work_failures::clear(&mut tx, WorkKind::Periods, &done).await?;
        tx.commit().await?;
        crate::metrics::invoices_generated(invoices, skipped);
        if invoices + skipped > 0 {
            tracing::info!(invoices, skipped_periods = skipped, "invoices generated");
        }
        Ok(periods.len())
    };
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(Error::Store(e))) if !e.blames_the_data() => Err(Failure::Batch(Error::Store(e))),
        Ok(Err(e)) => Err(Failure::Period(e)),
        Err(_) => Err(Failure::Period(Error::permanent(
            "writing the invoice panicked",
        ))),
    }
}

/// An invoice to write, and which period it bills.
struct Planned {
    index: usize,
    invoice: NewInvoice,
}

fn period_key(inv: &NewInvoice) -> (String, i64) {
    (
        inv.subscription_id.clone().unwrap_or_default(),
        inv.period.map(|p| ms(p.0)).unwrap_or_default(),
    )
}

/// Writes the periods in the caller's transaction; returns each period's outcome, in order.
async fn write(
    b: &Billing,
    tx: &mut Tx,
    periods: &[Period],
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>> {
    let draft_minutes = b.config.billing.draft_minutes;
    let mut outcomes: Vec<Option<Outcome>> = periods.iter().map(|_| None).collect();

    // Lock the subscriptions in id order and decide each period from the locked row, in period
    // order within a subscription (a second period of the same subscription sees the first one's
    // move).
    let mut ids: Vec<&str> = periods.iter().map(|p| p.subscription_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut subs: HashMap<String, std::result::Result<Subscription, String>> =
        subscriptions::lock_many(tx, &ids)
            .await?
            .into_iter()
            .map(|row| {
                let id = row.id.clone();
                (id, subscription_from_row(row).map_err(|e| e.to_string()))
            })
            .collect();
    let mut order: Vec<usize> = (0..periods.len()).collect();
    order.sort_by(|&x, &y| {
        (&periods[x].subscription_id, periods[x].period_start)
            .cmp(&(&periods[y].subscription_id, periods[y].period_start))
    });
    let mut planned: Vec<Planned> = Vec::new();
    let mut moves: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for i in order {
        let p = &periods[i];
        let sub = match subs.get_mut(&p.subscription_id) {
            Some(Ok(sub)) => sub,
            Some(Err(message)) => {
                outcomes[i] = Some(Err(Error::permanent(message.clone())));
                continue;
            }
            None => {
                outcomes[i] = Some(Err(Error::permanent(format!(
                    "no subscription {}",
                    p.subscription_id
                ))));
                continue;
            }
        };
        match decide(sub, p.period_start, now, draft_minutes) {
            Err(e) => outcomes[i] = Some(Err(e.into())),
            Ok(Decision::Stale) => outcomes[i] = Some(Ok(Generated::Stale)),
            Ok(Decision::Advance {
                invoice,
                next_period_start,
            }) => {
                sub.next_period_start = next_period_start;
                moves.insert(sub.id.clone(), next_period_start);
                match invoice {
                    Some(invoice) => planned.push(Planned {
                        index: i,
                        invoice: *invoice,
                    }),
                    None => outcomes[i] = Some(Ok(Generated::Skipped)),
                }
            }
        }
    }

    // A period that already has its invoice is not billed twice (the subscription moves on, as
    // the unique key would have it).
    let wanted: HashSet<(String, i64)> = planned.iter().map(|p| period_key(&p.invoice)).collect();
    let billed = invoices::already_billed(tx, &wanted).await?;
    planned.retain(|p| {
        if billed.contains(&period_key(&p.invoice)) {
            outcomes[p.index] = Some(Ok(Generated::Skipped));
            false
        } else {
            true
        }
    });

    // Drafts wait for their review window; the rest are finalised now. A customer with credit or
    // a retainer to spend has its invoices finalised one by one by the common routine.
    let (drafts, finals): (Vec<Planned>, Vec<Planned>) = planned
        .into_iter()
        .partition(|p| p.invoice.finalize_at.is_some());
    let mut customer_ids: Vec<String> = finals
        .iter()
        .map(|p| p.invoice.customer_id.clone())
        .collect();
    customer_ids.sort_unstable();
    customer_ids.dedup();
    let customer_ids: Vec<&str> = customer_ids.iter().map(String::as_str).collect();
    let facts = customers::facts_many(tx, &customer_ids).await?;
    let credit = balances::available_many(tx, Pool::Credit, &customer_ids).await?;
    let retainer = balances::available_many(tx, Pool::Retainer, &customer_ids).await?;
    let spends_balance = |inv: &NewInvoice| {
        let key = (inv.customer_id.clone(), inv.currency.clone());
        let has_credit = credit.get(&key).copied().unwrap_or(0) > 0;
        let opted_in = facts
            .get(&inv.customer_id)
            .is_some_and(|c| c.row.apply_retainer);
        has_credit || (opted_in && retainer.get(&key).copied().unwrap_or(0) > 0)
    };
    let (one_by_one, finals): (Vec<Planned>, Vec<Planned>) =
        finals.into_iter().partition(|p| spends_balance(&p.invoice));

    // Numbers for the batch, gapless, in the order the periods were decided.
    let first_number = if finals.is_empty() {
        0
    } else {
        invoices::take_numbers(tx, finals.len() as i64).await?
    };
    let outstanding = invoices::outstanding_many(tx, &customer_ids).await?;
    let numbers: Vec<String> = (0..finals.len())
        .map(|k| {
            format_number(
                &b.config.billing.number_format,
                now,
                first_number + k as i64,
            )
        })
        .collect();
    let mut rows: Vec<Insert<'_>> = drafts
        .iter()
        .map(|p| Insert {
            invoice: &p.invoice,
            number: None,
        })
        .collect();
    rows.extend(finals.iter().zip(&numbers).map(|(p, number)| Insert {
        invoice: &p.invoice,
        number: Some(number),
    }));
    let written = invoices::insert_many(tx, &rows, now).await?;

    // What finalising records: the ledger row, the invoice email, the first charge attempt.
    let mut entries = Vec::with_capacity(finals.len());
    let mut contexts = Vec::with_capacity(finals.len());
    let mut attempts = Vec::new();
    let mut running = outstanding;
    for (p, number) in finals.iter().zip(&numbers) {
        let inv = &p.invoice;
        if !written.contains(&inv.id) {
            continue;
        }
        entries.push(Entry {
            customer_id: &inv.customer_id,
            currency: &inv.currency,
            account: Account::Receivable,
            kind: "invoice",
            amount: inv.total,
            invoice_id: Some(&inv.id),
            payment_id: None,
            object_id: None,
            memo: Some(number),
            at: now,
        });
        let Some(customer) = facts.get(&inv.customer_id) else {
            tracing::warn!(customer_id = %inv.customer_id, "no such customer; no email written");
            continue;
        };
        let owed = running
            .entry((inv.customer_id.clone(), inv.currency.clone()))
            .or_insert(0);
        *owed += inv.total;
        let snap = Snapshot {
            at: ms(now),
            customer: snapshot::customer_of(&customer.row),
            invoice: Some(invoice_snap(inv, number, now)),
            outstanding: *owed,
            credit_balance: 0,
            ..Snapshot::default()
        };
        let context = serde_json::to_string(&snap).unwrap_or_else(|_| "null".into());
        contexts.push((inv, customer, context));
        if inv.total > 0 && inv.auto_charge {
            if customer.row.auto_charge && customer.default_method {
                attempts.push(FirstAttempt {
                    invoice_id: &inv.id,
                    customer_id: &inv.customer_id,
                    amount: inv.total,
                    currency: &inv.currency,
                });
            } else {
                tracing::info!(
                    invoice_id = %inv.id,
                    customer_id = %inv.customer_id,
                    auto_charge = customer.row.auto_charge,
                    has_default_method = customer.default_method,
                    "invoice not charged automatically"
                );
            }
        }
    }
    ledger::record(tx, &entries).await?;
    let invoice_emails: Vec<NewEmail> = contexts
        .iter()
        .map(|(inv, customer, context)| NewEmail {
            template: Template::Invoice,
            subject_id: &inv.id,
            attempt: 0,
            customer_id: &inv.customer_id,
            invoice_id: Some(&inv.id),
            payment_id: None,
            recipients: &customer.recipients,
            subject: "",
            context,
        })
        .collect();
    emails::insert_many(tx, &invoice_emails, now).await?;
    charge_attempts::insert_first_many(tx, &attempts, now).await?;

    for p in &one_by_one {
        super::invoices::insert(b, tx, &p.invoice, now).await?;
    }

    // A subscription catching up (policy `all` after downtime) has its next period due already:
    // the next batch of the same drain takes it.
    let moves: Vec<(String, Option<DateTime<Utc>>)> = moves.into_iter().collect();
    subscriptions::move_many(tx, &moves, now).await?;

    for p in drafts.iter().chain(&finals).chain(&one_by_one) {
        outcomes[p.index] = Some(Ok(Generated::Invoice(p.invoice.id.clone())));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Ok(Generated::Stale)))
        .collect())
}

/// The invoice as [`crate::outbox::snapshot::invoice`] reads it back right after finalising.
fn invoice_snap(inv: &NewInvoice, number: &str, now: DateTime<Utc>) -> InvoiceSnap {
    let status: InvoiceStatus = opening_status(inv);
    InvoiceSnap {
        id: inv.id.clone(),
        number: Some(number.to_string()),
        kind: inv.kind.as_str().to_string(),
        status: status.as_str().to_string(),
        currency: inv.currency.clone(),
        period_start: inv.period.map(|p| ms(p.0)),
        period_end: inv.period.map(|p| ms(p.1)),
        subtotal: inv.subtotal,
        tax: inv.tax,
        total: inv.total,
        credits_applied: 0,
        retainer_applied: 0,
        amount_paid: 0,
        amount_due: inv.total,
        due_at: Some(ms(inv.due_at)),
        finalized_at: Some(ms(now)),
        created_at: ms(now),
        lines: inv
            .lines
            .iter()
            .map(|l| LineSnap {
                description: l.description.clone(),
                quantity: l.quantity.clone(),
                unit_amount: l.unit_amount,
                amount: l.amount,
                tax_rate: l.tax_rate.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
