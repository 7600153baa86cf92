//! Credit notes, retainers, offline payments, voiding, the statement of account and the ledger
//! check.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use settled_jobs::money::{Currency, Money};
use utoipa::ToSchema;

use settled_jobs::status::OfflineMethod;

use super::extract::ApiJson;
use super::format::{amount, rfc3339_ms};
use super::invoices::{InvoiceView, load_view};
use super::openapi::wire::{
    self, Amount, CreditNoteId, CurrencyInput, CustomerId, ErrorBody, InvoiceId, RefundId,
    RetainerId, Timestamp,
};
use super::payments::PaymentView;
use super::{ApiError, AppState, ListResponse};
use crate::billing::{self, credits, ledger, payments, retainers};
use crate::store::balances::{self, CreditNoteRow};
use crate::store::{customers, invoices};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/credit_notes", post(create_credit_note))
        .route("/customers/{id}/credit_notes", get(list_credit_notes))
        .route("/customers/{id}/retainer/apply", post(apply_retainer))
        .route("/customers/{id}/retainer/refund", post(refund_retainer))
        .route("/customers/{id}/payments", post(customer_payment))
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCreditNote {
    #[schema(value_type = CustomerId)]
    customer_id: String,
    /// Greater than zero.
    #[schema(value_type = Amount)]
    amount: String,
    /// The customer's currency.
    #[schema(value_type = CurrencyInput)]
    currency: String,
    /// 1 to 500 characters.
    reason: String,
}

/// Credit a customer holds, applied to its next invoices oldest first.
#[derive(Serialize, ToSchema)]
#[schema(as = CreditNote)]
pub(crate) struct CreditNoteView {
    #[schema(value_type = CreditNoteId)]
    id: String,
    #[schema(value_type = String, pattern = "^credit_note$")]
    object: &'static str,
    #[schema(value_type = CustomerId)]
    customer_id: String,
    #[schema(value_type = Amount)]
    amount: String,
    /// What is left to apply.
    #[schema(value_type = Amount)]
    remaining: String,
    #[schema(value_type = wire::Currency)]
    currency: String,
    #[schema(value_type = wire::CreditSource)]
    source: String,
    reason: String,
    #[schema(value_type = Timestamp)]
    created_at: String,
}

fn credit_note_view(r: CreditNoteRow) -> CreditNoteView {
    CreditNoteView {
        id: r.id,
        object: "credit_note",
        customer_id: r.customer_id,
        amount: amount(r.amount, &r.currency),
        remaining: amount(r.remaining, &r.currency),
        source: r.source,
        reason: r.reason,
        created_at: rfc3339_ms(r.created_at),
        currency: r.currency,
    }
}

#[utoipa::path(post, path = "/v1/credit_notes", tag = "credits", operation_id = "create_credit_note",
    request_body = NewCreditNote,
    responses((status = 201, description = "The credit note; the customer's credit balance grows \
        by its amount.", body = CreditNoteView)))]
async fn create_credit_note(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<NewCreditNote>,
) -> Result<(StatusCode, Json<CreditNoteView>), ApiError> {
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

#[utoipa::path(get, path = "/v1/customers/{id}/credit_notes", tag = "credits",
    operation_id = "list_credit_notes",
    params(("id" = CustomerId, Path, description = "The customer.")),
    responses((status = 200, description = "Every credit note of the customer (one page).",
        body = ListResponse<CreditNoteView>)))]
async fn list_credit_notes(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ListResponse<CreditNoteView>>, ApiError> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRetainer {
    /// One of the customer's open invoices.
    #[schema(value_type = InvoiceId)]
    invoice_id: String,
    /// Default: as much as the retainer and the invoice allow.
    #[schema(value_type = Option<Amount>)]
    amount: Option<String>,
}

#[utoipa::path(post, path = "/v1/customers/{id}/retainer/apply", tag = "credits",
    operation_id = "apply_retainer",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body = ApplyRetainer,
    responses(
        (status = 200, description = "The invoice with the retainer applied.", body = InvoiceView),
        (status = 409, description = "The invoice takes no retainer in its status, or the \
            customer has none.", body = ErrorBody),
    ))]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundRetainer {
    /// Greater than zero, at most the retainer balance.
    #[schema(value_type = Amount)]
    amount: String,
}

/// A refund of unused retainer, newest deposit first.
#[derive(Serialize, ToSchema)]
pub(crate) struct RetainerRefund {
    #[schema(value_type = String, pattern = "^retainer_refund$")]
    object: &'static str,
    /// `succeeded`, `pending` (a gateway's answer is not known yet), `partially_failed` or
    /// `failed`.
    #[schema(pattern = "^(succeeded|pending|partially_failed|failed)$")]
    status: &'static str,
    #[schema(value_type = CustomerId)]
    customer_id: String,
    #[schema(value_type = Amount)]
    amount: String,
    #[schema(value_type = wire::Currency)]
    currency: String,
    /// One part per deposit refunded.
    refunds: Vec<RetainerRefundPart>,
    /// What is left.
    #[schema(value_type = Amount)]
    retainer_balance: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RetainerRefundPart {
    /// The refund, when one was recorded.
    #[schema(value_type = Option<RefundId>, required = true)]
    id: Option<String>,
    #[schema(value_type = RetainerId)]
    retainer_id: String,
    #[schema(value_type = Amount)]
    amount: String,
    #[schema(required = true)]
    gateway_refund_id: Option<String>,
    #[schema(pattern = "^(pending|succeeded|failed)$")]
    status: String,
    #[schema(required = true)]
    failure_reason: Option<String>,
}

/// Refunds unused retainer, newest deposit first; deposits paid through the gateway are refunded
/// there (under a key derived from the retainer and its remaining balance, so a retried request
/// never refunds twice), others by record.
#[utoipa::path(post, path = "/v1/customers/{id}/retainer/refund", tag = "credits",
    operation_id = "refund_retainer",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body = RefundRetainer,
    responses(
        (status = 200, description = "What was refunded, deposit by deposit.",
            body = RetainerRefund),
        (status = 409, description = "Less retainer than asked for, or a refund of it is in \
            flight.", body = ErrorBody),
        (status = 502, description = "The gateway did not answer; try again.", body = ErrorBody),
    ))]
async fn refund_retainer(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundRetainer>,
) -> Result<Json<RetainerRefund>, ApiError> {
    let customer = customers::get_row(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let requested = money(&body.amount, &customer.currency, "amount")?;
    let parts = retainers::refund(&state.billing, &id, requested).await?;
    let refunds: Vec<RetainerRefundPart> = parts
        .iter()
        .map(|p| RetainerRefundPart {
            id: p.id.clone(),
            retainer_id: p.retainer_id.clone(),
            amount: amount(p.amount, &customer.currency),
            gateway_refund_id: p.gateway_refund_id.clone(),
            status: p.status.clone(),
            failure_reason: p.failure_reason.clone(),
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
    Ok(Json(RetainerRefund {
        object: "retainer_refund",
        status,
        customer_id: id,
        amount: amount(requested, &customer.currency),
        retainer_balance: amount(c.retainer_balance, &customer.currency),
        currency: customer.currency,
        refunds,
    }))
}

/// A payment made outside the gateway, as an operator records it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OfflinePayment {
    /// Greater than zero; more than is due becomes credit.
    #[schema(value_type = Amount)]
    amount: String,
    #[schema(value_type = wire::OfflineMethod)]
    method: String,
    /// At most 200 characters (a bank reference, a cheque number).
    reference: Option<String>,
    /// When given, the currency due.
    #[schema(value_type = Option<CurrencyInput>)]
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
#[utoipa::path(post, path = "/v1/invoices/{id}/payments", tag = "invoices",
    operation_id = "record_invoice_payment",
    params(("id" = InvoiceId, Path, description = "The invoice.")),
    request_body = OfflinePayment,
    responses(
        (status = 201, description = "The payment; more than due becomes credit.",
            body = PaymentView),
        (status = 409, description = "The invoice takes no payment in its status \
            (`invoice_not_open`).", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/v1/customers/{id}/payments", tag = "customers",
    operation_id = "record_customer_payment",
    params(("id" = CustomerId, Path, description = "The customer.")),
    request_body = OfflinePayment,
    responses((status = 201, description = "The payment, allocated to open invoices oldest due \
        first; any excess becomes credit.", body = PaymentView)))]
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

#[utoipa::path(post, path = "/v1/invoices/{id}/void", tag = "invoices", operation_id = "void_invoice",
    params(("id" = InvoiceId, Path, description = "The invoice.")),
    responses(
        (status = 200, description = "The invoice, void; credit and retainer applied to it are \
            given back.", body = InvoiceView),
        (status = 409, description = "A payment is recorded, or it is void already.",
            body = ErrorBody),
    ))]
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

/// What the ledger check found.
#[derive(Serialize, ToSchema)]
pub(crate) struct LedgerCheck {
    /// True when every cent is accounted for.
    ok: bool,
    /// One sentence per difference between the ledger's sums and the records.
    problems: Vec<String>,
}

/// `GET /v1/ledger/check`: compares the ledger's sums with the records; `ok` with no problems
/// when every cent is accounted for.
#[utoipa::path(get, path = "/v1/ledger/check", tag = "credits", operation_id = "check_ledger",
    responses((status = 200, description = "The ledger's sums compared with the records.",
        body = LedgerCheck)))]
async fn check(AxState(state): AxState<Arc<AppState>>) -> Result<Json<LedgerCheck>, ApiError> {
    let problems = ledger::check(&state.billing.db).await?;
    Ok(Json(LedgerCheck {
        ok: problems.is_empty(),
        problems,
    }))
}
