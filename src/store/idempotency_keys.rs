//! `Idempotency-Key` on admin requests: the first answer given under a key, stored so the same
//! request sent again is answered the same without doing anything twice. The only writer of
//! `idempotency_keys`.
//!
//! The key's row is written by the request's first write transaction, inside it ([`Db::begin`]
//! calls [`claim_in`] while a request runs in [`scoped`]), so the row exists exactly when the
//! request's effect was committed; the answer is filled in when the request ends. A request whose
//! transactions all rolled back leaves no row, and may be sent again under the same key.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::FromRow;

use super::{Db, Error, Result, Tx, on_db, on_tx};

/// The request being served under a key.
#[derive(Debug)]
pub struct Claim {
    pub key: String,
    pub method: String,
    pub path: String,
    pub body_sha256: String,
    /// Marks the row as this request's own while its answer is not written yet.
    marker: String,
    /// Set once a transaction of this request wrote the row.
    pub written: AtomicBool,
    /// Set when another request holds the key: this one must not go on.
    pub taken: AtomicBool,
}

impl Claim {
    pub fn new(key: String, method: String, path: String, body_sha256: String) -> Claim {
        Claim {
            key,
            method,
            path,
            body_sha256,
            marker: format!("in progress {}", ulid::Ulid::generate()),
            written: AtomicBool::new(false),
            taken: AtomicBool::new(false),
        }
    }
}

tokio::task_local! {
    static CLAIM: Arc<Claim>;
}

/// Runs one request under its key: every transaction it begins claims the key first.
pub async fn scoped<F: Future>(claim: Arc<Claim>, request: F) -> F::Output {
    CLAIM.scope(claim, request).await
}

/// Writes the key's row inside `tx` when the running request has a key: every write
/// transaction of that request does, so whichever commits first leaves the row. Fails when
/// another request holds the key.
pub(super) async fn claim_in(tx: &mut Tx) -> Result<()> {
    let Ok(claim) = CLAIM.try_with(|c| c.clone()) else {
        return Ok(());
    };
    let now = super::wall_ms();
    let added = on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, method, path, body_sha256, status, response, created_at) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&claim.key)
        .bind(&claim.method)
        .bind(&claim.path)
        .bind(&claim.body_sha256)
        .bind(&claim.marker)
        .bind(now)
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    if added == 1 {
        claim.written.store(true, Ordering::SeqCst);
        return Ok(());
    }
    let holder: Option<Option<String>> = on_tx!(tx, c => {
        sqlx::query_scalar("SELECT response FROM idempotency_keys WHERE key = $1 AND status IS NULL")
            .bind(&claim.key)
            .fetch_optional(&mut *c)
            .await?
    });
    if holder.flatten().as_deref() == Some(claim.marker.as_str()) {
        return Ok(());
    }
    claim.taken.store(true, Ordering::SeqCst);
    Err(Error::corrupt(
        "another request with the same Idempotency-Key is being served",
    ))
}

/// A stored key.
#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub method: String,
    pub path: String,
    pub body_sha256: String,
    /// None while the first request is in progress (or was cut off after its effect).
    pub status: Option<i32>,
    pub response: Option<String>,
    pub created_at: i64,
}

pub async fn find(db: &Db, key: &str) -> Result<Option<KeyRow>> {
    Ok(on_db!(db, p => {
        sqlx::query_as(
            "SELECT method, path, body_sha256, status, response, created_at FROM idempotency_keys \
             WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(p)
        .await?
    }))
}

/// Stores the request's answer on its row, if one of its transactions committed the row.
pub async fn finish(db: &Db, claim: &Claim, status: u16, response: &str) -> Result<bool> {
    Ok(on_db!(db, p => {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $2, response = $3 \
             WHERE key = $1 AND status IS NULL AND response = $4",
        )
        .bind(&claim.key)
        .bind(i32::from(status))
        .bind(response)
        .bind(&claim.marker)
        .execute(p)
        .await?
        .rows_affected()
    }) == 1)
}

/// How long a stored answer is kept, and so replayed: the 24 hours promised, and a day more.
pub const KEEP_MS: i64 = 48 * 3600 * 1000;

/// Deletes keys stored before `before_wall_ms`.
pub async fn vacuum(db: &Db, before_wall_ms: i64) -> Result<u64> {
    Ok(on_db!(db, p => {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before_wall_ms)
            .execute(p)
            .await?
            .rows_affected()
    }))
}
