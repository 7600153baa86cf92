//! The operator's view of the job queue: what failed and why, and a retry by id.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::extract::ApiQuery;
use super::{ApiError, ListResponse, Paging};
use crate::store::queue::{self, JOB_STATUSES, JobView, RetryOutcome};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/retry", post(retry))
}

#[derive(Deserialize)]
struct JobQuery {
    status: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListResponse<JobView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(s) = &q.status
        && !JOB_STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", JOB_STATUSES.join(", ")),
        ));
    }
    let jobs = queue::list(
        &state.billing.db,
        q.status.as_deref(),
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    Ok(Json(ListResponse::page(jobs, limit)))
}

async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    queue::get(&state.billing.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job", &id))
}

async fn retry(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    match queue::retry(&state.billing.db, &id).await? {
        RetryOutcome::NotFound => Err(ApiError::not_found("job", &id)),
        RetryOutcome::NotFailed(status) => Err(ApiError::conflict(
            "job_not_failed",
            format!("job {id} is {status}; only failed jobs can be retried"),
        )),
        RetryOutcome::Retried => {
            state.scheduler.nudge();
            show(AxState(state), Path(id)).await
        }
    }
}
