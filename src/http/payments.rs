//! Payment records: every payment with how it came (card, bank transfer, wire, ...).

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use settled_jobs::money::{Currency, Money};

use super::extract::{ApiJson, ApiQuery};
use super::format::{amount, rfc3339_ms};
use super::openapi::wire::{
    self, Amount, CustomerId, ErrorBody, InvoiceId, PaymentId, RefundId, Timestamp,
};
use super::{ApiError, AppState, ListResponse, Paging};
use crate::billing::refunds::outgoing::{self, Sent};
use crate::store::payments::{self, PaymentRow};
use crate::store::refunds::{self, RefundRow};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{id}", get(show_payment))
        .route("/payments/{id}/refunds", post(refund_payment))
}

/// A refund as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Refund)]
pub struct RefundView {
    #[schema(value_type = RefundId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^refund$")]
    pub object: &'static str,
    #[schema(value_type = PaymentId)]
    pub payment_id: String,
    #[schema(value_type = Amount)]
    pub amount: String,
    #[schema(value_type = wire::Currency)]
    pub currency: String,
    /// pending (sent, its answer not known yet), succeeded or failed.
    #[schema(pattern = "^(pending|succeeded|failed)$")]
    pub status: String,
    pub gateway: String,
    #[schema(required = true)]
    pub gateway_refund_id: Option<String>,
    #[schema(required = true)]
    pub reason: Option<String>,
    /// Kept as customer credit instead of paid back.
    pub as_credit: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub failure_reason: Option<String>,
    #[schema(value_type = Timestamp)]
    pub at: String,
}

impl From<RefundRow> for RefundView {
    fn from(r: RefundRow) -> Self {
        RefundView {
            amount: amount(r.amount, &r.currency),
            at: rfc3339_ms(r.at),
            id: r.id,
            object: "refund",
            payment_id: r.payment_id,
            currency: r.currency,
            status: r.status,
            gateway: r.gateway,
            gateway_refund_id: r.gateway_refund_id,
            reason: r.reason,
            as_credit: r.to_credit,
            failure_reason: r.failure_message,
        }
    }
}

/// Money received: a card charge, a gateway webhook, or an offline payment.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Payment)]
pub struct PaymentView {
    #[schema(value_type = PaymentId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^payment$")]
    pub object: &'static str,
    /// The invoice it paid first; null for a payment toward a whole balance.
    #[schema(value_type = Option<InvoiceId>, required = true)]
    pub invoice_id: Option<String>,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    #[schema(value_type = Amount)]
    pub amount: String,
    #[schema(value_type = wire::Currency)]
    pub currency: String,
    /// The gateway it came through (`stripe`, a Standard Webhooks source, `offline`).
    pub gateway: String,
    #[schema(required = true)]
    pub gateway_payment_id: Option<String>,
    /// `card`, or how an offline payment was made (`wire`, `check`, `cash`, `other`).
    pub method: String,
    #[schema(required = true)]
    pub reference: Option<String>,
    #[schema(required = true)]
    pub brand: Option<String>,
    #[schema(required = true)]
    pub last4: Option<String>,
    #[schema(value_type = wire::PaymentStatus)]
    pub status: String,
    #[schema(value_type = Amount)]
    pub amount_refunded: String,
    #[schema(value_type = Timestamp)]
    pub at: String,
    /// On the single-payment view.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub refunds: Option<Vec<RefundView>>,
}

impl From<PaymentRow> for PaymentView {
    fn from(r: PaymentRow) -> Self {
        PaymentView {
            amount: amount(r.amount, &r.currency),
            amount_refunded: amount(r.amount_refunded, &r.currency),
            at: rfc3339_ms(r.at),
            id: r.id,
            object: "payment",
            invoice_id: r.invoice_id,
            customer_id: r.customer_id,
            currency: r.currency,
            gateway: r.gateway,
            gateway_payment_id: r.gateway_payment_id,
            method: r.method,
            reference: r.reference,
            brand: r.brand,
            last4: r.last4,
            status: r.status,
            refunds: None,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PaymentQuery {
    /// Only this customer's.
    customer_id: Option<String>,
    /// Only those that paid this invoice.
    invoice_id: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments", operation_id = "list_payments",
    params(PaymentQuery, Paging),
    responses((status = 200, description = "A page of payments.", body = ListResponse<PaymentView>)))]
async fn list_payments(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PaymentQuery>,
) -> Result<Json<ListResponse<PaymentView>>, ApiError> {
    let limit = q.paging.limit()?;
    let rows = payments::list(
        &state.billing.db,
        q.customer_id.as_deref(),
        q.invoice_id.as_deref(),
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    Ok(Json(ListResponse::page(
        rows.into_iter().map(Into::into).collect(),
        limit,
    )))
}

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", operation_id = "get_payment",
    params(("id" = PaymentId, Path, description = "The payment.")),
    responses((status = 200, description = "The payment with its refunds.", body = PaymentView)))]
async fn show_payment(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let row = payments::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", &id))?;
    let mut view = PaymentView::from(row);
    view.refunds = Some(
        refunds::of_payment(&state.billing.db, &id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    );
    Ok(Json(view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRefund {
    /// Default: all that is left of the payment.
    #[schema(value_type = Option<Amount>)]
    amount: Option<String>,
    /// At most 500 characters.
    reason: Option<String>,
    /// Keep the amount as customer credit instead of paying it back; default false.
    #[serde(default)]
    as_credit: bool,
}

/// Refunds a payment (all that is left when no amount is given): 201 succeeded, 202 sent and its
/// answer not known yet (it is asked again under the same key), 422 `refund_failed` when the
/// gateway refused it (nothing was paid back).
#[utoipa::path(post, path = "/v1/payments/{id}/refunds", tag = "payments",
    operation_id = "refund_payment",
    params(("id" = PaymentId, Path, description = "The payment.")),
    request_body = NewRefund,
    responses(
        (status = 201, description = "Refunded (or kept as credit).", body = RefundView),
        (status = 202, description = "Sent to the gateway; its answer is not known yet and is \
            asked for again under the same key.", body = RefundView),
        (status = 409, description = "The payment cannot be refunded now, or no gateway is \
            configured.", body = ErrorBody),
        (status = 502, description = "The gateway did not answer; try again.", body = ErrorBody),
    ))]
async fn refund_payment(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewRefund>,
) -> Result<(StatusCode, Json<RefundView>), ApiError> {
    let payment = payments::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment", &id))?;
    let amount = match &body.amount {
        Some(text) => {
            let cur =
                Currency::parse(&payment.currency).map_err(|e| ApiError::invalid("currency", e))?;
            let m = Money::parse_input(text, cur).map_err(|e| ApiError::invalid("amount", e))?;
            if m.minor <= 0 {
                return Err(ApiError::invalid("amount", "must be greater than zero"));
            }
            Some(m.minor)
        }
        None => None,
    };
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 500)
    {
        return Err(ApiError::invalid("reason", "is longer than 500 characters"));
    }
    let (refund_id, sent) = outgoing::refund_payment(
        &state.billing,
        &id,
        amount,
        body.reason.as_deref(),
        body.as_credit,
    )
    .await?;
    let row = refunds::of_payment(&state.billing.db, &id)
        .await?
        .into_iter()
        .find(|r| r.id == refund_id)
        .ok_or_else(|| ApiError::not_found("refund", &refund_id))?;
    let status = match sent {
        Sent::Succeeded { .. } => StatusCode::CREATED,
        Sent::Pending => StatusCode::ACCEPTED,
        Sent::Failed { reason } => {
            return Err(ApiError::Invalid {
                code: "refund_failed",
                message: format!("the gateway did not refund the payment: {reason}"),
            });
        }
    };
    Ok((status, Json(row.into())))
}
