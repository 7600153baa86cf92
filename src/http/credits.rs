//! Credit notes, retainers, offline payments, voiding, the statement of account and the ledger
//! check.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use settled_jobs::money::{Currency, Money};

use super::extract::{ApiJson, ApiQuery};
use super::invoices::{InvoiceView, amount, load_view, rfc3339_ms};
use super::{ApiError, ListResponse};
use crate::app::State;
use crate::credits::{self, VoidRefusal};
use crate::payments::{self, NewPayment, PaymentView};
use crate::store::{customers, from_ms, invoices, ms, on_db, on_tx};

pub fn router() -> Router<Arc<State>> {
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
    let m = Money::parse(text, cur).map_err(|e| ApiError::invalid(field, e))?;
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

#[derive(Serialize, sqlx::FromRow)]
struct CreditNoteRow {
    id: String,
    customer_id: String,
    amount: i64,
    remaining: i64,
    currency: String,
    source: String,
    reason: String,
    created_at: i64,
}

fn credit_note_view(r: CreditNoteRow) -> serde_json::Value {
    json!({
        "id": r.id, "object": "credit_note", "customer_id": r.customer_id,
        "amount": amount(r.amount, &r.currency), "remaining": amount(r.remaining, &r.currency),
        "currency": r.currency, "source": r.source, "reason": r.reason,
        "created_at": rfc3339_ms(r.created_at),
    })
}

const CREDIT_NOTE_COLUMNS: &str =
    "id, customer_id, amount, remaining, currency, source, reason, created_at";

async fn create_credit_note(
    AxState(state): AxState<Arc<State>>,
    ApiJson(body): ApiJson<NewCreditNote>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let customer = customers::get_row(&state.db, &body.customer_id)
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
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let id = payments::add_credit(
        &mut tx,
        &customer.id,
        &currency,
        minor,
        "manual",
        None,
        reason,
        now,
    )
    .await?;
    crate::outbox::credit_note(&mut tx, &id, now).await?;
    tx.commit().await?;
    tracing::info!(credit_note_id = %id, customer_id = %customer.id, "credit note issued");
    let sql = format!("SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE id = $1");
    let row: CreditNoteRow = on_db!(&state.db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(&id).fetch_one(p).await?);
    Ok((StatusCode::CREATED, Json(credit_note_view(row))))
}

async fn list_credit_notes(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<ListResponse<serde_json::Value>>, ApiError> {
    customers::get_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let sql = format!(
        "SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE customer_id = $1 ORDER BY created_at, id"
    );
    let rows: Vec<CreditNoteRow> = on_db!(&state.db, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(&id).fetch_all(p).await?);
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApplyRetainer>,
) -> Result<Json<InvoiceView>, ApiError> {
    let inv = invoices::get(&state.db, &body.invoice_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("invoice_id", format!("no invoice {}", body.invoice_id))
        })?;
    if inv.customer_id != id {
        return Err(ApiError::invalid(
            "invoice_id",
            format!("invoice {} belongs to another customer", inv.id),
        ));
    }
    if !["open", "partially_paid", "past_due"].contains(&inv.status.as_str()) {
        return Err(ApiError::conflict(
            "invoice_not_open",
            format!("invoice {} is {}; nothing to apply to", inv.id, inv.status),
        ));
    }
    let limit = match &body.amount {
        Some(a) => Some(money(a, &inv.currency, "amount")?),
        None => None,
    };
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let available: i64 = on_tx!(&mut tx, c => {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM retainers WHERE customer_id = $1 AND currency = $2",
        )
        .bind(&id)
        .bind(&inv.currency)
        .fetch_one(&mut *c)
        .await?
    });
    let due: i64 = on_tx!(&mut tx, c => {
        sqlx::query_scalar("SELECT amount_due FROM invoices WHERE id = $1")
            .bind(&inv.id)
            .fetch_one(&mut *c)
            .await?
    });
    if let Some(l) = limit {
        if l > available {
            return Err(ApiError::conflict(
                "insufficient_retainer",
                format!(
                    "{} is more than the {} retainer balance",
                    amount(l, &inv.currency),
                    amount(available, &inv.currency)
                ),
            ));
        }
        if l > due {
            return Err(ApiError::invalid(
                "amount",
                format!("is more than the {} due", amount(due, &inv.currency)),
            ));
        }
    }
    if available == 0 {
        return Err(ApiError::conflict(
            "insufficient_retainer",
            format!("customer {id} has no retainer balance in {}", inv.currency),
        ));
    }
    credits::apply_retainer(&mut tx, &inv.id, limit, now).await?;
    tx.commit().await?;
    let row = invoices::get(&state.db, &inv.id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &inv.id))?;
    Ok(Json(load_view(&state.db, row).await?))
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundRetainer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let customer = customers::get_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let requested = money(&body.amount, &customer.currency, "amount")?;
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let Some(parts) =
        credits::take_retainer_for_refund(&mut tx, &id, &customer.currency, requested).await?
    else {
        return Err(ApiError::conflict(
            "insufficient_retainer",
            format!(
                "{} is more than the unused retainer",
                amount(requested, &customer.currency)
            ),
        ));
    };
    let mut refunds = Vec::new();
    for (retainer_id, payment_id, take, gateway) in parts {
        let mut gateway_refund = None;
        if gateway == "stripe" {
            let gw = state.gateway.clone().ok_or_else(|| {
                ApiError::conflict(
                    "gateway_not_configured",
                    "the retainer was paid through Stripe, which is not configured",
                )
            })?;
            let pi: Option<String> = on_tx!(&mut tx, c => {
                sqlx::query_scalar("SELECT gateway_payment_id FROM payments WHERE id = $1")
                    .bind(&payment_id)
                    .fetch_one(&mut *c)
                    .await?
            });
            let remaining: i64 = on_tx!(&mut tx, c => {
                sqlx::query_scalar("SELECT remaining FROM retainers WHERE id = $1")
                    .bind(&retainer_id)
                    .fetch_one(&mut *c)
                    .await?
            });
            let key = format!("settled:{retainer_id}:refund:{remaining}:{take}");
            let refund = gw
                .refund(pi.as_deref().unwrap_or_default(), take, &key)
                .await
                .map_err(|e| ApiError::Gateway(format!("the gateway refused the refund: {e}")))?;
            gateway_refund = Some(refund);
        }
        let refund_id = credits::record_retainer_refund(
            &mut tx,
            &id,
            &customer.currency,
            &retainer_id,
            payment_id.as_deref(),
            take,
            if gateway == "stripe" {
                "stripe"
            } else {
                "offline"
            },
            gateway_refund.as_deref(),
            now,
        )
        .await?;
        refunds.push(json!({"id": refund_id, "retainer_id": retainer_id,
                            "amount": amount(take, &customer.currency),
                            "gateway_refund_id": gateway_refund}));
    }
    tx.commit().await?;
    tracing::info!(customer_id = %id, amount = requested, "retainer refunded");
    let c = customers::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    Ok(Json(json!({
        "object": "retainer_refund",
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

const OFFLINE_METHODS: &[&str] = &["wire", "check", "cash", "other"];

fn check_offline(body: &OfflinePayment, currency: &str) -> Result<i64, ApiError> {
    if !OFFLINE_METHODS.contains(&body.method.as_str()) {
        return Err(ApiError::invalid(
            "method",
            format!("must be one of {}", OFFLINE_METHODS.join(", ")),
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OfflinePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let inv = invoices::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    let minor = check_offline(&body, &inv.currency)?;
    if !["open", "partially_paid", "past_due"].contains(&inv.status.as_str()) {
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<OfflinePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let customer = customers::get_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let minor = check_offline(&body, &customer.currency)?;
    record_offline(&state, &id, None, minor, &customer.currency, &body).await
}

async fn record_offline(
    state: &State,
    customer_id: &str,
    invoice_id: Option<&str>,
    minor: i64,
    currency: &str,
    body: &OfflinePayment,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    let recorded = payments::record(
        &mut tx,
        &NewPayment {
            customer_id,
            invoice_id,
            amount: minor,
            currency,
            gateway: "offline",
            gateway_payment_id: None,
            method: &body.method,
            reference: body.reference.as_deref(),
            brand: None,
            last4: None,
            at: now,
            unapplied: false,
        },
        now,
    )
    .await?;
    tx.commit().await?;
    let row = payments::get(&state.db, recorded.id())
        .await?
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("payment vanished")))?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn void(
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.db.begin().await?;
    match credits::void(&mut tx, &id, now).await? {
        Ok(()) => tx.commit().await?,
        Err(VoidRefusal::NotFound) => return Err(ApiError::not_found("invoice", &id)),
        Err(VoidRefusal::HasPayments) => {
            return Err(ApiError::conflict(
                "invoice_has_payments",
                format!("invoice {id} has payments recorded; refund them instead of voiding"),
            ));
        }
        Err(VoidRefusal::ChargeInProgress) => {
            return Err(ApiError::conflict(
                "charge_in_progress",
                format!("a charge of invoice {id} is in progress; its outcome is not known yet"),
            ));
        }
        Err(VoidRefusal::Status(s)) => {
            return Err(ApiError::conflict(
                "invoice_not_voidable",
                format!("invoice {id} is {s}"),
            ));
        }
    }
    let row = invoices::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    Ok(Json(load_view(&state.db, row).await?))
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
    AxState(state): AxState<Arc<State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> Result<Response, ApiError> {
    let customer = customers::get_row(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer", &id))?;
    let from = instant(&q.from, "from")?.unwrap_or_else(|| from_ms(0));
    let to = instant(&q.to, "to")?
        .unwrap_or_else(|| state.clock.now() + chrono::Duration::milliseconds(1));
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    let cur = &customer.currency;
    let s = credits::statement(&state.db, &id, cur, ms(from), ms(to)).await?;
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
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
        "from": super::invoices::rfc3339(from),
        "to": super::invoices::rfc3339(to),
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
async fn check(AxState(state): AxState<Arc<State>>) -> Result<Json<serde_json::Value>, ApiError> {
    let problems = credits::check(&state.db).await?;
    Ok(Json(
        json!({"ok": problems.is_empty(), "problems": problems}),
    ))
}
