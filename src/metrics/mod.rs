//! Prometheus metrics: one process-wide recorder, rendered by the HTTP server at `GET /metrics`
//! (no listener of its own). Labels are bounded: sources come from the config; reasons, event
//! types, decline codes, templates, job kinds and currencies from fixed lists; routes are the
//! router's templates, never the raw path. No label ever holds an id.
//!
//! Counters are counted where their effect is recorded; the queue and pool gauges are read from the
//! database and the pools when `/metrics` is scraped, so they are never stale.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use settled_jobs::gateway::{ChargeResult, ChargeStatus, GatewayError};
use settled_jobs::job::Job;
use settled_jobs::money::Currency;
use settled_jobs::template::Template;

mod describe;
mod gauges;

pub use gauges::{BuildInfo, DbGauges, GAUGE_REFRESH, GaugeCache, scrape};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets for request and job timings, in seconds: from a fast HTTP answer to a slow gateway call.
const TIME_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for the time a job waited between being due and starting: one poll interval up to an
/// hour behind.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Installs the recorder once per process; later calls (the CLI builds the router per command,
/// a benchmark starts two daemons in one process) reuse it. Returns None only when another
/// recorder was installed first, in which case `/metrics` says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    started_at();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("settled_job_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), TIME_BUCKETS)
                });
            let installed = builder
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match installed {
                Ok(handle) => {
                    describe::describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// When this process installed its metrics (at start-up), in Unix seconds.
pub fn started_at() -> f64 {
    static STARTED: OnceLock<f64> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

/// The job kinds reported (as 0) even while the queue holds none of them.
pub const JOB_KINDS: &[&str] = &["drain"];

/// A kind read from a queue row. Rows are written only by this daemon's enqueue, from the `Job`
/// enum's own names, so the set is bounded; anything unlike such a name counts as "other".
fn row_kind_label(kind: &str) -> &str {
    let plain = !kind.is_empty()
        && kind.len() <= 40
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain { kind } else { "other" }
}

fn label_from(known: &[&'static str], value: &str) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or("other")
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
    label_from(KNOWN_EVENT_TYPES, kind)
}

pub fn event_processed(kind: &str, outcome: &'static str) {
    metrics::counter!(
        "settled_events_processed_total",
        "type" => event_type_label(kind),
        "outcome" => outcome
    )
    .increment(1);
}

/// A batch of periods wrote `invoices` invoices and skipped `skipped` periods (the catch-up
/// policy billed nothing for them).
pub fn invoices_generated(invoices: u64, skipped: u64) {
    if invoices > 0 {
        metrics::counter!("settled_invoices_generated_total").increment(invoices);
    }
    if skipped > 0 {
        metrics::counter!("settled_periods_skipped_total").increment(skipped);
    }
}

/// A dispute was lost: `amount` minor units of `currency` went back to the cardholder.
pub fn dispute_lost(currency: &str, amount: i64) {
    metrics::counter!("settled_disputes_lost_total", "currency" => currency_label(currency))
        .increment(1);
    metrics::counter!("settled_disputed_amount_minor_total", "currency" => currency_label(currency))
        .increment(amount.max(0) as u64);
}

/// One batch of a kind of work took `items` in `took`.
pub fn work_batch(kind: settled_jobs::job::WorkKind, items: usize, took: Duration) {
    metrics::counter!("settled_work_items_total", "kind" => kind.name()).increment(items as u64);
    metrics::histogram!("settled_work_batch_duration_seconds", "kind" => kind.name())
        .record(took.as_secs_f64());
}

/// Stripe's documented decline codes plus the refusals the daemon records as failed attempts;
/// anything else counts as "other".
const DECLINE_CODES: &[&str] = &[
    "authentication_required",
    "approve_with_id",
    "call_issuer",
    "card_declined",
    "card_not_supported",
    "card_velocity_exceeded",
    "currency_not_supported",
    "do_not_honor",
    "do_not_try_again",
    "duplicate_transaction",
    "expired_card",
    "fraudulent",
    "generic_decline",
    "incorrect_cvc",
    "incorrect_number",
    "incorrect_pin",
    "incorrect_zip",
    "insufficient_funds",
    "invalid_account",
    "invalid_amount",
    "invalid_cvc",
    "invalid_expiry_month",
    "invalid_expiry_year",
    "invalid_number",
    "invalid_pin",
    "issuer_not_available",
    "lost_card",
    "merchant_blacklist",
    "new_account_information_available",
    "no_action_taken",
    "not_permitted",
    "offline_pin_required",
    "online_or_offline_pin_required",
    "pickup_card",
    "pin_try_exceeded",
    "processing_error",
    "reenter_transaction",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "service_not_allowed",
    "stolen_card",
    "stop_payment_order",
    "testmode_decline",
    "transaction_not_allowed",
    "try_again_later",
    "withdrawal_count_limit_exceeded",
    "invalid_request",
    "gateway_not_configured",
];

fn currency_label(code: &str) -> &'static str {
    Currency::parse(&code.to_ascii_uppercase())
        .map(|c| c.code())
        .unwrap_or("other")
}

/// What the gateway answered to one charge attempt, ready to be counted once it is recorded.
pub struct ChargeOutcome {
    outcome: &'static str,
    decline_code: &'static str,
    received: Option<(&'static str, u64)>,
}

impl ChargeOutcome {
    /// Reads the answer for an attempt of `amount` minor units in `currency`.
    pub fn of(
        currency: &str,
        amount: i64,
        result: &Result<ChargeResult, GatewayError>,
    ) -> ChargeOutcome {
        let (outcome, code, received) = match result {
            Ok(r) if r.status == ChargeStatus::Succeeded => {
                let cur = if r.currency.is_empty() {
                    currency
                } else {
                    &r.currency
                };
                let got = if r.amount_received > 0 {
                    r.amount_received
                } else {
                    amount
                };
                (
                    "succeeded",
                    None,
                    Some((currency_label(cur), got.max(0) as u64)),
                )
            }
            Ok(r) if r.status == ChargeStatus::Failed => (
                "declined",
                Some(r.decline_code.as_deref().unwrap_or("card_declined")),
                None,
            ),
            Ok(_) | Err(GatewayError::Unknown(_)) => ("unknown", None, None),
            Err(GatewayError::Declined {
                code, decline_code, ..
            }) => (
                "declined",
                Some(decline_code.as_deref().unwrap_or(code)),
                None,
            ),
            Err(GatewayError::Invalid { .. }) => ("rejected", None, None),
            Err(GatewayError::NotConfigured) => ("error", Some("gateway_not_configured"), None),
        };
        ChargeOutcome {
            outcome,
            decline_code: code.map_or("none", |c| label_from(DECLINE_CODES, c)),
            received,
        }
    }

    pub fn record(self) {
        metrics::counter!(
            "settled_charges_total",
            "outcome" => self.outcome,
            "decline_code" => self.decline_code
        )
        .increment(1);
        if let Some((currency, minor)) = self.received {
            metrics::counter!("settled_charged_amount_minor_total", "currency" => currency)
                .increment(minor);
        }
    }
}

/// One request to a payment gateway ended: `operation` is what it asked (charge, refund, lookup,
/// payment_method, detach, check), `outcome` ok, declined, error or unknown.
pub fn gateway_request(
    gateway: &'static str,
    operation: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    metrics::histogram!(
        "settled_gateway_request_duration_seconds",
        "gateway" => gateway,
        "operation" => operation,
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
    if matches!(outcome, "error" | "unknown") {
        metrics::counter!(
            "settled_gateway_request_errors_total",
            "gateway" => gateway,
            "operation" => operation
        )
        .increment(1);
    }
}

/// One message handed to the mail transport (`smtp` or `file`): sent, temporary or permanent.
pub fn smtp_request(transport: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!(
        "settled_smtp_request_duration_seconds",
        "transport" => transport,
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
    if outcome != "sent" {
        metrics::counter!("settled_smtp_errors_total", "transport" => transport, "outcome" => outcome)
            .increment(1);
    }
}

/// A connection over `server.max_connections` was refused.
pub fn connection_refused() {
    metrics::counter!("settled_http_connections_refused_total").increment(1);
}

/// One try at an outbox row ended: sent, failed for good, or to be tried again.
pub fn email_finished(template: &str, outcome: &crate::store::emails::Outcome<'_>) {
    use crate::store::emails::Outcome;
    let template = Template::parse(template).map_or("other", Template::name);
    let name = match outcome {
        Outcome::Sent { .. } => "settled_emails_sent_total",
        Outcome::Failed { .. } => "settled_emails_failed_total",
        Outcome::Retry { .. } => "settled_emails_retried_total",
    };
    metrics::counter!(name, "template" => template).increment(1);
}

/// A job started `latency` after it was due (None when the queue row gave no due time).
pub fn job_started(job: &Job, latency: Option<Duration>) {
    if let Some(latency) = latency {
        metrics::histogram!("settled_job_latency_seconds", "kind" => job.kind())
            .record(latency.as_secs_f64());
    }
}

/// A job run ended: `outcome` is done, retry or failed.
pub fn job_finished(job: &Job, outcome: &'static str, took: Duration) {
    metrics::histogram!(
        "settled_job_duration_seconds",
        "kind" => job.kind(),
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware timing every request by its route template (`/v1/invoices/{id}`); a request no route
/// matched counts as `unmatched`, so a scanner probing paths adds no series.
pub async fn track_http(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "settled_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_kind_is_reported_even_when_absent() {
        for kind in settled_jobs::job::WorkKind::ALL {
            let job = Job::Drain { kind: *kind };
            assert!(JOB_KINDS.contains(&job.kind()), "{}", job.kind());
            assert_eq!(row_kind_label(job.kind()), job.kind());
        }
    }

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(
            label_from(DECLINE_CODES, "insufficient_funds"),
            "insufficient_funds"
        );
        assert_eq!(label_from(DECLINE_CODES, "pi_123_made_up"), "other");
        assert_eq!(currency_label("usd"), "USD");
        assert_eq!(currency_label("XYZ1"), "other");
        assert_eq!(row_kind_label("cus_123"), "other");
        assert_eq!(row_kind_label("'; DROP"), "other");
        let declined: Result<ChargeResult, GatewayError> = Err(GatewayError::Declined {
            code: "card_declined".into(),
            decline_code: Some("insufficient_funds".into()),
            message: String::new(),
            payment_intent_id: None,
        });
        let o = ChargeOutcome::of("USD", 100, &declined);
        assert_eq!(
            (o.outcome, o.decline_code),
            ("declined", "insufficient_funds")
        );
        assert!(o.received.is_none());
        let ok: Result<ChargeResult, GatewayError> = Ok(ChargeResult {
            payment_intent_id: "pi_1".into(),
            status: ChargeStatus::Succeeded,
            amount_received: 1999,
            currency: "usd".into(),
            decline_code: None,
            failure_message: None,
        });
        let o = ChargeOutcome::of("USD", 1999, &ok);
        assert_eq!((o.outcome, o.decline_code), ("succeeded", "none"));
        assert_eq!(o.received, Some(("USD", 1999)));
    }
}
