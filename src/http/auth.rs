//! Bearer-token authentication for /v1, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use super::AppState;

pub async fn require_admin(
    AxState(state): AxState<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if presented.is_empty()
        || !state
            .tokens()
            .iter()
            .any(|t| constant_eq(t.expose(), presented))
    {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// Compares without leaking, through timing, how much of a guess was right.
pub fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
