//! Billing schedules that never drift: every boundary is computed from the anchor (or the cron
//! expression) in the subscription's IANA time zone, never from the previous run.
//!
//! Two kinds of schedule exist:
//! - [`Schedule::Every`]: boundary `k` (any `i64`, negative before the anchor) is the anchor's
//!   local date-time plus `k × interval` units, on the local calendar. Months and years keep the
//!   anchor's day of month, clamped to the target month's length (Jan 31 → Feb 28/29 → Mar 31).
//! - [`Schedule::Cron`]: the fire times of a `cron` crate expression, read as local wall-clock
//!   times in the time zone.
//!
//! Both turn a local wall-clock time into an instant the same way ([`resolve_local`]):
//! - a local time that happens once is that instant;
//! - a local time that happens twice (autumn overlap) is the earlier instant, so it fires once;
//! - a local time that never happens (spring gap) is moved forward by the length of the gap,
//!   i.e. read with the offset in force just before the gap: 02:30 in a 02:00→03:00 gap becomes
//!   03:30 (the same rule as RFC 5545 and `java.time`). A daily schedule therefore still fires
//!   exactly once on the day of the gap.
//!
//! The public queries ([`Schedule::first_at_or_after`], [`Schedule::next_after`],
//! [`Schedule::boundaries_from`]) return instants in strictly increasing order, with each
//! instant at most once even when two local times resolve to the same instant.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
    Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a schedule could not be built. Each message names the field at fault (`interval`,
/// `cron`, `timezone`), and [`ScheduleError::field`] returns it for structured API errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("the interval must be at least 1, but it is 0")]
    ZeroInterval,
    #[error(
        "the cron expression \"{expr}\" is not valid ({reason}); it needs 6 or 7 fields starting with seconds, such as \"0 0 9 1 * *\""
    )]
    InvalidCron { expr: String, reason: String },
    #[error("the timezone \"{name}\" is not a known IANA time zone name such as \"Europe/Berlin\"")]
    UnknownTimezone { name: String },
}

impl ScheduleError {
    /// The name of the input field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::ZeroInterval => "interval",
            ScheduleError::InvalidCron { .. } => "cron",
            ScheduleError::UnknownTimezone { .. } => "timezone",
        }
    }
}

/// The calendar unit of an interval schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Unit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Unit::Day),
            "week" => Ok(Unit::Week),
            "month" => Ok(Unit::Month),
            "year" => Ok(Unit::Year),
            _ => Err(format!(
                "the unit \"{s}\" is not one of \"day\", \"week\", \"month\" or \"year\""
            )),
        }
    }
}

/// A subscription's billing schedule. Build it with [`Schedule::every`] or [`Schedule::cron`]
/// so the interval and expression are validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every {
        unit: Unit,
        interval: u32,
        anchor: DateTime<Utc>,
        tz: Tz,
    },
    Cron {
        expr: String,
        /// Boxed because a parsed expression is ~270 bytes and would otherwise size every
        /// interval schedule too.
        schedule: Box<cron::Schedule>,
        tz: Tz,
    },
}

/// Parses an IANA time zone name ("Europe/Berlin", "UTC").
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimezone {
            name: name.to_string(),
        })
}

/// The earliest local time the `cron` crate can enumerate; its year field starts at 1970.
fn cron_epoch() -> NaiveDateTime {
    DateTime::UNIX_EPOCH.naive_utc()
}

/// Turns a local wall-clock time into one instant, by the rules in the module docs.
/// Returns the instant and whether the local time fell in a gap (and so was moved).
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<(DateTime<Utc>, bool)> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(dt) => Some((dt.with_timezone(&Utc), false)),
        LocalResult::Ambiguous(a, b) => Some((a.min(b).with_timezone(&Utc), false)),
        LocalResult::None => {
            // Reading the time with the offset in force just before the gap is exactly
            // "shift forward by the gap's length". That offset is found by stepping back to the
            // last local time that exists; gaps are at most a day long (Samoa skipped
            // 2011-12-30), so two days of steps always reach one.
            let step = TimeDelta::minutes(15);
            let mut probe = local;
            for _ in 0..(2 * 24 * 4) {
                probe = probe.checked_sub_signed(step)?;
                let before = match tz.from_local_datetime(&probe) {
                    LocalResult::Single(dt) => dt,
                    LocalResult::Ambiguous(_, later) => later,
                    LocalResult::None => continue,
                };
                let offset = before.offset().fix();
                let instant = offset.from_local_datetime(&local).single()?;
                return Some((instant.with_timezone(&Utc), true));
            }
            None
        }
    }
}

/// The wall-clock time in `tz` at instant `t`; `None` only at the very ends of chrono's range,
/// where `DateTime::naive_local` would panic.
fn local_of(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc().checked_add_offset(offset)
}

/// Days in a month of the proleptic Gregorian calendar.
fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    u32::try_from(next.signed_duration_since(first).num_days()).ok()
}

/// The anchor's local date-time moved by `months` calendar months, its day clamped to the
/// target month's length.
fn add_months_clamped(anchor: NaiveDateTime, months: i64) -> Option<NaiveDateTime> {
    let index = i64::from(anchor.year())
        .checked_mul(12)?
        .checked_add(i64::from(anchor.month0()))?
        .checked_add(months)?;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
    let day = anchor.day().min(days_in_month(year, month)?);
    Some(NaiveDate::from_ymd_opt(year, month, day)?.and_time(anchor.time()))
}

fn add_days(anchor: NaiveDateTime, days: i64) -> Option<NaiveDateTime> {
    let magnitude = Days::new(days.unsigned_abs());
    if days >= 0 {
        anchor.checked_add_days(magnitude)
    } else {
        anchor.checked_sub_days(magnitude)
    }
}

impl Schedule {
    /// An interval schedule: every `interval` `unit`s from `anchor`, on the calendar of `tz`.
    pub fn every(
        unit: Unit,
        interval: u32,
        anchor: DateTime<Utc>,
        tz: Tz,
    ) -> Result<Schedule, ScheduleError> {
        if interval == 0 {
            return Err(ScheduleError::ZeroInterval);
        }
        Ok(Schedule::Every {
            unit,
            interval,
            anchor,
            tz,
        })
    }

    /// A cron schedule in the `cron` crate's syntax (6 or 7 fields, seconds first), read as
    /// wall-clock times in `tz`.
    pub fn cron(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let schedule = cron::Schedule::from_str(expr).map_err(|e| ScheduleError::InvalidCron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Schedule::Cron {
            expr: expr.to_string(),
            schedule: Box::new(schedule),
            tz,
        })
    }

    /// The time zone the schedule is evaluated in.
    pub fn tz(&self) -> Tz {
        match self {
            Schedule::Every { tz, .. } | Schedule::Cron { tz, .. } => *tz,
        }
    }

    /// Boundary `k` of an interval schedule (`k = 0` is the anchor itself, negative `k` lie
    /// before it); `None` for a cron schedule or outside chrono's range.
    ///
    /// Boundary 0 is the anchor instant even when the anchor is the later of two identical
    /// local times in an overlap, where the general rule would pick the earlier one: the anchor
    /// is by definition when the subscription started.
    pub fn boundary(&self, k: i64) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every {
                unit,
                interval,
                anchor,
                tz,
            } => {
                if k == 0 {
                    return Some(*anchor);
                }
                let local = local_of(*tz, *anchor)?;
                let steps = k.checked_mul(i64::from(*interval))?;
                let target = match unit {
                    Unit::Day => add_days(local, steps)?,
                    Unit::Week => add_days(local, steps.checked_mul(7)?)?,
                    Unit::Month => add_months_clamped(local, steps)?,
                    Unit::Year => add_months_clamped(local, steps.checked_mul(12)?)?,
                };
                resolve_local(*tz, target).map(|(instant, _)| instant)
            }
            Schedule::Cron { .. } => None,
        }
    }

    /// The first boundary at or after `t`, or `None` if there is none (a cron expression that
    /// never fires again, or a time beyond what chrono or the `cron` crate can represent).
    pub fn first_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every {
                unit,
                interval,
                anchor,
                tz,
            } => self.every_first_at_or_after(*unit, *interval, *anchor, *tz, t),
            Schedule::Cron { schedule, tz, .. } => cron_first_at_or_after(schedule, *tz, t),
        }
    }

    /// The first boundary strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Instants have nanosecond resolution, so "after t" is "at or after t + 1 ns".
        self.first_at_or_after(t.checked_add_signed(TimeDelta::nanoseconds(1))?)
    }

    /// All boundaries at or after `t`, in strictly increasing order.
    pub fn boundaries_from(&self, t: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.first_at_or_after(t), move |b| self.next_after(*b))
    }

    /// Estimates the boundary index from the elapsed local time, then corrects the estimate by
    /// a step or two, so the cost does not depend on how far the anchor lies in the past.
    fn every_first_at_or_after(
        &self,
        unit: Unit,
        interval: u32,
        anchor: DateTime<Utc>,
        tz: Tz,
        t: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if interval == 0 {
            // Only reachable by building the variant by hand, bypassing `Schedule::every`;
            // answer without dividing by zero: the anchor is the only boundary.
            return (anchor >= t).then_some(anchor);
        }
        let anchor_local = local_of(tz, anchor)?;
        let t_local = local_of(tz, t)?;
        let interval = i64::from(interval);
        let mut k = match unit {
            Unit::Day | Unit::Week => {
                let days_per_step = if unit == Unit::Week { 7 } else { 1 };
                let step_secs = interval * days_per_step * 86_400;
                (t_local - anchor_local).num_seconds().div_euclid(step_secs)
            }
            Unit::Month | Unit::Year => {
                let months_per_step = if unit == Unit::Year { 12 } else { 1 };
                let month_index =
                    |d: NaiveDateTime| i64::from(d.year()) * 12 + i64::from(d.month0());
                (month_index(t_local) - month_index(anchor_local))
                    .div_euclid(interval * months_per_step)
            }
        };
        // Boundaries never decrease with k, so walking up to the first one ≥ t and then down
        // while the previous one is still ≥ t lands on the smallest such k.
        let mut boundary = loop {
            let b = self.boundary(k)?;
            if b >= t {
                break b;
            }
            k = k.checked_add(1)?;
        };
        while let Some(previous) = k.checked_sub(1).and_then(|p| self.boundary(p)) {
            if previous < t {
                break;
            }
            k -= 1;
            boundary = previous;
        }
        Some(boundary)
    }
}

/// The first cron fire instant at or after `t`.
///
/// The expression is enumerated on the local wall clock (by running the `cron` crate over UTC,
/// which has no transitions, and reading its results as naive local times), and each local time
/// is resolved with [`resolve_local`]. Evaluating the crate directly in `tz` would both fire an
/// overlapped time twice and, asked from inside an overlap, return an instant before `t`.
///
/// Resolution is increasing for local times that exist, but a time in a gap lands after some
/// real times that follow it on the wall clock (02:30 → 03:30 comes after 03:10). So the search
/// starts early enough to see gap times whose moved instant is ≥ t, and stops at the first
/// existing local time whose instant is ≥ t: nothing later on the wall clock can resolve earlier.
fn cron_first_at_or_after(
    schedule: &cron::Schedule,
    tz: Tz,
    t: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let offset_at = |at: DateTime<Utc>| tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    // A gap time resolves to at most one gap length (≤ 1 day) after its transition, read with
    // the offset before the transition. The smallest offset in force during the last ~day is
    // therefore a safe lower bound for where the candidates start on the wall clock.
    let mut min_offset = offset_at(t);
    for hours in 1..=25 {
        if let Some(earlier) = t.checked_sub_signed(TimeDelta::hours(hours)) {
            let o = offset_at(earlier);
            if o.local_minus_utc() < min_offset.local_minus_utc() {
                min_offset = o;
            }
        }
    }
    // Out of chrono's range at the bottom means "from the first time the crate knows"; at the
    // top there is nothing left to fire.
    let start = match t.naive_utc().checked_add_offset(min_offset) {
        Some(start) => start.max(cron_epoch()),
        None if t.year() < 1970 => cron_epoch(),
        None => return None,
    };
    // `after` is exclusive and ignores sub-seconds, so start one second early; anything before
    // t is filtered out below.
    let from = start.checked_sub_signed(TimeDelta::seconds(1))?.and_utc();

    let mut best: Option<DateTime<Utc>> = None;
    for fire in schedule.after(&from) {
        let Some((instant, in_gap)) = resolve_local(tz, fire.naive_utc()) else {
            continue;
        };
        if instant < t {
            continue;
        }
        best = Some(best.map_or(instant, |b| b.min(instant)));
        if !in_gap {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests;
