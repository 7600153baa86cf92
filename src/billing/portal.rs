//! What the customer portal changes: sign-in requests (rate-limited, answered the same whether
//! the address is known or not, a one-time link emailed only when it is), signing in with such a
//! link, sessions, and a customer's own switch for automatic charging. Paying goes through
//! `charges::on_demand` like every other charge; saving a card through `customers`.

use chrono::{DateTime, Duration, Utc};

use super::{Billing, Result};
use crate::portal::links::{digest, random_token};
use crate::store::portal::{self, NewSignIn, SessionRow};
use crate::store::{customers, ms, subscriptions};

/// How a sign-in request was taken. Either way the person asking is told the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRequest {
    /// Recorded; a link went out if the address is a billing contact.
    Accepted,
    /// Too many requests for this address or from this client in the last hour.
    Limited,
}

/// A request to sign in as `email` from `client` (its address, for the rate limit).
pub async fn request_sign_in(b: &Billing, email: &str, client: &str) -> Result<SignInRequest> {
    let email = email.trim().to_lowercase();
    let now = b.now();
    let limits = &b.config.portal;
    let account = customers::list(&b.db, Some(&email), 1, None)
        .await?
        .into_iter()
        .next();
    let mut tx = b.db.begin().await?;
    let since = ms(now - Duration::hours(1));
    let (by_email, by_client) = portal::sign_ins_since(&mut tx, &email, client, since).await?;
    if by_email >= i64::from(limits.sign_in_per_email_per_hour)
        || by_client >= i64::from(limits.sign_in_per_client_per_hour)
    {
        tx.rollback().await?;
        tracing::warn!("portal sign-in refused: too many requests in the last hour");
        return Ok(SignInRequest::Limited);
    }
    portal::vacuum(&mut tx, ms(now - Duration::days(2))).await?;
    let id = random_token();
    let expires = now + Duration::minutes(i64::from(limits.sign_in_link_minutes));
    portal::insert_sign_in(
        &mut tx,
        &NewSignIn {
            id: &id,
            email: &email,
            client,
            created_at: ms(now),
            expires_at: ms(expires),
        },
    )
    .await?;
    if let Some(account) = &account {
        crate::outbox::sign_in(&mut tx, &id, &email, &account.row.id, expires, now).await?;
    }
    tx.commit().await?;
    Ok(SignInRequest::Accepted)
}

/// A new session: its cookie value (given to the browser once, stored only as a digest) and row.
pub struct Opened {
    pub cookie: String,
    pub session: SessionRow,
}

fn new_session(
    b: &Billing,
    email: Option<String>,
    invoice_id: Option<String>,
    customer_id: &str,
    now: DateTime<Utc>,
) -> Opened {
    let cookie = random_token();
    let session = SessionRow {
        id_hash: digest(&cookie),
        email,
        invoice_id,
        customer_id: customer_id.to_string(),
        csrf: random_token(),
        created_at: ms(now),
        expires_at: ms(now + Duration::hours(i64::from(b.config.portal.session_hours))),
    };
    Opened { cookie, session }
}

/// Spends a sign-in token and opens a session for its address, on the account whose main address
/// it is (else the first). None when
/// the token was used, has expired, or its address receives no bills (any more).
pub async fn sign_in(b: &Billing, token_id: &str) -> Result<Option<Opened>> {
    let now = b.now();
    let mut tx = b.db.begin().await?;
    let Some(email) = portal::use_sign_in(&mut tx, token_id, ms(now)).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    // The account whose main address this is comes first; else the first by id.
    let accounts = customers::list(&b.db, Some(&email), 100, None).await?;
    let Some(account) = accounts
        .iter()
        .find(|c| c.row.email.eq_ignore_ascii_case(&email))
        .or(accounts.first())
    else {
        tx.commit().await?;
        return Ok(None);
    };
    let opened = new_session(b, Some(email), None, &account.row.id, now);
    portal::insert_session(&mut tx, &opened.session).await?;
    tx.commit().await?;
    tracing::info!(customer_id = %account.row.id, "portal sign-in");
    Ok(Some(opened))
}

/// A session for one invoice, opened by its signed link (checked by the caller).
pub async fn open_invoice(b: &Billing, invoice_id: &str, customer_id: &str) -> Result<Opened> {
    let opened = new_session(b, None, Some(invoice_id.to_string()), customer_id, b.now());
    let mut tx = b.db.begin().await?;
    portal::insert_session(&mut tx, &opened.session).await?;
    tx.commit().await?;
    Ok(opened)
}

pub async fn switch_account(b: &Billing, session: &SessionRow, customer_id: &str) -> Result<()> {
    Ok(portal::switch_account(&b.db, &session.id_hash, customer_id).await?)
}

pub async fn sign_out(b: &Billing, session: &SessionRow) -> Result<()> {
    Ok(portal::end_session(&b.db, &session.id_hash, ms(b.now())).await?)
}

/// The customer's own switch for automatic charging of one of its subscriptions. Switched off,
/// its invoices are no longer charged by themselves (a scheduled attempt not yet sent is dropped
/// when its time comes). False when the customer has no such subscription.
pub async fn set_auto_charge(
    b: &Billing,
    customer_id: &str,
    subscription_id: &str,
    on: bool,
) -> Result<bool> {
    let changed =
        subscriptions::set_auto_charge(&b.db, customer_id, subscription_id, on, b.now()).await?;
    if changed {
        tracing::info!(
            customer_id,
            subscription_id,
            auto_charge = on,
            "auto-charge switched by the customer"
        );
    }
    Ok(changed)
}
