//! Webhook intake (public, signed) and the operator's view of stored events (/v1).
//!
//! Intake checks, in this order, and refuses with nothing stored: the body's size (413), the
//! source (404) and its secrets (503: not configured, so the gateway keeps retrying), the
//! signature and the signed timestamp against the real wall clock (400), then the body (400:
//! JSON with a string `id` and `type`). It then stores the raw body with its process_event job
//! and answers 200 once that is committed; a duplicate delivery is 200 too and stores nothing.
//! Storage trouble is 503 so the gateway retries. Processing never delays the answer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use settled_jobs::ids::{new_id, prefix};

use settled_jobs::status::EventStatus;

use super::extract::ApiQuery;
use super::format::rfc3339_ms;
use super::openapi::wire::{self, ErrorBody, Timestamp, WebhookEventId};
use super::{ApiError, AppState, ListResponse, Paging};
use crate::gateway::stripe::NAME as STRIPE;
use crate::metrics::{self, reason};
use crate::store::webhook_events::{self as store, EventRow, NewEvent};
use intake::{Intake, Stored};
use signature::Refusal;
use utoipa::{IntoParams, ToSchema};

pub mod intake;
mod shape;
pub mod signature;

/// Longest event id accepted (Stripe's are about 30 characters).
const MAX_EVENT_ID: usize = 255;

/// `POST /webhooks/stripe`, `POST /webhooks/standard/{source}`.
pub fn public_router(state: &AppState) -> Router<Arc<AppState>> {
    let intake = Arc::new(Intake::new(state.billing.clone(), state.scheduler.clone()));
    let _ = state.intake.set(intake.clone());
    Router::new()
        .route("/webhooks/stripe", post(stripe))
        .route("/webhooks/standard/{source}", post(standard))
        .with_state(intake)
}

/// `/v1/webhook_events...`.
pub fn admin_router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/webhook_events", get(list))
        .route("/webhook_events/{id}", get(show))
        .route("/webhook_events/{id}/replay", post(replay))
}

fn wall_clock_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A refusal: counted, logged without the body, answered in the API's error format.
fn refuse(
    source: &str,
    why: &'static str,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    metrics::webhook_refused(source, why);
    tracing::info!(
        source,
        reason = why,
        status = status.as_u16(),
        message,
        "webhook refused"
    );
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The raw body, at most `limit` bytes: a declared or actual length above it is 413 before
/// anything else is looked at.
async fn read_body(
    source: &str,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        refuse(
            source,
            reason::TOO_LARGE,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the webhook body is larger than {limit} bytes"),
        )
    };
    if let Some(declared) = header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && declared > limit as u64
    {
        return Err(too_large());
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            refuse(
                source,
                reason::BODY,
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the webhook body could not be read",
            )
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn signature_refusal(source: &str, refusal: Refusal) -> Response {
    let code = match refusal {
        Refusal::Signature(_) => "invalid_signature",
        Refusal::Timestamp(_) => "timestamp_out_of_tolerance",
    };
    refuse(
        source,
        refusal.reason(),
        StatusCode::BAD_REQUEST,
        code,
        refusal.message(),
    )
}

fn body_refusal(source: &str, message: &str) -> Response {
    refuse(
        source,
        reason::BODY,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        message,
    )
}

fn no_secret(source: &str, message: &str) -> Response {
    tracing::warn!(source, "{message}");
    refuse(
        source,
        reason::NO_SECRET,
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook_secret_not_configured",
        message,
    )
}

/// The fields intake needs; everything else in the body is skipped without being built.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
}

fn short_string(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_EVENT_ID => Some(s),
        _ => None,
    }
}

/// The body as text, its `id` and its `type`; `id_required` for Stripe (Standard Webhooks carry
/// the event id in `webhook-id`). Refused here, before anything is stored, is every body that
/// processing could not read: not UTF-8 or JSON, nested too deep, holding a NUL (no text column
/// stores one), or of a handled type its source's adapter finds malformed.
fn parse_body(
    raw: Vec<u8>,
    id_required: bool,
    source: &str,
    delivery_id: &str,
) -> Result<(String, Option<String>, String), String> {
    shape::check(&raw)?;
    let text = String::from_utf8(raw).map_err(|_| "the webhook body is not UTF-8".to_string())?;
    let head: Head = serde_json::from_str(&text).map_err(|e| {
        if e.is_data() {
            format!("the webhook body must be a JSON object: {e}")
        } else {
            format!("the webhook body is not valid JSON: {e}")
        }
    })?;
    let kind = short_string(head.kind)
        .ok_or_else(|| "the webhook body has no string \"type\"".to_string())?;
    let id = short_string(head.id);
    if id.is_none() && id_required {
        return Err("the webhook body has no string \"id\"".into());
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the webhook body is not valid JSON: {e}"))?;
    let delivery = if delivery_id.is_empty() {
        id.as_deref().unwrap_or("")
    } else {
        delivery_id
    };
    if let settled_jobs::event::Parsed::Malformed(why) =
        crate::gateway::parse_event(source, &value, delivery)
    {
        return Err(format!(
            "the webhook body is a {kind} that cannot be read: {why}"
        ));
    }
    Ok((text, id, kind))
}

/// What intake answers once the event is stored.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookAccepted)]
pub(crate) struct Accepted {
    /// Always true.
    received: bool,
    /// The stored event (null in the rare case a duplicate's row cannot be read back).
    #[schema(value_type = Option<WebhookEventId>, required = true)]
    id: Option<String>,
    /// True when this event was stored before (nothing new was stored).
    duplicate: bool,
}

/// A Stripe event as intake reads it; everything else in it is stored as sent.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeEvent {
    /// The event's id (`evt_...`), at most 255 characters.
    #[schema(min_length = 1, max_length = 255)]
    id: String,
    /// The event's type (`payment_intent.succeeded`, ...).
    #[schema(rename = "type", min_length = 1, max_length = 255)]
    kind: String,
    #[schema(additional_properties)]
    data: Option<serde_json::Value>,
}

/// A Standard Webhooks event: `{"type": "payment.received", "data": {"invoice_id" |
/// "invoice_number", "amount", "currency", "reference"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StandardEvent {
    #[schema(rename = "type", min_length = 1, max_length = 255)]
    kind: String,
    data: Option<serde_json::Value>,
}

/// Stores the verified event and answers.
async fn accept(
    intake: &Intake,
    source: &str,
    event_id: String,
    kind: String,
    body: String,
) -> Response {
    let billing = &intake.billing;
    let event = NewEvent {
        id: new_id(prefix::WEBHOOK_EVENT),
        source: source.to_string(),
        event_id,
        kind,
        body,
        received_at: crate::store::ms(billing.now()),
    };
    let id = event.id.clone();
    let event_id = event.event_id.clone();
    match intake.store(event).await {
        Ok(Stored::New) => {
            metrics::webhook_received(source);
            tracing::debug!(source, event_id = %event_id, id = %id, "webhook stored");
            let answer = Accepted {
                received: true,
                id: Some(id),
                duplicate: false,
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        Ok(Stored::Duplicate) => {
            metrics::webhook_duplicate(source);
            tracing::info!(source, event_id = %event_id, "duplicate webhook delivery; already stored");
            let existing = store::id_of(&billing.db, source, &event_id)
                .await
                .ok()
                .flatten();
            let answer = Accepted {
                received: true,
                id: existing,
                duplicate: true,
            };
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {
                "code": "unavailable",
                "message": "the event could not be stored; deliver it again later"
            }})),
        )
            .into_response(),
    }
}

#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks", operation_id = "stripe_webhook",
    params(("Stripe-Signature" = String, Header,
        description = "`t=<unix time>,v1=<hex HMAC-SHA256 of \"{t}.{body}\">` (several `v1` \
            allowed), checked against every configured secret.")),
    request_body(content = StripeEvent, content_type = "application/json",
        description = "The event as Stripe sends it; stored byte for byte."),
    responses(
        (status = 200, description = "Stored (or stored before: a duplicate is 200 too).",
            body = Accepted),
        (status = 400, description = "Missing, malformed or non-matching signature \
            (`invalid_signature`), a timestamp outside the tolerance \
            (`timestamp_out_of_tolerance`), or a body that is not a JSON object with a string \
            `id` and `type` (`invalid_body`). Nothing is stored.", body = ErrorBody),
        (status = 413, description = "The body is larger than `stripe.webhook_max_body_bytes` \
            (`body_too_large`).", body = ErrorBody),
        (status = 503, description = "No signing secret is configured \
            (`webhook_secret_not_configured`), the daemon is not ready (`not_ready`), or the \
            event could not be stored (`unavailable`): deliver it again later.", body = ErrorBody),
    ))]
async fn stripe(AxState(intake): AxState<Arc<Intake>>, headers: HeaderMap, body: Body) -> Response {
    let config = &intake.billing.config;
    let raw = match read_body(STRIPE, &headers, body, config.stripe.webhook_max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let secrets = match intake.stripe_secrets() {
        Ok(s) => s,
        Err(message) => return no_secret(STRIPE, &message),
    };
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    if let Err(refusal) = signature::verify_stripe(
        header_str(&headers, "stripe-signature"),
        &raw,
        &secrets,
        wall_clock_secs(),
        config.stripe.webhook_tolerance_seconds,
    ) {
        return signature_refusal(STRIPE, refusal);
    }
    match parse_body(raw, true, STRIPE, "") {
        Ok((text, Some(id), kind)) => accept(&intake, STRIPE, id, kind, text).await,
        Ok((_, None, _)) => body_refusal(STRIPE, "the webhook body has no string \"id\""),
        Err(message) => body_refusal(STRIPE, &message),
    }
}

#[utoipa::path(post, path = "/webhooks/standard/{source}", tag = "webhooks",
    operation_id = "standard_webhook",
    params(
        ("source" = String, Path, description = "A source configured under \
            `[standard_webhooks.sources.<source>]`."),
        ("webhook-id" = String, Header, description = "The event's id."),
        ("webhook-timestamp" = String, Header, description = "Unix time of the signature."),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of \
            \"{id}.{timestamp}.{body}\">`, space-separated when several."),
    ),
    request_body(content = StandardEvent, content_type = "application/json",
        description = "The event; stored byte for byte."),
    responses(
        (status = 200, description = "Stored (or stored before: a duplicate is 200 too).",
            body = Accepted),
        (status = 400, description = "Missing, malformed or non-matching signature \
            (`invalid_signature`), a timestamp outside the tolerance \
            (`timestamp_out_of_tolerance`), or a body that is not a JSON object with a string \
            `type` (`invalid_body`). Nothing is stored.", body = ErrorBody),
        (status = 404, description = "No such source is configured (`unknown_source`).",
            body = ErrorBody),
        (status = 413, description = "The body is larger than \
            `standard_webhooks.max_body_bytes` (`body_too_large`).", body = ErrorBody),
        (status = 503, description = "No signing secret is configured for the source \
            (`webhook_secret_not_configured`), the daemon is not ready (`not_ready`), or the \
            event could not be stored (`unavailable`): deliver it again later.", body = ErrorBody),
    ))]
async fn standard(
    AxState(intake): AxState<Arc<Intake>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(keys) = intake.standard_keys(&source) else {
        // The label is fixed: a sender must not be able to invent label values.
        return refuse(
            "unknown",
            reason::UNKNOWN_SOURCE,
            StatusCode::NOT_FOUND,
            "unknown_source",
            &format!("no webhook source named {source:?} is configured"),
        );
    };
    let config = &intake.billing.config;
    let raw = match read_body(
        &source,
        &headers,
        body,
        config.standard_webhooks.max_body_bytes,
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let keys = match keys {
        Ok(k) => k,
        Err(message) => return no_secret(&source, &message),
    };
    let webhook_id = header_str(&headers, "webhook-id");
    if let Err(refusal) = signature::verify_standard(
        webhook_id,
        header_str(&headers, "webhook-timestamp"),
        header_str(&headers, "webhook-signature"),
        &raw,
        &keys,
        wall_clock_secs(),
        config.standard_webhooks.tolerance_seconds,
    ) {
        return signature_refusal(&source, refusal);
    }
    let event_id = webhook_id.unwrap_or_default().to_string();
    if event_id.len() > MAX_EVENT_ID {
        return body_refusal(&source, "the webhook-id header is too long");
    }
    match parse_body(raw, false, &source, &event_id) {
        Ok((text, _, kind)) => accept(&intake, &source, event_id, kind, text).await,
        Err(message) => body_refusal(&source, &message),
    }
}

/// A stored event as the operator sees it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookEvent)]
pub struct EventView {
    #[schema(value_type = String, pattern = "^webhook_event$")]
    pub object: &'static str,
    #[schema(value_type = WebhookEventId)]
    pub id: String,
    /// `stripe` or a Standard Webhooks source's name.
    pub source: String,
    /// The sender's event id.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = wire::EventStatus)]
    pub status: String,
    #[schema(value_type = Timestamp)]
    pub received_at: String,
    #[schema(value_type = Option<Timestamp>, required = true)]
    pub processed_at: Option<String>,
    /// Why it was ignored or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    pub replays: i64,
    /// The stored body, on the single-event view only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub payload: Option<serde_json::Value>,
}

impl EventView {
    fn from_row(row: EventRow, with_payload: bool) -> EventView {
        let payload = with_payload
            .then(|| serde_json::from_str(&row.body).ok())
            .flatten();
        EventView {
            object: "webhook_event",
            id: row.id,
            source: row.source,
            event_id: row.event_id,
            kind: row.kind,
            status: row.status,
            received_at: rfc3339_ms(row.received_at),
            processed_at: row.processed_at.map(rfc3339_ms),
            error: row.error,
            replays: row.replays,
            payload,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only those in this status.
    #[param(value_type = Option<wire::EventStatus>)]
    status: Option<String>,
    /// Only this source's.
    source: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    paging: Paging,
}

#[utoipa::path(get, path = "/v1/webhook_events", tag = "webhooks", operation_id = "list_webhook_events",
    params(EventQuery, Paging),
    responses((status = 200, description = "A page of stored events.",
        body = ListResponse<EventView>)))]
async fn list(
    AxState(state): AxState<Arc<AppState>>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<ListResponse<EventView>>, ApiError> {
    let limit = q.paging.limit()?;
    if let Some(s) = &q.status
        && EventStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid(
            "status",
            format!("must be one of {}", EventStatus::names().join(", ")),
        ));
    }
    let after = match q.paging.starting_after.as_deref() {
        Some(id) => Some(store::get(&state.billing.db, id).await?.ok_or_else(|| {
            ApiError::invalid("starting_after", format!("no webhook event with id {id}"))
        })?),
        None => None,
    };
    let rows = store::list(
        &state.billing.db,
        q.status.as_deref(),
        q.source.as_deref(),
        limit + 1,
        after.as_ref(),
    )
    .await?;
    let views = rows
        .into_iter()
        .map(|r| EventView::from_row(r, false))
        .collect();
    Ok(Json(ListResponse::page(views, limit)))
}

#[utoipa::path(get, path = "/v1/webhook_events/{id}", tag = "webhooks",
    operation_id = "get_webhook_event",
    params(("id" = WebhookEventId, Path, description = "The stored event.")),
    responses((status = 200, description = "The event with its stored body.", body = EventView)))]
async fn show(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    store::get(&state.billing.db, &id)
        .await?
        .map(|r| Json(EventView::from_row(r, true)))
        .ok_or_else(|| ApiError::not_found("webhook event", &id))
}

/// Processes the event again (its effects are idempotent under their natural keys).
#[utoipa::path(post, path = "/v1/webhook_events/{id}/replay", tag = "webhooks",
    operation_id = "replay_webhook_event",
    params(("id" = WebhookEventId, Path, description = "The stored event.")),
    responses((status = 200, description = "`received` again; the events' drain applies it once \
        more (its effects are idempotent).", body = EventView)))]
async fn replay(
    AxState(state): AxState<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    if let Some(row) = store::get(&state.billing.db, &id).await?
        && row.body.is_empty()
    {
        return Err(ApiError::conflict(
            "event_pruned",
            format!(
                "webhook event {id}'s stored body was pruned by retention; it cannot be replayed"
            ),
        ));
    }
    if !store::replay(&state.billing.db, &id).await? {
        return Err(ApiError::not_found("webhook event", &id));
    }
    state.scheduler.kick(settled_jobs::job::WorkKind::Events);
    tracing::info!(event = %id, "webhook event replay requested");
    show(AxState(state), Path(id)).await
}
