//! What a subscription bills and when: its stored items and schedule, the period to bill next under
//! the catch-up policy, the invoice lines with exact totals, and the invoice number format.

use chrono::{DateTime, Datelike, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{self, LineInput, MoneyError, Totals};
use crate::schedule::{Schedule, ScheduleError, Unit, parse_tz};

/// One line of a subscription or a one-off invoice, as stored: unit amount in minor units,
/// quantity and tax rate as exact decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSpec {
    pub description: String,
    pub quantity: String,
    pub unit_amount: i64,
    pub tax_rate: Option<String>,
}

/// A subscription's schedule as stored (and as the API takes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScheduleSpec {
    Every {
        every: Unit,
        interval: u32,
        anchor: DateTime<Utc>,
        timezone: String,
    },
    Cron {
        cron: String,
        timezone: String,
    },
}

impl ScheduleSpec {
    pub fn timezone(&self) -> &str {
        match self {
            ScheduleSpec::Every { timezone, .. } | ScheduleSpec::Cron { timezone, .. } => timezone,
        }
    }

    pub fn to_schedule(&self) -> Result<Schedule, ScheduleError> {
        match self {
            ScheduleSpec::Every {
                every,
                interval,
                anchor,
                timezone,
            } => Schedule::every(*every, *interval, *anchor, parse_tz(timezone)?),
            ScheduleSpec::Cron { cron, timezone } => Schedule::cron(cron, parse_tz(timezone)?),
        }
    }
}

/// What happens to periods that started while nobody billed them (downtime, a clock jump).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// One invoice per missed period, in order.
    All,
    /// Only the most recent started period is billed.
    Latest,
    /// Missed periods are not billed; billing resumes with the next period start.
    Skip,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::All => "all",
            CatchUp::Latest => "latest",
            CatchUp::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<CatchUp> {
        match s {
            "all" => Some(CatchUp::All),
            "latest" => Some(CatchUp::Latest),
            "skip" => Some(CatchUp::Skip),
            _ => None,
        }
    }
}

/// The outcome of looking at a due period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodPlan {
    /// The period to invoice now, if any: [start, end).
    pub bill: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Where the subscription's next period starts afterwards (None: the schedule has ended).
    pub next_period_start: Option<DateTime<Utc>>,
}

/// Decides what to bill for the due period starting at `period_start`. A period is *missed* when
/// the one after it has also started by `now`; only then does the catch-up policy matter.
pub fn plan_period(
    schedule: &Schedule,
    period_start: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: CatchUp,
) -> PeriodPlan {
    let Some(end) = schedule.next_after(period_start) else {
        return PeriodPlan {
            bill: None,
            next_period_start: None,
        };
    };
    if end > now || policy == CatchUp::All {
        return PeriodPlan {
            bill: Some((period_start, end)),
            next_period_start: Some(end),
        };
    }
    // Missed: find the latest period that has started.
    let mut latest = end;
    for b in schedule.boundaries_from(end) {
        if b > now {
            break;
        }
        latest = b;
    }
    let after = schedule.next_after(latest);
    match policy {
        CatchUp::Latest | CatchUp::All => PeriodPlan {
            bill: after.map(|a| (latest, a)),
            next_period_start: after,
        },
        CatchUp::Skip if latest == now => PeriodPlan {
            bill: after.map(|a| (latest, a)),
            next_period_start: after,
        },
        CatchUp::Skip => PeriodPlan {
            bill: None,
            next_period_start: after,
        },
    }
}

/// A line ready to store: the exact amount it contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub description: String,
    pub quantity: String,
    pub unit_amount: i64,
    pub amount: i64,
    pub tax_rate: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("items[{index}].{field}: {source}")]
    Money {
        index: usize,
        field: &'static str,
        source: MoneyError,
    },
    #[error("items: {0}")]
    Totals(MoneyError),
}

/// Builds lines and totals: each line rounded once, tax once per rate (see money::compute_totals).
pub fn build_lines(items: &[ItemSpec]) -> Result<(Vec<Line>, Totals), LineError> {
    let mut inputs = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let quantity: Decimal =
            money::parse_quantity(&item.quantity).map_err(|source| LineError::Money {
                index,
                field: "quantity",
                source,
            })?;
        let tax_rate = item
            .tax_rate
            .as_deref()
            .map(money::parse_rate)
            .transpose()
            .map_err(|source| LineError::Money {
                index,
                field: "tax_rate",
                source,
            })?;
        inputs.push(LineInput {
            quantity,
            unit_amount_minor: item.unit_amount,
            tax_rate,
        });
    }
    let totals = money::compute_totals(&inputs).map_err(LineError::Totals)?;
    let lines = items
        .iter()
        .zip(&totals.line_amounts)
        .map(|(item, amount)| Line {
            description: item.description.clone(),
            quantity: item.quantity.clone(),
            unit_amount: item.unit_amount,
            amount: *amount,
            tax_rate: item.tax_rate.clone(),
        })
        .collect();
    Ok((lines, totals))
}

/// The due date: `net_days` after the period start (or the invoice date for one-off invoices).
pub fn due_at(start: DateTime<Utc>, net_days: u32) -> DateTime<Utc> {
    start + Duration::days(i64::from(net_days))
}

/// Renders an invoice number: `{year}` and `{seq}` / `{seq:0N}` are replaced.
pub fn format_number(format: &str, at: DateTime<Utc>, seq: i64) -> String {
    let mut out = format.replace("{year}", &at.year().to_string());
    while let Some(start) = out.find("{seq") {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let spec = &out[start + 4..start + len];
        let width: usize = spec
            .strip_prefix(":0")
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        let rendered = format!("{seq:0width$}");
        out.replace_range(start..start + len + 1, &rendered);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn monthly() -> Schedule {
        Schedule::every(Unit::Month, 1, at("2027-01-31T00:00:00Z"), chrono_tz::UTC).unwrap()
    }

    #[test]
    fn numbers_follow_the_format() {
        assert_eq!(
            format_number("INV-{year}-{seq:06}", at("2027-03-01T00:00:00Z"), 42),
            "INV-2027-000042"
        );
        assert_eq!(format_number("{seq}", at("2027-03-01T00:00:00Z"), 7), "7");
    }

    #[test]
    fn an_on_time_period_is_billed_whatever_the_policy() {
        for policy in [CatchUp::All, CatchUp::Latest, CatchUp::Skip] {
            let plan = plan_period(
                &monthly(),
                at("2027-01-31T00:00:00Z"),
                at("2027-01-31T00:00:01Z"),
                policy,
            );
            assert_eq!(
                plan.bill,
                Some((at("2027-01-31T00:00:00Z"), at("2027-02-28T00:00:00Z")))
            );
        }
    }

    #[test]
    fn catch_up_after_three_months() {
        let now = at("2027-04-15T00:00:00Z");
        let start = at("2027-01-31T00:00:00Z");
        let all = plan_period(&monthly(), start, now, CatchUp::All);
        assert_eq!(all.bill, Some((start, at("2027-02-28T00:00:00Z"))));
        let latest = plan_period(&monthly(), start, now, CatchUp::Latest);
        assert_eq!(
            latest.bill,
            Some((at("2027-03-31T00:00:00Z"), at("2027-04-30T00:00:00Z")))
        );
        assert_eq!(latest.next_period_start, Some(at("2027-04-30T00:00:00Z")));
        let skip = plan_period(&monthly(), start, now, CatchUp::Skip);
        assert_eq!(skip.bill, None);
        assert_eq!(skip.next_period_start, Some(at("2027-04-30T00:00:00Z")));
    }

    #[test]
    fn lines_are_exact() {
        let items = vec![
            ItemSpec {
                description: "Seat".into(),
                quantity: "3".into(),
                unit_amount: 1999,
                tax_rate: Some("0.20".into()),
            },
            ItemSpec {
                description: "Half hour".into(),
                quantity: "0.5".into(),
                unit_amount: 3333,
                tax_rate: None,
            },
        ];
        let (lines, totals) = build_lines(&items).unwrap();
        assert_eq!(lines[0].amount, 5997);
        assert_eq!(lines[1].amount, 1667);
        assert_eq!(totals.subtotal, 7664);
        assert_eq!(totals.tax, 1199);
        assert_eq!(totals.total, 8863);
    }
}
