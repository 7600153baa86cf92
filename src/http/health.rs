//! Liveness and readiness for load balancers and systemd.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::app::State;

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and every migration is applied.
async fn readyz(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    if !state.db.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "the database does not answer"})),
        );
    }
    if !state.db.migrations_applied().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "migrations are not applied"})),
        );
    }
    (StatusCode::OK, Json(json!({"status": "ready"})))
}
