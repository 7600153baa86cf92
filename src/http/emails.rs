//! The operator's view of the email outbox (/v1/emails): what was sent to whom, what failed and
//! why, and a retry of a failed message.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use settled_jobs::template::Template;

use super::AppState;
use super::extract::ApiQuery;
use super::format::rfc3339_ms;
use super::openapi::wire::{
    self, CustomerId, EmailId, EmailTemplate, ErrorBody, InvoiceId, PaymentId, Timestamp,
};
use super::{ApiError, ListResponse, Paging};
use crate::store::emails::{self as store, EMAIL_STATUSES, EmailFilter, EmailRow, RetryOutcome};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/emails", get(list))
        .route("/emails/{id}", get(show))
        .route("/emails/{id}/retry", post(retry))
}

/// One message of the outbox.
#[derive(Serialize, ToSchema)]
#[schema(as = Email)]
pub struct EmailView {
    #[schema(value_type = EmailId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^email$")]
    pub object: &'static str,
    #[schema(value_type = EmailTemplate)]
    pub template: String,
    pub to: Vec<String>,
    pub subject: String,
    #[schema(value_type = wire::EmailStatus)]
    pub status: String,
    pub attempts: i64,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub sent_at: Option<String>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(value_type = Option<CustomerId>, required = true)]
    pub customer_id: Option<String>,
    #[schema(value_type = Option<InvoiceId>, required = true)]
    pub invoice_id: Option<String>,
    #[schema(value_type = Option<PaymentId>, required = true)]
    pub payment_id: Option<String>,
    /// The id of the object the email is about.
    pub subject_id: String,
    pub message_id: String,
    #[schema(value_type = Timestamp)]
    pub created_at: String,
}

impl From<EmailRow> for EmailView {
    fn from(r: EmailRow) -> Self {
        EmailView {
            to: serde_json::from_str(&r.recipients).unwrap_or_default(),
            sent_at: r.sent_at.map(rfc3339_ms),
            created_at: rfc3339_ms(r.created_at),
            id: r.id,
            object: "email",
            template: r.template,
            subject: r.subject,
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error,
            customer_id: r.customer_id,
            invoice_id: r.invoice_id,
            payment_id: r.payment_id,
            subject_id: r.subject_id,
            message_id: r.message_id,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EmailQuery {
    /// Only those to this customer.
    customer_id: Option<String>,
    /// Only those about this invoice.
    invoice_id: Option<String>,
    /// Only those in this status.
    #[param(value_type = Option<wire::EmailStatus>)]
    status: Option<String>,
    /// Only this kind.
    #[param(value_type = Option<EmailTemplate>)]
    template: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/emails", tag = "emails", operation_id = "list_emails",
    params(EmailQuery, Paging),
    responses((status = 200, description = "A page of the outbox.", body = ListResponse<EmailView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<EmailQuery>,
) -> Result<Json<ListResponse<EmailView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(s) = &q.status
        && !EMAIL_STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", EMAIL_STATUSES.join(", ")),
        ));
    }
    if let Some(t) = &q.template
        && Template::parse(t).is_none()
    {
        return Err(ApiError::invalid(
            "template",
            format!("must be one of {}", Template::names().join(", ")),
        ));
    }
    let filter = EmailFilter {
        customer_id: q.customer_id.as_deref(),
        invoice_id: q.invoice_id.as_deref(),
        status: q.status.as_deref(),
        template: q.template.as_deref(),
    };
    let rows = store::list(
        &state.billing.db,
        &filter,
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    let views = rows.into_iter().map(EmailView::from).collect();
    Ok(Json(ListResponse::page(views, limit)))
}

#[utoipa::path(get, path = "/v1/emails/{id}", tag = "emails", operation_id = "get_email",
    params(("id" = EmailId, Path, description = "The email.")),
    responses((status = 200, description = "The email.", body = EmailView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<EmailView>, ApiError> {
    store::get(&state.billing.db, &id)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("email", &id))
}

#[utoipa::path(post, path = "/v1/emails/{id}/retry", tag = "emails", operation_id = "retry_email",
    params(("id" = EmailId, Path, description = "The email.")),
    responses(
        (status = 200, description = "Pending again; it is sent shortly.", body = EmailView),
        (status = 409, description = "Only failed emails can be retried (`email_not_failed`).",
            body = ErrorBody),
    ))]
async fn retry(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<EmailView>, ApiError> {
    match store::retry(&state.billing.db, &id, state.billing.now()).await? {
        RetryOutcome::NotFound => Err(ApiError::not_found("email", &id)),
        RetryOutcome::NotFailed(status) => Err(ApiError::conflict(
            "email_not_failed",
            format!("email {id} is {status}; only failed emails can be retried"),
        )),
        RetryOutcome::Retried => {
            tracing::info!(email_id = %id, "email retry requested");
            state.scheduler.nudge();
            show(AxState(state), Path(id)).await
        }
    }
}
