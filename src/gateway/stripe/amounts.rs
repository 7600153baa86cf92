//! Amounts across the Stripe boundary. The daemon counts every currency in its ISO 4217 minor
//! unit (`settled_jobs::money::Currency::exponent`); Stripe's API counts a few differently, and
//! this table is the only place that knows:
//!
//! | currency | ISO 4217 exponent | Stripe's `amount` | crossing to Stripe | coming back |
//! | --- | --- | --- | --- | --- |
//! | ISK | 0 | two-decimal | × 100 | ÷ 100 (must divide) |
//! | UGX | 0 | two-decimal | × 100 | ÷ 100 (must divide) |
//! | MGA | 2 | zero-decimal | ÷ 100: only whole ariary can be charged | × 100 |
//! | every other | as ISO | as ISO | unchanged | unchanged |
//!
//! HUF and TWD are two-decimal both in ISO 4217 and in Stripe's charge amounts (Stripe pays
//! them out in whole units, which does not touch what a customer is charged), so they cross
//! unchanged.

/// How many of Stripe's units one of ours is, or how many of ours one of Stripe's is.
enum Scale {
    Same,
    /// Stripe's amount is ours times 100.
    StripeTimes100,
    /// Stripe's amount is ours divided by 100.
    StripeDiv100,
}

fn scale(currency: &str) -> Scale {
    match currency.to_ascii_uppercase().as_str() {
        "ISK" | "UGX" => Scale::StripeTimes100,
        "MGA" => Scale::StripeDiv100,
        _ => Scale::Same,
    }
}

/// Our minor units as Stripe's `amount`, or why Stripe cannot be asked for it.
pub fn to_stripe(currency: &str, minor: i64) -> Result<i64, String> {
    match scale(currency) {
        Scale::Same => Ok(minor),
        Scale::StripeTimes100 => minor
            .checked_mul(100)
            .ok_or_else(|| format!("{minor} {currency} is more than Stripe can charge")),
        Scale::StripeDiv100 if minor % 100 == 0 => Ok(minor / 100),
        Scale::StripeDiv100 => Err(format!(
            "Stripe charges {currency} in whole units only; {minor} minor units is not a whole amount"
        )),
    }
}

/// Stripe's `amount` in our minor units; `None` when it cannot be one (an ISK amount that is
/// not a whole krona, which Stripe does not make).
pub fn from_stripe(currency: &str, amount: i64) -> Option<i64> {
    match scale(currency) {
        Scale::Same => Some(amount),
        Scale::StripeTimes100 => (amount % 100 == 0).then_some(amount / 100),
        Scale::StripeDiv100 => amount.checked_mul(100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_cases_cross_both_ways() {
        assert_eq!(to_stripe("ISK", 1500), Ok(150_000));
        assert_eq!(from_stripe("isk", 150_000), Some(1500));
        assert_eq!(from_stripe("isk", 150_050), None);
        assert_eq!(to_stripe("UGX", 7), Ok(700));
        assert_eq!(to_stripe("MGA", 12_300), Ok(123));
        assert!(to_stripe("MGA", 12_345).is_err());
        assert_eq!(from_stripe("mga", 123), Some(12_300));
        for code in ["USD", "JPY", "KWD", "HUF", "TWD"] {
            assert_eq!(to_stripe(code, 12_345), Ok(12_345), "{code}");
            assert_eq!(from_stripe(code, 12_345), Some(12_345), "{code}");
        }
        assert!(to_stripe("ISK", i64::MAX).is_err());
    }
}
