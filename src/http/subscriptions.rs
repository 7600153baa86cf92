//! Subscriptions (recurring invoice profiles): create, read, pause, resume, cancel, preview.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::invoice::{CatchUp, ItemSpec, ScheduleSpec, build_lines, due_at};
use settled_jobs::money::Currency;
use settled_jobs::records::SubscriptionStatus;
use settled_jobs::schedule::{Schedule, Unit};

use super::AppState;
use super::extract::{ApiJson, ApiQuery};
use super::format::{amount, rfc3339, rfc3339_ms};
use super::invoices::{ItemInput, LineView, items_from_input};
use super::openapi::wire::{
    self, Amount, CustomerId, Decimal, ErrorBody, Instant, SubscriptionId, Timestamp,
};
use super::{ApiError, ListResponse, Paging};
use crate::store::subscriptions::{self as store, SubscriptionRow, subscription_from_row};
use crate::store::{customers, ms};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/subscriptions", post(create).get(list))
        .route("/subscriptions/{id}", get(show))
        .route("/subscriptions/{id}/pause", post(pause))
        .route("/subscriptions/{id}/resume", post(resume))
        .route("/subscriptions/{id}/cancel", post(cancel))
        .route("/subscriptions/{id}/preview", get(preview))
}

/// Either `every` (with `interval` and `anchor`) or `cron`, not both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleInput {
    #[schema(value_type = Option<wire::Unit>)]
    every: Option<String>,
    /// How many units a period lasts; default 1.
    #[schema(minimum = 1)]
    interval: Option<u32>,
    /// The instant periods are counted from; default `start_at`.
    #[schema(value_type = Option<Instant>)]
    anchor: Option<String>,
    /// A cron expression with seconds (`0 0 9 1 * *`).
    cron: Option<String>,
    /// An IANA time zone; default the customer's.
    timezone: Option<String>,
    /// A cron schedule firing more often than hourly is refused unless this is true.
    allow_frequent: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    #[schema(value_type = CustomerId)]
    customer_id: String,
    /// 1 to 250 items.
    items: Vec<ItemInput>,
    schedule: ScheduleInput,
    /// The first period's start, not in the past; default now.
    #[schema(value_type = Option<Instant>)]
    start_at: Option<String>,
    /// Default true.
    auto_charge: Option<bool>,
    /// Days from a period's start to its invoice's due date; default `billing.net_days`.
    #[schema(maximum = 365)]
    net_days: Option<u32>,
    /// Default `all`.
    #[schema(value_type = Option<wire::CatchUp>)]
    catch_up: Option<String>,
}

/// An item billed each period.
#[derive(Serialize, ToSchema)]
#[schema(as = SubscriptionItem)]
pub struct ItemView {
    pub description: String,
    #[schema(value_type = Decimal)]
    pub quantity: String,
    #[schema(value_type = Amount)]
    pub unit_amount: String,
    #[schema(value_type = Option<Decimal>, required = true)]
    pub tax_rate: Option<String>,
}

/// A recurring invoice profile.
#[derive(Serialize, ToSchema)]
#[schema(as = Subscription)]
pub struct SubscriptionView {
    #[schema(value_type = SubscriptionId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^subscription$")]
    pub object: &'static str,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    #[schema(value_type = wire::Currency)]
    pub currency: String,
    pub items: Vec<ItemView>,
    #[schema(value_type = ScheduleView)]
    pub schedule: serde_json::Value,
    #[schema(value_type = Timestamp)]
    pub start_at: String,
    /// When the next period starts (and its invoice is generated); null once canceled or when
    /// the schedule ends.
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub next_period_start: Option<String>,
    pub auto_charge: bool,
    pub net_days: i64,
    #[schema(value_type = wire::CatchUp)]
    pub catch_up: String,
    #[schema(value_type = wire::SubscriptionStatus)]
    pub status: String,
    #[schema(value_type = Timestamp)]
    pub created_at: String,
}

/// A schedule as stored: an interval from an anchor, or a cron expression.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = Schedule)]
#[allow(dead_code)]
pub enum ScheduleView {
    Every {
        #[schema(value_type = wire::Unit)]
        every: String,
        interval: u32,
        #[schema(value_type = Timestamp)]
        anchor: String,
        timezone: String,
    },
    Cron {
        cron: String,
        timezone: String,
    },
}

fn view(row: SubscriptionRow) -> Result<SubscriptionView, ApiError> {
    let items: Vec<ItemSpec> = serde_json::from_str(&row.items)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored items unreadable: {e}")))?;
    let schedule: serde_json::Value = serde_json::from_str(&row.schedule)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored schedule unreadable: {e}")))?;
    Ok(SubscriptionView {
        items: items
            .into_iter()
            .map(|i| ItemView {
                unit_amount: amount(i.unit_amount, &row.currency),
                description: i.description,
                quantity: i.quantity,
                tax_rate: i.tax_rate,
            })
            .collect(),
        schedule,
        start_at: rfc3339_ms(row.start_at),
        next_period_start: row.next_period_start.map(rfc3339_ms),
        created_at: rfc3339_ms(row.created_at),
        id: row.id,
        object: "subscription",
        customer_id: row.customer_id,
        currency: row.currency,
        auto_charge: row.auto_charge,
        net_days: row.net_days,
        catch_up: row.catch_up,
        status: row.status,
    })
}

fn parse_instant(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| settled_jobs::clock::to_millis_precision(d.with_timezone(&Utc)))
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("{s:?} is not an RFC 3339 instant like 2027-01-31T00:00:00Z"),
            )
        })
}

fn schedule_spec(
    input: &ScheduleInput,
    start_at: DateTime<Utc>,
    default_tz: &str,
) -> Result<(ScheduleSpec, Schedule), ApiError> {
    let timezone = input
        .timezone
        .clone()
        .unwrap_or_else(|| default_tz.to_string());
    let spec = match (&input.every, &input.cron) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "schedule",
                "give either every or cron, not both",
            ));
        }
        (None, None) => return Err(ApiError::invalid("schedule", "needs every or cron")),
        (Some(every), None) => {
            let unit: Unit = every.parse().map_err(|_| {
                ApiError::invalid("schedule.every", "must be one of day, week, month, year")
            })?;
            let anchor = match &input.anchor {
                Some(a) => parse_instant("schedule.anchor", a)?,
                None => start_at,
            };
            ScheduleSpec::Every {
                every: unit,
                interval: input.interval.unwrap_or(1),
                anchor,
                timezone,
            }
        }
        (None, Some(cron)) => {
            if input.interval.is_some() || input.anchor.is_some() {
                return Err(ApiError::invalid(
                    "schedule",
                    "interval and anchor belong to every schedules, not cron",
                ));
            }
            ScheduleSpec::Cron {
                cron: cron.clone(),
                timezone,
            }
        }
    };
    let schedule = spec
        .to_schedule()
        .map_err(|e| ApiError::invalid(&format!("schedule.{}", e.field()), e))?;
    if matches!(spec, ScheduleSpec::Cron { .. }) && input.allow_frequent != Some(true) {
        // Over the next few dozen firings, the shortest gap: "* * * * * *" bills every second.
        let mut at = start_at;
        let mut shortest: Option<chrono::Duration> = None;
        for _ in 0..48 {
            let Some(next) = schedule.next_after(at) else {
                break;
            };
            if at != start_at {
                shortest = Some(shortest.map_or(next - at, |s| s.min(next - at)));
            }
            at = next;
        }
        if let Some(gap) = shortest
            && gap < chrono::Duration::hours(1)
        {
            return Err(ApiError::invalid(
                "schedule.cron",
                format!(
                    "fires every {} s at its most frequent, more often than hourly; each firing is \
                     an invoice (and a charge). Set schedule.allow_frequent to true if that is meant",
                    gap.num_seconds()
                ),
            ));
        }
    }
    Ok((spec, schedule))
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions",
    operation_id = "create_subscription",
    request_body = CreateSubscription,
    responses((status = 201, description = "The subscription; its first period starts at \
        `start_at`.", body = SubscriptionView)))]
async fn create(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let customer = customers::get_row(&state.billing.db, &body.customer_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("customer_id", format!("no customer {}", body.customer_id))
        })?;
    let currency = Currency::parse(&customer.currency)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored currency: {e}")))?;
    let items = items_from_input(&body.items, currency)?;
    let now = state.billing.now();
    let start_at = match &body.start_at {
        Some(s) => parse_instant("start_at", s)?,
        None => now,
    };
    if start_at < now - Duration::minutes(1) {
        return Err(ApiError::invalid(
            "start_at",
            "is in the past; periods before now are closed",
        ));
    }
    let (spec, schedule) = schedule_spec(&body.schedule, start_at, &customer.timezone)?;
    if schedule.next_after(start_at).is_none() {
        return Err(ApiError::invalid("schedule", "never fires after start_at"));
    }
    let catch_up = match body.catch_up.as_deref() {
        None => CatchUp::All,
        Some(s) => CatchUp::parse(s)
            .ok_or_else(|| ApiError::invalid("catch_up", "must be one of all, latest, skip"))?,
    };
    let net_days = body
        .net_days
        .unwrap_or(state.billing.config.billing.net_days);
    if net_days > 365 {
        return Err(ApiError::invalid("net_days", "must be at most 365"));
    }
    let row = SubscriptionRow {
        id: new_id(prefix::SUBSCRIPTION),
        customer_id: customer.id.clone(),
        currency: customer.currency.clone(),
        items: serde_json::to_string(&items).map_err(|e| ApiError::Unexpected(e.into()))?,
        schedule: serde_json::to_string(&spec).map_err(|e| ApiError::Unexpected(e.into()))?,
        timezone: spec.timezone().to_string(),
        start_at: ms(start_at),
        next_period_start: Some(ms(start_at)),
        auto_charge: body.auto_charge.unwrap_or(true),
        net_days: i64::from(net_days),
        catch_up: catch_up.as_str().to_string(),
        status: "active".into(),
        paused_at: None,
        canceled_at: None,
        created_at: ms(now),
        updated_at: ms(now),
    };
    store::insert(&state.billing.db, &row).await?;
    tracing::info!(subscription_id = %row.id, customer_id = %row.customer_id, "subscription created");
    state.scheduler.nudge();
    Ok((StatusCode::CREATED, Json(view(row)?)))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    operation_id = "get_subscription",
    params(("id" = SubscriptionId, Path, description = "The subscription.")),
    responses((status = 200, description = "The subscription.", body = SubscriptionView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let row = store::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", &id))?;
    Ok(Json(view(row)?))
}

/// The statuses a subscription can be in (`?status=` takes these).
pub const STATUSES: [&str; 3] = ["active", "paused", "canceled"];

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SubscriptionQuery {
    /// Only this customer's.
    customer_id: Option<String>,
    /// Only those in this status.
    #[param(value_type = Option<wire::SubscriptionStatus>)]
    status: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions",
    operation_id = "list_subscriptions",
    params(SubscriptionQuery, Paging),
    responses((status = 200, description = "A page of subscriptions.",
        body = ListResponse<SubscriptionView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<SubscriptionQuery>,
) -> Result<Json<ListResponse<SubscriptionView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(status) = &q.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let rows = store::list(
        &state.billing.db,
        q.customer_id.as_deref(),
        q.status.as_deref(),
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    let views = rows.into_iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(ListResponse::page(views, limit)))
}

async fn transition(
    state: Arc<AppState>,
    id: String,
    action: store::Action,
) -> Result<Json<SubscriptionView>, ApiError> {
    let row = store::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", &id))?;
    let allowed = match action {
        store::Action::Pause => row.status == "active",
        store::Action::Resume => row.status == "paused",
        store::Action::Cancel => row.status != "canceled",
    };
    if !allowed {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "subscription {id} is {}; cannot {}",
                row.status,
                action.verb()
            ),
        ));
    }
    let b = &state.billing;
    if !store::transition(&b.db, &id, &row.status, action, b.now()).await? {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("subscription {id} changed meanwhile; try again"),
        ));
    }
    tracing::info!(subscription_id = %id, action = action.verb(), "subscription updated");
    state.scheduler.nudge();
    show(AxState(state), Path(id)).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/pause", tag = "subscriptions",
    operation_id = "pause_subscription", description = "Pauses billing; the next period start is kept.",
    params(("id" = SubscriptionId, Path, description = "The subscription.")),
    responses(
        (status = 200, description = "The subscription as it is now.", body = SubscriptionView),
        (status = 409, description = "Not possible in its status (`invalid_state`).", body = ErrorBody),
    ))]
async fn pause(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    transition(state, id, store::Action::Pause).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/resume", tag = "subscriptions",
    operation_id = "resume_subscription", description = "Resumes billing; the catch-up policy decides what the paused periods become.",
    params(("id" = SubscriptionId, Path, description = "The subscription.")),
    responses(
        (status = 200, description = "The subscription as it is now.", body = SubscriptionView),
        (status = 409, description = "Not possible in its status (`invalid_state`).", body = ErrorBody),
    ))]
async fn resume(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    transition(state, id, store::Action::Resume).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/cancel", tag = "subscriptions",
    operation_id = "cancel_subscription", description = "Cancels for good; no period is billed after it.",
    params(("id" = SubscriptionId, Path, description = "The subscription.")),
    responses(
        (status = 200, description = "The subscription as it is now.", body = SubscriptionView),
        (status = 409, description = "Not possible in its status (`invalid_state`).", body = ErrorBody),
    ))]
async fn cancel(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    transition(state, id, store::Action::Cancel).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PreviewQuery {
    /// How many periods to show: 1 to 120, default 3.
    #[param(minimum = 1, maximum = 120)]
    periods: Option<u32>,
}

/// An invoice as generation would build it; nothing is stored.
#[derive(Serialize, ToSchema)]
pub(crate) struct PreviewInvoice {
    #[schema(value_type = String, pattern = "^invoice_preview$")]
    object: &'static str,
    #[schema(value_type = CustomerId)]
    customer_id: String,
    #[schema(value_type = SubscriptionId)]
    subscription_id: String,
    #[schema(value_type = wire::Currency)]
    currency: String,
    #[schema(value_type = Timestamp)]
    period_start: String,
    #[schema(value_type = Timestamp)]
    period_end: String,
    #[schema(value_type = Timestamp)]
    due_at: String,
    #[schema(value_type = Amount)]
    subtotal: String,
    #[schema(value_type = Amount)]
    tax: String,
    #[schema(value_type = Amount)]
    total: String,
    lines: Vec<LineView>,
}

/// The next invoices exactly as generation would build them; nothing is stored.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/preview", tag = "subscriptions",
    operation_id = "preview_subscription",
    params(("id" = SubscriptionId, Path, description = "The subscription."), PreviewQuery),
    responses((status = 200, description = "The next invoices as they would be generated.",
        body = ListResponse<PreviewInvoice>)))]
async fn preview(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PreviewQuery>,
) -> Result<Json<ListResponse<PreviewInvoice>>, ApiError> {
    let periods = q.periods.unwrap_or(3);
    if !(1..=120).contains(&periods) {
        return Err(ApiError::invalid("periods", "must be between 1 and 120"));
    }
    let row = store::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription", &id))?;
    let sub = subscription_from_row(row.clone())
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("{e}")))?;
    let schedule = sub
        .schedule
        .to_schedule()
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored schedule invalid: {e}")))?;
    let (lines, totals) = build_lines(&sub.items).map_err(|e| ApiError::Unexpected(e.into()))?;
    let mut out = Vec::new();
    let mut start = sub.next_period_start;
    if sub.status == SubscriptionStatus::Canceled {
        start = None;
    }
    while let Some(s) = start {
        if out.len() as u32 >= periods {
            break;
        }
        let Some(end) = schedule.next_after(s) else {
            break;
        };
        out.push(PreviewInvoice {
            object: "invoice_preview",
            customer_id: row.customer_id.clone(),
            subscription_id: row.id.clone(),
            currency: row.currency.clone(),
            period_start: rfc3339(s),
            period_end: rfc3339(end),
            due_at: rfc3339(due_at(s, sub.net_days)),
            subtotal: amount(totals.subtotal, &row.currency),
            tax: amount(totals.tax, &row.currency),
            total: amount(totals.total, &row.currency),
            lines: lines
                .iter()
                .map(|l| LineView::from_line(l, &row.currency))
                .collect(),
        });
        start = Some(end);
    }
    let n = out.len() as i64;
    Ok(Json(ListResponse::page(out, n)))
}
