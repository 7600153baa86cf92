//! The operator's view of the email outbox (/v1/emails).

use std::sync::Arc;

use axum::Router;

use crate::app::State;

pub fn router() -> Router<Arc<State>> {
    Router::new()
}
