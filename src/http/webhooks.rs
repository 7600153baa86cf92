//! Webhook intake (public, signed) and the operator's view of stored events (/v1).

use std::sync::Arc;

use axum::Router;

use crate::app::State;

/// `POST /webhooks/stripe`, `POST /webhooks/standard/{source}`.
pub fn public_router() -> Router<Arc<State>> {
    Router::new()
}

/// `/v1/webhook_events...`.
pub fn admin_router() -> Router<Arc<State>> {
    Router::new()
}
