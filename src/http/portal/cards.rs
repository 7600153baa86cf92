//! What a contact manages: saved cards (added through Stripe.js, so card data goes from the
//! browser to the gateway and never through the daemon; made default; removed), automatic
//! charging of its recurring invoices, and which of its accounts it is looking at.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;
use settled_jobs::invoice::ItemSpec;

use super::account::{NoticeQuery, cards_of, notice_text};
use super::pages::{chrome, day, money, render, with};
use super::session::{Form, Viewer};
use super::{PageError, PageResult, redirect};
use crate::billing::{customers as cards, portal as workflow};
use crate::http::AppState;
use crate::store::{payment_methods, subscriptions};

/// `GET /portal/payment-methods`
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<NoticeQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "cards"),
        json!({"cards": cards_of(&state, &viewer.account().row.id).await?,
               "notice": notice_text(q.notice.as_deref())}),
    );
    Ok(render("payment_methods.html", &ctx)?.into_response())
}

/// `GET /portal/payment-methods/new`: starts a card setup at the gateway and hands its client
/// secret to Stripe.js on the page.
pub async fn new_card(State(state): State<Arc<AppState>>, headers: HeaderMap) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let config = &state.billing.config;
    if config.portal.stripe_publishable_key.is_empty() {
        return Err(PageError::Refused(
            StatusCode::CONFLICT,
            "Cards cannot be added here yet. Contact us to add one.".into(),
        ));
    }
    let setup = cards::start_card_setup(&state.billing, &viewer.account().row.id).await?;
    let ctx = with(
        chrome(config, Some(&viewer), "cards"),
        json!({"client_secret": setup.client_secret,
               "publishable_key": config.portal.stripe_publishable_key,
               "stripe_js": config.portal.stripe_js_url}),
    );
    Ok(render("new_card.html", &ctx)?.into_response())
}

/// `POST /portal/payment-methods {setup_intent, default?, csrf}`: saves the card the setup
/// produced, brand and last 4 read from the gateway.
pub async fn add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let form = Form::parse(&body);
    viewer.check_csrf(&form)?;
    let setup = form.get("setup_intent").ok_or_else(|| {
        PageError::Refused(
            StatusCode::BAD_REQUEST,
            "The card was not saved; try again.".into(),
        )
    })?;
    let default = form.get("default") == Some("true");
    cards::finish_card_setup(&state.billing, &viewer.account().row.id, setup, default).await?;
    Ok(redirect("/portal/payment-methods?notice=card_added"))
}

/// `POST /portal/payment-methods/{id}/default`
pub async fn make_default(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    viewer.check_csrf(&Form::parse(&body))?;
    let customer = &viewer.account().row.id;
    if !payment_methods::set_default(&state.billing.db, customer, &id).await? {
        return Err(PageError::NotFound);
    }
    tracing::info!(customer_id = %customer, payment_method_id = %id, "default card set by the customer");
    Ok(redirect("/portal/payment-methods?notice=default_set"))
}

/// `POST /portal/payment-methods/{id}/remove`
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    viewer.check_csrf(&Form::parse(&body))?;
    cards::remove_payment_method(&state.billing, &viewer.account().row.id, &id).await?;
    Ok(redirect("/portal/payment-methods?notice=card_removed"))
}

/// `GET /portal/subscriptions`: recurring invoices with their auto-charge switch.
pub async fn subscriptions(
    State(state): State<Arc<AppState>>,
    Query(q): Query<NoticeQuery>,
    headers: HeaderMap,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let acct = viewer.account();
    let rows = subscriptions::list(&state.billing.db, Some(&acct.row.id), None, 1000, None).await?;
    let list: Vec<serde_json::Value> = rows
        .into_iter()
        .filter(|s| s.status != "canceled")
        .map(|s| {
            let items: Vec<ItemSpec> = serde_json::from_str(&s.items).unwrap_or_default();
            json!({
                "id": s.id,
                "status": s.status,
                "items": items.iter().map(|i| json!({"description": i.description,
                    "quantity": i.quantity, "unit_amount": money(i.unit_amount, &s.currency)}))
                    .collect::<Vec<_>>(),
                "next": s.next_period_start.map(|n| day(n, &acct.row.timezone)),
                "auto_charge": s.auto_charge,
            })
        })
        .collect();
    let ctx = with(
        chrome(&state.billing.config, Some(&viewer), "subscriptions"),
        json!({"subscriptions": list, "customer_auto_charge": acct.row.auto_charge,
               "notice": notice_text(q.notice.as_deref())}),
    );
    Ok(render("subscriptions.html", &ctx)?.into_response())
}

/// `POST /portal/subscriptions/{id}/auto-charge {enabled: true|false, csrf}`
pub async fn auto_charge(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let form = Form::parse(&body);
    viewer.check_csrf(&form)?;
    let on = form.get("enabled") == Some("true");
    if !workflow::set_auto_charge(&state.billing, &viewer.account().row.id, &id, on).await? {
        return Err(PageError::NotFound);
    }
    let notice = if on {
        "auto_charge_on"
    } else {
        "auto_charge_off"
    };
    Ok(redirect(&format!("/portal/subscriptions?notice={notice}")))
}

/// `POST /portal/account {customer_id, csrf}`: look at another account the contact receives
/// bills for (any other is 404).
pub async fn switch_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require_full(&state, &headers).await?;
    let form = Form::parse(&body);
    viewer.check_csrf(&form)?;
    let target = form.get("customer_id").unwrap_or("");
    if !viewer.may_see_customer(target) {
        return Err(PageError::NotFound);
    }
    workflow::switch_account(&state.billing, &viewer.session, target).await?;
    Ok(redirect("/portal/?notice=switched"))
}
