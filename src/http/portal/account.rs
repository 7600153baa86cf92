//! The account: the dashboard, the invoices with their status filter, one invoice's page with
//! its PDF, and paying (an invoice, in full or in part, or the whole balance) through the same
//! charge path as every other charge. A pay form carries a nonce that serves as its
//! Idempotency-Key: a double-click or a resent form charges once.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use settled_jobs::money::{Currency, Money};
use settled_jobs::status::{AttemptStatus, InvoiceStatus};
use settled_jobs::template::Template;
use sha2::{Digest, Sha256};

use super::pages::{chrome, day, decimal, money, render, status_label, with};
use super::session::{Form, Viewer};
use super::{PageError, PageResult, redirect};
use crate::billing::charges::{self, Charged};
use crate::http::AppState;
use crate::portal::links::random_token;
use crate::store::idempotency_keys::{self as keys, Claim};
use crate::store::invoices::{self, InvoiceFilter, InvoiceRow};
use crate::store::{charge_attempts, payment_methods, payments};

/// The saved cards of a customer, for a choice on a pay form (the default first selected).
pub async fn cards_of(state: &AppState, customer_id: &str) -> Result<Vec<Value>, PageError> {
    Ok(payment_methods::list(&state.billing.db, customer_id)
        .await?
        .into_iter()
        .map(|m| {
            json!({"id": m.id, "brand": m.brand, "last4": m.last4, "default": m.is_default,
                   "exp": format!("{:02}/{}", m.exp_month, m.exp_year % 100),
                   "label": crate::outbox::view::card_label(&crate::outbox::snapshot::CardSnap {
                       brand: m.brand.clone(), last4: m.last4.clone() })})
        })
        .collect())
}

fn invoice_summary(inv: &InvoiceRow, tz: &str) -> Value {
    let c = &inv.currency;
    json!({
        "id": inv.id,
        "number": inv.number.clone().unwrap_or_default(),
        "status": inv.status,
        "status_label": status_label(&inv.status),
        "issued": day(inv.finalized_at.unwrap_or(inv.created_at), tz),
        "due": inv.due_at.map(|d| day(d, tz)),
        "total": money(inv.total, c),
        "amount_due": money(inv.amount_due, c),
        "owing": inv.amount_due > 0 && inv.status().is_collectible(),
    })
}

/// `GET /portal/`: what is owed, credit, retainer, the last payment, and who is who.
pub async fn dashboard(
    State(state): State<Arc<AppState>>,
    Query(q): Query<NoticeQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let db = &state.billing.db;
    let acct = viewer.account();
    let (c, tz) = (&acct.row.currency, &acct.row.timezone);
    let filter = InvoiceFilter {
        customer_id: Some(&acct.row.id),
        ..Default::default()
    };
    let open: Vec<Value> = invoices::list(db, &filter, 500, None)
        .await?
        .iter()
        .filter(|i| i.amount_due > 0 && i.status().is_collectible())
        .map(|i| invoice_summary(i, tz))
        .collect();
    let last = payments::list(db, Some(&acct.row.id), None, 10_000, None)
        .await?
        .into_iter()
        .max_by_key(|p| (p.at, p.id.clone()))
        .map(|p| {
            json!({"amount": money(p.amount, &p.currency), "date": day(p.at, tz),
                        "method": method_label(&p)})
        });
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "dashboard"),
        json!({
            "outstanding": money(acct.outstanding, c),
            "owes": acct.outstanding > 0,
            "credit": money(acct.credit_balance, c),
            "retainer": money(acct.retainer_balance, c),
            "last_payment": last,
            "open_invoices": open,
            "cards": cards_of(&state, &acct.row.id).await?,
            "nonce": random_token(),
            "notice": notice_text(q.notice.as_deref()),
        }),
    );
    Ok(render("dashboard.html", &ctx)?.into_response())
}

/// A payment's method for people: "Visa ending in 4242", "Wire (W-77)".
pub fn method_label(p: &crate::store::payments::PaymentRow) -> String {
    match (&p.brand, &p.last4) {
        (Some(brand), Some(last4)) => {
            crate::outbox::view::card_label(&crate::outbox::snapshot::CardSnap {
                brand: brand.clone(),
                last4: last4.clone(),
            })
        }
        _ => {
            let mut m = p.method.clone();
            if let Some(first) = m.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            match &p.reference {
                Some(r) if !r.is_empty() => format!("{m} ({r})"),
                _ => m,
            }
        }
    }
}

#[derive(Deserialize)]
pub struct InvoicesQuery {
    status: Option<String>,
}

/// `GET /portal/invoices?status=`
pub async fn invoices(
    State(state): State<Arc<AppState>>,
    Query(q): Query<InvoicesQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let acct = viewer.account();
    let status = q
        .status
        .filter(|s| InvoiceStatus::parse(s).is_some_and(|s| s != InvoiceStatus::Draft));
    let filter = InvoiceFilter {
        customer_id: Some(&acct.row.id),
        status: status.as_deref(),
        ..Default::default()
    };
    let mut rows: Vec<Value> = invoices::list(&state.billing.db, &filter, 1000, None)
        .await?
        .iter()
        .filter(|i| viewer.may_see_invoice(i))
        .map(|i| invoice_summary(i, &acct.row.timezone))
        .collect();
    rows.reverse();
    let filters: Vec<Value> = [
        ("", "All"),
        ("open", "Open"),
        ("partially_paid", "Partially paid"),
        ("past_due", "Past due"),
        ("paid", "Paid"),
        ("void", "Void"),
    ]
    .iter()
    .map(|(v, l)| json!({"value": v, "label": l, "active": status.as_deref().unwrap_or("") == *v}))
    .collect();
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "invoices"),
        json!({"invoices": rows, "filters": filters}),
    );
    Ok(render("invoices.html", &ctx)?.into_response())
}

/// The invoice of `id` if this visitor may see it; 404 otherwise, the same as no invoice at all.
async fn visible_invoice(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
) -> Result<InvoiceRow, PageError> {
    match invoices::get(&state.billing.db, id).await? {
        Some(inv) if viewer.may_see_invoice(&inv) => Ok(inv),
        _ => Err(PageError::NotFound),
    }
}

/// `?notice=` after a form, as a sentence.
pub fn notice_text(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "paid" => "Thank you: your payment went through.",
        "processing" => "Your payment is being processed; this page shows it once it lands.",
        "declined" => "Your card was declined. Choose another card or try again later.",
        "submitted" => "This form was already sent: it is paid at most once.",
        "card_added" => "Your card was saved.",
        "default_set" => "Your default card was changed.",
        "card_removed" => "The card was removed.",
        "auto_charge_on" => "Automatic charging is on.",
        "auto_charge_off" => {
            "Automatic charging is off: invoices of this subscription wait for you to pay them."
        }
        "switched" => "You are now looking at another account.",
        _ => return None,
    })
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

/// `GET /portal/invoices/{id}`: the hosted invoice page.
pub async fn invoice(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require(&state, &headers).await?;
    let inv = visible_invoice(&state, &viewer, &id).await?;
    let db = &state.billing.db;
    let customer = viewer
        .accounts
        .iter()
        .find(|c| c.row.id == inv.customer_id)
        .ok_or(PageError::NotFound)?;
    let (c, tz) = (&inv.currency, &customer.row.timezone);
    let lines: Vec<Value> = invoices::lines(db, &id)
        .await?
        .into_iter()
        .map(|l| {
            json!({"description": l.description, "quantity": l.quantity,
                   "unit_amount": money(l.unit_amount, c), "amount": money(l.amount, c),
                   "tax_rate": l.tax_rate, "late_fee": l.kind == "late_fee"})
        })
        .collect();
    let paid_list: Vec<Value> = payments::list(db, None, Some(&id), 1000, None)
        .await?
        .into_iter()
        .map(|p| {
            json!({"id": p.id, "amount": money(p.amount, &p.currency), "date": day(p.at, tz),
                   "method": method_label(&p), "status": p.status})
        })
        .collect();
    let processing = charge_attempts::of_invoice(db, &id).await?.iter().any(|a| {
        a.status() == AttemptStatus::Unknown
            || (a.status() == AttemptStatus::Pending && a.started_at.is_some())
    });
    let payable = inv.amount_due > 0 && inv.status().is_collectible();
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "invoices"),
        json!({
            "invoice": with(invoice_summary(&inv, tz), json!({
                "lines": lines,
                "period": inv.period_start.map(|s| format!("{} – {}", day(s, tz),
                    day(inv.period_end.unwrap_or(s), tz))),
                "subtotal": money(inv.subtotal, c),
                "tax": money(inv.tax, c),
                "has_tax": inv.tax != 0,
                "credits_applied": (inv.credits_applied != 0).then(|| money(inv.credits_applied, c)),
                "retainer_applied": (inv.retainer_applied != 0).then(|| money(inv.retainer_applied, c)),
                "amount_paid": (inv.amount_paid != 0).then(|| money(inv.amount_paid, c)),
                "amount_due_decimal": decimal(inv.amount_due, c),
                "paid": inv.status == "paid",
                "payable": payable,
                "customer": customer.row.name,
            })),
            "payments": paid_list,
            "cards": cards_of(&state, &inv.customer_id).await?,
            "partial": state.billing.config.portal.partial_payments,
            "nonce": random_token(),
            "processing": processing,
            "notice": notice_text(q.notice.as_deref()),
        }),
    );
    Ok(render("invoice.html", &ctx)?.into_response())
}

/// `GET /portal/invoices/{id}/pdf`: the PDF the invoice email carried, byte for byte.
pub async fn invoice_pdf(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require(&state, &headers).await?;
    visible_invoice(&state, &viewer, &id).await?;
    document(&state, Template::Invoice, &id).await
}

/// A PDF an email carried (the invoice's, a receipt's), as a download.
pub async fn document(state: &AppState, template: Template, id: &str) -> PageResult {
    let b = &state.billing;
    let doc = crate::outbox::document(&b.db, &b.config, template, id)
        .await?
        .ok_or(PageError::NotFound)?
        .map_err(|e| PageError::Unexpected(anyhow::anyhow!(e)))?;
    let name = doc.filename.replace(['"', '\\', '\r', '\n'], "_");
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        doc.bytes,
    )
        .into_response())
}

/// Runs one pay form under its nonce as an Idempotency-Key (`store::idempotency_keys`): the
/// key's row is written by the charge's own first transaction, so a form sent again, or twice
/// at once, finds it and charges nothing. Answers where to go next.
async fn pay_once<F>(
    state: &AppState,
    form: &Form,
    path: &str,
    body: &Bytes,
    back: &str,
    charge: F,
) -> PageResult
where
    F: std::future::Future<Output = crate::billing::Result<Charged>>,
{
    let nonce = form
        .get("nonce")
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            PageError::Refused(
                StatusCode::BAD_REQUEST,
                "Reload the page and try again.".into(),
            )
        })?;
    let key = format!("settled-portal-pay:{nonce}");
    let db = &state.billing.db;
    if keys::find(db, &key).await?.is_some() {
        return Ok(redirect(&format!("{back}?notice=submitted")));
    }
    let body_sha256 = hex::encode(Sha256::digest(body));
    let claim = Arc::new(Claim::new(key, "POST".into(), path.into(), body_sha256));
    let result = keys::scoped(claim.clone(), charge).await;
    if claim.taken.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(redirect(&format!("{back}?notice=submitted")));
    }
    let notice = match result {
        Ok(Charged::Succeeded(_)) => "paid",
        Ok(Charged::Unknown(_)) => "processing",
        Err(crate::billing::Error::Gateway(settled_jobs::gateway::GatewayError::Declined {
            ..
        })) => "declined",
        Err(crate::billing::Error::Conflict {
            code: "charge_in_progress",
            ..
        }) => "processing",
        Err(e) => return Err(e.into()),
    };
    let to = format!("{back}?notice={notice}");
    if claim.written.load(std::sync::atomic::Ordering::SeqCst)
        && let Err(e) = keys::finish(db, &claim, 303, &to).await
    {
        tracing::warn!(error = %e, "cannot store the answer of a portal payment");
    }
    Ok(redirect(&to))
}

/// `POST /portal/invoices/{id}/pay {amount?, payment_method, nonce, csrf}`
pub async fn pay_invoice(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require(&state, &headers).await?;
    let form = Form::parse(&body);
    viewer.check_csrf(&form)?;
    let inv = visible_invoice(&state, &viewer, &id).await?;
    let back = format!("/portal/invoices/{id}");
    if inv.amount_due <= 0 || !inv.status().is_collectible() {
        return Ok(redirect(&back));
    }
    let amount = if state.billing.config.portal.partial_payments
        && let Some(text) = form.get("amount")
    {
        let cur = Currency::parse(&inv.currency)
            .map_err(|e| PageError::Unexpected(anyhow::anyhow!("stored currency: {e}")))?;
        let m = Money::parse_input(text.trim(), cur).map_err(|_| {
            PageError::Refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{text} is not an amount in {}.", inv.currency),
            )
        })?;
        if m.minor <= 0 || m.minor > inv.amount_due {
            return Err(PageError::Refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "Enter an amount above zero and at most the {} due.",
                    money(inv.amount_due, &inv.currency)
                ),
            ));
        }
        m.minor
    } else {
        inv.amount_due
    };
    let card = form.get("payment_method").map(str::to_string);
    let b = state.billing.clone();
    let path = format!("/portal/invoices/{id}/pay");
    pay_once(&state, &form, &path, &body, &back, async move {
        charges::charge_now(&b, &id, Some(amount), card.as_deref()).await
    })
    .await
}

/// `POST /portal/pay-balance {payment_method, nonce, csrf}`: everything the account owes, in one
/// payment allocated oldest due first.
pub async fn pay_balance(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let form = Form::parse(&body);
    viewer.check_csrf(&form)?;
    let customer = viewer.account().row.id.clone();
    let card = form.get("payment_method").map(str::to_string);
    let b = state.billing.clone();
    pay_once(
        &state,
        &form,
        "/portal/pay-balance",
        &body,
        "/portal/",
        async move { charges::charge_balance(&b, &customer, card.as_deref()).await },
    )
    .await
}
