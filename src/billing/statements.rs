//! Statements of account: every movement of a customer's money in a period with the running
//! balance of what it owes net of credit and deposits (`GET /v1/customers/{id}/statement`), and
//! the monthly statement email for customers who opted in, sent after midnight on the 1st in
//! their own time zone, once per customer and month.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use settled_jobs::job::WorkKind;
use settled_jobs::statement::{Movement, Statement, build};

use super::{Billing, Error, Result};
use crate::outbox::snapshot::{StatementLineSnap, StatementSnap};
use crate::store::work_failures::SetAside;
use crate::store::{Db, Tx, customers, ledger, ms, wall_ms, work_failures};

/// A statement as the outbox renders it (the monthly email, the PDF): `month` as yyyymm, or 0
/// for a period that is not a month.
pub fn snapshot(s: Statement, currency: &str, from: i64, to: i64, month: i64) -> StatementSnap {
    StatementSnap {
        month,
        currency: currency.to_string(),
        from,
        to,
        opening: s.opening,
        closing: s.closing,
        lines: s
            .entries
            .into_iter()
            .map(|e| StatementLineSnap {
                at: e.at,
                kind: e.kind.to_string(),
                reference: e.reference,
                amount: e.amount,
                balance: e.balance,
            })
            .collect(),
    }
}

/// The customer's account in `currency` between `from` (inclusive) and `to` (exclusive).
pub async fn statement(
    db: &Db,
    customer_id: &str,
    currency: &str,
    from: i64,
    to: i64,
) -> Result<Statement> {
    let opening = ledger::net_before(db, customer_id, currency, from).await?;
    let movements = ledger::movements(db, customer_id, currency, from, to)
        .await?
        .into_iter()
        .map(
            |(at, kind, net, invoice_id, payment_id, object_id, memo)| Movement {
                at,
                kind,
                net,
                invoice_id,
                payment_id,
                object_id,
                memo,
            },
        )
        .collect();
    Ok(build(opening, movements))
}

/// A calendar month in one time zone: its number as yyyymm (202701 = January 2027), its first
/// instant and the next month's first instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMonth {
    pub month: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A customer's time zone; a name the zone database does not know counts as UTC, as in the
/// templates.
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(chrono_tz::UTC)
}

fn previous(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn following(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

/// The first instant of a month in `tz`: local midnight on the 1st, or the first local time
/// that exists when midnight falls into a daylight-saving gap.
fn month_start(tz: Tz, year: i32, month: u32) -> Option<DateTime<Utc>> {
    let day = NaiveDate::from_ymd_opt(year, month, 1)?;
    (0..24 * 4).find_map(|quarter| {
        let local = day.and_hms_opt(quarter / 4, (quarter % 4) * 15, 0)?;
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

impl LocalMonth {
    /// The month `yyyymm` in `tz`.
    pub fn of(tz: Tz, yyyymm: i64) -> Option<LocalMonth> {
        let year = i32::try_from(yyyymm / 100).ok()?;
        let month = u32::try_from(yyyymm % 100).ok()?;
        let from = month_start(tz, year, month)?;
        let (ny, nm) = following(year, month);
        let to = month_start(tz, ny, nm)?;
        Some(LocalMonth {
            month: yyyymm,
            from,
            to,
        })
    }

    /// The last month that has ended at `now` in `tz`: the one whose statement is due.
    pub fn last_ended(tz: Tz, now: DateTime<Utc>) -> Option<LocalMonth> {
        let local = now.with_timezone(&tz);
        let (mut year, mut month) = (local.year(), local.month());
        if month_start(tz, year, month)? > now {
            (year, month) = previous(year, month);
        }
        let (py, pm) = previous(year, month);
        LocalMonth::of(tz, i64::from(py) * 100 + i64::from(pm))
    }
}

/// Bounds that hold in every time zone at `now`: no month later than the first has ended
/// anywhere yet, and no zone's current month began after the second. Local time runs from
/// UTC-12 to UTC+14, so the latest month to have ended is the one before the month of
/// now + 14 h, and every current month began by 12 h after that month's first day in UTC.
fn statement_bounds(now: DateTime<Utc>) -> (i64, DateTime<Utc>) {
    let ahead = now + chrono::Duration::hours(14);
    let (py, pm) = previous(ahead.year(), ahead.month());
    let began = NaiveDate::from_ymd_opt(ahead.year(), ahead.month(), 1)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .map(|t| t.and_utc())
        .map_or(now, |t| t.min(now));
    (i64::from(py) * 100 + i64::from(pm), began)
}

/// Customers owed a statement at `now`: opted in before the last month ended in their time zone,
/// without a statement of that month yet, and (as `set_aside` says) not set aside; at most
/// `limit`.
async fn owed(
    b: &Billing,
    now: DateTime<Utc>,
    limit: i64,
    set_aside: SetAside,
) -> Result<Vec<(String, i64)>> {
    // One query finds the time zones with a customer who may be owed one; most of the month
    // it finds none.
    let (latest, began) = statement_bounds(now);
    let zones = customers::statement_zones(&b.db, ms(began), latest).await?;
    let mut owed = Vec::new();
    for name in zones {
        let Some(last) = LocalMonth::last_ended(zone(&name), now) else {
            continue;
        };
        let ids =
            customers::owed_statement(&b.db, &name, ms(last.to), last.month, set_aside, limit)
                .await?;
        owed.extend(ids.into_iter().map(|id| (id, last.month)));
        if owed.len() as i64 >= limit {
            break;
        }
    }
    owed.truncate(limit.max(0) as usize);
    Ok(owed)
}

/// How many customers are owed a statement at `now` (leaving out those reported failed).
pub async fn due_count(b: &Billing, now: DateTime<Utc>) -> Result<i64> {
    let (latest, began) = statement_bounds(now);
    if customers::statement_zones(&b.db, ms(began), latest)
        .await?
        .is_empty()
    {
        return Ok(0);
    }
    Ok(owed(b, now, 1000, SetAside::Reported).await?.len() as i64)
}

/// Whether one can be taken now (owed and not waiting for its next try).
pub async fn claimable(b: &Billing, now: DateTime<Utc>) -> Result<bool> {
    Ok(!owed(b, now, 1, SetAside::WaitingAt(wall_ms()))
        .await?
        .is_empty())
}

/// One batch of monthly statements owed: each written in a savepoint of its own. Returns how many
/// it took.
pub async fn drain(b: &Billing) -> Result<usize> {
    let now = b.now();
    let owed = owed(b, now, 100, SetAside::WaitingAt(wall_ms())).await?;
    if owed.is_empty() {
        return Ok(0);
    }
    let wall = wall_ms();
    let mut tx = b.db.begin().await?;
    let mut done = Vec::new();
    for (customer_id, month) in &owed {
        tx.savepoint().await?;
        match send_statement(b, &mut tx, customer_id, *month, now).await {
            Ok(()) => {
                tx.release_savepoint().await?;
                done.push(customer_id.as_str());
            }
            Err(Error::Store(e)) if !e.blames_the_data() => return Err(Error::Store(e)),
            Err(e) => {
                tx.rollback_to_savepoint().await?;
                work_failures::set_aside(
                    &mut tx,
                    WorkKind::Statements,
                    customer_id,
                    &e.to_string(),
                    wall,
                    None,
                )
                .await?;
                tracing::error!(customer_id = %customer_id, error = %e, "statement set aside");
            }
        }
    }
    work_failures::clear(&mut tx, WorkKind::Statements, &done).await?;
    tx.commit().await?;
    Ok(owed.len())
}

/// If the customer still wants statements, had opted in before the month ended and the month has
/// ended in its time zone, writes the month's statement (once: unique on customer and month).
async fn send_statement(
    b: &Billing,
    tx: &mut Tx,
    customer_id: &str,
    month: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let Some((timezone, currency, wanted, since)) =
        customers::statement_settings(&b.db, customer_id).await?
    else {
        return Err(Error::permanent(format!("no customer {customer_id}")));
    };
    let Some(period) = LocalMonth::of(zone(&timezone), month) else {
        return Err(Error::permanent(format!("no month {month}")));
    };
    let opted_in_before = since.is_some_and(|since| since < ms(period.to));
    if !wanted || !opted_in_before || period.to > now {
        return Ok(());
    }
    let s = statement(
        &b.db,
        customer_id,
        &currency,
        ms(period.from),
        ms(period.to),
    )
    .await?;
    let snap = snapshot(s, &currency, ms(period.from), ms(period.to), month);
    crate::outbox::statement(tx, customer_id, &currency, snap, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_statement_month_is_the_last_one_to_end_in_the_customers_time_zone() {
        let cases: &[(&str, &str, i64, &str, &str)] = &[
            (
                "UTC",
                "2027-02-01T00:00:00Z",
                202701,
                "2027-01-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
            ),
            (
                "UTC",
                "2027-01-31T23:59:59Z",
                202612,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "UTC",
                "2027-01-01T00:00:00Z",
                202612,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // Tokyo (UTC+9) begins February at 15:00 UTC on January 31.
            (
                "Asia/Tokyo",
                "2027-01-31T14:59:59Z",
                202612,
                "2026-11-30T15:00:00Z",
                "2026-12-31T15:00:00Z",
            ),
            (
                "Asia/Tokyo",
                "2027-01-31T15:00:00Z",
                202701,
                "2026-12-31T15:00:00Z",
                "2027-01-31T15:00:00Z",
            ),
            // New York: March is EST (UTC-5), April EDT (UTC-4).
            (
                "America/New_York",
                "2027-04-01T03:59:59Z",
                202702,
                "2027-02-01T05:00:00Z",
                "2027-03-01T05:00:00Z",
            ),
            (
                "America/New_York",
                "2027-04-01T04:00:00Z",
                202703,
                "2027-03-01T05:00:00Z",
                "2027-04-01T04:00:00Z",
            ),
            // Paraguay moved its clocks from 00:00 to 01:00 on 1 October 2017: October began at
            // 01:00 local time, the same instant as midnight before the change.
            (
                "America/Asuncion",
                "2017-11-15T00:00:00Z",
                201710,
                "2017-10-01T04:00:00Z",
                "2017-11-01T03:00:00Z",
            ),
            (
                "Not/A_Zone",
                "2027-02-01T00:00:00Z",
                202701,
                "2027-01-01T00:00:00Z",
                "2027-02-01T00:00:00Z",
            ),
        ];
        for (tz, now, month, from, to) in cases {
            let m = LocalMonth::last_ended(zone(tz), utc(now)).unwrap();
            assert_eq!(
                (m.month, m.from, m.to),
                (*month, utc(from), utc(to)),
                "{tz} at {now}"
            );
            assert_eq!(LocalMonth::of(zone(tz), *month), Some(m));
        }
        assert_eq!(LocalMonth::of(chrono_tz::UTC, 202713), None);
        assert_eq!(LocalMonth::of(chrono_tz::UTC, 202700), None);
    }

    #[test]
    fn the_sweeps_bounds_hold_in_every_time_zone() {
        let mut now = utc("2026-12-28T00:00:00Z");
        while now < utc("2027-03-05T00:00:00Z") {
            let (latest, began) = statement_bounds(now);
            for tz in chrono_tz::TZ_VARIANTS {
                let m = LocalMonth::last_ended(tz, now).unwrap();
                assert!(m.to <= now, "{tz} at {now}");
                assert!(m.month <= latest, "{tz} at {now}: {} > {latest}", m.month);
                assert!(m.to <= began, "{tz} at {now}: {} > {began}", m.to);
            }
            now += chrono::Duration::hours(2);
        }
    }
}
