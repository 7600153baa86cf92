//! Recurring invoices, written in batches. Every generate_invoice job hands its period to the
//! daemon's [`Generator`] and waits for the outcome; the generator writes all the periods waiting
//! at that moment in one transaction (a group commit), so a thousand subscriptions falling due at
//! once cost a few dozen statements and one commit instead of a thousand transactions queueing
//! for the gapless number.
//!
//! A batch keeps every promise of the single invoice: the subscriptions are locked (in id order,
//! so two daemons never deadlock), each period is decided by [`settled_jobs::generate::decide`]
//! from the locked row, numbers come from the sequence in the same transaction, and finalising
//! does what [`crate::store::invoices::finalize`] does: the ledger row, the invoice email, the
//! first automatic charge attempt. Invoices of a customer with credit or a retainer to apply go
//! through that function itself, so balances are spent in exactly one place. If a batch fails,
//! its periods are written one at a time, so one bad subscription cannot hold up the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use settled_jobs::clock::Clock;
use settled_jobs::dunning::idempotency_key;
use settled_jobs::error::JobError;
use settled_jobs::generate::{Decision, Generated, decide};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::invoice::format_number;
use settled_jobs::job::Job;
use settled_jobs::store::{NewInvoice, Subscription};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::snapshot::{CustomerSnap, InvoiceSnap, LineSnap, Snapshot};
use crate::payments::COLLECTIBLE;
use crate::store::bulk::{self, Arg};
use crate::store::emails::{self, NewEmail};
use crate::store::subscriptions::{SUBSCRIPTION_COLUMNS, SubscriptionRow, subscription_from_row};
use crate::store::{Db, Tx, ms, queue};

/// The most periods one transaction writes.
pub const MAX_BATCH: usize = 500;

/// One due period to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub subscription_id: String,
    pub period_start: DateTime<Utc>,
}

struct Request {
    period: Period,
    reply: oneshot::Sender<Result<Generated, JobError>>,
}

/// What a batch needs besides the periods.
#[derive(Clone)]
struct Settings {
    db: Db,
    clock: Arc<dyn Clock>,
    number_format: String,
    draft_minutes: u32,
}

/// The daemon's invoice writer: jobs submit periods, one task writes them in batches.
pub struct Generator {
    settings: Settings,
    sender: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl Generator {
    pub fn new(
        db: Db,
        clock: Arc<dyn Clock>,
        number_format: String,
        draft_minutes: u32,
    ) -> Generator {
        Generator {
            settings: Settings {
                db,
                clock,
                number_format,
                draft_minutes,
            },
            sender: OnceLock::new(),
        }
    }

    /// Generates one period's invoice, in whatever batch is written next; returns what became of
    /// the period once its transaction committed (or failed).
    pub async fn generate(&self, period: Period) -> Result<Generated, JobError> {
        let (reply, outcome) = oneshot::channel();
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(self.settings.clone(), receiver));
            sender
        });
        let stopped = || JobError::Transient(anyhow::anyhow!("the invoice writer stopped"));
        sender
            .send(Request { period, reply })
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// The writer: takes every request waiting (up to [`MAX_BATCH`]), writes them, answers each.
/// While one batch is being written the next one gathers.
async fn write_batches(settings: Settings, mut receiver: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let periods: Vec<Period> = batch.iter().map(|r| r.period.clone()).collect();
        let started = std::time::Instant::now();
        let outcomes = write_isolating_failures(&settings, &periods).await;
        tracing::debug!(
            periods = periods.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "invoice batch written"
        );
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            // The job may have given up waiting (the worker is stopping); its period is written
            // or not, and a later run finds out which.
            let _ = request.reply.send(outcome);
        }
    }
}

/// Writes `periods` in one transaction; if that fails, writes each alone so only the periods
/// that fail by themselves report a failure.
async fn write_isolating_failures(
    settings: &Settings,
    periods: &[Period],
) -> Vec<Result<Generated, JobError>> {
    match write_guarded(settings, periods).await {
        Ok(outcomes) => outcomes,
        Err(Failure::Batch(e)) => periods
            .iter()
            .map(|_| Err(JobError::Transient(anyhow::anyhow!("{e:#}"))))
            .collect(),
        Err(Failure::Period(e)) if periods.len() == 1 => vec![Err(e)],
        Err(Failure::Period(e)) => {
            tracing::warn!(
                periods = periods.len(),
                error = %e,
                "writing a batch of invoices failed; writing its periods one at a time"
            );
            let mut outcomes = Vec::with_capacity(periods.len());
            for period in periods {
                outcomes.push(
                    match write_guarded(settings, std::slice::from_ref(period)).await {
                        Ok(mut one) => one.pop().unwrap_or(Ok(Generated::Stale)),
                        Err(Failure::Batch(e) | Failure::Period(e)) => Err(e),
                    },
                );
            }
            outcomes
        }
    }
}

/// Why a batch's transaction failed.
#[derive(Debug)]
enum Failure {
    /// Something about the rows written (a constraint refused one, a panic): one of the periods
    /// may be to blame, so they are written again one at a time.
    Period(JobError),
    /// The database was busy, unreachable or chose this transaction to break a deadlock: nothing
    /// is wrong with the periods, and writing them one at a time would only wait longer.
    Batch(JobError),
}

/// True for errors that say something about the data written rather than the database's state.
fn blames_the_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !matches!(db.kind(), sqlx::error::ErrorKind::Other),
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => true,
        _ => false,
    }
}

/// One transaction. A database error is transient; a panic is a permanent failure (as it is for
/// any job).
async fn write_guarded(
    settings: &Settings,
    periods: &[Period],
) -> Result<Vec<Result<Generated, JobError>>, Failure> {
    let run = async {
        let now = settings.clock.now();
        let mut tx = settings.db.begin().await?;
        let outcomes = write(&mut tx, settings, periods, now).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(outcomes)
    };
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(outcomes)) => Ok(outcomes),
        Ok(Err(e)) => {
            let blame = blames_the_data(&e);
            let e = JobError::Transient(anyhow::Error::new(e).context("writing invoices"));
            Err(if blame {
                Failure::Period(e)
            } else {
                Failure::Batch(e)
            })
        }
        Err(_) => Err(Failure::Period(JobError::Permanent(anyhow::anyhow!(
            "writing the invoice panicked"
        )))),
    }
}

/// A customer's facts that finalising needs.
struct CustomerFacts {
    snap: CustomerSnap,
    auto_charge: bool,
    apply_retainer: bool,
    recipients: Vec<String>,
    default_method: bool,
}

/// Balances per (customer, currency).
type Balances = HashMap<(String, String), i64>;

/// An invoice to write, and which period it bills.
struct Planned {
    index: usize,
    invoice: NewInvoice,
}

/// Writes the periods in the caller's transaction; returns each period's outcome, in order.
async fn write(
    tx: &mut Tx,
    settings: &Settings,
    periods: &[Period],
    now: DateTime<Utc>,
) -> Result<Vec<Result<Generated, JobError>>, sqlx::Error> {
    let number_format = settings.number_format.as_str();
    let draft_minutes = settings.draft_minutes;
    let mut outcomes: Vec<Option<Result<Generated, JobError>>> =
        periods.iter().map(|_| None).collect();

    // Lock the subscriptions in id order and decide each period from the locked row, in period
    // order within a subscription (a second period of the same subscription sees the first one's
    // move).
    let mut ids: Vec<&str> = periods.iter().map(|p| p.subscription_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut subs = lock_subscriptions(tx, &ids).await?;
    let mut order: Vec<usize> = (0..periods.len()).collect();
    order.sort_by(|&a, &b| {
        (&periods[a].subscription_id, periods[a].period_start)
            .cmp(&(&periods[b].subscription_id, periods[b].period_start))
    });
    let mut planned: Vec<Planned> = Vec::new();
    let mut moves: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for i in order {
        let p = &periods[i];
        let sub = match subs.get_mut(&p.subscription_id) {
            Some(Ok(sub)) => sub,
            Some(Err(message)) => {
                outcomes[i] = Some(Err(JobError::permanent(message.clone())));
                continue;
            }
            None => {
                outcomes[i] = Some(Err(JobError::permanent(format!(
                    "no subscription {}",
                    p.subscription_id
                ))));
                continue;
            }
        };
        match decide(sub, p.period_start, now, draft_minutes) {
            Err(e) => outcomes[i] = Some(Err(e)),
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
    let billed = already_billed(tx, &planned).await?;
    planned.retain(|p| {
        let key = period_key(&p.invoice);
        if billed.contains(&key) {
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
    let customers = customer_facts(tx, &customer_ids).await?;
    let credit = sums(
        tx,
        "credit_notes",
        "remaining",
        "remaining > 0",
        &customer_ids,
    )
    .await?;
    let retainer = sums(tx, "retainers", "remaining", "remaining > 0", &customer_ids).await?;
    let spends_balance = |inv: &NewInvoice| {
        let key = (inv.customer_id.clone(), inv.currency.clone());
        let has_credit = credit.get(&key).copied().unwrap_or(0) > 0;
        let opted_in = customers
            .get(&inv.customer_id)
            .is_some_and(|c| c.apply_retainer);
        has_credit || (opted_in && retainer.get(&key).copied().unwrap_or(0) > 0)
    };
    let (one_by_one, finals): (Vec<Planned>, Vec<Planned>) =
        finals.into_iter().partition(|p| spends_balance(&p.invoice));

    // Numbers for the batch, gapless, in the order the periods were decided.
    let first_number = if finals.is_empty() {
        0
    } else {
        crate::store::invoices::take_numbers(tx, finals.len() as i64).await?
    };
    let outstanding = sums(tx, "invoices", "amount_due", &collectible(), &customer_ids).await?;

    let mut invoice_rows = Vec::with_capacity(drafts.len() + finals.len());
    let mut line_rows = Vec::new();
    for p in &drafts {
        invoice_rows.push(invoice_row(&p.invoice, None, now));
        push_lines(&mut line_rows, &p.invoice);
    }
    let numbers: Vec<String> = (0..finals.len())
        .map(|k| format_number(number_format, now, first_number + k as i64))
        .collect();
    for (p, number) in finals.iter().zip(&numbers) {
        invoice_rows.push(invoice_row(&p.invoice, Some(number), now));
        push_lines(&mut line_rows, &p.invoice);
    }
    bulk::insert(tx, "invoices", &INVOICE_INSERT, &invoice_rows, "").await?;
    bulk::insert(tx, "invoice_lines", &LINE_INSERT, &line_rows, "").await?;

    // What finalising records: the ledger row, the invoice email, the first charge attempt.
    let mut ledger_rows = Vec::with_capacity(finals.len());
    let mut contexts = Vec::with_capacity(finals.len());
    let mut attempt_rows = Vec::new();
    let mut charges = Vec::new();
    let mut running: Balances = outstanding;
    for (p, number) in finals.iter().zip(&numbers) {
        let inv = &p.invoice;
        ledger_rows.push(vec![
            Arg::from(new_id(prefix::LEDGER)),
            Arg::from(inv.customer_id.as_str()),
            Arg::from(inv.currency.as_str()),
            Arg::from("invoice"),
            Arg::from(inv.total),
            Arg::from(inv.id.as_str()),
            Arg::from(number.as_str()),
            Arg::from(ms(now)),
        ]);
        let Some(customer) = customers.get(&inv.customer_id) else {
            tracing::warn!(customer_id = %inv.customer_id, "no such customer; no email written");
            continue;
        };
        let owed = running
            .entry((inv.customer_id.clone(), inv.currency.clone()))
            .or_insert(0);
        *owed += inv.total;
        let snapshot = Snapshot {
            at: ms(now),
            customer: customer.snap.clone(),
            invoice: Some(invoice_snap(inv, number, now)),
            outstanding: *owed,
            credit_balance: 0,
            ..Snapshot::default()
        };
        let context = serde_json::to_string(&snapshot).unwrap_or_else(|_| "null".into());
        contexts.push((inv, customer, context));
        if inv.total > 0 && inv.auto_charge {
            if customer.auto_charge && customer.default_method {
                let attempt = 1;
                attempt_rows.push(vec![
                    Arg::from(new_id(prefix::CHARGE_ATTEMPT)),
                    Arg::from(inv.id.as_str()),
                    Arg::from(inv.customer_id.as_str()),
                    Arg::from(attempt),
                    Arg::from(idempotency_key(&inv.id, attempt)),
                    Arg::from(inv.total),
                    Arg::from(inv.currency.as_str()),
                    Arg::from(true),
                    Arg::from("pending"),
                    Arg::from(ms(now)),
                ]);
                charges.push(Job::ChargeInvoice {
                    invoice_id: inv.id.clone(),
                    attempt,
                });
            } else {
                tracing::info!(
                    invoice_id = %inv.id,
                    customer_id = %inv.customer_id,
                    auto_charge = customer.auto_charge,
                    has_default_method = customer.default_method,
                    "invoice not charged automatically"
                );
            }
        }
    }
    bulk::insert(tx, "ledger_entries", &LEDGER_INSERT, &ledger_rows, "").await?;
    let invoice_emails: Vec<NewEmail> = contexts
        .iter()
        .map(|(inv, customer, context)| NewEmail {
            template: "invoice",
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
    bulk::insert(tx, "charge_attempts", &ATTEMPT_INSERT, &attempt_rows, "").await?;
    queue::enqueue_many(tx, &charges, queue::default_max_attempts()).await?;

    for p in &one_by_one {
        crate::store::invoices::insert(tx, &p.invoice, now, number_format).await?;
    }

    // A subscription catching up (policy `all` after downtime) has its next period due already:
    // its job is queued now rather than at the next sweep.
    let follow_ups: Vec<Job> = moves
        .iter()
        .filter_map(|(id, next)| {
            next.filter(|n| *n <= now).map(|n| Job::GenerateInvoice {
                subscription_id: id.clone(),
                period_start: ms(n),
            })
        })
        .collect();
    queue::enqueue_many(tx, &follow_ups, queue::default_max_attempts()).await?;

    let move_rows: Vec<Vec<Arg>> = moves
        .into_iter()
        .map(|(id, next)| vec![Arg::from(id), Arg::from(next.map(ms)), Arg::from(ms(now))])
        .collect();
    bulk::update(
        tx,
        "subscriptions",
        "id",
        &["next_period_start", "updated_at"],
        &move_rows,
        "next_period_start = v.next_period_start, updated_at = v.updated_at",
    )
    .await?;

    for p in drafts.iter().chain(&finals).chain(&one_by_one) {
        outcomes[p.index] = Some(Ok(Generated::Invoice(p.invoice.id.clone())));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Ok(Generated::Stale)))
        .collect())
}

const INVOICE_INSERT: [&str; 20] = [
    "id",
    "number",
    "customer_id",
    "subscription_id",
    "kind",
    "status",
    "currency",
    "period_start",
    "period_end",
    "subtotal",
    "tax",
    "total",
    "amount_due",
    "auto_charge",
    "due_at",
    "finalize_at",
    "finalized_at",
    "paid_at",
    "created_at",
    "updated_at",
];

const LINE_INSERT: [&str; 9] = [
    "id",
    "invoice_id",
    "position",
    "kind",
    "description",
    "quantity",
    "unit_amount",
    "amount",
    "tax_rate",
];

const LEDGER_INSERT: [&str; 8] = [
    "id",
    "customer_id",
    "currency",
    "kind",
    "amount",
    "invoice_id",
    "memo",
    "at",
];

const ATTEMPT_INSERT: [&str; 10] = [
    "id",
    "invoice_id",
    "customer_id",
    "attempt",
    "idempotency_key",
    "amount",
    "currency",
    "automatic",
    "status",
    "scheduled_at",
];

/// The status an invoice opens with: nothing to pay (a total of 0) is paid at once.
fn opening_status(inv: &NewInvoice) -> &'static str {
    if inv.total == 0 { "paid" } else { "open" }
}

/// The invoice's row: a draft when `number` is None, else finalised now with that number.
fn invoice_row(inv: &NewInvoice, number: Option<&String>, now: DateTime<Utc>) -> Vec<Arg> {
    let status = match number {
        None => "draft",
        Some(_) => opening_status(inv),
    };
    let finalized_at = number.map(|_| ms(now));
    let paid_at = (status == "paid").then(|| ms(now));
    vec![
        Arg::from(inv.id.as_str()),
        Arg::from(number.cloned()),
        Arg::from(inv.customer_id.as_str()),
        Arg::from(inv.subscription_id.clone()),
        Arg::from(inv.kind),
        Arg::from(status),
        Arg::from(inv.currency.as_str()),
        Arg::from(inv.period.map(|p| ms(p.0))),
        Arg::from(inv.period.map(|p| ms(p.1))),
        Arg::from(inv.subtotal),
        Arg::from(inv.tax),
        Arg::from(inv.total),
        Arg::from(inv.total),
        Arg::from(inv.auto_charge),
        Arg::from(Some(ms(inv.due_at))),
        Arg::from(inv.finalize_at.map(ms)),
        Arg::from(finalized_at),
        Arg::from(paid_at),
        Arg::from(ms(now)),
        Arg::from(ms(now)),
    ]
}

fn push_lines(rows: &mut Vec<Vec<Arg>>, inv: &NewInvoice) {
    for (position, line) in inv.lines.iter().enumerate() {
        rows.push(vec![
            Arg::from(new_id(prefix::INVOICE_LINE)),
            Arg::from(inv.id.as_str()),
            Arg::from(position as i64),
            Arg::from("item"),
            Arg::from(line.description.as_str()),
            Arg::from(line.quantity.as_str()),
            Arg::from(line.unit_amount),
            Arg::from(line.amount),
            Arg::from(line.tax_rate.clone()),
        ]);
    }
}

/// The invoice as [`crate::outbox::snapshot::invoice`] reads it back right after finalising.
fn invoice_snap(inv: &NewInvoice, number: &str, now: DateTime<Utc>) -> InvoiceSnap {
    InvoiceSnap {
        id: inv.id.clone(),
        number: Some(number.to_string()),
        kind: inv.kind.to_string(),
        status: opening_status(inv).to_string(),
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

fn period_key(inv: &NewInvoice) -> (String, i64) {
    (
        inv.subscription_id.clone().unwrap_or_default(),
        inv.period.map(|p| ms(p.0)).unwrap_or_default(),
    )
}

fn collectible() -> String {
    format!("status IN {COLLECTIBLE}")
}

/// Reads and locks the subscriptions (in id order); one that cannot be read maps to the reason.
async fn lock_subscriptions(
    tx: &mut Tx,
    ids: &[&str],
) -> Result<HashMap<String, Result<Subscription, String>>, sqlx::Error> {
    let lock = tx.lock_rows();
    let rows: Vec<SubscriptionRow> = bulk::select_by_ids(tx, ids, |ids| {
        format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id {ids} ORDER BY id{lock}")
    })
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let id = row.id.clone();
            (id, subscription_from_row(row).map_err(|e| e.to_string()))
        })
        .collect())
}

/// The (subscription, period start) pairs among `planned` that already have an invoice.
async fn already_billed(
    tx: &mut Tx,
    planned: &[Planned],
) -> Result<HashSet<(String, i64)>, sqlx::Error> {
    if planned.is_empty() {
        return Ok(HashSet::new());
    }
    let wanted: HashSet<(String, i64)> = planned.iter().map(|p| period_key(&p.invoice)).collect();
    let mut ids: Vec<&str> = wanted.iter().map(|(s, _)| s.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let starts: Vec<i64> = wanted
        .iter()
        .map(|(_, s)| *s)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // The period starts of a batch are few (usually one), so they go in as literals.
    let starts = starts
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<(String, i64)> = bulk::select_by_ids(tx, &ids, |ids| {
        format!(
            "SELECT subscription_id, period_start FROM invoices WHERE subscription_id {ids} \
             AND period_start IN ({starts})"
        )
    })
    .await?;
    let found = rows.into_iter().filter(|r| wanted.contains(r)).collect();
    Ok(found)
}

/// What finalising needs to know of each customer.
async fn customer_facts(
    tx: &mut Tx,
    ids: &[&str],
) -> Result<HashMap<String, CustomerFacts>, sqlx::Error> {
    type CustomerRow = (String, String, String, String, String, bool, bool);
    let rows: Vec<CustomerRow> = bulk::select_by_ids(tx, ids, |ids| {
        format!(
            "SELECT id, name, email, timezone, currency, auto_charge, apply_retainer FROM customers \
             WHERE id {ids}"
        )
    })
    .await?;
    let contacts: Vec<(String, String)> = bulk::select_by_ids(tx, ids, |ids| {
        format!(
            "SELECT customer_id, email FROM customer_billing_emails WHERE customer_id {ids} \
             ORDER BY customer_id, position"
        )
    })
    .await?;
    let with_method: Vec<(String,)> = bulk::select_by_ids(tx, ids, |ids| {
        format!(
            "SELECT customer_id FROM payment_methods WHERE customer_id {ids} AND is_default \
             AND removed_at IS NULL"
        )
    })
    .await?;
    let with_method: HashSet<String> = with_method.into_iter().map(|(c,)| c).collect();
    let mut facts: HashMap<String, CustomerFacts> = rows
        .into_iter()
        .map(
            |(id, name, email, timezone, currency, auto_charge, apply_retainer)| {
                let default_method = with_method.contains(&id);
                (
                    id.clone(),
                    CustomerFacts {
                        snap: CustomerSnap {
                            id,
                            name,
                            email,
                            timezone,
                            currency,
                        },
                        auto_charge,
                        apply_retainer,
                        recipients: Vec::new(),
                        default_method,
                    },
                )
            },
        )
        .collect();
    for (customer_id, email) in contacts {
        if let Some(f) = facts.get_mut(&customer_id) {
            f.recipients.push(email);
        }
    }
    Ok(facts)
}

/// `SUM(column)` of `table` per (customer, currency) over the rows matching `condition`.
async fn sums(
    tx: &mut Tx,
    table: &str,
    column: &str,
    condition: &str,
    customer_ids: &[&str],
) -> Result<Balances, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = bulk::select_by_ids(tx, customer_ids, |ids| {
        format!(
            "SELECT customer_id, currency, CAST(COALESCE(SUM({column}), 0) AS BIGINT) FROM {table} \
             WHERE customer_id {ids} AND {condition} GROUP BY customer_id, currency"
        )
    })
    .await?;
    Ok(rows.into_iter().map(|(c, cur, v)| ((c, cur), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::snapshot;
    use crate::store::testing::open;
    use crate::store::{from_ms, on_db};
    use settled_jobs::clock::ManualClock;

    const START: i64 = 1_801_440_000_000; // 2027-02-01T00:00:00Z

    fn settings(db: &Db) -> Settings {
        Settings {
            db: db.clone(),
            clock: Arc::new(ManualClock::new(from_ms(START + 60_000))),
            number_format: "INV-{year}-{seq:06}".into(),
            draft_minutes: 0,
        }
    }

    async fn exec(db: &Db, sql: &str) {
        on_db!(db, p => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await.unwrap();
        });
    }

    async fn customer(db: &Db, id: &str, apply_retainer: bool) {
        exec(
            db,
            &format!(
                "INSERT INTO customers (id, email, name, currency, timezone, apply_retainer, created_at, \
                 updated_at) VALUES ('{id}', '{id}@example.com', 'Customer {id}', 'EUR', 'UTC', \
                 {apply_retainer}, 0, 0)"
            ),
        )
        .await;
        exec(
            db,
            &format!(
                "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES \
                 ('{id}', 0, 'ap@{id}.example'), ('{id}', 1, 'cfo@{id}.example')"
            ),
        )
        .await;
    }

    async fn subscription(db: &Db, id: &str, customer: &str, unit_amount: i64) {
        let items = format!(
            r#"[{{"description":"Plan","quantity":"1","unit_amount":{unit_amount},"tax_rate":"0.20"}}]"#
        );
        let schedule =
            r#"{"every":"month","interval":1,"anchor":"2027-02-01T00:00:00Z","timezone":"UTC"}"#;
        exec(
            db,
            &format!(
                "INSERT INTO subscriptions (id, customer_id, currency, items, schedule, timezone, start_at, \
                 next_period_start, net_days, created_at, updated_at) VALUES ('{id}', '{customer}', 'EUR', \
                 '{items}', '{schedule}', 'UTC', {START}, {START}, 14, 0, 0)"
            ),
        )
        .await;
    }

    fn period(id: &str) -> Period {
        Period {
            subscription_id: id.into(),
            period_start: from_ms(START),
        }
    }

    async fn invoice_of(db: &Db, sub: &str) -> crate::store::invoices::InvoiceRow {
        let list = crate::store::invoices::list(
            db,
            &crate::store::invoices::InvoiceFilter {
                subscription_id: Some(sub),
                ..Default::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
        assert_eq!(list.len(), 1, "{sub}: {list:?}");
        list.into_iter().next().unwrap()
    }

    /// One batch writes what finalising one invoice at a time writes: the same numbers, rows,
    /// email snapshots and charge attempts, and spends credit through the common routine.
    async fn a_batch_finalises_like_one_invoice_at_a_time(postgres: bool) {
        let t = open(postgres).await;
        let db = &t.db;
        // plain: two subscriptions and a card, so both invoices are charged; credit: holds credit;
        // retainer: opted in to retainers but holds none.
        customer(db, "cus_plain", false).await;
        customer(db, "cus_credit", false).await;
        customer(db, "cus_retainer", true).await;
        exec(
            db,
            "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, \
             exp_year, is_default, created_at) VALUES ('spm_1', 'cus_plain', 'stripe', 'pm_1', \
             'visa', '4242', 12, 2030, TRUE, 0)",
        )
        .await;
        let mut tx = db.begin().await.unwrap();
        crate::payments::add_credit(
            &mut tx,
            "cus_credit",
            "EUR",
            500,
            "manual",
            None,
            "goodwill",
            from_ms(0),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        subscription(db, "sub_a", "cus_plain", 1000).await;
        subscription(db, "sub_b", "cus_plain", 2500).await;
        subscription(db, "sub_c", "cus_credit", 1000).await;
        subscription(db, "sub_d", "cus_retainer", 0).await;

        let s = settings(db);
        let periods: Vec<Period> = ["sub_a", "sub_b", "sub_c", "sub_d"]
            .iter()
            .map(|id| period(id))
            .collect();
        let outcomes = write_guarded(&s, &periods).await.unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(Generated::Invoice(_)))),
            "{outcomes:?}"
        );

        let a = invoice_of(db, "sub_a").await;
        let b = invoice_of(db, "sub_b").await;
        let c = invoice_of(db, "sub_c").await;
        let d = invoice_of(db, "sub_d").await;
        let mut numbers: Vec<String> = [&a, &b, &c, &d]
            .iter()
            .map(|i| i.number.clone().unwrap())
            .collect();
        numbers.sort();
        assert_eq!(
            numbers,
            (1..=4)
                .map(|n| format!("INV-2027-{n:06}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            (a.status.as_str(), a.total, a.amount_due),
            ("open", 1200, 1200)
        );
        assert_eq!(a.due_at, Some(START + 14 * 86_400_000));
        assert_eq!(a.period_end, Some(1_803_859_200_000)); // 2027-03-01
        assert_eq!((c.credits_applied, c.amount_due), (500, 700));
        assert_eq!(
            (d.status.as_str(), d.total, d.paid_at),
            ("paid", 0, Some(START + 60_000))
        );

        // Each invoice email holds what the common routine would have read back.
        let emails = crate::store::emails::list(
            db,
            &crate::store::emails::EmailFilter {
                template: Some("invoice"),
                ..Default::default()
            },
            100,
            None,
        )
        .await
        .unwrap();
        assert_eq!(emails.len(), 4);
        let mut tx = db.begin().await.unwrap();
        for e in &emails {
            let id = e.invoice_id.clone().unwrap();
            let stored: snapshot::Snapshot = serde_json::from_str(&e.context).unwrap();
            let (read, customer_id) = snapshot::invoice(&mut tx, &id).await.unwrap().unwrap();
            assert_eq!(stored.invoice.as_ref(), Some(&read), "{id}");
            assert_eq!(stored.customer.id, customer_id);
            assert_eq!(stored.customer.name, format!("Customer {customer_id}"));
            let contacts = format!(r#"["ap@{customer_id}.example","cfo@{customer_id}.example"]"#);
            assert_eq!(e.recipients, contacts);
            assert_eq!(e.message_id, emails::message_id("invoice", &id, 0));
        }
        tx.commit().await.unwrap();
        // Outstanding after each of the plain customer's invoices: the later one shows both.
        let mut plain: Vec<(i64, String)> = emails
            .iter()
            .filter(|e| e.customer_id.as_deref() == Some("cus_plain"))
            .map(|e| {
                let s: snapshot::Snapshot = serde_json::from_str(&e.context).unwrap();
                (s.outstanding, s.invoice.unwrap().number.unwrap())
            })
            .collect();
        plain.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            plain.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1200, 4200]
        );

        // The plain customer's two invoices are charged; nobody else's.
        let attempts: Vec<(String, i64, String, i64)> = on_db!(db, p => {
            sqlx::query_as("SELECT invoice_id, attempt, idempotency_key, amount FROM charge_attempts ORDER BY amount")
                .fetch_all(p).await.unwrap()
        });
        assert_eq!(
            attempts,
            vec![
                (a.id.clone(), 1, format!("settled:{}:1", a.id), 1200),
                (b.id.clone(), 1, format!("settled:{}:1", b.id), 3000),
            ]
        );
        // One send job per email, one charge job per attempt, and the ledger adds up.
        assert_eq!(crate::store::queue::unfinished(db).await.unwrap(), 6);
        assert_eq!(
            crate::credits::check(db).await.unwrap(),
            Vec::<String>::new()
        );

        // The same periods again (a retried job, a second daemon): nothing new.
        let again = write_guarded(&s, &periods).await.unwrap();
        assert!(
            again.iter().all(|o| matches!(o, Ok(Generated::Stale))),
            "{again:?}"
        );
        let next: Vec<Option<i64>> = on_db!(db, p => {
            sqlx::query_scalar("SELECT next_period_start FROM subscriptions ORDER BY id")
                .fetch_all(p).await.unwrap()
        });
        assert_eq!(next, vec![Some(1_803_859_200_000); 4]);
        assert_eq!(crate::store::queue::unfinished(db).await.unwrap(), 6);
    }

    #[tokio::test]
    async fn batch_on_sqlite() {
        a_batch_finalises_like_one_invoice_at_a_time(false).await;
    }

    #[tokio::test]
    async fn batch_on_postgres() {
        a_batch_finalises_like_one_invoice_at_a_time(true).await;
    }

    /// A period that cannot be written fails alone: the rest of its batch is written.
    async fn one_bad_period_does_not_fail_its_batch(postgres: bool) {
        let t = open(postgres).await;
        let db = &t.db;
        customer(db, "cus_1", false).await;
        subscription(db, "sub_a", "cus_1", 1000).await;
        // Unreadable items: refused before anything is written.
        subscription(db, "sub_b", "cus_1", 1000).await;
        exec(db, "UPDATE subscriptions SET items = '[{\"description\":\"Plan\",\"quantity\":\"two\",\"unit_amount\":1}]' WHERE id = 'sub_b'").await;
        // A negative total: the database refuses the row (amount_due >= 0), failing the batch's
        // transaction, so each period is then written alone.
        subscription(db, "sub_c", "cus_1", -1000).await;
        subscription(db, "sub_d", "cus_1", 2000).await;
        let s = settings(db);
        let periods: Vec<Period> = ["sub_a", "sub_b", "sub_c", "sub_d"]
            .iter()
            .map(|id| period(id))
            .collect();
        let outcomes = write_isolating_failures(&s, &periods).await;
        assert!(
            matches!(outcomes[0], Ok(Generated::Invoice(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Err(JobError::Permanent(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Err(JobError::Transient(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Ok(Generated::Invoice(_))),
            "{outcomes:?}"
        );
        let a = invoice_of(db, "sub_a").await;
        let d = invoice_of(db, "sub_d").await;
        let mut numbers = vec![a.number.unwrap(), d.number.unwrap()];
        numbers.sort();
        assert_eq!(numbers, vec!["INV-2027-000001", "INV-2027-000002"]);
        let stuck: Vec<Option<i64>> = on_db!(db, p => {
            sqlx::query_scalar("SELECT next_period_start FROM subscriptions WHERE id IN ('sub_b', 'sub_c') ORDER BY id")
                .fetch_all(p).await.unwrap()
        });
        assert_eq!(stuck, vec![Some(START), Some(START)]);
    }

    /// A period whose job ran while the subscription was paused is billed after it resumes,
    /// though that job's dedup key keeps the sweep from queueing the period again.
    async fn resuming_requeues_a_period_its_job_skipped_while_paused(postgres: bool) {
        use crate::store::subscriptions::{Action, transition};
        let t = open(postgres).await;
        let db = &t.db;
        customer(db, "cus_1", false).await;
        subscription(db, "sub_a", "cus_1", 1000).await;
        let s = settings(db);
        let now = s.clock.now();
        let job = Job::GenerateInvoice {
            subscription_id: "sub_a".into(),
            period_start: START,
        };
        // The sweep queued the period, the subscription was paused, then the job ran and
        // finished with nothing to do.
        assert!(queue::enqueue_now(db, &job, 5).await.unwrap());
        assert!(
            transition(db, "sub_a", "active", Action::Pause, now)
                .await
                .unwrap()
        );
        let outcome = write_guarded(&s, &[period("sub_a")]).await.unwrap();
        assert!(matches!(outcome[0], Ok(Generated::Stale)), "{outcome:?}");
        let done = format!("UPDATE {} SET status = 'Done'", queue::table(db));
        exec(db, &done).await;
        assert!(
            !queue::enqueue_now(db, &job, 5).await.unwrap(),
            "the sweep cannot requeue it"
        );

        assert!(
            transition(db, "sub_a", "paused", Action::Resume, now)
                .await
                .unwrap()
        );
        assert_eq!(
            queue::unfinished(db).await.unwrap(),
            1,
            "resume queued the period"
        );
        let outcome = write_guarded(&s, &[period("sub_a")]).await.unwrap();
        assert!(
            matches!(outcome[0], Ok(Generated::Invoice(_))),
            "{outcome:?}"
        );
        invoice_of(db, "sub_a").await;
    }

    #[tokio::test]
    async fn resume_on_sqlite() {
        resuming_requeues_a_period_its_job_skipped_while_paused(false).await;
    }

    #[tokio::test]
    async fn resume_on_postgres() {
        resuming_requeues_a_period_its_job_skipped_while_paused(true).await;
    }

    #[tokio::test]
    async fn isolation_on_sqlite() {
        one_bad_period_does_not_fail_its_batch(false).await;
    }

    #[tokio::test]
    async fn isolation_on_postgres() {
        one_bad_period_does_not_fail_its_batch(true).await;
    }
}
