//! `Idempotency-Key` on every admin POST, as Stripe's API has it. The first request under a key
//! runs; its answer is stored with the key (`store::idempotency_keys`: the key's row is written by
//! the request's own first write transaction) and replayed to every later request with the same
//! key, method, path and body, for at least 24 hours, with `Idempotent-Replayed: true`. The same
//! key with another body or route is 422 `idempotency_key_reused`; while the first request is
//! still being served it is 409 `idempotency_key_in_use`. A request refused before it changed
//! anything (its transactions rolled back, or none began) stores nothing, so it may be sent again
//! under the same key.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::store::idempotency_keys::{self as keys, Claim};

pub const HEADER: &str = "idempotency-key";

/// Keys up to this long (Stripe's limit).
const MAX_KEY: usize = 255;

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match value.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY
                && k.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
        {
            k.to_string()
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("the Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters"),
            );
        }
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let limit = state.billing.config.server.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {limit} bytes"),
            );
        }
    };
    let mut hash = Sha256::new();
    hash.update(&bytes);
    let body_sha256 = hex::encode(hash.finalize());
    let db = &state.billing.db;
    match keys::find(db, &key).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Some(row)) => return answer_again(&key, row, &method, &path, &body_sha256),
        Ok(None) => {}
    }
    let claim = Arc::new(Claim::new(key.clone(), method, path, body_sha256));
    let req = Request::from_parts(parts, Body::from(bytes));
    let response = keys::scoped(claim.clone(), next.run(req)).await;
    if claim.taken.load(Ordering::SeqCst) {
        return error(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            format!("another request with the Idempotency-Key {key:?} is being served; try again"),
        );
    }
    if !claim.written.load(Ordering::SeqCst) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let text = String::from_utf8_lossy(&bytes).to_string();
    if let Err(e) = keys::finish(db, &claim, parts.status.as_u16(), &text).await {
        // The effect is committed; only the replay of its answer is lost (a retry is told the
        // key was used, not served twice).
        tracing::warn!(error = %e, "cannot store the answer of an idempotent request");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The answer to a request whose key was seen before.
fn answer_again(
    key: &str,
    row: keys::KeyRow,
    method: &str,
    path: &str,
    body_sha256: &str,
) -> Response {
    if row.method != method || row.path != path || row.body_sha256 != body_sha256 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!(
                "the Idempotency-Key {key:?} was used with another request ({} {}); use a new key \
                 for a different request",
                row.method, row.path
            ),
        );
    }
    let (Some(status), Some(body)) = (row.status, row.response) else {
        return error(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            format!(
                "the first request with the Idempotency-Key {key:?} has not answered yet (or was \
                 cut off after its effect was stored); it is not run again"
            ),
        );
    };
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
