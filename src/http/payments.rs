//! Payment records: every payment with how it came (card, bank transfer, wire, ...).

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::ApiQuery;
use super::format::{amount, rfc3339_ms};
use super::{ApiError, AppState, ListResponse, Paging};
use crate::store::payments::{self, PaymentRow};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{id}", get(show_payment))
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
    payments::get(&state.billing.db, &id)
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::not_found("payment", &id))
}
