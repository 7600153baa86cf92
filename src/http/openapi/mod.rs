//! The OpenAPI 3.1 document of the HTTP API, built from the handlers' `#[utoipa::path]`
//! annotations and the views' and inputs' derived schemas, served at `GET /v1/openapi.json` and
//! printed by `settled openapi`. What every route shares is added here once, by rule: the admin
//! token, the `Idempotency-Key` header of admin POSTs, and the error answers the layers in front
//! of every handler give (401, 400/408/413/422 for bodies and query strings, 404 for ids in the
//! path, 503 before readiness or under overload). A test holds the document and the router to
//! the same set of routes.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, Required, ResponseBuilder, Responses, schema::ObjectBuilder,
    schema::Type,
};

use super::AppState;

pub mod wire;

#[cfg(test)]
mod tests;

/// Paths the router serves that are not part of this document (customer-facing pages: `/portal`
/// and everything under it).
pub const NOT_DESCRIBED: &[&str] = &["/portal"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "settled",
        description = "The admin API (`/v1`, bearer token), webhook intake, health, readiness \
            and metrics of the `settled` receivables daemon.\n\nAmounts are decimal strings in \
            the currency's major unit, never JSON numbers. Ids are prefixed strings. Every \
            refusal is `{\"error\": {\"code\", \"message\"}}` and changes nothing. Lists are \
            `{\"object\": \"list\", \"data\", \"has_more\"}`, paged with `limit` and \
            `starting_after`."
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        document_route,
        super::webhooks::stripe,
        super::webhooks::standard,
        super::customers::create,
        super::customers::list,
        super::customers::show,
        super::customers::update,
        super::charges::charge_balance,
        super::credits::customer_payment,
        super::statements::statement,
        super::customers::add_payment_method,
        super::customers::list_payment_methods,
        super::customers::show_payment_method,
        super::customers::make_default,
        super::customers::remove_payment_method,
        super::subscriptions::create,
        super::subscriptions::list,
        super::subscriptions::show,
        super::subscriptions::pause,
        super::subscriptions::resume,
        super::subscriptions::cancel,
        super::subscriptions::preview,
        super::invoices::create,
        super::invoices::list,
        super::invoices::show,
        super::charges::charge_invoice,
        super::credits::invoice_payment,
        super::credits::void,
        super::documents::invoice_pdf,
        super::credits::create_credit_note,
        super::credits::list_credit_notes,
        super::credits::apply_retainer,
        super::credits::refund_retainer,
        super::credits::check,
        super::payments::list_payments,
        super::payments::show_payment,
        super::payments::refund_payment,
        super::documents::receipt_pdf,
        super::emails::list,
        super::emails::show,
        super::emails::retry,
        super::webhooks::list,
        super::webhooks::show,
        super::webhooks::replay,
        super::jobs::list,
        super::jobs::show,
        super::jobs::retry,
        super::clock::show,
        super::clock::advance,
    ),
    components(schemas(wire::ErrorBody)),
    modifiers(&Conventions),
    tags(
        (name = "ops", description = "Liveness, readiness, metrics and this document."),
        (name = "webhooks", description = "Signed gateway events in, and the stored events."),
        (name = "customers", description = "Customers, their billing contacts and balances."),
        (name = "payment_methods", description = "Saved cards: gateway tokens only."),
        (name = "subscriptions", description = "Recurring invoice profiles."),
        (name = "invoices", description = "Invoices, charging them, offline payments, PDFs."),
        (name = "credits", description = "Credit notes, retainers and the ledger check."),
        (name = "payments", description = "Payments received and their refunds."),
        (name = "emails", description = "The email outbox."),
        (name = "jobs", description = "Work set aside after a failure."),
        (name = "clock", description = "The manual clock (`clock.mode = \"manual\"` only)."),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as pretty JSON (what `settled openapi` prints and the route serves).
pub fn json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"the document did not serialize: {e}\"}}"))
}

/// `GET /v1/openapi.json`, behind the admin token like the rest of `/v1`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/openapi.json", get(document_route))
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", operation_id = "get_openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1).",
        content_type = "application/json", body = Object)))]
async fn document_route() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

/// The rules every route follows, added to each operation where they apply.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token from the configuration (`admin.tokens`).",
                    ))
                    .build(),
            ),
        );
        let names: Vec<String> = components.schemas.keys().cloned().collect();
        for (name, schema) in components.schemas.iter_mut() {
            if let Some(item) = name.strip_prefix("ListResponse_")
                && names.iter().any(|n| n == item)
            {
                refer_list_items(schema, item);
            }
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let admin = path.starts_with("/v1/");
            let ops = [
                ("GET", item.get.as_mut()),
                ("POST", item.post.as_mut()),
                ("PATCH", item.patch.as_mut()),
                ("DELETE", item.delete.as_mut()),
                ("PUT", item.put.as_mut()),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    follow_conventions(op, method, admin, path);
                }
            }
        }
    }
}

/// A list's `data` items as a reference to the item's own schema rather than a copy of it.
fn refer_list_items(schema: &mut RefOr<utoipa::openapi::Schema>, item: &str) {
    use utoipa::openapi::schema::{ArrayItems, Schema};
    let RefOr::T(Schema::Object(list)) = schema else {
        return;
    };
    if let Some(RefOr::T(Schema::Array(data))) = list.properties.get_mut("data") {
        data.items = ArrayItems::RefOrSchema(Box::new(RefOr::Ref(Ref::from_schema_name(item))));
    }
}

fn follow_conventions(op: &mut Operation, method: &str, admin: bool, path: &str) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    let has_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let has_path = path.contains('{');
    let has_body = op.request_body.is_some();
    if admin {
        op.security = Some(vec![SecurityRequirement::new(
            "admin_token",
            Vec::<String>::new(),
        )]);
        if method == "POST" {
            params.push(idempotency_key());
        }
    }
    // What the layers in front of the handler answer, by status; a route that documents a status
    // itself keeps its own description.
    let mut generic: Vec<(u16, &str)> = Vec::new();
    if admin {
        generic.push((
            401,
            "No admin token, or not one of the configured ones (`unauthorized`).",
        ));
    }
    if admin {
        generic.push((
            400,
            "The query string cannot be read, or holds a control character \
             (`malformed_request`).",
        ));
    }
    if admin && method == "POST" {
        generic.push((
            400,
            "The Idempotency-Key is not 1 to 255 printable ASCII characters \
             (`invalid_idempotency_key`).",
        ));
        generic.push((
            409,
            "A request with the same Idempotency-Key is still being served \
             (`idempotency_key_in_use`).",
        ));
        generic.push((
            413,
            "The body is larger than `server.max_body_bytes` (`body_too_large`).",
        ));
        generic.push((
            422,
            "The Idempotency-Key was used with another request (`idempotency_key_reused`).",
        ));
    }
    if admin && has_body {
        generic.push((400, "The body is not a JSON object (`malformed_request`)."));
        generic.push((
            408,
            "The body did not arrive within `server.body_read_timeout_seconds` (`body_timeout`).",
        ));
        generic.push((
            413,
            "The body is larger than `server.max_body_bytes` (`body_too_large`).",
        ));
        generic.push((
            422,
            "Well-formed but invalid: a missing, unknown or wrongly typed field, a bad value, a \
             control character in text (`invalid_request` or a more precise code; the message \
             names the field).",
        ));
    }
    if admin && has_query {
        generic.push((
            400,
            "The query string cannot be read (`malformed_request`).",
        ));
        generic.push((
            422,
            "A query parameter is out of range or not one of its values (`invalid_request`).",
        ));
    }
    if admin && has_path {
        generic.push((404, "No such object (`not_found`)."));
    }
    generic.push((
        503,
        "Not ready yet (`not_ready`, with `Retry-After`), the database is unavailable \
         (`unavailable`), the request ran out of time (`timeout`) or too many connections are \
         open (`overloaded`). Nothing was changed; try again.",
    ));
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for (status, description) in generic {
        let list = by_status.entry(status).or_default();
        if !list.contains(&description) {
            list.push(description);
        }
    }
    for (status, descriptions) in by_status {
        error(&mut op.responses, status, &descriptions.join(" "));
    }
}

/// Adds an error answer unless the route documents that status itself.
fn error(responses: &mut Responses, status: u16, description: &str) {
    let key = status.to_string();
    if responses.responses.contains_key(&key) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                .build(),
        )
        .build();
    responses.responses.insert(key, RefOr::T(response));
}

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes the POST safe to retry: the same key with the same body answers the first \
             answer again (for at least 24 hours, with `Idempotent-Replayed: true`).",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[\\x20-\\x7e]+$")),
        ))
        .build()
}
