//! Which work is due, as the jobs that do it: the sweep asks this every tick and enqueues what
//! is not queued yet. Each query is bounded so one sweep stays short; the next tick takes the
//! rest.

use chrono::{DateTime, Utc};
use settled_jobs::job::Job;

use super::{Billing, Result, charges, dunning, reminders, statements};
use crate::store::subscriptions::{self, DueCursor};
use crate::store::{emails, invoices, webhook_events};

/// How many due subscriptions one sweep enqueues.
const SUBSCRIPTIONS_PER_SWEEP: i64 = 5000;

/// Due work at `now`. Due subscriptions are taken a page at a time from `after` on (None: from
/// the first); the second value is the position of the page's last one (None: the page was
/// empty). With `lost_jobs`, stored events and outbox rows whose job went missing are offered
/// again (each is enqueued with its row, so this is a safety net only).
pub async fn due_jobs(
    b: &Billing,
    now: DateTime<Utc>,
    after: Option<&DueCursor>,
    lost_jobs: bool,
) -> Result<(Vec<Job>, Option<DueCursor>)> {
    let rows = subscriptions::due_page(&b.db, now, after, SUBSCRIPTIONS_PER_SWEEP).await?;
    let next = rows.last().map(|(id, start)| (*start, id.clone()));
    let mut jobs: Vec<Job> = rows
        .into_iter()
        .map(|(subscription_id, period_start)| Job::GenerateInvoice {
            subscription_id,
            period_start,
        })
        .collect();
    jobs.extend(
        invoices::drafts_due(&b.db, now, 5000)
            .await?
            .into_iter()
            .map(|invoice_id| Job::FinalizeInvoice { invoice_id }),
    );
    jobs.extend(charges::due_jobs(b, now).await?);
    jobs.extend(dunning::late_fee_jobs(b, now).await?);
    jobs.extend(statements::due_jobs(&b.db, now).await?);
    jobs.extend(reminders::due_jobs(&b.db, b.config.email.reminder_days, now).await?);
    if lost_jobs {
        jobs.extend(
            webhook_events::unprocessed_without_job(&b.db, 1000)
                .await?
                .into_iter()
                .map(|event_id| Job::ProcessEvent { event_id }),
        );
        jobs.extend(
            emails::unsent_without_job(&b.db, now)
                .await?
                .into_iter()
                .map(|email_id| Job::SendEmail { email_id }),
        );
    }
    Ok((jobs, next))
}
