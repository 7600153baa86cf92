//! The customer-facing pages, all under `/portal/`: the hosted invoice page an invoice email's
//! signed link opens (`access`), the portal a billing contact signs in to by emailed link
//! (`access`, `account`, `records`, `cards`), and their stylesheet and script (`assets`). Pages
//! are rendered on the server from minijinja templates embedded in the binary (`pages`); the
//! only third-party script is Stripe.js, on the page that adds a card.
//!
//! Security: a session is a random cookie value (HttpOnly, SameSite=Lax, Secure unless the
//! portal's base is on loopback) whose SHA-256 is stored; every form carries a CSRF token (the
//! session's, or before signing in a double-submit cookie's) and is refused 403 without it;
//! every answer carries a strict Content-Security-Policy; anything of a customer the session
//! may not see is 404, exactly like something that does not exist.

pub mod access;
pub mod account;
pub mod assets;
pub mod cards;
pub mod pages;
pub mod records;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
pub use session::Viewer;

pub fn router(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let csp = HeaderValue::from_str(&policy(&state.billing.config))
        .unwrap_or(HeaderValue::from_static("default-src 'none'"));
    Router::new()
        .route("/portal", get(|| async { redirect("/portal/") }))
        .route("/portal/", get(account::dashboard))
        .route("/portal/static/{file}", get(assets::serve))
        .route(
            "/portal/sign-in",
            get(access::sign_in_page).post(access::request_link),
        )
        .route(
            "/portal/sign-in/{token}",
            get(access::confirm_page).post(access::sign_in),
        )
        .route("/portal/sign-out", post(access::sign_out))
        .route("/portal/i/{id}", get(access::invoice_link))
        .route("/portal/account", post(cards::switch_account))
        .route("/portal/invoices", get(account::invoices))
        .route("/portal/invoices/{id}", get(account::invoice))
        .route("/portal/invoices/{id}/pdf", get(account::invoice_pdf))
        .route("/portal/invoices/{id}/pay", post(account::pay_invoice))
        .route("/portal/pay-balance", post(account::pay_balance))
        .route("/portal/payments", get(records::payments))
        .route(
            "/portal/payments/{id}/receipt.pdf",
            get(records::receipt_pdf),
        )
        .route("/portal/statement", get(records::statement))
        .route("/portal/payment-methods", get(cards::list).post(cards::add))
        .route("/portal/payment-methods/new", get(cards::new_card))
        .route(
            "/portal/payment-methods/{id}/default",
            post(cards::make_default),
        )
        .route("/portal/payment-methods/{id}/remove", post(cards::remove))
        .route("/portal/subscriptions", get(cards::subscriptions))
        .route(
            "/portal/subscriptions/{id}/auto-charge",
            post(cards::auto_charge),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let csp = csp.clone();
                async move { secured(csp, req, next).await }
            },
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.billing.config.server.max_body_bytes,
        ))
}

/// The headers every portal answer carries.
async fn secured(
    csp: HeaderValue,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, private"),
        );
    }
    res
}

/// Scripts from this daemon and the configured Stripe.js origin only (Stripe.js talks to the
/// gateway's API origin and frames its own origin); no inline script or style; forms post only
/// here; no framing of the portal.
pub fn policy(config: &crate::config::Config) -> String {
    let origin = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null")
            .unwrap_or_default()
    };
    let js = origin(&config.portal.stripe_js_url);
    let api = origin(&config.stripe.api_base);
    format!(
        "default-src 'none'; script-src 'self' {js}; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {js} {api}; frame-src {js}; form-action 'self'; base-uri 'none'; \
         frame-ancestors 'none'"
    )
}

/// 303 See Other to `to` (after a form, so a reload does not post again).
pub fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// What a portal page can fail with, each answered as a page.
#[derive(Debug)]
pub enum PageError {
    /// 404: unknown, or not this visitor's to see (the same answer).
    NotFound,
    /// 403: a form without its CSRF token.
    Forbidden,
    /// 429: too many sign-in requests.
    Limited,
    /// 400/422 with a sentence for the customer.
    Refused(StatusCode, String),
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn,
    Unexpected(anyhow::Error),
}

impl From<crate::store::Error> for PageError {
    fn from(e: crate::store::Error) -> Self {
        PageError::Unexpected(e.into())
    }
}

impl From<crate::billing::Error> for PageError {
    fn from(e: crate::billing::Error) -> Self {
        use crate::billing::Error;
        match e {
            Error::NotFound(_) => PageError::NotFound,
            Error::Invalid { message, .. } => {
                PageError::Refused(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            Error::Conflict { message, .. } => PageError::Refused(StatusCode::CONFLICT, message),
            Error::Gateway(g) => PageError::Refused(
                StatusCode::BAD_GATEWAY,
                format!("The payment service said: {g}"),
            ),
            other => PageError::Unexpected(anyhow::anyhow!(other.to_string())),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it is not yours to see.".to_string(),
            ),
            PageError::Forbidden => (
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was not sent from this page (its security token is missing or \
                 wrong). Go back, reload the page and try again."
                    .to_string(),
            ),
            PageError::Limited => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "Too many sign-in links were asked for. Wait an hour and try again.".to_string(),
            ),
            PageError::Refused(status, message) => (status, "That did not work", message),
            PageError::SignIn => return redirect("/portal/sign-in"),
            PageError::Unexpected(e) => {
                tracing::error!(error = ?e, "portal page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Something went wrong on our side. Try again in a moment.".to_string(),
                )
            }
        };
        let body = pages::message_page(title, &message);
        (status, body).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;
