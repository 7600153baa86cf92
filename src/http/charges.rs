//! Charging on demand: an invoice, or a customer's whole balance, with a saved card.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use settled_jobs::money::{Currency, Money};

use super::extract::parse;
use super::format::amount;
use super::invoices::{InvoiceView, load_view};
use super::payments::PaymentView;
use super::{ApiError, AppState};
use crate::billing::charges::{self, Charged};
use crate::store::{customers, invoices, payments};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/invoices/{id}/charge", post(charge_invoice))
        .route("/customers/{id}/charge_balance", post(charge_balance))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChargeBody {
    /// Decimal string; absent = everything due.
    amount: Option<String>,
    /// One of the customer's saved methods (spm_...); absent = the default one. The contract
    /// calls it `payment_method_id`; `payment_method` is read too.
    #[serde(alias = "payment_method_id")]
    payment_method: Option<String>,
    /// When given, must be the currency charged.
    currency: Option<String>,
}

fn body_or_default(bytes: &Bytes) -> Result<ChargeBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(ChargeBody::default())
    } else {
        parse(bytes)
    }
}

fn check_currency(given: &Option<String>, charged: &str) -> Result<(), ApiError> {
    match given {
        Some(c) if !c.eq_ignore_ascii_case(charged) => Err(ApiError::invalid(
            "currency",
            format!("the amount is due in {charged}, not {c}"),
        )),
        _ => Ok(()),
    }
}

/// Parses a requested amount: a positive decimal string in the currency, at most `max`.
fn requested_amount(given: &Option<String>, currency: &str, max: i64) -> Result<i64, ApiError> {
    let Some(text) = given else {
        return Ok(max);
    };
    let cur = Currency::parse(currency)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored currency: {e}")))?;
    let m = Money::parse_input(text, cur).map_err(|e| ApiError::invalid("amount", e))?;
    if m.minor <= 0 {
        return Err(ApiError::invalid("amount", "must be greater than zero"));
    }
    if m.minor > max {
        return Err(ApiError::invalid(
            "amount",
            format!(
                "{text} is more than the {} {currency} due",
                Money::new(max, cur).to_decimal_string()
            ),
        ));
    }
    Ok(m.minor)
}

/// `POST /v1/invoices/{id}/charge {amount?, payment_method_id?}`: 200 with the invoice when the charge
/// went through, 402 when declined, 202 when the gateway's answer is not known yet (it is asked
/// again under the same key; the invoice shows the outcome once known).
async fn charge_invoice(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<InvoiceView>), ApiError> {
    let body = body_or_default(&bytes)?;
    let db = &state.billing.db;
    let inv = invoices::get(db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    check_currency(&body.currency, &inv.currency)?;
    if !inv.status().is_collectible() || inv.amount_due == 0 {
        return Err(ApiError::conflict(
            "invoice_not_chargeable",
            format!("invoice {id} is {} with nothing to charge", inv.status),
        ));
    }
    let amount = requested_amount(&body.amount, &inv.currency, inv.amount_due)?;
    let charged = charges::charge_now(
        &state.billing,
        &id,
        Some(amount),
        body.payment_method.as_deref(),
    )
    .await?;
    let code = match charged {
        Charged::Succeeded(_) => StatusCode::OK,
        Charged::Unknown(_) => StatusCode::ACCEPTED,
    };
    let row = invoices::get(db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    Ok((code, Json(load_view(db, row).await?)))
}

/// `POST /v1/customers/{id}/charge_balance`: one charge for everything outstanding in the
/// customer's currency, allocated to open invoices oldest due first. Answers the payment (200),
/// 402 when declined, or 202 with `{"status": "unknown"}` while the outcome is being resolved.
async fn charge_balance(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body = body_or_default(&bytes)?;
    if body.amount.is_some() {
        return Err(ApiError::invalid(
            "amount",
            "a balance charge takes everything outstanding; charge an invoice for part of it",
        ));
    }
    let db = &state.billing.db;
    let customer = customers::get_row(db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    check_currency(&body.currency, &customer.currency)?;
    let charged =
        charges::charge_balance(&state.billing, &id, body.payment_method.as_deref()).await?;
    let after = match charged {
        Charged::Succeeded(a) => a,
        Charged::Unknown(a) => {
            return Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({
                    "object": "balance_charge",
                    "id": a.id,
                    "customer_id": id,
                    "status": "unknown",
                    "amount": amount(a.amount, &a.currency),
                    "currency": a.currency,
                })),
            ));
        }
    };
    let payment = match &after.gateway_payment_id {
        Some(gid) => {
            let ctx = crate::store::charge_attempts::send_context(db, &after.id).await?;
            let gateway = ctx
                .gateway
                .unwrap_or_else(|| state.billing.gateways.default_name().to_string());
            payments::by_gateway_id(db, &gateway, gid).await?
        }
        None => None,
    }
    .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("balance payment not found")))?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(PaymentView::from(payment)).unwrap_or_default()),
    ))
}
