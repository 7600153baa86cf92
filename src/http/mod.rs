//! The HTTP surface: health and metrics, webhook intake, and the authenticated admin API (/v1).
//! Each module owns its routes; `router()` merges them over one shared state. Handlers read rows
//! through `store` and change them through `billing`; no SQL is written here.

pub mod auth;
pub mod charges;
pub mod clock;
pub mod credits;
pub mod customers;
pub mod documents;
pub mod emails;
pub mod error;
pub mod extract;
pub mod format;
pub mod health;
pub mod idempotency;
pub mod invoices;
pub mod jobs;
pub mod listener;
pub mod openapi;
pub mod payments;
pub mod portal;
pub mod state;
pub mod statements;
pub mod subscriptions;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Request;
use tower_http::trace::TraceLayer;

pub use state::AppState;

pub use error::ApiError;

pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .merge(customers::router())
        .merge(subscriptions::router())
        .merge(invoices::router())
        .merge(charges::router())
        .merge(payments::router())
        .merge(credits::router())
        .merge(statements::router())
        .merge(clock::router())
        .merge(jobs::router())
        .merge(webhooks::admin_router())
        .merge(emails::router())
        .merge(documents::router())
        .merge(openapi::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::guard,
        ))
        .layer(axum::middleware::from_fn(
            extract::refuse_control_characters,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ))
        .layer(DefaultBodyLimit::max(
            state.billing.config.server.max_body_bytes,
        ));
    crate::metrics::install();
    let mut serving = Router::new().merge(webhooks::public_router(&state));
    if state.billing.config.portal.enabled {
        serving = serving.merge(portal::router(&state));
    }
    let serving = serving
        .nest("/v1", admin)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_until_ready,
        ));
    // With an ops listener, /metrics is served there only.
    let metrics_here = state.billing.config.server.ops_listen.is_empty();
    observed(
        Router::new()
            .merge(health::router(&state, metrics_here))
            .merge(serving)
            .fallback(|| async { ApiError::NotFound("no such route".into()) }),
    )
    .with_state(state)
}

/// Until the database answers and is migrated, the admin API and intake answer 503 `not_ready`
/// (with `Retry-After`) rather than failing on tables that do not exist yet.
async fn refuse_until_ready(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.is_ready() {
        return next.run(req).await;
    }
    let mut response = ApiError::Busy {
        code: "not_ready",
        message: "the daemon is starting: the database is not ready yet; try again shortly".into(),
    }
    .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

/// Health, readiness and (with `metrics`) metrics only: what the ops listener
/// (`server.ops_listen`) serves, and what a workers-only daemon (`daemon.role = "worker"`)
/// serves on its main listener, so its jobs can be watched and its liveness probed like any
/// other daemon's.
pub fn ops_router(state: Arc<AppState>, metrics: bool) -> Router {
    crate::metrics::install();
    observed(
        Router::new()
            .merge(health::router(&state, metrics))
            .fallback(|| async { ApiError::NotFound("no such route".into()) }),
    )
    .with_state(state)
}

/// One span and one timing per request, both by route template.
fn observed(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    // The path only: query strings and bodies may carry personal data.
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "http",
                        method = %req.method(),
                        route = %route,
                        path = %req.uri().path()
                    )
                })
                .on_response(
                    |res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        tracing::debug!(
                            status = res.status().as_u16(),
                            latency_ms = latency.as_millis() as u64,
                            "answered"
                        );
                    },
                ),
        )
}

/// `{"object": "list", "data": [...], "has_more": bool}` for every list.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    #[schema(value_type = String, pattern = "^list$")]
    pub object: &'static str,
    pub data: Vec<T>,
    /// Whether more items follow the last one (ask again with `starting_after` = its id).
    pub has_more: bool,
}

impl<T> ListResponse<T> {
    /// Builds a page from up to `limit + 1` fetched items.
    pub fn page(mut items: Vec<T>, limit: i64) -> Self {
        let has_more = items.len() as i64 > limit;
        items.truncate(limit.max(0) as usize);
        ListResponse {
            object: "list",
            data: items,
            has_more,
        }
    }
}

/// `?limit=` (default 100, 1..=1000) and `?starting_after=`. The limit is read as text because
/// query structs flatten this one, and flattened query fields only arrive as strings.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// How many items a page holds: 1 to 1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The id of the last item of the previous page.
    pub starting_after: Option<String>,
}

impl Paging {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit.as_deref().map(str::parse::<i64>) {
            None => Ok(100),
            Some(Ok(l)) if (1..=1000).contains(&l) => Ok(l),
            Some(_) => Err(ApiError::invalid(
                "limit",
                "must be a number between 1 and 1000",
            )),
        }
    }
}
