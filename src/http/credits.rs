//! Credit notes, retainers, offline payments, voiding, the statement of account and the ledger
//! check.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use settled_jobs::money::{Currency, Money};

use settled_jobs::status::OfflineMethod;

use super::extract::{ApiJson, ApiQuery};
use super::format::{amount, rfc3339, rfc3339_ms};
use super::invoices::{InvoiceView, load_view};
use super::payments::PaymentView;
use super::{ApiError, AppState, ListResponse};
use crate::billing::{self, credits, ledger, payments, retainers, statements};
use crate::store::balances::{self, CreditNoteRow};
use crate::store::{customers, from_ms, invoices, ms};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/credit_notes", post(create_credit_note))
        .route("/customers/{id}/credit_notes", get(list_credit_notes))
        .route("/customers/{id}/retainer/apply", post(apply_retainer))
        .route("/customers/{id}/retainer/refund", post(refund_retainer))
        .route("/customers/{id}/payments", post(customer_payment))
        .route("/customers/{id}/statement", get(statement))
        .route("/invoices/{id}/payments", post(invoice_payment))
        .route("/invoices/{id}/void", post(void))
        .route("/ledger/check", get(check))
}

fn money(text: &str, currency: &str, field: &str) -> Result<i64, ApiError> {
    let cur = Currency::parse(currency).map_err(|e| ApiError::invalid("currency", e))?;
    let m = Money::parse_input(text, cur).map_err(|e| ApiError::invalid(field, e))?;
    if m.minor <= 0 {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    Ok(m.minor)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCreditNote {
    customer_id: String,
    amount: String,
    currency: String,
    reason: String,
}

fn credit_note_view(r: CreditNoteRow) -> serde_json::Value {
    json!({
        "id": r.id, "object": "credit_note", "customer_id": r.customer_id,
        "amount": amount(r.amount, &r.currency), "remaining": amount(r.remaining, &r.currency),
        "currency": r.currency, "source": r.source, "reason": r.reason,
        "created_at": rfc3339_ms(r.created_at),
    })
}

async fn create_credit_note(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<NewCreditNote>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let customer = customers::get_row(&state.billing.db, &body.customer_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("customer_id", format!("no customer {}", body.customer_id))
        })?;
    let currency = body.currency.to_uppercase();
    if currency != customer.currency {
        return Err(ApiError::invalid(
            "currency",
            format!(
                "the customer is billed in {}, not {}",
                customer.currency, body.currency
            ),
        ));
    }
    let minor = money(&body.amount, &currency, "amount")?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::invalid("reason", "must be 1 to 500 characters"));
    }
    let id =
        credits::issue_credit_note(&state.billing, &customer.id, &currency, minor, reason).await?;
    let row = balances::credit_note(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("credit note vanished")))?;
    Ok((StatusCode::CREATED, Json(credit_note_view(row))))
}

async fn list_credit_notes(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ListResponse<serde_json::Value>>, ApiError> {
    customers::get_row(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let rows = balances::credit_notes_of(&state.billing.db, &id).await?;
    let n = rows.len() as i64;
    Ok(Json(ListResponse::page(
        rows.into_iter().map(credit_note_view).collect(),
        n,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRetainer {
    invoice_id: String,
    amount: Option<String>,
}

async fn apply_retainer(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApplyRetainer>,
) -> Result<Json<InvoiceView>, ApiError> {
    let inv = invoices::get(&state.billing.db, &body.invoice_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("invoice_id", format!("no invoice {}", body.invoice_id))
        })?;
    let limit = match &body.amount {
        Some(a) => Some(money(a, &inv.currency, "amount")?),
        None => None,
    };
    retainers::apply(&state.billing, &id, &inv.id, limit).await?;
    let row = invoices::get(&state.billing.db, &inv.id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &inv.id))?;
    Ok(Json(load_view(&state.billing.db, row).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRetainer {
    amount: String,
}

/// Refunds unused retainer, newest deposit first; deposits paid through the gateway are refunded
/// there (under a key derived from the retainer and its remaining balance, so a retried request
/// never refunds twice), others by record.
async fn refund_retainer(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundRetainer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let customer = customers::get_row(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let requested = money(&body.amount, &customer.currency, "amount")?;
    let parts = retainers::refund(&state.billing, &id, requested).await?;
    let refunds: Vec<serde_json::Value> = parts
        .iter()
        .map(|p| {
            json!({"id": p.id, "retainer_id": p.retainer_id,
                   "amount": amount(p.amount, &customer.currency),
                   "gateway_refund_id": p.gateway_refund_id,
                   "status": p.status, "failure_reason": p.failure_reason})
        })
        .collect();
    let status = if !parts.is_empty() && parts.iter().all(|p| p.status == "failed") {
        "failed"
    } else if parts.iter().any(|p| p.status == "pending") {
        "pending"
    } else if parts.iter().any(|p| p.status == "failed") {
        "partially_failed"
    } else {
        "succeeded"
    };
    let c = customers::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    Ok(Json(json!({
        "object": "retainer_refund",
        "status": status,
        "customer_id": id,
        "amount": amount(requested, &customer.currency),
        "currency": customer.currency,
        "refunds": refunds,
        "retainer_balance": amount(c.retainer_balance, &customer.currency),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfflinePayment {
    amount: String,
    method: String,
    reference: Option<String>,
    currency: Option<String>,
}

fn check_offline(body: &OfflinePayment, currency: &str) -> Result<i64, ApiError> {
    if OfflineMethod::parse(&body.method).is_none() {
        return Err(ApiError::invalid(
            "method",
            format!("must be one of {}", OfflineMethod::names().join(", ")),
        ));
    }
    if let Some(c) = &body.currency
        && !c.eq_ignore_ascii_case(currency)
    {
        return Err(ApiError::invalid(
            "currency",
            format!("the payment is due in {currency}, not {c}"),
        ));
    }
    if body.reference.as_ref().is_some_and(|r| r.len() > 200) {
        return Err(ApiError::invalid(
            "reference",
            "must be at most 200 characters",
        ));
    }
    money(&body.amount, currency, "amount")
}

/// `POST /v1/invoices/{id}/payments`: a wire, cheque or cash payment recorded by an operator;
/// a part leaves the invoice partially paid, more than due becomes credit.
async fn invoice_payment(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OfflinePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let inv = invoices::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    let minor = check_offline(&body, &inv.currency)?;
    if !inv.status().is_collectible() {
        return Err(ApiError::conflict(
            "invoice_not_open",
            format!("invoice {id} is {}; it takes no payment", inv.status),
        ));
    }
    record_offline(
        &state,
        &inv.customer_id,
        Some(&id),
        minor,
        &inv.currency,
        &body,
    )
    .await
}

/// `POST /v1/customers/{id}/payments`: an offline payment toward the whole balance, allocated to
/// open invoices oldest due first; any excess becomes credit.
async fn customer_payment(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OfflinePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let customer = customers::get_row(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let minor = check_offline(&body, &customer.currency)?;
    record_offline(&state, &id, None, minor, &customer.currency, &body).await
}

async fn record_offline(
    state: &AppState,
    customer_id: &str,
    invoice_id: Option<&str>,
    minor: i64,
    currency: &str,
    body: &OfflinePayment,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let row = payments::record_offline(
        &state.billing,
        customer_id,
        invoice_id,
        minor,
        currency,
        &body.method,
        body.reference.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn void(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    billing::invoices::void(&state.billing, &id).await?;
    let row = invoices::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    Ok(Json(load_view(&state.billing.db, row).await?))
}

#[derive(Deserialize)]
struct StatementQuery {
    from: Option<String>,
    to: Option<String>,
}

fn instant(v: &Option<String>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.as_ref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
                })
                .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 instant or a date"))
        })
        .transpose()
}

/// `GET /v1/customers/{id}/statement?from=&to=`: JSON, or CSV with `Accept: text/csv`.
async fn statement(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> Result<Response, ApiError> {
    let customer = customers::get_row(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let from = instant(&q.from, "from")?.unwrap_or_else(|| from_ms(0));
    let to = instant(&q.to, "to")?
        .unwrap_or_else(|| state.billing.now() + chrono::Duration::milliseconds(1));
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    let cur = &customer.currency;
    let s = statements::statement(&state.billing.db, &id, cur, ms(from), ms(to)).await?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/pdf") {
        let snap = statements::snapshot(s, cur, ms(from), ms(to), 0);
        let pdf = crate::outbox::statement_pdf(
            &state.billing.config,
            &customer,
            snap,
            state.billing.now(),
        );
        return Ok((
            [
                (header::CONTENT_TYPE, "application/pdf".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"statement-{id}.pdf\""),
                ),
            ],
            pdf,
        )
            .into_response());
    }
    let csv = accept.contains("text/csv");
    if csv {
        let mut out = String::from("date,kind,reference,amount,balance\n");
        out.push_str(&format!(",opening,,,{}\n", amount(s.opening, cur)));
        for e in &s.entries {
            out.push_str(&format!(
                "{},{},{},{},{}\n",
                rfc3339_ms(e.at),
                e.kind,
                csv_field(&e.reference),
                amount(e.amount, cur),
                amount(e.balance, cur)
            ));
        }
        out.push_str(&format!(",closing,,,{}\n", amount(s.closing, cur)));
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let entries: Vec<serde_json::Value> = s
        .entries
        .iter()
        .map(|e| {
            json!({"at": rfc3339_ms(e.at), "kind": e.kind, "reference": e.reference,
                   "amount": amount(e.amount, cur), "balance": amount(e.balance, cur)})
        })
        .collect();
    Ok(Json(json!({
        "object": "statement",
        "customer_id": id,
        "currency": cur,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "opening_balance": amount(s.opening, cur),
        "entries": entries,
        "closing_balance": amount(s.closing, cur),
    }))
    .into_response())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `GET /v1/ledger/check`: compares the ledger's sums with the records; `ok` with no problems
/// when every cent is accounted for.
async fn check(
    AxState(state): AxState<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let problems = ledger::check(&state.billing.db).await?;
    Ok(Json(
        json!({"ok": problems.is_empty(), "problems": problems}),
    ))
}
