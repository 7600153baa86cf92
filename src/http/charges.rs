//! Charging on demand (an invoice, or a customer's whole balance) and the payment records.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use settled_jobs::money::{Currency, Money};

use super::extract::{ApiQuery, parse};
use super::invoices::{InvoiceView, load_view};
use super::{ApiError, ListResponse, Paging};
use crate::app::State;
use crate::charges::{self, AttemptRow, NewAttempt};
use crate::payments::{self, PaymentView};
use crate::store::{customers, invoices, on_tx};

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/invoices/{id}/charge", post(charge_invoice))
        .route("/customers/{id}/charge_balance", post(charge_balance))
        .route("/payments", get(list_payments))
        .route("/payments/{id}", get(show_payment))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChargeBody {
    /// Decimal string; absent = everything due.
    amount: Option<String>,
    /// One of the customer's saved methods (spm_...); absent = the default one.
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
    let m = Money::parse(text, cur).map_err(|e| ApiError::invalid("amount", e))?;
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

/// The saved method to charge: the one named (it must be this customer's) or the default.
async fn method_to_charge(
    state: &State,
    customer_id: &str,
    named: &Option<String>,
) -> Result<String, ApiError> {
    match named {
        Some(pm) => customers::payment_method(&state.db, customer_id, pm)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| {
                ApiError::invalid(
                    "payment_method",
                    format!("{pm} is not a saved payment method of customer {customer_id}"),
                )
            }),
        None => customers::default_payment_method(&state.db, customer_id)
            .await?
            .map(|m| m.id)
            .ok_or_else(|| {
                ApiError::conflict(
                    "no_payment_method",
                    format!("customer {customer_id} has no default payment method"),
                )
            }),
    }
}

fn gateway_ready(state: &State) -> Result<(), ApiError> {
    if state.gateway.is_none() {
        return Err(ApiError::conflict(
            "gateway_not_configured",
            "no payment gateway is configured (stripe.api_key)",
        ));
    }
    Ok(())
}

/// An attempt already sent whose outcome is not recorded yet: a second charge now could take the
/// money twice.
async fn in_flight(tx: &mut crate::store::Tx, column: &str, id: &str) -> Result<bool, ApiError> {
    let sql = format!(
        "SELECT COUNT(*) FROM charge_attempts WHERE {column} = $1 \
         AND (status = 'unknown' OR (status = 'pending' AND started_at IS NOT NULL))"
    );
    let n: i64 = on_tx!(tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_one(&mut *c)
            .await?
    });
    Ok(n > 0)
}

/// Sends a claimed attempt and turns its recorded outcome into an answer.
async fn run_attempt(state: &State, attempt: AttemptRow) -> Result<AttemptRow, ApiError> {
    if let Err(e) = charges::send(state, &attempt.id, false).await {
        return Err(ApiError::Unexpected(anyhow::anyhow!(
            "recording charge attempt {}: {e}",
            attempt.id
        )));
    }
    let after = charges::get_attempt(&state.db, &attempt.id)
        .await?
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("charge attempt vanished")))?;
    if after.status == "failed" {
        return Err(ApiError::Declined {
            decline_code: after.decline_code.clone().unwrap_or_default(),
            message: after
                .failure_message
                .clone()
                .unwrap_or_else(|| "the charge was declined".into()),
        });
    }
    Ok(after)
}

/// `POST /v1/invoices/{id}/charge {amount?, payment_method?}`: 200 with the invoice when the charge
/// went through, 402 when declined, 202 when the gateway's answer is not known yet (it is asked
/// again under the same key; the invoice shows the outcome once known).
async fn charge_invoice(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<InvoiceView>), ApiError> {
    let body = body_or_default(&bytes)?;
    let inv = invoices::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    check_currency(&body.currency, &inv.currency)?;
    if !["open", "partially_paid", "past_due"].contains(&inv.status.as_str()) || inv.amount_due == 0
    {
        return Err(ApiError::conflict(
            "invoice_not_chargeable",
            format!("invoice {id} is {} with nothing to charge", inv.status),
        ));
    }
    let amount = requested_amount(&body.amount, &inv.currency, inv.amount_due)?;
    let pm = method_to_charge(&state, &inv.customer_id, &body.payment_method).await?;
    gateway_ready(&state)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    // Re-check under the write lock: the amount due may have moved since the read above.
    let lock = tx.lock_rows();
    let sql = format!("SELECT status, amount_due FROM invoices WHERE id = $1{lock}");
    let (status, due): (String, i64) = on_tx!(&mut tx, c => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&id)
            .fetch_one(&mut *c)
            .await?
    });
    if status != inv.status || due < amount {
        return Err(ApiError::conflict(
            "invoice_changed",
            format!("invoice {id} changed while the charge was prepared; try again"),
        ));
    }
    if in_flight(&mut tx, "invoice_id", &id).await? {
        return Err(ApiError::conflict(
            "charge_in_progress",
            format!("a charge of invoice {id} is in progress; its outcome is not known yet"),
        ));
    }
    let attempt = charges::insert_attempt(
        &mut tx,
        &NewAttempt {
            invoice_id: Some(&id),
            customer_id: &inv.customer_id,
            amount,
            currency: &inv.currency,
            payment_method_id: Some(&pm),
            automatic: false,
            scheduled_at: now,
            started: true,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    let after = run_attempt(&state, attempt).await?;
    let code = if after.status == "succeeded" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let row = invoices::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    Ok((code, Json(load_view(&state.db, row).await?)))
}

/// `POST /v1/customers/{id}/charge_balance`: one charge for everything outstanding in the
/// customer's currency, allocated to open invoices oldest due first. Answers the payment (200),
/// 402 when declined, or 202 with `{"status": "unknown"}` while the outcome is being resolved.
async fn charge_balance(
    AxState(state): AxState<Arc<State>>,
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
    let customer = customers::get_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    check_currency(&body.currency, &customer.currency)?;
    let pm = method_to_charge(&state, &id, &body.payment_method).await?;
    gateway_ready(&state)?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(amount_due), 0) AS BIGINT) FROM invoices WHERE customer_id = $1 AND currency = $2 \
         AND status IN {}",
        payments::COLLECTIBLE
    );
    let outstanding: i64 = on_tx!(&mut tx, c => {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&id)
            .bind(&customer.currency)
            .fetch_one(&mut *c)
            .await?
    });
    if outstanding <= 0 {
        return Err(ApiError::conflict(
            "nothing_outstanding",
            format!("customer {id} owes nothing in {}", customer.currency),
        ));
    }
    if in_flight(&mut tx, "customer_id", &id).await? {
        return Err(ApiError::conflict(
            "charge_in_progress",
            format!("a charge for customer {id} is in progress; its outcome is not known yet"),
        ));
    }
    let attempt = charges::insert_attempt(
        &mut tx,
        &NewAttempt {
            invoice_id: None,
            customer_id: &id,
            amount: outstanding,
            currency: &customer.currency,
            payment_method_id: Some(&pm),
            automatic: false,
            scheduled_at: now,
            started: true,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    let after = run_attempt(&state, attempt).await?;
    if after.status != "succeeded" {
        return Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "object": "balance_charge",
                "id": after.id,
                "customer_id": id,
                "status": "unknown",
                "amount": super::invoices::amount(after.amount, &after.currency),
                "currency": after.currency,
            })),
        ));
    }
    let payment = match &after.gateway_payment_id {
        Some(gid) => payments::by_gateway_id(&state.db, "stripe", gid).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("balance payment not found")))?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(PaymentView::from(payment)).unwrap_or_default()),
    ))
}

#[derive(Deserialize)]
struct PaymentQuery {
    customer_id: Option<String>,
    invoice_id: Option<String>,
    #[serde(flatten)]
    paging: Paging,
}

async fn list_payments(
    AxState(state): AxState<Arc<State>>,
    ApiQuery(q): ApiQuery<PaymentQuery>,
) -> Result<Json<ListResponse<PaymentView>>, ApiError> {
    let limit = q.paging.limit()?;
    let rows = payments::list(
        &state.db,
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    payments::get(&state.db, &id)
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::not_found("payment", &id))
}
