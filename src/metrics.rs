//! Prometheus metrics: one process-wide recorder, rendered by the HTTP server at `GET /metrics`
//! (no listener of its own). Labels are bounded: sources come from the config, reasons and event
//! types from fixed lists, so a sender cannot grow the series without limit.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::State;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process; later calls (the CLI builds the router per command,
/// a benchmark starts two daemons in one process) reuse it. Returns None only when another
/// recorder was installed first, in which case `/metrics` says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the metrics recorder");
                None
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "settled_webhooks_received_total",
        "Webhook deliveries stored (new events), by source."
    );
    metrics::describe_counter!(
        "settled_webhooks_refused_total",
        "Webhook deliveries refused before anything was stored, by source and reason."
    );
    metrics::describe_counter!(
        "settled_webhooks_duplicate_total",
        "Webhook deliveries of an event already stored (answered 200, nothing stored)."
    );
    metrics::describe_counter!(
        "settled_events_processed_total",
        "Stored events processed, by event type and outcome (processed, ignored, failed)."
    );
}

/// `GET /metrics` (public, Prometheus text format).
pub fn router() -> Router<Arc<State>> {
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    let body = install().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Refusal reasons of the webhook intake (the `reason` label).
pub mod reason {
    pub const SIGNATURE: &str = "signature";
    pub const TIMESTAMP: &str = "timestamp";
    pub const BODY: &str = "body";
    pub const TOO_LARGE: &str = "too_large";
    pub const UNKNOWN_SOURCE: &str = "unknown_source";
    pub const NO_SECRET: &str = "no_secret";
}

pub fn webhook_received(source: &str) {
    metrics::counter!("settled_webhooks_received_total", "source" => source.to_string())
        .increment(1);
}

pub fn webhook_duplicate(source: &str) {
    metrics::counter!("settled_webhooks_duplicate_total", "source" => source.to_string())
        .increment(1);
}

pub fn webhook_refused(source: &str, reason: &'static str) {
    metrics::counter!(
        "settled_webhooks_refused_total",
        "source" => source.to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// Event types that get their own label value; everything else counts as "other".
const KNOWN_EVENT_TYPES: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "payment.received",
];

pub fn event_type_label(kind: &str) -> &'static str {
    KNOWN_EVENT_TYPES
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

pub fn event_processed(kind: &str, outcome: &'static str) {
    metrics::counter!(
        "settled_events_processed_total",
        "type" => event_type_label(kind),
        "outcome" => outcome
    )
    .increment(1);
}
