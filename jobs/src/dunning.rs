//! Charging and dunning rules: the idempotency key of an attempt, which declines end dunning, when
//! the next attempt is due, and how much a late fee is. Pure functions; the daemon applies them.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use crate::money::{MoneyError, percent_of};

/// Declines after which retrying the same card cannot succeed (or must not be tried): dunning
/// stops at once and the invoice becomes `past_due`.
pub const HARD_DECLINES: &[&str] = &[
    "stolen_card",
    "lost_card",
    "pickup_card",
    "fraudulent",
    "incorrect_number",
    "invalid_account",
    "expired_card",
    "authentication_required",
    "restricted_card",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "stop_payment_order",
];

/// True when the gateway's error `code` or `decline_code` is a hard decline.
pub fn is_hard_decline(code: &str, decline_code: Option<&str>) -> bool {
    HARD_DECLINES.contains(&code) || decline_code.is_some_and(|d| HARD_DECLINES.contains(&d))
}

/// The gateway Idempotency-Key of one attempt: `settled:{subject}:{attempt}`, where the subject is
/// the invoice (or, for a whole-balance charge, the charge's own id). Stored before the call and
/// reused verbatim by every retry of the same attempt.
pub fn idempotency_key(subject: &str, attempt: i64) -> String {
    format!("settled:{subject}:{attempt}")
}

/// When the next automatic attempt is due after the `failures`-th automatic failure (1-based) of
/// an attempt that was scheduled at `scheduled_at`: `retry_days[failures - 1]` days later, or
/// `None` when the schedule is exhausted and the invoice is past due.
///
/// The delay counts from the failed attempt's *scheduled* time, not from when it happened to run,
/// so the dates follow the configured schedule exactly even if a run was late.
pub fn next_attempt_at(
    retry_days: &[u32],
    failures: usize,
    scheduled_at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let days = *retry_days.get(failures.checked_sub(1)?)?;
    Some(scheduled_at + Duration::days(i64::from(days)))
}

/// A late fee: a fixed amount (minor units of the invoice's currency) and/or a fraction of the
/// amount due, added once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LateFee {
    pub fixed_minor: i64,
    /// A fraction (0.015 for 1.5 %), applied to the amount due and rounded once.
    pub rate: Decimal,
}

impl LateFee {
    pub fn amount(&self, amount_due: i64) -> Result<i64, MoneyError> {
        let pct = if self.rate.is_zero() {
            0
        } else {
            percent_of(amount_due, self.rate)?
        };
        self.fixed_minor
            .checked_add(pct)
            .ok_or(MoneyError::Overflow { what: "late fee" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, d, 9, 0, 0).unwrap()
    }

    #[test]
    fn keys_name_subject_and_attempt() {
        assert_eq!(idempotency_key("in_1", 3), "settled:in_1:3");
    }

    #[test]
    fn the_schedule_counts_from_the_scheduled_time() {
        let days = [1, 3, 5, 7];
        assert_eq!(next_attempt_at(&days, 1, at(1)), Some(at(2)));
        assert_eq!(next_attempt_at(&days, 2, at(2)), Some(at(5)));
        assert_eq!(next_attempt_at(&days, 3, at(5)), Some(at(10)));
        assert_eq!(next_attempt_at(&days, 4, at(10)), Some(at(17)));
        assert_eq!(next_attempt_at(&days, 5, at(17)), None);
        assert_eq!(next_attempt_at(&[], 1, at(1)), None);
        assert_eq!(next_attempt_at(&days, 0, at(1)), None);
    }

    #[test]
    fn hard_declines_are_recognised_by_either_code() {
        assert!(is_hard_decline("card_declined", Some("stolen_card")));
        assert!(is_hard_decline("expired_card", Some("expired_card")));
        assert!(is_hard_decline("authentication_required", None));
        assert!(!is_hard_decline(
            "card_declined",
            Some("insufficient_funds")
        ));
        assert!(!is_hard_decline("card_declined", Some("generic_decline")));
    }

    #[test]
    fn late_fees_round_once() {
        let fee = LateFee {
            fixed_minor: 500,
            rate: Decimal::new(15, 3),
        };
        // 1.5 % of 123.45 = 1.85175 → 1.85, plus 5.00.
        assert_eq!(fee.amount(12345).unwrap(), 685);
        assert_eq!(LateFee::default().amount(12345).unwrap(), 0);
    }
}
