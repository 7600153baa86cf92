//! The generate_invoice job's decision: what one due period of a subscription turns into. The
//! daemon reads the subscription under a lock, asks [`decide`], and writes the outcome in the same
//! transaction; the period is unique in the schema, so a second daemon, a retried job or a
//! replayed sweep finds nothing left to do.

use chrono::{DateTime, Duration, Utc};

use crate::error::JobError;
use crate::ids::{new_id, prefix};
use crate::invoice::{build_lines, due_at, plan_period};
use crate::records::{NewInvoice, Subscription, SubscriptionStatus};
use crate::status::InvoiceKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    /// The period's invoice was written.
    Invoice(String),
    /// The catch-up policy skipped the period(s); the subscription moved on.
    Skipped,
    /// Nothing to do: the period is billed already, or the subscription is paused or canceled.
    Stale,
}

/// What to write for the period starting at `period_start`.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Nothing: the subscription is not active, or has moved past (or not reached) the period.
    Stale,
    /// Move the subscription on to `next_period_start`, writing `invoice` first when there is
    /// one (None: the catch-up policy skipped the period).
    Advance {
        invoice: Option<Box<NewInvoice>>,
        next_period_start: Option<DateTime<Utc>>,
    },
}

/// Decides what the due period of `sub` (read under the caller's lock) produces at `now`. A
/// stored schedule or item list that no longer parses is a permanent error of this period only.
pub fn decide(
    sub: &Subscription,
    period_start: DateTime<Utc>,
    now: DateTime<Utc>,
    draft_minutes: u32,
) -> Result<Decision, JobError> {
    if sub.status != SubscriptionStatus::Active
        || sub.next_period_start != Some(period_start)
        || period_start > now
    {
        return Ok(Decision::Stale);
    }
    let schedule = sub
        .schedule
        .to_schedule()
        .map_err(|e| JobError::permanent(format!("stored schedule invalid: {e}")))?;
    let plan = plan_period(&schedule, period_start, now, sub.catch_up);
    let invoice = match plan.bill {
        Some((start, end)) => {
            let (lines, totals) = build_lines(&sub.items).map_err(JobError::permanent)?;
            Some(Box::new(NewInvoice {
                id: new_id(prefix::INVOICE),
                customer_id: sub.customer_id.clone(),
                subscription_id: Some(sub.id.clone()),
                kind: InvoiceKind::Standard,
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
            }))
        }
        None => None,
    };
    Ok(Decision::Advance {
        invoice,
        next_period_start: plan.next_period_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::{CatchUp, ItemSpec};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sub(next: &str) -> Subscription {
        Subscription {
            id: "sub_1".into(),
            customer_id: "cus_1".into(),
            currency: "USD".into(),
            items: vec![ItemSpec {
                description: "Plan".into(),
                quantity: "2".into(),
                unit_amount: 1000,
                tax_rate: Some("0.10".into()),
            }],
            schedule: serde_json::from_str(
                r#"{"every":"month","interval":1,"anchor":"2027-01-31T00:00:00Z","timezone":"UTC"}"#,
            )
            .unwrap(),
            auto_charge: true,
            net_days: 14,
            catch_up: CatchUp::All,
            status: SubscriptionStatus::Active,
            next_period_start: Some(at(next)),
        }
    }

    #[test]
    fn a_due_period_is_billed_and_the_subscription_moves_to_the_next_one() {
        let s = sub("2027-01-31T00:00:00Z");
        let Decision::Advance {
            invoice: Some(inv),
            next_period_start,
        } = decide(
            &s,
            at("2027-01-31T00:00:00Z"),
            at("2027-01-31T00:00:00Z"),
            0,
        )
        .unwrap()
        else {
            panic!("expected an invoice");
        };
        assert_eq!(next_period_start, Some(at("2027-02-28T00:00:00Z")));
        assert_eq!(
            inv.period,
            Some((at("2027-01-31T00:00:00Z"), at("2027-02-28T00:00:00Z")))
        );
        assert_eq!((inv.subtotal, inv.tax, inv.total), (2000, 200, 2200));
        assert_eq!(inv.due_at, at("2027-02-14T00:00:00Z"));
        assert_eq!(inv.finalize_at, None);
    }

    #[test]
    fn a_draft_window_sets_when_the_invoice_is_finalised() {
        let s = sub("2027-01-31T00:00:00Z");
        let now = at("2027-01-31T00:00:05Z");
        let Decision::Advance {
            invoice: Some(inv), ..
        } = decide(&s, at("2027-01-31T00:00:00Z"), now, 30).unwrap()
        else {
            panic!("expected an invoice");
        };
        assert_eq!(inv.finalize_at, Some(now + Duration::minutes(30)));
    }

    #[test]
    fn a_period_not_started_paused_or_already_billed_is_stale() {
        let s = sub("2027-01-31T00:00:00Z");
        let early = at("2027-01-30T23:59:59Z");
        assert!(matches!(
            decide(&s, at("2027-01-31T00:00:00Z"), early, 0).unwrap(),
            Decision::Stale
        ));
        let later = at("2027-03-01T00:00:00Z");
        assert!(matches!(
            decide(&s, at("2026-12-31T00:00:00Z"), later, 0).unwrap(),
            Decision::Stale
        ));
        let mut paused = sub("2027-01-31T00:00:00Z");
        paused.status = SubscriptionStatus::Paused;
        assert!(matches!(
            decide(&paused, at("2027-01-31T00:00:00Z"), later, 0).unwrap(),
            Decision::Stale
        ));
    }

    #[test]
    fn an_unreadable_item_is_a_permanent_error() {
        let mut s = sub("2027-01-31T00:00:00Z");
        s.items[0].quantity = "two".into();
        let err = decide(
            &s,
            at("2027-01-31T00:00:00Z"),
            at("2027-02-01T00:00:00Z"),
            0,
        )
        .unwrap_err();
        assert!(matches!(err, JobError::Permanent(_)), "{err:?}");
    }

    #[test]
    fn catch_up_skip_moves_on_without_an_invoice() {
        let mut s = sub("2027-01-31T00:00:00Z");
        s.catch_up = CatchUp::Skip;
        let d = decide(
            &s,
            at("2027-01-31T00:00:00Z"),
            at("2027-04-15T00:00:00Z"),
            0,
        )
        .unwrap();
        let Decision::Advance {
            invoice,
            next_period_start,
        } = d
        else {
            panic!("expected to advance");
        };
        assert!(invoice.is_none());
        assert_eq!(next_period_start, Some(at("2027-04-30T00:00:00Z")));
    }
}
