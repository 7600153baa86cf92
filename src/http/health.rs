//! Liveness, readiness and metrics, for load balancers, systemd and Prometheus. `/metrics` asks
//! for `server.metrics_token` when one is set.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

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

/// `{"status": "ok"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// What `/readyz` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`, or `unavailable` with a reason.
    #[schema(pattern = "^(ready|unavailable)$")]
    pub status: String,
    /// Why the daemon is not ready (503 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// Kinds of work with items that keep failing (the daemon is ready all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub warnings: Option<Vec<ReadinessWarning>>,
}

impl Readiness {
    fn ready(warnings: Option<Vec<ReadinessWarning>>) -> Readiness {
        Readiness {
            status: "ready".into(),
            reason: None,
            warnings,
        }
    }

    fn unavailable(reason: &str) -> Readiness {
        Readiness {
            status: "unavailable".into(),
            reason: Some(reason.into()),
            warnings: None,
        }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReadinessWarning {
    #[schema(value_type = super::openapi::wire::WorkKind)]
    pub kind: String,
    pub failed_items: i64,
    pub failing_for_seconds: i64,
    pub message: String,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz",
    responses((status = 200, description = "The process runs.", body = Health)))]
async fn healthz() -> impl IntoResponse {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready when the database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz",
    responses(
        (status = 200, description = "The database answers and is migrated; `warnings` lists \
            work that keeps failing.", body = Readiness),
        (status = 503, description = "Not ready: the database does not answer or is not \
            migrated yet.", body = Readiness),
    ))]
async fn readyz(AxState(state): AxState<Arc<AppState>>) -> impl IntoResponse {
    let db = &state.billing.db;
    if !db.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness::unavailable("the database does not answer")),
        );
    }
    if !db.migrations_applied().await || !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness::unavailable("migrations are not applied")),
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
        return (StatusCode::OK, Json(Readiness::ready(None)));
    }
    let now = crate::store::wall_ms();
    let warnings: Vec<_> = failing
        .iter()
        .map(|(kind, count, since)| ReadinessWarning {
            kind: kind.to_string(),
            failed_items: *count,
            failing_for_seconds: ((now - since) / 1000).max(0),
            message: format!("{count} {kind} item(s) keep failing; see GET /v1/jobs?status=failed"),
        })
        .collect();
    (StatusCode::OK, Json(Readiness::ready(Some(warnings))))
}

/// `GET /metrics` (Prometheus text format). What it reads from the database is read at most
/// once per [`crate::metrics::GAUGE_REFRESH`]; scrapes in between render what was read.
#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.",
            content_type = "text/plain", body = String),
        (status = 401, description = "`server.metrics_token` is set and the request does not carry it.",
            body = super::openapi::wire::ErrorBody),
        (status = 503, description = "No metrics recorder could be installed in this process.",
            content_type = "text/plain", body = String),
    ))]
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
