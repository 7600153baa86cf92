//! How the API writes amounts and instants: decimal strings in the currency's major unit
//! ("19.99") and RFC 3339 in UTC to the second.

use chrono::{DateTime, SecondsFormat, Utc};
use settled_jobs::money::decimal_text;

use crate::store::from_ms;

/// An amount in minor units as the API shows it: a decimal string in the currency's major unit.
pub fn amount(minor: i64, currency: &str) -> String {
    decimal_text(minor, currency)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A stored instant (milliseconds since the epoch) as the API shows it.
pub fn rfc3339_ms(v: i64) -> String {
    rfc3339(from_ms(v))
}
