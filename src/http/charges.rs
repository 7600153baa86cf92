//! Charging on demand: an invoice, or a customer's whole balance, with a saved card.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use settled_jobs::money::{Currency, Money};
use utoipa::ToSchema;

use super::extract::{ApiBytes, parse};
use super::format::amount;
use super::invoices::{InvoiceView, load_view};
use super::openapi::wire::{
    self, Amount, ChargeAttemptId, CurrencyInput, CustomerId, ErrorBody, InvoiceId, PaymentMethodId,
};
use super::payments::PaymentView;
use super::{ApiError, AppState};
use crate::billing::charges::{self, Charged};
use crate::store::{customers, invoices, payments};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/invoices/{id}/charge", post(charge_invoice))
        .route("/customers/{id}/charge_balance", post(charge_balance))
}

/// An empty body charges everything due with the default saved method.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChargeBody {
    /// Decimal string; absent = everything due.
    #[schema(value_type = Option<Amount>)]
    amount: Option<String>,
    /// One of the customer's saved methods (spm_...); absent = the default one. The contract
    /// calls it `payment_method_id`; `payment_method` is read too.
    #[serde(alias = "payment_method_id")]
    #[schema(value_type = Option<PaymentMethodId>)]
    payment_method: Option<String>,
    /// When given, must be the currency charged.
    #[schema(value_type = Option<CurrencyInput>)]
    currency: Option<String>,
}

/// A balance charge whose outcome is not known yet.
#[derive(Serialize, ToSchema)]
pub(crate) struct BalanceCharge {
    #[schema(value_type = String, pattern = "^balance_charge$")]
    object: &'static str,
    /// The charge attempt.
    #[schema(value_type = ChargeAttemptId)]
    id: String,
    #[schema(value_type = CustomerId)]
    customer_id: String,
    #[schema(value_type = String, pattern = "^unknown$")]
    status: &'static str,
    #[schema(value_type = Amount)]
    amount: String,
    #[schema(value_type = wire::Currency)]
    currency: String,
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
#[utoipa::path(post, path = "/v1/invoices/{id}/charge", tag = "invoices",
    operation_id = "charge_invoice",
    params(("id" = InvoiceId, Path, description = "The invoice.")),
    request_body(content = ChargeBody, description = "Optional: an empty body charges all that \
        is due with the default method."),
    responses(
        (status = 200, description = "Paid, or partly paid.", body = InvoiceView),
        (status = 202, description = "Sent; the gateway's answer is not known yet (asked again \
            under the same key; the invoice shows the outcome once known).", body = InvoiceView),
        (status = 402, description = "Declined (`card_declined`, with `decline_code`).",
            body = ErrorBody),
        (status = 409, description = "Nothing to charge (`invoice_not_chargeable`), another \
            charge is in flight, no saved method, or no gateway configured.", body = ErrorBody),
        (status = 502, description = "The gateway did not answer; try again.", body = ErrorBody),
    ))]
async fn charge_invoice(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiBytes(bytes): ApiBytes,
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
#[utoipa::path(post, path = "/v1/customers/{id}/charge_balance", tag = "customers",
    operation_id = "charge_customer_balance",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body(content = ChargeBody, description = "Optional; `amount` is refused (a balance \
        charge takes everything outstanding)."),
    responses(
        (status = 200, description = "The payment, allocated oldest due first.",
            body = PaymentView),
        (status = 202, description = "Sent; the outcome is not known yet.", body = BalanceCharge),
        (status = 402, description = "Declined (`card_declined`, with `decline_code`).",
            body = ErrorBody),
        (status = 409, description = "Nothing outstanding, another charge for the customer or \
            one of its invoices is unresolved, no saved method, or no gateway configured.",
            body = ErrorBody),
        (status = 502, description = "The gateway did not answer; try again.", body = ErrorBody),
    ))]
async fn charge_balance(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiBytes(bytes): ApiBytes,
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
            let pending = BalanceCharge {
                object: "balance_charge",
                amount: amount(a.amount, &a.currency),
                id: a.id,
                customer_id: id,
                status: "unknown",
                currency: a.currency,
            };
            return Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::to_value(pending).unwrap_or_default()),
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
