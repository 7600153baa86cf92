//! The generate_invoice job: bills one due period of a subscription, exactly once. The period is
//! unique in the schema and the subscription is locked while it is billed, so a second daemon, a
//! retried job or a replayed sweep finds nothing left to do.

use chrono::{DateTime, Duration, Utc};

use crate::clock::Clock;
use crate::error::JobError;
use crate::ids::{new_id, prefix};
use crate::invoice::{build_lines, due_at, plan_period};
use crate::store::{NewInvoice, Store, SubscriptionStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    /// The period's invoice was written.
    Invoice(String),
    /// The catch-up policy skipped the period(s); the subscription moved on.
    Skipped,
    /// Nothing to do: the period is billed already, or the subscription is paused or canceled.
    Stale,
}

pub async fn generate_invoice<S: Store>(
    store: &S,
    clock: &dyn Clock,
    draft_minutes: u32,
    subscription_id: &str,
    period_start: DateTime<Utc>,
) -> Result<Generated, JobError> {
    let now = clock.now();
    let mut tx = store.begin().await?;
    let Some(sub) = store.lock_subscription(&mut tx, subscription_id).await? else {
        return Err(JobError::permanent(format!(
            "no subscription {subscription_id}"
        )));
    };
    if sub.status != SubscriptionStatus::Active
        || sub.next_period_start != Some(period_start)
        || period_start > now
    {
        return Ok(Generated::Stale);
    }
    let schedule = sub
        .schedule
        .to_schedule()
        .map_err(|e| JobError::permanent(format!("stored schedule invalid: {e}")))?;
    let plan = plan_period(&schedule, period_start, now, sub.catch_up);
    let mut outcome = Generated::Skipped;
    if let Some((start, end)) = plan.bill {
        let (lines, totals) = build_lines(&sub.items).map_err(JobError::permanent)?;
        let invoice = NewInvoice {
            id: new_id(prefix::INVOICE),
            customer_id: sub.customer_id.clone(),
            subscription_id: Some(sub.id.clone()),
            kind: "standard",
            currency: sub.currency.clone(),
            period: Some((start, end)),
            lines,
            subtotal: totals.subtotal,
            tax: totals.tax,
            total: totals.total,
            auto_charge: sub.auto_charge,
            due_at: due_at(start, sub.net_days),
            finalize_at: (draft_minutes > 0)
                .then(|| now + Duration::minutes(i64::from(draft_minutes))),
        };
        if store.insert_invoice(&mut tx, &invoice, now).await? {
            outcome = Generated::Invoice(invoice.id);
        }
    }
    store
        .set_next_period_start(&mut tx, &sub.id, plan.next_period_start, now)
        .await?;
    store.commit(tx).await?;
    Ok(outcome)
}
