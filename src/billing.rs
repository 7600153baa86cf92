//! Glue between the queue and the billing core: which work is due, and which code runs a job.

use chrono::{DateTime, Utc};
use settled_jobs::job::Job;

use crate::app::State;
use crate::config::Config;
use crate::store::{Db, ms, on_db};
use settled_jobs::error::JobError;
use settled_jobs::generate::Generated;

/// How many due subscriptions one sweep enqueues.
const SUBSCRIPTIONS_PER_SWEEP: i64 = 5000;

/// Where a walk through the due subscriptions has got to: the (next_period_start, id) of the last
/// one enqueued.
pub type DueCursor = (i64, String);

/// Due work, as jobs. Each query is bounded so one sweep stays short; the next tick takes the rest.
/// Due subscriptions are taken a page at a time from `after` on (None: from the first); the
/// second value is the position of the page's last one (None: the page was empty).
pub async fn due_jobs(
    db: &Db,
    config: &Config,
    now: DateTime<Utc>,
    after: Option<&DueCursor>,
) -> Result<(Vec<Job>, Option<DueCursor>), sqlx::Error> {
    let (after_start, after_id) = after.cloned().unwrap_or((i64::MIN, String::new()));
    let rows: Vec<(String, i64)> = on_db!(db, p => {
        sqlx::query_as(
            "SELECT id, next_period_start FROM subscriptions WHERE status = 'active' \
             AND next_period_start IS NOT NULL AND next_period_start <= $1 \
             AND (next_period_start, id) > ($2, $3) \
             ORDER BY next_period_start, id LIMIT $4",
        )
        .bind(ms(now))
        .bind(after_start)
        .bind(after_id)
        .bind(SUBSCRIPTIONS_PER_SWEEP)
        .fetch_all(p)
        .await?
    });
    let next = rows.last().map(|(id, start)| (*start, id.clone()));
    let drafts: Vec<String> = on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT id FROM invoices WHERE status = 'draft' AND finalize_at IS NOT NULL \
             AND finalize_at <= $1 ORDER BY finalize_at LIMIT 5000",
        )
        .bind(ms(now))
        .fetch_all(p)
        .await?
    });
    let mut jobs: Vec<Job> = rows
        .into_iter()
        .map(|(subscription_id, period_start)| Job::GenerateInvoice {
            subscription_id,
            period_start,
        })
        .collect();
    jobs.extend(
        drafts
            .into_iter()
            .map(|invoice_id| Job::FinalizeInvoice { invoice_id }),
    );
    jobs.extend(crate::charges::due_jobs(db, config, now).await?);
    jobs.extend(crate::charges::late_fee_jobs(db, config, now).await?);
    jobs.extend(crate::outbox::due_jobs(db, config.email.reminder_days, now).await?);
    // Stored events and outbox rows whose job was lost (each is enqueued with its row, so this is
    // a safety net only; it looks at most every few seconds, not at every sweep).
    if crate::events::store::lost_job_check_due() {
        jobs.extend(
            crate::events::store::unprocessed_without_job(db, 1000)
                .await?
                .into_iter()
                .map(|event_id| Job::ProcessEvent { event_id }),
        );
        jobs.extend(
            crate::store::emails::unsent_without_job(db, now)
                .await?
                .into_iter()
                .map(|email_id| Job::SendEmail { email_id }),
        );
    }
    Ok((jobs, next))
}

pub async fn run(state: &State, job: &Job) -> Result<(), JobError> {
    match job {
        Job::GenerateInvoice {
            subscription_id,
            period_start,
        } => {
            // Another daemon may have enqueued this by a clock that is ahead of ours (a manual
            // clock advanced there, or hosts a little apart). Run at our own "now", the period
            // would look not yet started and the job would finish with nothing billed, its dedup
            // key spent; so catch up with a stored manual clock, and otherwise try again shortly.
            if crate::store::from_ms(*period_start) > state.clock.now() {
                state.scheduler.follow_stored_clock().await.map_err(|e| {
                    JobError::Transient(anyhow::Error::new(e).context("reading the manual clock"))
                })?;
            }
            if crate::store::from_ms(*period_start) > state.clock.now() {
                return Err(JobError::Transient(anyhow::anyhow!(
                    "the period starting {} has not started by this daemon's clock yet",
                    crate::store::from_ms(*period_start).to_rfc3339()
                )));
            }
            let outcome = state
                .generator
                .generate(crate::generation::Period {
                    subscription_id: subscription_id.clone(),
                    period_start: crate::store::from_ms(*period_start),
                })
                .await?;
            match outcome {
                Generated::Invoice(id) => {
                    crate::metrics::invoice_generated(true);
                    tracing::info!(invoice_id = %id, subscription_id = %subscription_id, "invoice generated")
                }
                Generated::Skipped => {
                    crate::metrics::invoice_generated(false);
                    tracing::info!(subscription_id = %subscription_id, "period skipped by the catch-up policy")
                }
                Generated::Stale => {}
            }
            Ok(())
        }
        Job::FinalizeInvoice { invoice_id } => {
            crate::store::invoices::finalize_due(state, invoice_id).await
        }
        Job::ChargeInvoice {
            invoice_id,
            attempt,
        } => crate::charges::charge_invoice(state, invoice_id, *attempt).await,
        Job::ResolveCharge {
            invoice_id,
            attempt,
        } => crate::charges::resolve_charge(state, Some(invoice_id), *attempt, "").await,
        Job::ResolveBalanceCharge { charge_id } => {
            crate::charges::resolve_charge(state, None, 0, charge_id).await
        }
        Job::ApplyLateFee { invoice_id } => crate::charges::apply_late_fee(state, invoice_id).await,
        Job::SendEmail { email_id } => crate::outbox::send(state, email_id, 0).await,
        Job::SendEmailRetry { email_id, attempt } => {
            crate::outbox::send(state, email_id, *attempt).await
        }
        Job::RemindUpcomingCharge {
            subscription_id,
            period_start,
        } => crate::outbox::remind_upcoming_charge(state, subscription_id, *period_start).await,
        Job::SendStatement { customer_id, month } => {
            crate::outbox::send_statement(state, customer_id, *month).await
        }
        Job::ProcessEvent { event_id } => crate::events::process_event(state, event_id).await,
    }
}
