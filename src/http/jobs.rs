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
use super::{ApiError, AppState, ListResponse, Paging};
use crate::store::work_failures::{self, FailureRow, REPORTED_AFTER_TRIES};

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

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub object: &'static str,
    pub kind: String,
    pub status: &'static str,
    /// Tries so far.
    pub attempts: i64,
    pub first_failed_at: String,
    pub failed_at: String,
    /// The next try.
    pub run_at: String,
    pub last_error: String,
    /// What the item is, by the field that names it (`subscription_id`, `event_id`, ...).
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

#[derive(Deserialize)]
struct JobQuery {
    status: Option<String>,
    kind: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

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
