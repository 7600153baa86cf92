//! The test clock (manual mode only): read it, and advance it to live through billing periods.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::AppState;
use super::extract::ApiJson;
use super::openapi::wire::{ErrorBody, Instant, Timestamp};
use utoipa::ToSchema;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/clock", get(show))
        .route("/clock/advance", post(advance))
}

/// The manual clock.
#[derive(Serialize, ToSchema)]
#[schema(as = Clock)]
pub struct ClockView {
    #[schema(value_type = String, pattern = "^test_clock$")]
    pub object: &'static str,
    #[schema(value_type = Timestamp)]
    pub now: String,
    /// `ready` once every piece of work due at or before `now` has finished.
    #[schema(value_type = String, pattern = "^(ready|advancing)$")]
    pub status: &'static str,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Advance {
    /// Not before the clock's current time.
    #[schema(value_type = Instant)]
    to: String,
}

#[utoipa::path(get, path = "/v1/clock", tag = "clock", operation_id = "get_clock",
    responses(
        (status = 200, description = "The manual clock.", body = ClockView),
        (status = 404, description = "The clock is not in manual mode.", body = ErrorBody),
    ))]
async fn show(AxState(state): AxState<Arc<AppState>>) -> Result<Json<ClockView>, ApiError> {
    let Some(clock) = &state.manual_clock else {
        return Err(ApiError::NotFound("the clock is not in manual mode".into()));
    };
    let now = jobs_now(clock.as_ref());
    let ready = state.scheduler.is_ready(now).await?;
    Ok(Json(ClockView {
        object: "test_clock",
        now: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        status: if ready { "ready" } else { "advancing" },
    }))
}

fn jobs_now(clock: &settled_jobs::clock::ManualClock) -> DateTime<Utc> {
    use settled_jobs::clock::Clock;
    clock.now()
}

#[utoipa::path(post, path = "/v1/clock/advance", tag = "clock", operation_id = "advance_clock",
    request_body = Advance,
    responses(
        (status = 202, description = "Advanced; work due by then runs now (`GET /v1/clock` says \
            when it is done).", body = ClockView),
        (status = 404, description = "The clock is not in manual mode.", body = ErrorBody),
    ))]
async fn advance(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<Advance>,
) -> Result<(StatusCode, Json<ClockView>), ApiError> {
    let Some(clock) = &state.manual_clock else {
        return Err(ApiError::NotFound("the clock is not in manual mode".into()));
    };
    let to = DateTime::parse_from_rfc3339(&body.to)
        .map_err(|_| {
            ApiError::invalid(
                "to",
                "must be an RFC 3339 instant like 2027-02-01T00:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    let now = jobs_now(clock.as_ref());
    if to < now {
        return Err(ApiError::invalid(
            "to",
            format!(
                "{} is before the clock's current time {}",
                body.to,
                now.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        ));
    }
    crate::store::settings::set(
        &state.billing.db,
        crate::store::settings::CLOCK,
        &to.to_rfc3339(),
    )
    .await?;
    clock
        .advance_to(to)
        .map_err(|e| ApiError::invalid("to", e))?;
    state.scheduler.mark_advanced();
    Ok((
        StatusCode::ACCEPTED,
        Json(ClockView {
            object: "test_clock",
            now: to.to_rfc3339_opts(SecondsFormat::Secs, true),
            status: "advancing",
        }),
    ))
}
