//! Getting in: the sign-in page, the emailed one-time link (a page with a button, so a mail
//! scanner that fetches links does not spend it), signing out, and the signed link in an
//! invoice email that opens that one invoice without signing in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::pages::{chrome, message_page, render, with};
use super::session::{COOKIE, FORM_COOKIE, Form, Viewer, check_form_cookie, cookie, set_cookie};
use super::{PageError, PageResult, redirect};
use crate::billing::portal::{self as workflow, SignInRequest};
use crate::http::AppState;
use crate::portal::links::{self, LinkProblem, random_token};
use crate::store::{invoices, portal};

/// The double-submit token of a form shown before signing in: the cookie's, or a new one.
fn form_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, FORM_COOKIE) {
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => (v, false),
        _ => (random_token(), true),
    }
}

fn page_with_form_cookie(
    state: &AppState,
    headers: &HeaderMap,
    template: &str,
    extra: serde_json::Value,
) -> PageResult {
    let (token, fresh) = form_token(headers);
    let ctx = with(
        chrome(&state.billing.config, None, ""),
        with(json!({"csrf": token}), extra),
    );
    let mut res = render(template, &ctx)?.into_response();
    if fresh {
        res.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(&state.billing.config, FORM_COOKIE, &token, 3600),
        );
    }
    Ok(res)
}

/// `GET /portal/sign-in`
pub async fn sign_in_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> PageResult {
    if let Some(v) = Viewer::load(&state, &headers).await?
        && v.full()
    {
        return Ok(redirect("/portal/"));
    }
    page_with_form_cookie(&state, &headers, "sign_in.html", json!({}))
}

/// The client a sign-in request counts against: the configured proxy header's last entry, or
/// the connection's peer.
fn client_of(state: &AppState, headers: &HeaderMap, peer: SocketAddr) -> String {
    let name = &state.billing.config.portal.client_ip_header;
    if !name.is_empty()
        && let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
        && let Some(last) = v
            .rsplit(',')
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    {
        return last.chars().take(64).collect();
    }
    peer.ip().to_string()
}

/// `POST /portal/sign-in {email}`: the same answer whether the address is known or not.
pub async fn request_link(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let form = Form::parse(&body);
    check_form_cookie(&headers, &form)?;
    let email = form.get("email").unwrap_or("").trim().to_string();
    if email.len() > 254 || !crate::http::customers::valid_email(&email) {
        return Err(PageError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Enter the email address your invoices are sent to.".into(),
        ));
    }
    let client = client_of(&state, &headers, peer);
    match workflow::request_sign_in(&state.billing, &email, &client).await? {
        SignInRequest::Limited => Err(PageError::Limited),
        SignInRequest::Accepted => Ok(message_page(
            "Check your email",
            &format!(
                "If {email} receives invoices from {}, a sign-in link is on its way to it. The \
                 link works once, for {} minutes.",
                state.billing.config.business.name,
                state.billing.config.portal.sign_in_link_minutes
            ),
        )
        .into_response()),
    }
}

fn link_gone() -> PageError {
    PageError::Refused(
        StatusCode::NOT_FOUND,
        "This sign-in link has expired or was already used. Ask for a new one on the sign-in page."
            .into(),
    )
}

/// `GET /portal/sign-in/{token}`: a button that signs in (the link itself changes nothing).
pub async fn confirm_page(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let b = &state.billing;
    let id = links::check_sign_in(&b.config, &token).ok_or_else(link_gone)?;
    if !portal::sign_in_usable(&b.db, &id, crate::store::ms(b.now())).await? {
        return Err(link_gone());
    }
    page_with_form_cookie(&state, &headers, "confirm.html", json!({"token": token}))
}

/// `POST /portal/sign-in/{token}`: spends the link and opens a session.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    check_form_cookie(&headers, &Form::parse(&body))?;
    let b = &state.billing;
    let id = links::check_sign_in(&b.config, &token).ok_or_else(link_gone)?;
    let opened = workflow::sign_in(b, &id).await?.ok_or_else(link_gone)?;
    let mut res = redirect("/portal/");
    let max_age = i64::from(b.config.portal.session_hours) * 3600;
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&b.config, COOKIE, &opened.cookie, max_age),
    );
    Ok(res)
}

/// `POST /portal/sign-out`
pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let viewer = Viewer::require(&state, &headers).await?;
    viewer.check_csrf(&Form::parse(&body))?;
    workflow::sign_out(&state.billing, &viewer.session).await?;
    let mut res = redirect("/portal/sign-in");
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state.billing.config, COOKIE, "", 0),
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct LinkQuery {
    expires: Option<String>,
    signature: Option<String>,
}

/// `GET /portal/i/{id}?expires=&signature=`: the hosted invoice page's link. A valid one opens a
/// session for that invoice alone and goes to its page; a changed or forged one is 404, an
/// expired one says so.
pub async fn invoice_link(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> PageResult {
    let b = &state.billing;
    let expires = q
        .expires
        .as_deref()
        .and_then(|e| e.parse::<i64>().ok())
        .ok_or(PageError::NotFound)?;
    let signature = q.signature.as_deref().unwrap_or("");
    match links::check_invoice_link(&b.config, &id, expires, signature, b.now().timestamp()) {
        Ok(()) => {}
        Err(LinkProblem::Invalid) => return Err(PageError::NotFound),
        Err(LinkProblem::Expired) => {
            return Err(PageError::Refused(
                StatusCode::GONE,
                "This invoice link has expired. Sign in to the billing portal to see the invoice."
                    .into(),
            ));
        }
    }
    let inv = invoices::get(&b.db, &id)
        .await?
        .ok_or(PageError::NotFound)?;
    let to = format!("/portal/invoices/{id}");
    if let Some(v) = Viewer::load(&state, &headers).await?
        && v.may_see_invoice(&inv)
    {
        return Ok(redirect(&to));
    }
    let opened = workflow::open_invoice(b, &id, &inv.customer_id).await?;
    let mut res = redirect(&to);
    let max_age = i64::from(b.config.portal.session_hours) * 3600;
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&b.config, COOKIE, &opened.cookie, max_age),
    );
    Ok(res)
}
