//! The records: payments made (invoice and retainer payments, sortable by date and amount, each
//! with its receipt PDF) and the statement of account for a date range, as a page, a PDF or CSV.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{NaiveDate, TimeZone};
use serde::Deserialize;
use serde_json::{Value, json};
use settled_jobs::template::Template;

use super::account::{document, method_label};
use super::pages::{chrome, day, iso_day, money, render, with};
use super::session::Viewer;
use super::{PageError, PageResult};
use crate::billing::statements;
use crate::http::AppState;
use crate::store::{invoices, ms, payments};

#[derive(Deserialize)]
pub struct PaymentsQuery {
    sort: Option<String>,
    order: Option<String>,
}

/// `GET /portal/payments?sort=date|amount&order=asc|desc`
pub async fn payments(
    State(state): State<Arc<AppState>>,
    Query(q): Query<PaymentsQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let acct = viewer.account();
    let db = &state.billing.db;
    let mut rows = payments::list(db, Some(&acct.row.id), None, 10_000, None).await?;
    let by_amount = q.sort.as_deref() == Some("amount");
    let ascending = q.order.as_deref() == Some("asc");
    rows.sort_by(|a, b| {
        let o = if by_amount {
            (a.amount, a.at).cmp(&(b.amount, b.at))
        } else {
            (a.at, &a.id).cmp(&(b.at, &b.id))
        };
        if ascending { o } else { o.reverse() }
    });
    let mut list = Vec::with_capacity(rows.len());
    for p in rows {
        let invoice = match &p.invoice_id {
            Some(id) => invoices::get(db, id).await?,
            None => None,
        };
        list.push(json!({
            "id": p.id,
            "date": day(p.at, &acct.row.timezone),
            "amount": money(p.amount, &p.currency),
            "refunded": (p.amount_refunded > 0).then(|| money(p.amount_refunded, &p.currency)),
            "method": method_label(&p),
            "invoice": invoice.as_ref().map(|i| json!({"id": i.id,
                "number": i.number.clone().unwrap_or_default()})),
            "retainer": invoice.as_ref().is_some_and(|i| i.kind == "retainer"),
            "status": p.status,
        }));
    }
    let sort = if by_amount { "amount" } else { "date" };
    let order = if ascending { "asc" } else { "desc" };
    let link = |s: &str| {
        let next = if s == sort && !ascending {
            "asc"
        } else {
            "desc"
        };
        format!("/portal/payments?sort={s}&order={next}")
    };
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "payments"),
        json!({"payments": list, "sort": sort, "order": order,
               "sort_date": link("date"), "sort_amount": link("amount")}),
    );
    Ok(render("payments.html", &ctx)?.into_response())
}

/// `GET /portal/payments/{id}/receipt.pdf`: the receipt the payment's email carried.
pub async fn receipt_pdf(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require(&state, &headers).await?;
    let p = payments::get(&state.billing.db, &id)
        .await?
        .ok_or(PageError::NotFound)?;
    let allowed = if viewer.full() {
        viewer.may_see_customer(&p.customer_id)
    } else {
        // An invoice link sees the receipts of that invoice's payments.
        p.invoice_id.is_some() && p.invoice_id == viewer.session.invoice_id
    };
    if !allowed {
        return Err(PageError::NotFound);
    }
    document(&state, Template::Receipt, &id).await
}

#[derive(Deserialize)]
pub struct StatementQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// `GET /portal/statement?from=YYYY-MM-DD&to=YYYY-MM-DD&format=html|pdf|csv`: days in the
/// customer's time zone, both inclusive (default: this year so far).
pub async fn statement(
    State(state): State<Arc<AppState>>,
    Query(q): Query<StatementQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let b = &state.billing;
    let acct = viewer.account();
    let tz: chrono_tz::Tz = acct.row.timezone.parse().unwrap_or(chrono_tz::UTC);
    let today = iso_day(ms(b.now()), &acct.row.timezone);
    let parse = |v: Option<&str>, default: String| -> Result<NaiveDate, PageError> {
        let text = v
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or(default);
        NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
            PageError::Refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{text} is not a date like 2027-01-31."),
            )
        })
    };
    let to_day = parse(q.to.as_deref(), today.clone())?;
    let from_day = parse(q.from.as_deref(), format!("{}-01-01", &today[..4]))?;
    if to_day < from_day {
        return Err(PageError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The end of the range is before its start.".into(),
        ));
    }
    let start = |d: NaiveDate| {
        tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or(0)
    };
    let (from, to) = (start(from_day), start(to_day + chrono::Days::new(1)));
    let cur = acct.row.currency.clone();
    let s = statements::statement(&b.db, &acct.row.id, &cur, from, to).await?;
    match q.format.as_deref() {
        Some("pdf") => {
            let snap = statements::snapshot(s, &cur, from, to, 0);
            let pdf = crate::outbox::statement_pdf(&b.config, &acct.row, snap, b.now());
            Ok((
                [
                    (header::CONTENT_TYPE, "application/pdf".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"statement-{from_day}-{to_day}.pdf\""),
                    ),
                ],
                pdf,
            )
                .into_response())
        }
        Some("csv") => {
            let snap = statements::snapshot(s, &cur, from, to, 0);
            let csv = crate::outbox::render::statement_csv(&snap);
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"statement-{from_day}-{to_day}.csv\""),
                    ),
                ],
                csv,
            )
                .into_response())
        }
        _ => {
            let entries: Vec<Value> = s
                .entries
                .iter()
                .map(|e| {
                    json!({"date": day(e.at, &acct.row.timezone), "kind": e.kind,
                           "reference": e.reference, "amount": money(e.amount, &cur),
                           "balance": money(e.balance, &cur)})
                })
                .collect();
            let query = format!("from={from_day}&to={to_day}");
            let ctx = with(
                chrome(&b.config, Some(&viewer), "statement"),
                json!({"from": from_day.to_string(), "to": to_day.to_string(),
                       "opening": money(s.opening, &cur), "closing": money(s.closing, &cur),
                       "entries": entries,
                       "pdf": format!("/portal/statement?{query}&format=pdf"),
                       "csv": format!("/portal/statement?{query}&format=csv")}),
            );
            Ok(render("statement.html", &ctx)?.into_response())
        }
    }
}
