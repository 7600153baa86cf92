//! The operator's view of work that keeps failing (`/v1/jobs`): every item set aside after a
//! failure, with its kind, its tries, the last error and its next try, and a retry that makes it
//! due at once. An item's id is `{kind}:{item id}`.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use settled_jobs::job::WorkKind;

use super::extract::ApiQuery;
use super::format::rfc3339_ms;
use super::openapi::wire::{self, JobId, Timestamp};
use super::{ApiError, AppState, ListResponse, Paging};
use crate::store::work_failures::{self, FailureRow, REPORTED_AFTER_TRIES};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/retry", post(retry))
}

/// The statuses `?status=` takes. Every listed item failed its last try and waits for the next;
/// `failed` ones have failed [`REPORTED_AFTER_TRIES`] times and no longer hold up the manual
/// clock, `retrying` ones not yet.
const STATUSES: &[&str] = &["failed", "retrying"];

/// An item of work set aside after a failure.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    #[schema(value_type = JobId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^job$")]
    pub object: &'static str,
    #[schema(value_type = wire::WorkKind)]
    pub kind: String,
    /// `failed` after 3 tries (it no longer holds up the manual clock), `retrying` before.
    #[schema(value_type = String, pattern = "^(failed|retrying)$")]
    pub status: &'static str,
    /// Tries so far.
    pub attempts: i64,
    #[schema(value_type = Timestamp)]
    pub first_failed_at: String,
    #[schema(value_type = Timestamp)]
    pub failed_at: String,
    /// The next try.
    #[schema(value_type = Timestamp)]
    pub run_at: String,
    pub last_error: String,
    /// What the item is, by the field that names it (`subscription_id`, `event_id`, ...).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub args: serde_json::Value,
}

fn field(kind: Option<WorkKind>) -> &'static str {
    match kind {
        Some(WorkKind::Periods | WorkKind::Reminders) => "subscription_id",
        Some(WorkKind::Drafts | WorkKind::LateFees) => "invoice_id",
        Some(WorkKind::Charges) => "charge_attempt_id",
        Some(WorkKind::Events) => "event_id",
        Some(WorkKind::Emails) => "email_id",
        Some(WorkKind::Statements) => "customer_id",
        Some(WorkKind::Refunds) => "refund_id",
        None => "item_id",
    }
}

impl From<FailureRow> for JobView {
    fn from(r: FailureRow) -> Self {
        let kind = WorkKind::parse(&r.kind);
        JobView {
            id: format!("{}:{}", r.kind, r.item_id),
            object: "job",
            args: json!({ field(kind): r.item_id }),
            kind: r.kind,
            status: if r.tries >= REPORTED_AFTER_TRIES {
                "failed"
            } else {
                "retrying"
            },
            attempts: r.tries,
            first_failed_at: rfc3339_ms(r.first_failed_at),
            failed_at: rfc3339_ms(r.failed_at),
            run_at: rfc3339_ms(r.retry_at),
            last_error: r.last_error,
        }
    }
}

/// `{kind}:{item}` back into its parts, when the kind is one there is.
fn parse_id(id: &str) -> Option<(WorkKind, &str)> {
    let (kind, item) = id.split_once(':')?;
    Some((WorkKind::parse(kind)?, item))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    /// Only those in this status.
    #[param(pattern = "^(failed|retrying)$")]
    status: Option<String>,
    /// Only this kind of work.
    #[param(value_type = Option<wire::WorkKind>)]
    kind: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(JobQuery, Paging),
    responses((status = 200, description = "A page of set-aside work.",
        body = ListResponse<JobView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<ListResponse<JobView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let kind = match q.kind.as_deref() {
        Some(k) => Some(WorkKind::parse(k).ok_or_else(|| {
            ApiError::invalid(
                "kind",
                format!(
                    "must be one of {}",
                    WorkKind::ALL
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?),
        None => None,
    };
    let after =
        match q.paging.starting_after.as_deref() {
            Some(id) => Some(parse_id(id).ok_or_else(|| {
                ApiError::invalid("starting_after", format!("no job with id {id}"))
            })?),
            None => None,
        };
    let rows = work_failures::list(
        &state.billing.db,
        kind,
        q.status.as_deref().map(|s| s == "failed"),
        limit + 1,
        after.map(|(k, item)| (k.name(), item)),
    )
    .await?;
    Ok(Json(ListResponse::page(
        rows.into_iter().map(JobView::from).collect(),
        limit,
    )))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = JobId, Path, description = "The item: `{kind}:{item id}`.")),
    responses((status = 200, description = "The item.", body = JobView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (kind, item) = parse_id(&id).ok_or_else(|| ApiError::not_found("job", &id))?;
    work_failures::get(&state.billing.db, kind, item)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("job", &id))
}

/// Makes the item due at once; the next drain of its kind takes it.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job",
    params(("id" = JobId, Path, description = "The item: `{kind}:{item id}`.")),
    responses((status = 200, description = "Due at once; the next drain of its kind takes it.",
        body = JobView)))]
async fn retry(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (kind, item) = parse_id(&id).ok_or_else(|| ApiError::not_found("job", &id))?;
    if !work_failures::retry_now(&state.billing.db, kind, item).await? {
        return Err(ApiError::not_found("job", &id));
    }
    tracing::info!(job = %id, "retry of set-aside work requested");
    state.scheduler.kick(kind);
    state.scheduler.nudge();
    show(AxState(state), Path(id)).await
}
