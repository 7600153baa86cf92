//! Invoices: one-off creation and the read routes, with lines, payments and charge attempts.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use settled_jobs::ids::{new_id, prefix};
use settled_jobs::invoice::{ItemSpec, Line, build_lines, due_at};
use settled_jobs::money::{self, Currency, Money};
use settled_jobs::records::NewInvoice;
use settled_jobs::status::{AttemptStatus, InvoiceKind, InvoiceStatus};

use super::extract::{ApiJson, ApiQuery};
use super::format::{amount, rfc3339_ms};
use super::openapi::wire::{
    self, Amount, CurrencyInput, CustomerId, Decimal, Instant, InvoiceId, LineId, SubscriptionId,
    Timestamp,
};
use super::payments::PaymentView;
use super::{ApiError, AppState, ListResponse, Paging};
use crate::store::invoices::{self as store, InvoiceFilter, InvoiceRow, LineRow};
use crate::store::{charge_attempts, customers, pages, payments};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/invoices", post(create).get(list))
        .route("/invoices/{id}", get(show))
}

/// An item as the API takes it: amounts and quantities are strings, never JSON numbers.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Item)]
pub struct ItemInput {
    /// 1 to 500 characters.
    pub description: String,
    /// Greater than 0; default "1".
    #[schema(value_type = Option<Decimal>)]
    pub quantity: Option<String>,
    /// Not negative; at most the currency's decimal places.
    #[schema(value_type = Amount)]
    pub unit_amount: String,
    /// A fraction between 0 and 1 ("0.20").
    #[schema(value_type = Option<Decimal>)]
    pub tax_rate: Option<String>,
}

/// Validates items against the currency; errors name the field (`items[1].unit_amount`).
pub fn items_from_input(
    items: &[ItemInput],
    currency: Currency,
) -> Result<Vec<ItemSpec>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid("items", "must hold at least one item"));
    }
    if items.len() > 250 {
        return Err(ApiError::invalid("items", "at most 250 items"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let description = item.description.trim();
        if description.is_empty() || description.len() > 500 {
            return Err(ApiError::invalid(
                &format!("items[{i}].description"),
                "must be 1 to 500 characters",
            ));
        }
        let quantity = item.quantity.clone().unwrap_or_else(|| "1".into());
        money::parse_quantity(&quantity)
            .map_err(|e| ApiError::invalid(&format!("items[{i}].quantity"), e))?;
        let unit = Money::parse_input(&item.unit_amount, currency)
            .map_err(|e| ApiError::invalid(&format!("items[{i}].unit_amount"), e))?;
        if unit.minor < 0 {
            return Err(ApiError::invalid(
                &format!("items[{i}].unit_amount"),
                "must not be negative",
            ));
        }
        if let Some(rate) = &item.tax_rate {
            money::parse_rate(rate)
                .map_err(|e| ApiError::invalid(&format!("items[{i}].tax_rate"), e))?;
        }
        out.push(ItemSpec {
            description: description.to_string(),
            quantity,
            unit_amount: unit.minor,
            tax_rate: item.tax_rate.clone(),
        });
    }
    // Totals must be representable too.
    build_lines(&out).map_err(|e| ApiError::invalid("items", e))?;
    Ok(out)
}

/// One line of an invoice.
#[derive(Serialize, ToSchema)]
#[schema(as = InvoiceLine)]
pub struct LineView {
    /// Null on a preview.
    #[schema(value_type = Option<LineId>, required = true)]
    pub id: Option<String>,
    /// `item`, or `late_fee` for a late fee added after the due date.
    pub kind: String,
    pub description: String,
    #[schema(value_type = Decimal)]
    pub quantity: String,
    #[schema(value_type = Amount)]
    pub unit_amount: String,
    /// Quantity × unit amount, rounded once.
    #[schema(value_type = Amount)]
    pub amount: String,
    #[schema(value_type = Option<Decimal>, required = true)]
    pub tax_rate: Option<String>,
}

impl LineView {
    pub fn from_line(l: &Line, currency: &str) -> LineView {
        LineView {
            id: None,
            kind: "item".into(),
            description: l.description.clone(),
            quantity: l.quantity.clone(),
            unit_amount: amount(l.unit_amount, currency),
            amount: amount(l.amount, currency),
            tax_rate: l.tax_rate.clone(),
        }
    }

    fn from_row(l: LineRow, currency: &str) -> LineView {
        LineView {
            id: Some(l.id),
            kind: l.kind,
            description: l.description,
            quantity: l.quantity,
            unit_amount: amount(l.unit_amount, currency),
            amount: amount(l.amount, currency),
            tax_rate: l.tax_rate,
        }
    }
}

/// An invoice with its lines, payments and charge attempts.
#[derive(Serialize, ToSchema)]
#[schema(as = Invoice)]
pub struct InvoiceView {
    #[schema(value_type = InvoiceId)]
    pub id: String,
    #[schema(value_type = String, pattern = "^invoice$")]
    pub object: &'static str,
    /// The gapless number (`INV-2027-000001`); null while a draft.
    #[schema(required = true)]
    pub number: Option<String>,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    /// The subscription that generated it; null for a one-off invoice.
    #[schema(value_type = Option<SubscriptionId>, required = true)]
    pub subscription_id: Option<String>,
    #[schema(value_type = wire::InvoiceKind)]
    pub kind: String,
    #[schema(value_type = wire::InvoiceStatus)]
    pub status: String,
    #[schema(value_type = wire::Currency)]
    pub currency: String,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub period_start: Option<String>,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub period_end: Option<String>,
    #[schema(value_type = Amount)]
    pub subtotal: String,
    #[schema(value_type = Amount)]
    pub tax: String,
    #[schema(value_type = Amount)]
    pub total: String,
    #[schema(value_type = Amount)]
    pub credits_applied: String,
    #[schema(value_type = Amount)]
    pub retainer_applied: String,
    #[schema(value_type = Amount)]
    pub amount_paid: String,
    #[schema(value_type = Amount)]
    pub amount_due: String,
    pub auto_charge: bool,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub due_at: Option<String>,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub finalized_at: Option<String>,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub paid_at: Option<String>,
    #[schema(value_type = Timestamp)]
    pub created_at: String,
    /// When the next automatic charge attempt is scheduled, if one is.
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub next_attempt_at: Option<String>,
    pub lines: Vec<LineView>,
    pub payments: Vec<PaymentView>,
    pub attempts: Vec<AttemptView>,
}

/// One charge attempt as the invoice shows it. Scheduled attempts that have not run yet are not
/// listed; the invoice's `next_attempt_at` says when the next one is due.
#[derive(Serialize, ToSchema)]
#[schema(as = ChargeAttempt)]
pub struct AttemptView {
    pub attempt: i64,
    /// When it was sent.
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub at: Option<String>,
    #[schema(value_type = Amount)]
    pub amount: String,
    pub automatic: bool,
    /// succeeded, failed, or unknown (sent, outcome not yet known).
    #[schema(value_type = String, pattern = "^(succeeded|failed|unknown)$")]
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub decline_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub failure_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Timestamp)]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub gateway_payment_id: Option<String>,
}

/// The invoice with its lines, payments and charge attempts, as every route shows it.
pub async fn load_view(db: &crate::store::Db, row: InvoiceRow) -> Result<InvoiceView, ApiError> {
    let lines = store::lines(db, &row.id).await?;
    let payments = payments::list(db, None, Some(&row.id), 1000, None).await?;
    let attempts = charge_attempts::of_invoice(db, &row.id).await?;
    Ok(assemble(row, lines, payments, attempts))
}

/// A page of invoices with their lines, payments and attempts: three queries for the whole
/// page, whatever its length, rather than three per invoice.
pub async fn load_views(
    db: &crate::store::Db,
    rows: Vec<InvoiceRow>,
) -> Result<Vec<InvoiceView>, ApiError> {
    use std::collections::HashMap;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut lines: HashMap<String, Vec<LineRow>> = HashMap::new();
    for l in pages::lines_of_many(db, &ids).await? {
        lines.entry(l.invoice_id).or_default().push(l.line);
    }
    let mut paid: HashMap<String, Vec<payments::PaymentRow>> = HashMap::new();
    for p in pages::payments_of_invoices(db, &ids).await? {
        paid.entry(p.for_invoice).or_default().push(p.payment);
    }
    let mut tried: HashMap<String, Vec<charge_attempts::AttemptRow>> = HashMap::new();
    for a in pages::attempts_of_invoices(db, &ids).await? {
        if let Some(invoice) = a.invoice_id.clone() {
            tried.entry(invoice).or_default().push(a);
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let id = row.id.clone();
            assemble(
                row,
                lines.remove(&id).unwrap_or_default(),
                paid.remove(&id).unwrap_or_default(),
                tried.remove(&id).unwrap_or_default(),
            )
        })
        .collect())
}

fn assemble(
    row: InvoiceRow,
    lines: Vec<LineRow>,
    payments: Vec<payments::PaymentRow>,
    attempts: Vec<charge_attempts::AttemptRow>,
) -> InvoiceView {
    let mut view = invoice_view(row, lines);
    view.payments = payments.into_iter().map(Into::into).collect();
    for a in attempts {
        if a.status() == AttemptStatus::Pending && a.started_at.is_none() {
            if a.automatic {
                view.next_attempt_at = Some(rfc3339_ms(a.scheduled_at));
            }
            continue;
        }
        view.attempts.push(AttemptView {
            attempt: a.attempt,
            at: a.started_at.map(rfc3339_ms),
            amount: amount(a.amount, &a.currency),
            automatic: a.automatic,
            outcome: match a.status() {
                AttemptStatus::Succeeded => "succeeded",
                AttemptStatus::Failed => "failed",
                _ => "unknown",
            },
            decline_code: a.decline_code,
            failure_message: a.failure_message,
            next_attempt_at: a.next_attempt_at.map(rfc3339_ms),
            gateway_payment_id: a.gateway_payment_id,
        });
    }
    view
}

pub fn invoice_view(row: InvoiceRow, lines: Vec<LineRow>) -> InvoiceView {
    let c = row.currency.clone();
    InvoiceView {
        lines: lines
            .into_iter()
            .map(|l| LineView::from_row(l, &c))
            .collect(),
        next_attempt_at: None,
        payments: Vec::new(),
        attempts: Vec::new(),
        period_start: row.period_start.map(rfc3339_ms),
        period_end: row.period_end.map(rfc3339_ms),
        subtotal: amount(row.subtotal, &c),
        tax: amount(row.tax, &c),
        total: amount(row.total, &c),
        credits_applied: amount(row.credits_applied, &c),
        retainer_applied: amount(row.retainer_applied, &c),
        amount_paid: amount(row.amount_paid, &c),
        amount_due: amount(row.amount_due, &c),
        due_at: row.due_at.map(rfc3339_ms),
        finalized_at: row.finalized_at.map(rfc3339_ms),
        paid_at: row.paid_at.map(rfc3339_ms),
        created_at: rfc3339_ms(row.created_at),
        id: row.id,
        object: "invoice",
        number: row.number,
        customer_id: row.customer_id,
        subscription_id: row.subscription_id,
        kind: row.kind,
        status: row.status,
        currency: row.currency,
        auto_charge: row.auto_charge,
    }
}

/// A one-off invoice, finalised at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateInvoice {
    #[schema(value_type = CustomerId)]
    customer_id: String,
    /// 1 to 250 items.
    items: Vec<ItemInput>,
    /// Default now plus `billing.net_days`.
    #[schema(value_type = Option<Instant>)]
    due_at: Option<String>,
    /// Default false.
    auto_charge: Option<bool>,
    /// `standard` (default) or `retainer` (a deposit: once paid, retainer balance).
    #[schema(pattern = "^(standard|retainer)$")]
    kind: Option<String>,
    /// When given, the customer's currency.
    #[schema(value_type = Option<CurrencyInput>)]
    currency: Option<String>,
}

#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", operation_id = "create_invoice",
    request_body = CreateInvoice,
    responses((status = 201, description = "The invoice, numbered and finalised.",
        body = InvoiceView)))]
async fn create(
    AxState(state): AxState<Arc<AppState>>,
    ApiJson(body): ApiJson<CreateInvoice>,
) -> Result<(StatusCode, Json<InvoiceView>), ApiError> {
    let customer = customers::get_row(&state.billing.db, &body.customer_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid("customer_id", format!("no customer {}", body.customer_id))
        })?;
    let currency = Currency::parse(&customer.currency)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("stored currency: {e}")))?;
    if let Some(c) = &body.currency
        && !c.eq_ignore_ascii_case(currency.code())
    {
        return Err(ApiError::invalid(
            "currency",
            format!("the customer is billed in {}, not {c}", currency.code()),
        ));
    }
    let kind = match body.kind.as_deref() {
        None | Some("standard") => InvoiceKind::Standard,
        Some("retainer") => InvoiceKind::Retainer,
        Some(other) => {
            return Err(ApiError::invalid(
                "kind",
                format!("{other:?} must be standard or retainer"),
            ));
        }
    };
    let items = items_from_input(&body.items, currency)?;
    let now = state.billing.now();
    let due = match &body.due_at {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| ApiError::invalid("due_at", "must be an RFC 3339 instant"))?,
        None => due_at(now, state.billing.config.billing.net_days),
    };
    let (lines, totals) = build_lines(&items).map_err(|e| ApiError::invalid("items", e))?;
    let new = NewInvoice {
        id: new_id(prefix::INVOICE),
        customer_id: customer.id.clone(),
        subscription_id: None,
        kind,
        currency: currency.code().to_string(),
        period: None,
        lines,
        subtotal: totals.subtotal,
        tax: totals.tax,
        total: totals.total,
        auto_charge: body.auto_charge.unwrap_or(false),
        due_at: due,
        finalize_at: None,
    };
    crate::billing::invoices::create(&state.billing, &new).await?;
    state.scheduler.nudge();
    let row = store::get(&state.billing.db, &new.id)
        .await?
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("invoice vanished after insert")))?;
    Ok((
        StatusCode::CREATED,
        Json(load_view(&state.billing.db, row).await?),
    ))
}

#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices", operation_id = "get_invoice",
    params(("id" = InvoiceId, Path, description = "The invoice.")),
    responses((status = 200, description = "The invoice.", body = InvoiceView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<InvoiceView>, ApiError> {
    let row = store::get(&state.billing.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice", &id))?;
    Ok(Json(load_view(&state.billing.db, row).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InvoiceQuery {
    /// Only this customer's.
    customer_id: Option<String>,
    /// Only this subscription's.
    subscription_id: Option<String>,
    /// Only those in this status.
    #[param(value_type = Option<wire::InvoiceStatus>)]
    status: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/invoices", tag = "invoices", operation_id = "list_invoices",
    params(InvoiceQuery, Paging),
    responses((status = 200, description = "A page of invoices, oldest first.",
        body = ListResponse<InvoiceView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<InvoiceQuery>,
) -> Result<Json<ListResponse<InvoiceView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(s) = &q.status
        && InvoiceStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", InvoiceStatus::names().join(", ")),
        ));
    }
    let filter = InvoiceFilter {
        customer_id: q.customer_id.as_deref(),
        subscription_id: q.subscription_id.as_deref(),
        status: q.status.as_deref(),
    };
    let rows = store::list(
        &state.billing.db,
        &filter,
        limit + 1,
        q.paging.starting_after.as_deref(),
    )
    .await?;
    let views = load_views(&state.billing.db, rows).await?;
    Ok(Json(ListResponse::page(views, limit)))
}
