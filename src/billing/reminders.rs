//! The upcoming-charge reminder: `email.reminder_days` before a subscription's period is charged
//! automatically, its customer is told what will be charged to which card (once per period).

use chrono::{DateTime, Utc};
use settled_jobs::invoice::build_lines;
use settled_jobs::job::Job;

use super::{Billing, Error, Result};
use crate::outbox::snapshot::{self, ChargeSnap, LineSnap};
use crate::store::subscriptions::{self, subscription_from_row};
use crate::store::{Db, customers, from_ms, ms, payment_methods};

/// Reminders whose time has come: periods to be charged within `reminder_days` that have no
/// reminder yet (0 = none).
pub async fn due_jobs(db: &Db, reminder_days: u32, now: DateTime<Utc>) -> Result<Vec<Job>> {
    if reminder_days == 0 {
        return Ok(Vec::new());
    }
    let lead = chrono::Duration::days(i64::from(reminder_days));
    let due = subscriptions::owed_reminder(db, now, now + lead, 5000).await?;
    Ok(due
        .into_iter()
        .map(
            |(subscription_id, period_start)| Job::RemindUpcomingCharge {
                subscription_id,
                period_start,
            },
        )
        .collect())
}

/// The remind_upcoming_charge job: if the period will still be charged automatically, write its
/// reminder (once: unique on subscription and period start).
pub async fn remind_upcoming_charge(
    b: &Billing,
    subscription_id: &str,
    period_start: i64,
) -> Result<()> {
    let days = b.config.email.reminder_days;
    if days == 0 {
        return Ok(());
    }
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some(row) = subscriptions::get_in(&mut tx, subscription_id).await? else {
        return Err(Error::permanent(format!(
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
    let customer_auto = customers::get_in(&mut tx, &row.customer_id)
        .await?
        .map(|c| c.auto_charge);
    if customer_auto != Some(true) {
        return Ok(());
    }
    let Some(card) = payment_methods::default_card(&mut tx, &row.customer_id)
        .await?
        .and_then(|(brand, last4)| snapshot::card(Some(brand), Some(last4)))
    else {
        return Ok(());
    };
    let currency = row.currency.clone();
    let customer_id = row.customer_id.clone();
    let sub = subscription_from_row(row)?;
    let (lines, totals) = build_lines(&sub.items).map_err(Error::permanent)?;
    let period_end = sub
        .schedule
        .to_schedule()
        .ok()
        .and_then(|s| s.next_after(start))
        .map(ms);
    let charge = ChargeSnap {
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
    };
    crate::outbox::upcoming_charge(&mut tx, &customer_id, &currency, charge, now).await?;
    tx.commit().await?;
    Ok(())
}
