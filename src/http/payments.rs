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
use super::{ApiError, AppState, ListResponse, Paging};
use crate::billing::refunds::outgoing::{self, Sent};
use crate::store::payments::{self, PaymentRow};
use crate::store::refunds::{self, RefundRow};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{id}", get(show_payment))
        .route("/payments/{id}/refunds", post(refund_payment))
}

/// A refund as the API shows it.
#[derive(Debug, Serialize)]
pub struct RefundView {
    pub id: String,
    pub object: &'static str,
    pub payment_id: String,
    pub amount: String,
    pub currency: String,
    /// pending (sent, its answer not known yet), succeeded or failed.
    pub status: String,
    pub gateway: String,
    pub gateway_refund_id: Option<String>,
    pub reason: Option<String>,
    pub as_credit: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
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

#[derive(Debug, Serialize)]
pub struct PaymentView {
    pub id: String,
    pub object: &'static str,
    pub invoice_id: Option<String>,
    pub customer_id: String,
    pub amount: String,
    pub currency: String,
    pub gateway: String,
    pub gateway_payment_id: Option<String>,
    pub method: String,
    pub reference: Option<String>,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub status: String,
    pub amount_refunded: String,
    pub at: String,
    /// On the single-payment view.
    #[serde(skip_serializing_if = "Option::is_none")]
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

#[derive(Deserialize)]
struct PaymentQuery {
    customer_id: Option<String>,
    invoice_id: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRefund {
    amount: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    as_credit: bool,
}

/// Refunds a payment (all that is left when no amount is given): 201 succeeded, 202 sent and its
/// answer not known yet (it is asked again under the same key), 422 `refund_failed` when the
/// gateway refused it (nothing was paid back).
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
