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

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/clock", get(show))
        .route("/clock/advance", post(advance))
}

#[derive(Serialize)]
pub struct ClockView {
    pub object: &'static str,
    pub now: String,
    pub status: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    to: String,
}

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
