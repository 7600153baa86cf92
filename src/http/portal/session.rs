//! Who is looking: the session a request's cookie names, the accounts it may see, and the checks
//! every page and form makes (signed in, CSRF token, whose data).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};

use super::PageError;
use crate::http::AppState;
use crate::portal::links::digest;
use crate::store::customers::{self, Customer};
use crate::store::invoices::InvoiceRow;
use crate::store::ms;
use crate::store::portal::{self, SessionRow};

/// The session cookie.
pub const COOKIE: &str = "settled_portal";
/// The double-submit cookie of forms sent before signing in.
pub const FORM_COOKIE: &str = "settled_portal_form";

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a portal cookie: only for `/portal`, never readable by scripts, not sent on
/// cross-site posts, and Secure unless the portal's public base is on loopback (a local run over
/// plain HTTP). `max_age` 0 deletes it.
pub fn set_cookie(
    config: &crate::config::Config,
    name: &str,
    value: &str,
    max_age: i64,
) -> HeaderValue {
    let loopback = url::Url::parse(&config.business.portal_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    let secure = if loopback { "" } else { "; Secure" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/portal; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or(HeaderValue::from_static(
        "settled_portal=; Path=/portal; Max-Age=0",
    ))
}

/// A posted form (`application/x-www-form-urlencoded`).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &Bytes) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Compares two tokens in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A form sent before signing in carries the value of its double-submit cookie.
pub fn check_form_cookie(headers: &HeaderMap, form: &Form) -> Result<(), PageError> {
    match (cookie(headers, FORM_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) if same(&c, f) => Ok(()),
        _ => Err(PageError::Forbidden),
    }
}

/// A signed-in visitor (or one an invoice link let in).
pub struct Viewer {
    pub session: SessionRow,
    /// Every account this session may see: the contact's, or the linked invoice's one.
    pub accounts: Vec<Customer>,
    /// Index into `accounts` of the one shown.
    pub current: usize,
}

impl Viewer {
    /// The visitor of a request, if its cookie names a live session.
    pub async fn load(
        state: &Arc<AppState>,
        headers: &HeaderMap,
    ) -> Result<Option<Viewer>, PageError> {
        let Some(value) = cookie(headers, COOKIE) else {
            return Ok(None);
        };
        let db = &state.billing.db;
        let Some(session) = portal::session(db, &digest(&value), ms(state.billing.now())).await?
        else {
            return Ok(None);
        };
        let accounts = match &session.email {
            Some(email) => customers::list(db, Some(email), 100, None).await?,
            None => customers::get(db, &session.customer_id)
                .await?
                .into_iter()
                .collect(),
        };
        if accounts.is_empty() {
            return Ok(None);
        }
        let current = accounts
            .iter()
            .position(|c| c.row.id == session.customer_id)
            .unwrap_or(0);
        Ok(Some(Viewer {
            session,
            accounts,
            current,
        }))
    }

    /// Any session; otherwise to the sign-in page.
    pub async fn require(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Viewer, PageError> {
        Self::load(state, headers).await?.ok_or(PageError::SignIn)
    }

    /// A signed-in billing contact (an invoice link opens its invoice only).
    pub async fn require_full(
        state: &Arc<AppState>,
        headers: &HeaderMap,
    ) -> Result<Viewer, PageError> {
        match Self::load(state, headers).await? {
            Some(v) if v.full() => Ok(v),
            _ => Err(PageError::SignIn),
        }
    }

    pub fn full(&self) -> bool {
        self.session.email.is_some()
    }

    pub fn account(&self) -> &Customer {
        &self.accounts[self.current]
    }

    pub fn may_see_customer(&self, customer_id: &str) -> bool {
        self.accounts.iter().any(|c| c.row.id == customer_id)
    }

    /// An invoice link shows its invoice; a contact sees every invoice of its accounts. Drafts
    /// are nobody's yet.
    pub fn may_see_invoice(&self, inv: &InvoiceRow) -> bool {
        let issued = inv.number.is_some() && inv.status != "draft";
        let allowed = match &self.session.invoice_id {
            Some(only) if !self.full() => *only == inv.id,
            _ => self.may_see_customer(&inv.customer_id),
        };
        issued && allowed
    }

    /// Every form of a session carries the session's CSRF token.
    pub fn check_csrf(&self, form: &Form) -> Result<(), PageError> {
        match form.get("csrf") {
            Some(token) if same(token, &self.session.csrf) => Ok(()),
            _ => Err(PageError::Forbidden),
        }
    }
}
