//! Which code runs a job: one arm per kind of work, each handing the job's ids to the workflow
//! that re-reads the database and does it.

use settled_jobs::error::JobError;
use settled_jobs::generate::Generated;
use settled_jobs::job::Job;

use super::Runner;
use crate::billing::{
    self, charges, dunning, gateway_events, generation::Period, invoices, reminders, statements,
};
use crate::outbox::send::{Sender, Sent};
use crate::store::from_ms;

pub async fn run(r: &Runner, job: &Job) -> Result<(), JobError> {
    let b = &*r.billing;
    match job {
        Job::GenerateInvoice {
            subscription_id,
            period_start,
        } => {
            let start = from_ms(*period_start);
            // Another daemon may have enqueued this by a clock that is ahead of ours (a manual
            // clock advanced there, or hosts a little apart). Run at our own "now", the period
            // would look not yet started and the job would finish with nothing billed, its dedup
            // key spent; so catch up with a stored manual clock, and otherwise try again shortly.
            if start > b.now() {
                r.scheduler
                    .follow_stored_clock()
                    .await
                    .map_err(billing::Error::from)?;
            }
            if start > b.now() {
                return Err(JobError::Transient(anyhow::anyhow!(
                    "the period starting {} has not started by this daemon's clock yet",
                    start.to_rfc3339()
                )));
            }
            let outcome = r
                .writer
                .generate(Period {
                    subscription_id: subscription_id.clone(),
                    period_start: start,
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
        Job::FinalizeInvoice { invoice_id } => Ok(invoices::finalize_due(b, invoice_id).await?),
        Job::ChargeInvoice {
            invoice_id,
            attempt,
        } => Ok(charges::charge_invoice(b, invoice_id, *attempt).await?),
        Job::ResolveCharge {
            invoice_id,
            attempt,
        } => Ok(charges::resolve_charge(b, Some(invoice_id), *attempt, "").await?),
        Job::ResolveBalanceCharge { charge_id } => {
            Ok(charges::resolve_charge(b, None, 0, charge_id).await?)
        }
        Job::ApplyLateFee { invoice_id } => Ok(dunning::apply_late_fee(b, invoice_id).await?),
        Job::SendEmail { email_id } => send_email(r, email_id, 0).await,
        Job::SendEmailRetry { email_id, attempt } => send_email(r, email_id, *attempt).await,
        Job::RemindUpcomingCharge {
            subscription_id,
            period_start,
        } => Ok(reminders::remind_upcoming_charge(b, subscription_id, *period_start).await?),
        Job::SendStatement { customer_id, month } => {
            Ok(statements::send_statement(b, customer_id, *month).await?)
        }
        Job::ProcessEvent { event_id } => Ok(gateway_events::process_event(b, event_id).await?),
    }
}

async fn send_email(r: &Runner, email_id: &str, expected: i64) -> Result<(), JobError> {
    let b = &*r.billing;
    let sender = Sender {
        db: &b.db,
        clock: &*b.clock,
        mailer: &*b.mailer,
        config: &b.config,
    };
    match sender
        .send(email_id, expected)
        .await
        .map_err(billing::Error::from)?
    {
        Sent::Tried | Sent::Stale => Ok(()),
        Sent::Missing => Err(JobError::permanent(format!("no email {email_id}"))),
    }
}
