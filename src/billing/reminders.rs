//! The upcoming-charge reminder: `email.reminder_days` before a subscription's period is charged
//! automatically, its customer is told what will be charged to which card (once per period).

use chrono::{DateTime, Utc};
use settled_jobs::invoice::build_lines;
use settled_jobs::job::WorkKind;

use super::{Billing, Error, Result};
use crate::outbox::snapshot::{self, ChargeSnap, LineSnap};
use crate::store::subscriptions::{self, subscription_from_row};
use crate::store::work_failures::SetAside;
use crate::store::{Tx, customers, from_ms, ms, payment_methods, wall_ms, work_failures};

/// Periods to be charged within `reminder_days` of `now` that have no reminder yet, not set
/// aside (as `set_aside` says); none when reminders are off.
async fn owed(
    b: &Billing,
    now: DateTime<Utc>,
    limit: i64,
    set_aside: SetAside,
) -> Result<Vec<(String, i64)>> {
    let days = b.config.email.reminder_days;
    if days == 0 {
        return Ok(Vec::new());
    }
    let lead = chrono::Duration::days(i64::from(days));
    Ok(subscriptions::owed_reminder(&b.db, now, now + lead, set_aside, limit).await?)
}

/// How many reminders are owed at `now` (leaving out those reported failed).
pub async fn due_count(b: &Billing, now: DateTime<Utc>) -> Result<i64> {
    Ok(owed(b, now, 1000, SetAside::Reported).await?.len() as i64)
}

/// Whether one can be taken now (owed and not waiting for its next try).
pub async fn claimable(b: &Billing, now: DateTime<Utc>) -> Result<bool> {
    Ok(!owed(b, now, 1, SetAside::WaitingAt(wall_ms()))
        .await?
        .is_empty())
}

/// One batch of reminders owed: each written in a savepoint of its own. Returns how many it took.
pub async fn drain(b: &Billing) -> Result<usize> {
    let now = b.now();
    let owed = owed(b, now, 100, SetAside::WaitingAt(wall_ms())).await?;
    if owed.is_empty() {
        return Ok(0);
    }
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let mut done = Vec::new();
    for (subscription_id, period_start) in &owed {
        tx.savepoint().await?;
        match remind(b, &mut tx, subscription_id, *period_start, now).await {
            Ok(()) => {
                tx.release_savepoint().await?;
                done.push(subscription_id.as_str());
            }
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                work_failures::set_aside(
                    &mut tx,
                    WorkKind::Reminders,
                    subscription_id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::error!(subscription_id = %subscription_id, error = %e, "reminder set aside");
            }
        }
    }
    work_failures::clear(&mut tx, WorkKind::Reminders, &done).await?;
    tx.commit().await?;
    Ok(owed.len())
}

/// If the period will still be charged automatically, writes its reminder (once: unique on
/// subscription and period start).
async fn remind(
    b: &Billing,
    tx: &mut Tx,
    subscription_id: &str,
    period_start: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let days = b.config.email.reminder_days;
    if days == 0 {
        return Ok(());
    }
    let Some(row) = subscriptions::get_in(tx, subscription_id).await? else {
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
    let customer_auto = customers::get_in(tx, &row.customer_id)
        .await?
        .map(|c| c.auto_charge);
    if customer_auto != Some(true) {
        return Ok(());
    }
    let Some(card) = payment_methods::default_card(tx, &row.customer_id)
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
    crate::outbox::upcoming_charge(tx, &customer_id, &currency, charge, now).await?;
    Ok(())
}
