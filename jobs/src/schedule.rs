//! Billing schedules that never drift: every boundary is computed from the anchor (or the cron
//! expression) in the subscription's IANA time zone, never from the previous run.
//!
//! DESIGN.md rule 5. Two kinds of schedule exist:
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
mod tests {
    use super::*;
    use chrono::{NaiveTime, Timelike};
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        parse_tz(name).unwrap()
    }

    fn take(s: &Schedule, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        s.boundaries_from(from).take(n).collect()
    }

    fn local_strings(s: &Schedule, from: DateTime<Utc>, n: usize) -> Vec<String> {
        take(s, from, n)
            .into_iter()
            .map(|b| b.with_timezone(&s.tz()).to_rfc3339())
            .collect()
    }

    #[test]
    fn monthly_from_the_31st_clamps_and_recovers() {
        let anchor = utc("2027-01-31T00:00:00Z");
        let s = Schedule::every(Unit::Month, 1, anchor, Tz::UTC).unwrap();
        let got: Vec<String> = take(&s, anchor, 14)
            .iter()
            .map(|b| b.format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            got,
            [
                "2027-01-31",
                "2027-02-28",
                "2027-03-31",
                "2027-04-30",
                "2027-05-31",
                "2027-06-30",
                "2027-07-31",
                "2027-08-31",
                "2027-09-30",
                "2027-10-31",
                "2027-11-30",
                "2027-12-31",
                "2028-01-31",
                "2028-02-29",
            ]
        );
        // Computed from the anchor, not the previous boundary: after Feb 28 comes Mar 31.
        assert_eq!(
            s.next_after(utc("2027-02-28T00:00:00Z")),
            Some(utc("2027-03-31T00:00:00Z"))
        );
        assert_eq!(s.boundary(-1), Some(utc("2026-12-31T00:00:00Z")));
        assert_eq!(s.boundary(-2), Some(utc("2026-11-30T00:00:00Z")));
    }

    #[test]
    fn yearly_from_leap_day() {
        let anchor = utc("2028-02-29T00:00:00Z");
        let s = Schedule::every(Unit::Year, 1, anchor, Tz::UTC).unwrap();
        let got = take(&s, anchor, 5);
        assert_eq!(
            got,
            [
                utc("2028-02-29T00:00:00Z"),
                utc("2029-02-28T00:00:00Z"),
                utc("2030-02-28T00:00:00Z"),
                utc("2031-02-28T00:00:00Z"),
                utc("2032-02-29T00:00:00Z"),
            ]
        );
        let every_two = Schedule::every(Unit::Year, 2, anchor, Tz::UTC).unwrap();
        assert_eq!(
            every_two.next_after(anchor),
            Some(utc("2030-02-28T00:00:00Z"))
        );
    }

    #[test]
    fn weekly_in_new_york_at_0030_across_both_dst_changes() {
        let ny = tz("America/New_York");
        // Sunday 2027-03-07 00:30 EST.
        let s = Schedule::every(Unit::Week, 1, utc("2027-03-07T05:30:00Z"), ny).unwrap();
        assert_eq!(
            local_strings(&s, utc("2027-03-01T00:00:00Z"), 3),
            [
                "2027-03-07T00:30:00-05:00",
                "2027-03-14T00:30:00-05:00", // before the 02:00 change
                "2027-03-21T00:30:00-04:00",
            ]
        );
        assert_eq!(
            local_strings(&s, utc("2027-10-30T00:00:00Z"), 3),
            [
                "2027-10-31T00:30:00-04:00",
                "2027-11-07T00:30:00-04:00", // before the 02:00 change back
                "2027-11-14T00:30:00-05:00",
            ]
        );
    }

    #[test]
    fn weekly_in_new_york_at_0230_across_both_dst_changes() {
        let ny = tz("America/New_York");
        // Sunday 2027-03-07 02:30 EST.
        let s = Schedule::every(Unit::Week, 1, utc("2027-03-07T07:30:00Z"), ny).unwrap();
        // 02:30 does not exist on 2027-03-14: moved forward by the hour-long gap to 03:30 EDT.
        assert_eq!(
            local_strings(&s, utc("2027-03-01T00:00:00Z"), 3),
            [
                "2027-03-07T02:30:00-05:00",
                "2027-03-14T03:30:00-04:00",
                "2027-03-21T02:30:00-04:00",
            ]
        );
        // 02:30 on 2027-11-07 is after the repeated hour and exists once, in EST.
        assert_eq!(
            local_strings(&s, utc("2027-10-30T00:00:00Z"), 3),
            [
                "2027-10-31T02:30:00-04:00",
                "2027-11-07T02:30:00-05:00",
                "2027-11-14T02:30:00-05:00",
            ]
        );
        // Exactly one boundary in each week of the year.
        let all = take(&s, utc("2027-01-01T00:00:00Z"), 60);
        let in_2027: Vec<_> = all
            .iter()
            .filter(|b| b.with_timezone(&ny).year() == 2027)
            .collect();
        assert_eq!(in_2027.len(), 52);
        for pair in all.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= TimeDelta::hours(167) && gap <= TimeDelta::hours(169));
        }
    }

    #[test]
    fn weekly_at_0130_in_the_overlap_takes_the_earlier_instant() {
        let ny = tz("America/New_York");
        let s = Schedule::every(Unit::Week, 1, utc("2027-10-31T05:30:00Z"), ny).unwrap();
        assert_eq!(
            s.next_after(utc("2027-10-31T05:30:00Z")),
            Some(utc("2027-11-07T05:30:00Z")) // 01:30 EDT, not 01:30 EST (06:30Z)
        );
        assert_eq!(
            s.next_after(utc("2027-11-07T05:30:00Z")),
            Some(utc("2027-11-14T06:30:00Z"))
        );
    }

    #[test]
    fn daily_at_0230_in_berlin_across_the_spring_gap() {
        let berlin = tz("Europe/Berlin");
        // 2027-03-26 02:30 CET.
        let s = Schedule::every(Unit::Day, 1, utc("2027-03-26T01:30:00Z"), berlin).unwrap();
        assert_eq!(
            local_strings(&s, utc("2027-03-26T00:00:00Z"), 4),
            [
                "2027-03-26T02:30:00+01:00",
                "2027-03-27T02:30:00+01:00",
                "2027-03-28T03:30:00+02:00", // 02:30 is in the gap
                "2027-03-29T02:30:00+02:00",
            ]
        );
    }

    #[test]
    fn an_anchor_in_the_second_of_two_equal_local_times_is_itself_a_boundary() {
        let ny = tz("America/New_York");
        let anchor = utc("2027-11-07T06:30:00Z"); // 01:30 EST, the repeated hour
        let s = Schedule::every(Unit::Day, 1, anchor, ny).unwrap();
        assert_eq!(
            s.first_at_or_after(utc("2027-11-07T05:45:00Z")),
            Some(anchor)
        );
        assert_eq!(s.next_after(anchor), Some(utc("2027-11-08T06:30:00Z")));
        assert_eq!(
            s.boundary(-1),
            Some(utc("2027-11-06T05:30:00Z")) // 01:30 EDT
        );
    }

    #[test]
    fn cron_monthly_in_berlin() {
        let berlin = tz("Europe/Berlin");
        let s = Schedule::cron("0 0 9 1 * *", berlin).unwrap();
        assert_eq!(
            local_strings(&s, utc("2027-01-15T00:00:00Z"), 4),
            [
                "2027-02-01T09:00:00+01:00",
                "2027-03-01T09:00:00+01:00",
                "2027-04-01T09:00:00+02:00",
                "2027-05-01T09:00:00+02:00",
            ]
        );
        let b = utc("2027-04-01T07:00:00Z");
        assert_eq!(s.first_at_or_after(b), Some(b));
        assert_eq!(s.next_after(b), Some(utc("2027-05-01T07:00:00Z")));
    }

    #[test]
    fn cron_in_the_fall_back_overlap_fires_once() {
        let ny = tz("America/New_York");
        let s = Schedule::cron("0 30 1 * * *", ny).unwrap();
        assert_eq!(
            local_strings(&s, utc("2027-11-06T00:00:00Z"), 3),
            [
                "2027-11-06T01:30:00-04:00",
                "2027-11-07T01:30:00-04:00", // the earlier of the two 01:30s only
                "2027-11-08T01:30:00-05:00",
            ]
        );
        // Asked from between the two 01:30s, the next fire is the next day, never in the past.
        assert_eq!(
            s.first_at_or_after(utc("2027-11-07T06:00:00Z")),
            Some(utc("2027-11-08T06:30:00Z"))
        );
        assert_eq!(
            s.first_at_or_after(utc("2027-11-07T06:30:00Z")),
            Some(utc("2027-11-08T06:30:00Z"))
        );
    }

    #[test]
    fn cron_in_the_spring_gap_is_moved_forward() {
        let ny = tz("America/New_York");
        let s = Schedule::cron("0 30 2 * * *", ny).unwrap();
        assert_eq!(
            local_strings(&s, utc("2027-03-13T00:00:00Z"), 3),
            [
                "2027-03-13T02:30:00-05:00",
                "2027-03-14T03:30:00-04:00",
                "2027-03-15T02:30:00-04:00",
            ]
        );
        // Asked from inside the moved window (03:15 EDT), the moved fire is still ahead.
        assert_eq!(
            s.first_at_or_after(utc("2027-03-14T07:15:00Z")),
            Some(utc("2027-03-14T07:30:00Z"))
        );
    }

    #[test]
    fn cron_every_quarter_hour_through_both_transitions_is_strictly_increasing() {
        let ny = tz("America/New_York");
        let s = Schedule::cron("0 */15 * * * *", ny).unwrap();
        // Spring: 01:45 EST is followed by 03:00 EDT; moved gap times coincide with real times
        // and appear once.
        let spring = take(&s, utc("2027-03-14T06:40:00Z"), 6);
        assert_eq!(
            spring,
            [
                utc("2027-03-14T06:45:00Z"),
                utc("2027-03-14T07:00:00Z"),
                utc("2027-03-14T07:15:00Z"),
                utc("2027-03-14T07:30:00Z"),
                utc("2027-03-14T07:45:00Z"),
                utc("2027-03-14T08:00:00Z"),
            ]
        );
        // Autumn: the repeated hour's wall times fire once, in its first pass.
        let autumn = take(&s, utc("2027-11-07T05:40:00Z"), 6);
        assert_eq!(
            autumn,
            [
                utc("2027-11-07T05:45:00Z"), // 01:45 EDT
                utc("2027-11-07T07:00:00Z"), // 02:00 EST
                utc("2027-11-07T07:15:00Z"),
                utc("2027-11-07T07:30:00Z"),
                utc("2027-11-07T07:45:00Z"),
                utc("2027-11-07T08:00:00Z"),
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = Schedule::every(Unit::Month, 0, utc("2027-01-01T00:00:00Z"), Tz::UTC).unwrap_err();
        assert_eq!(e, ScheduleError::ZeroInterval);
        assert_eq!(e.field(), "interval");
        assert!(e.to_string().contains("interval"));

        for bad in ["not a cron", "0 0 9 1 *", "61 0 0 * * *", ""] {
            let e = Schedule::cron(bad, Tz::UTC).unwrap_err();
            assert_eq!(e.field(), "cron", "{bad:?}");
            assert!(e.to_string().contains("cron expression"), "{e}");
        }

        let e = parse_tz("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(e.field(), "timezone");
        assert_eq!(
            e.to_string(),
            "the timezone \"Mars/Olympus_Mons\" is not a known IANA time zone name such as \"Europe/Berlin\""
        );
        assert_eq!(
            parse_tz("Europe/Berlin").unwrap(),
            chrono_tz::Europe::Berlin
        );
    }

    #[test]
    fn unit_serde_is_lowercase() {
        assert_eq!(serde_json::to_string(&Unit::Month).unwrap(), "\"month\"");
        assert_eq!(
            serde_json::from_str::<Unit>("\"week\"").unwrap(),
            Unit::Week
        );
        assert!(serde_json::from_str::<Unit>("\"Week\"").is_err());
        assert_eq!("year".parse::<Unit>().unwrap(), Unit::Year);
    }

    #[test]
    fn anchor_fifty_years_back_is_answered_arithmetically() {
        let berlin = tz("Europe/Berlin");
        // 1977-01-31 10:00 CET.
        let anchor = utc("1977-01-31T09:00:00Z");
        let monthly = Schedule::every(Unit::Month, 1, anchor, berlin).unwrap();
        assert_eq!(
            monthly.first_at_or_after(utc("2027-02-10T00:00:00Z")),
            Some(utc("2027-02-28T09:00:00Z"))
        );
        assert_eq!(
            monthly.first_at_or_after(utc("2027-06-01T00:00:00Z")),
            Some(utc("2027-06-30T08:00:00Z")) // 10:00 CEST
        );
        let daily = Schedule::every(Unit::Day, 3, anchor, berlin).unwrap();
        // 18262 days from 1977-01-31 to 2027-01-31; 18262 = 3 × 6087 + 1, so the boundary
        // nearest after 2027-01-31 00:00 local is 2027-02-02 10:00.
        assert_eq!(
            daily.first_at_or_after(utc("2027-01-30T23:00:00Z")),
            Some(utc("2027-02-02T09:00:00Z"))
        );
        assert_eq!(
            monthly.first_at_or_after(utc("1900-01-01T00:00:00Z")),
            Some(utc("1900-01-31T09:00:00Z"))
        );
    }

    #[test]
    fn before_the_anchor_negative_boundaries_count() {
        let s = Schedule::every(Unit::Week, 2, utc("2027-01-15T12:00:00Z"), Tz::UTC).unwrap();
        assert_eq!(
            s.first_at_or_after(utc("2027-01-01T00:00:00Z")),
            Some(utc("2027-01-01T12:00:00Z"))
        );
    }

    #[test]
    fn sub_second_anchor_is_kept() {
        let anchor = utc("2027-01-01T10:00:00.123456789Z");
        let s = Schedule::every(Unit::Day, 1, anchor, Tz::UTC).unwrap();
        assert_eq!(s.first_at_or_after(anchor), Some(anchor));
        assert_eq!(
            s.next_after(anchor),
            Some(utc("2027-01-02T10:00:00.123456789Z"))
        );
    }

    #[test]
    fn cron_that_never_fires_again_ends() {
        let s = Schedule::cron("0 0 0 1 1 * 2030", Tz::UTC).unwrap();
        assert_eq!(take(&s, utc("2020-01-01T00:00:00Z"), 5).len(), 1);
        let feb30 = Schedule::cron("0 0 0 30 2 *", Tz::UTC).unwrap();
        assert_eq!(feb30.first_at_or_after(utc("2090-01-01T00:00:00Z")), None);
    }

    const ZONES: &[&str] = &[
        "UTC",
        "America/New_York",
        "Europe/Berlin",
        "Australia/Lord_Howe", // 30-minute DST shift
        "Pacific/Apia",        // skipped 2011-12-30 entirely
        "Asia/Kolkata",
        "America/Sao_Paulo",
    ];

    const CRONS: &[&str] = &[
        "0 0 9 1 * *",
        "0 30 1 * * *",
        "0 30 2 * * *",
        "0 */20 * * * *",
        "0 0 2,3 * * Sun",
        "0 15 0 31 * ?",
    ];

    fn every_strategy() -> impl Strategy<Value = Schedule> {
        (
            prop::sample::select(vec![Unit::Day, Unit::Week, Unit::Month, Unit::Year]),
            1u32..=5,
            // 1990 .. 2060, whole minutes, so boundaries land on the interesting local times.
            (631_152_000i64 / 60)..(2_840_140_800i64 / 60),
            prop::sample::select(ZONES.to_vec()),
        )
            .prop_map(|(unit, interval, minutes, zone)| {
                let anchor = DateTime::from_timestamp(minutes * 60, 0).unwrap();
                Schedule::every(unit, interval, anchor, tz(zone)).unwrap()
            })
    }

    fn cron_strategy() -> impl Strategy<Value = Schedule> {
        (
            prop::sample::select(CRONS.to_vec()),
            prop::sample::select(ZONES.to_vec()),
        )
            .prop_map(|(expr, zone)| Schedule::cron(expr, tz(zone)).unwrap())
    }

    fn instant_strategy() -> impl Strategy<Value = DateTime<Utc>> {
        (631_152_000i64..2_840_140_800).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
    }

    fn check_sequence(s: &Schedule, t: DateTime<Utc>, n: usize) -> Result<(), TestCaseError> {
        let bs = take(s, t, n);
        prop_assert!(!bs.is_empty());
        prop_assert!(bs[0] >= t);
        for pair in bs.windows(2) {
            prop_assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for b in &bs {
            prop_assert_eq!(s.first_at_or_after(*b), Some(*b));
        }
        Ok(())
    }

    proptest! {
        // No regression files: the crate directory is not a place for test artefacts.
        #![proptest_config(ProptestConfig {
            cases: 400,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn every_boundaries_are_strictly_increasing_and_fixed_points(
            s in every_strategy(), t in instant_strategy()
        ) {
            check_sequence(&s, t, 8)?;
        }

        #[test]
        fn every_first_at_or_after_matches_a_bisection(
            s in every_strategy(), t in instant_strategy()
        ) {
            let got = s.first_at_or_after(t).unwrap();
            // An independent search: boundaries never decrease in k, so the smallest k whose
            // boundary is ≥ t can be found by bisection over every anchor/t pair generated.
            let Schedule::Every { unit, .. } = &s else { unreachable!() };
            // Enough steps to span the generated 70 years in either direction.
            let reach = 26_000 / match unit { Unit::Day => 1, Unit::Week => 7, Unit::Month => 28, Unit::Year => 365 };
            let (mut lo, mut hi) = (-reach, reach);
            prop_assert!(s.boundary(lo).unwrap() < t && s.boundary(hi).unwrap() >= t);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if s.boundary(mid).unwrap() >= t { hi = mid } else { lo = mid }
            }
            prop_assert_eq!(got, s.boundary(hi).unwrap());
        }

        #[test]
        fn every_keeps_the_anchor_local_time_unless_in_a_gap(
            s in every_strategy(), t in instant_strategy()
        ) {
            let Schedule::Every { anchor, tz, unit, .. } = &s else { unreachable!() };
            let anchor_local = anchor.with_timezone(tz);
            for b in take(&s, t, 4) {
                let local = b.with_timezone(tz);
                if tz.from_local_datetime(&local.date_naive().and_time(anchor_local.time())).single().is_some() {
                    prop_assert_eq!(local.time(), anchor_local.time());
                }
                if matches!(unit, Unit::Month | Unit::Year) && local.time() == anchor_local.time() {
                    let dim = days_in_month(local.year(), local.month()).unwrap();
                    prop_assert_eq!(local.day(), anchor_local.day().min(dim));
                }
            }
        }

        #[test]
        fn cron_boundaries_are_strictly_increasing_and_fixed_points(
            s in cron_strategy(), t in instant_strategy()
        ) {
            check_sequence(&s, t, 8)?;
        }

        #[test]
        fn cron_fires_match_the_expression_or_a_moved_gap_time(
            s in cron_strategy(), t in instant_strategy()
        ) {
            let Schedule::Cron { schedule, tz, .. } = &s else { unreachable!() };
            for b in take(&s, t, 6) {
                let local = b.with_timezone(tz).naive_local();
                let matches_here = schedule.includes(local.and_utc());
                // A moved fire: some local time up to a day earlier that does not exist.
                let moved = (1..=24 * 60).any(|m| {
                    let earlier = local - TimeDelta::minutes(m);
                    schedule.includes(earlier.and_utc())
                        && matches!(tz.from_local_datetime(&earlier), LocalResult::None)
                });
                prop_assert!(matches_here || moved, "{} ({}) does not match", b, local);
                prop_assert_eq!(local.time().nanosecond(), 0);
            }
        }
    }

    #[test]
    fn a_hand_built_zero_interval_does_not_panic() {
        let anchor = utc("2027-01-01T00:00:00Z");
        let s = Schedule::Every {
            unit: Unit::Day,
            interval: 0,
            anchor,
            tz: Tz::UTC,
        };
        assert_eq!(take(&s, utc("2026-01-01T00:00:00Z"), 3), [anchor]);
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        let schedules = [
            Schedule::every(
                Unit::Day,
                1,
                utc("2027-01-01T00:00:00Z"),
                tz("Pacific/Kiritimati"),
            )
            .unwrap(),
            Schedule::every(
                Unit::Year,
                u32::MAX,
                utc("2027-01-01T00:00:00Z"),
                tz("Etc/GMT+12"),
            )
            .unwrap(),
            Schedule::cron("0 0 0 * * *", tz("Pacific/Kiritimati")).unwrap(),
        ];
        for s in &schedules {
            for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
                let _ = s.first_at_or_after(t);
                let _ = s.next_after(t);
                let _ = s.boundaries_from(t).take(3).count();
            }
        }
        assert_eq!(
            schedules[2].first_at_or_after(DateTime::<Utc>::MAX_UTC),
            None
        );
        // The cron crate starts at 1970; Kiritimati was at -10:40 then.
        assert_eq!(
            schedules[2].first_at_or_after(DateTime::<Utc>::MIN_UTC),
            Some(utc("1970-01-01T10:40:00Z"))
        );
    }

    #[test]
    fn day_boundaries_keep_the_time_of_day() {
        let s = Schedule::every(
            Unit::Day,
            1,
            utc("2027-03-01T08:00:00Z"),
            tz("Europe/Berlin"),
        )
        .unwrap();
        for b in take(&s, utc("2027-03-01T00:00:00Z"), 60) {
            assert_eq!(
                b.with_timezone(&s.tz()).time(),
                NaiveTime::from_hms_opt(9, 0, 0).unwrap()
            );
        }
    }
}
