//! The statement of account (`GET /v1/customers/{id}/statement`): JSON, CSV or PDF.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::ApiQuery;
use super::format::{amount, rfc3339, rfc3339_ms};
use super::openapi::wire::{self, Amount, CustomerId, Timestamp};
use super::{ApiError, AppState};
use crate::billing::statements;
use crate::store::{customers, from_ms, ms};

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/customers/{id}/statement", get(statement))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatementQuery {
    /// An RFC 3339 instant or a date (`2027-01-01`); default the beginning.
    from: Option<String>,
    /// An RFC 3339 instant or a date, after `from`, exclusive; default now.
    to: Option<String>,
}

/// A statement of account: every movement with the running balance.
#[derive(Serialize, ToSchema)]
#[schema(as = Statement)]
pub(crate) struct StatementView {
    #[schema(value_type = String, pattern = "^statement$")]
    object: &'static str,
    #[schema(value_type = CustomerId)]
    customer_id: String,
    #[schema(value_type = wire::Currency)]
    currency: String,
    #[schema(value_type = Timestamp)]
    from: String,
    #[schema(value_type = Timestamp)]
    to: String,
    /// What the customer owed at `from`, net of credit and deposits.
    #[schema(value_type = Amount)]
    opening_balance: String,
    entries: Vec<StatementEntryView>,
    #[schema(value_type = Amount)]
    closing_balance: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = StatementEntry)]
pub(crate) struct StatementEntryView {
    #[schema(value_type = Timestamp)]
    at: String,
    #[schema(pattern = "^(invoice|payment|credit|refund|retainer|adjustment)$")]
    kind: String,
    /// The invoice number, payment or credit note the movement belongs to.
    reference: String,
    /// What the customer owes more (positive) or less (negative).
    #[schema(value_type = Amount)]
    amount: String,
    #[schema(value_type = Amount)]
    balance: String,
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
#[utoipa::path(get, path = "/v1/customers/{id}/statement", tag = "customers",
    operation_id = "get_customer_statement",
    params(("id" = CustomerId, Path, description = "The customer."), StatementQuery),
    responses((status = 200, description = "The statement: JSON by default, CSV with \
        `Accept: text/csv`, a PDF with `Accept: application/pdf`.",
        content(
            (StatementView = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/pdf"),
        ))))]
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
    let entries = s
        .entries
        .iter()
        .map(|e| StatementEntryView {
            at: rfc3339_ms(e.at),
            kind: e.kind.to_string(),
            reference: e.reference.clone(),
            amount: amount(e.amount, cur),
            balance: amount(e.balance, cur),
        })
        .collect();
    Ok(Json(StatementView {
        object: "statement",
        customer_id: id,
        currency: cur.clone(),
        from: rfc3339(from),
        to: rfc3339(to),
        opening_balance: amount(s.opening, cur),
        entries,
        closing_balance: amount(s.closing, cur),
    })
    .into_response())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
