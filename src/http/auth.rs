//! Bearer-token authentication for /v1 (and, when configured, /metrics), compared in constant
//! time. Every admin action (a /v1 request other than GET or HEAD) is logged with the name of
//! the token that made it, never the token.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::ApiError;
use super::AppState;

/// The name of the admin token a request was made with (a request extension for handlers).
#[derive(Debug, Clone)]
pub struct AdminName(pub String);

/// The bearer token a request presents ("" when none).
fn presented(req: &Request) -> &str {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

pub async fn require_admin(
    AxState(state): AxState<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = presented(&req);
    let name = if presented.is_empty() {
        None
    } else {
        // Every token is compared, so the time taken does not say which one matched.
        state
            .tokens()
            .iter()
            .filter(|t| constant_eq(t.secret.expose(), presented))
            .map(|t| t.name.clone())
            .next_back()
    };
    let Some(name) = name else {
        return Err(ApiError::Unauthorized);
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    req.extensions_mut().insert(AdminName(name.clone()));
    let response = next.run(req).await;
    if changes {
        tracing::info!(
            admin = %name,
            status = response.status().as_u16(),
            "admin action"
        );
    }
    Ok(response)
}

/// `/metrics` with `server.metrics_token` set: the token is required.
pub async fn require_metrics_token(
    AxState(state): AxState<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = state.metrics_token() {
        let presented = presented(&req);
        if presented.is_empty() || !constant_eq(token.expose(), presented) {
            return Err(ApiError::Unauthorized);
        }
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
