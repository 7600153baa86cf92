//! Liveness, readiness and metrics, for load balancers, systemd and Prometheus. `/metrics` asks
//! for `server.metrics_token` when one is set.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// `/healthz` and `/readyz`, and `/metrics` when `with_metrics`.
pub fn router(state: &Arc<AppState>, with_metrics: bool) -> Router<Arc<AppState>> {
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if !with_metrics {
        return probes;
    }
    probes.merge(Router::new().route("/metrics", get(metrics)).layer(
        axum::middleware::from_fn_with_state(state.clone(), super::auth::require_metrics_token),
    ))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and every migration is applied.
async fn readyz(AxState(state): AxState<Arc<AppState>>) -> impl IntoResponse {
    let db = &state.billing.db;
    if !db.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "the database does not answer"})),
        );
    }
    if !db.migrations_applied().await || !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "migrations are not applied"})),
        );
    }
    // Work that keeps failing does not make the daemon unready (everything else still runs),
    // but whoever looks is told, kind by kind, with how long it has been failing.
    let failing = crate::store::work_failures::summary_from(
        db,
        crate::store::work_failures::REPORTED_AFTER_TRIES,
    )
    .await
    .unwrap_or_default();
    if failing.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ready"})));
    }
    let now = crate::store::wall_ms();
    let warnings: Vec<_> = failing
        .iter()
        .map(|(kind, count, since)| {
            json!({
                "kind": kind,
                "failed_items": count,
                "failing_for_seconds": ((now - since) / 1000).max(0),
                "message": format!(
                    "{count} {kind} item(s) keep failing; see GET /v1/jobs?status=failed"
                ),
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({"status": "ready", "warnings": warnings})),
    )
}

/// `GET /metrics` (Prometheus text format). What it reads from the database is read at most
/// once per [`crate::metrics::GAUGE_REFRESH`]; scrapes in between render what was read.
async fn metrics(AxState(state): AxState<Arc<AppState>>) -> impl IntoResponse {
    let mut pools = vec![("main", state.billing.db.clone())];
    if let Some(queue) = state.scheduler.queue_db() {
        pools.push(("queue", queue));
    }
    let scheduler = state.scheduler.clone();
    let db = state.billing.db.clone();
    let read = || async move {
        let pending = scheduler.pending().await.unwrap_or_default();
        crate::metrics::DbGauges::read(&db, pending).await
    };
    let config = &state.billing.config;
    let last_sweep = config
        .daemon
        .role
        .runs_workers()
        .then(|| state.scheduler.since_last_sweep())
        .flatten();
    let info = crate::metrics::BuildInfo {
        backend: state.billing.db.backend(),
        role: config.daemon.role.name(),
    };
    match crate::metrics::scrape(&state.metrics_cache, &pools, last_sweep, info, read).await {
        Some(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "another metrics recorder is installed in this process\n".to_string(),
        ),
    }
}
