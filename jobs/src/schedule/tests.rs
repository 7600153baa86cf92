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
