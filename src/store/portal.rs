//! The customer portal's rows: sign-in requests with their one-time tokens
//! (`portal_sign_in_tokens`) and browser sessions (`portal_sessions`). The only writer of both.

use sqlx::FromRow;

use super::{Db, Result, Tx, on_db, on_tx};

/// One sign-in request, as written.
pub struct NewSignIn<'a> {
    pub id: &'a str,
    pub email: &'a str,
    pub client: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert_sign_in(tx: &mut Tx, s: &NewSignIn<'_>) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO portal_sign_in_tokens (id, email, client, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(s.id)
        .bind(s.email)
        .bind(s.client)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Sign-in requests since `since` for one address and from one client.
pub async fn sign_ins_since(
    tx: &mut Tx,
    email: &str,
    client: &str,
    since: i64,
) -> Result<(i64, i64)> {
    Ok(on_tx!(tx, c => {
        let by_email: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM portal_sign_in_tokens WHERE email = $1 AND created_at >= $2",
        )
        .bind(email)
        .bind(since)
        .fetch_one(&mut *c)
        .await?;
        let by_client: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM portal_sign_in_tokens WHERE client = $1 AND created_at >= $2",
        )
        .bind(client)
        .bind(since)
        .fetch_one(&mut *c)
        .await?;
        (by_email, by_client)
    }))
}

/// Spends a sign-in token: its address when it was unused and not expired at `now`, once.
pub async fn use_sign_in(tx: &mut Tx, id: &str, now: i64) -> Result<Option<String>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_scalar(
            "UPDATE portal_sign_in_tokens SET used_at = $2 \
             WHERE id = $1 AND used_at IS NULL AND expires_at > $2 RETURNING email",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *c)
        .await?
    }))
}

/// Whether a sign-in token could still be used at `now` (the page before the button).
pub async fn sign_in_usable(db: &Db, id: &str, now: i64) -> Result<bool> {
    let n: i64 = on_db!(db, p => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM portal_sign_in_tokens \
             WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .fetch_one(p)
        .await?
    });
    Ok(n == 1)
}

/// Forgets sign-in requests and sessions that ended before `before`.
pub async fn vacuum(tx: &mut Tx, before: i64) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query("DELETE FROM portal_sign_in_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *c)
            .await?;
        sqlx::query("DELETE FROM portal_sessions WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub email: Option<String>,
    pub invoice_id: Option<String>,
    pub customer_id: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert_session(tx: &mut Tx, s: &SessionRow) -> Result<()> {
    on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO portal_sessions (id_hash, email, invoice_id, customer_id, csrf, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id_hash)
        .bind(&s.email)
        .bind(&s.invoice_id)
        .bind(&s.customer_id)
        .bind(&s.csrf)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// The live session whose cookie hashes to `id_hash` at `now`.
pub async fn session(db: &Db, id_hash: &str, now: i64) -> Result<Option<SessionRow>> {
    Ok(on_db!(db, p => {
        sqlx::query_as::<_, SessionRow>(
            "SELECT id_hash, email, invoice_id, customer_id, csrf, created_at, expires_at \
             FROM portal_sessions WHERE id_hash = $1 AND ended_at IS NULL AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(p)
        .await?
    }))
}

/// Points a session at another of its contact's accounts.
pub async fn switch_account(db: &Db, id_hash: &str, customer_id: &str) -> Result<()> {
    on_db!(db, p => {
        sqlx::query("UPDATE portal_sessions SET customer_id = $2 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(customer_id)
            .execute(p)
            .await?;
    });
    Ok(())
}

pub async fn end_session(db: &Db, id_hash: &str, now: i64) -> Result<()> {
    on_db!(db, p => {
        sqlx::query("UPDATE portal_sessions SET ended_at = $2 WHERE id_hash = $1 AND ended_at IS NULL")
            .bind(id_hash)
            .bind(now)
            .execute(p)
            .await?;
    });
    Ok(())
}
