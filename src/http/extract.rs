//! A JSON body extractor whose errors follow the API's conventions: unreadable JSON is 400,
//! wrong types, missing or unknown fields are 422 naming the field, an oversized body is 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// The raw body, refused in the API's error format: over the limit 413, too slow 408, unreadable
/// 400, each as `{"error": ...}` JSON (axum's own rejections answer plain text).
pub struct ApiBytes(pub Bytes);

impl<S> FromRequest<S> for ApiBytes
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(0)
                } else if body_timed_out(&rejection) {
                    ApiError::BodyTimeout
                } else {
                    ApiError::Malformed(rejection.body_text())
                }
            })
    }
}

/// Whether the body stopped because it did not arrive within `server.body_read_timeout_seconds`.
pub fn body_timed_out(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax problems first, so a type problem is never reported for a body that is not JSON.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::Malformed("the body must be a JSON object".into()));
    }
    if let Some((path, c)) = control_character(&value, String::new()) {
        return Err(ApiError::invalid(
            if path.is_empty() { "body" } else { &path },
            format!(
                "contains the control character U+{:04X}; only tab and line breaks are accepted",
                c as u32
            ),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::Invalid {
                code: "invalid_request",
                message: inner,
            }
        } else {
            ApiError::invalid(&path, inner)
        }
    })
}

/// The first string (or key) holding a control character other than tab, line feed and carriage
/// return, with its path: NUL and its kind are refused here, before they reach storage.
fn control_character(v: &serde_json::Value, path: String) -> Option<(String, char)> {
    let bad = |s: &str| {
        s.chars()
            .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    };
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match v {
        serde_json::Value::String(s) => bad(s).map(|c| (path, c)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| control_character(item, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
            bad(k)
                .map(|c| (join(k), c))
                .or_else(|| control_character(item, join(k)))
        }),
        _ => None,
    }
}

/// Whether a body carries card data anywhere, at any depth: a field named like a card number or
/// security code, or a value (a string or a JSON number) shaped like a card number. Such a body
/// is refused without echoing any of it.
pub fn holds_card_data(v: &serde_json::Value, card_fields: &[&str]) -> bool {
    fn card_number(s: &str) -> bool {
        let digits: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        (12..=19).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
    }
    match v {
        serde_json::Value::String(s) => card_number(s),
        serde_json::Value::Number(n) => card_number(&n.to_string()),
        serde_json::Value::Array(items) => items.iter().any(|i| holds_card_data(i, card_fields)),
        serde_json::Value::Object(map) => map.iter().any(|(k, item)| {
            card_fields.contains(&k.to_ascii_lowercase().as_str())
                || holds_card_data(item, card_fields)
        }),
        _ => false,
    }
}

/// Query strings with the API's error format (a bad query is 400 with a JSON error).
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::Malformed(e.body_text()))
    }
}

/// Ids and query values never hold control characters. One that does (a NUL would reach
/// PostgreSQL, which refuses it in text) is answered before any handler runs: a path that is not
/// UTF-8 or holds one names no object (404); a query string holding one cannot be read (400).
pub async fn refuse_control_characters(
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let bad = |s: &str| {
        s.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    };
    let path = percent_decoded(req.uri().path());
    if std::str::from_utf8(&path).map_or(true, bad) {
        return ApiError::NotFound("no such object".into()).into_response();
    }
    if let Some(query) = req.uri().query()
        && url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| bad(&k) || bad(&v))
    {
        return ApiError::Malformed(
            "the query string holds a control character; only tab and line breaks are accepted"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// A URL path with its `%XX` escapes decoded, as bytes.
fn percent_decoded(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(h)), Some(Some(l))) = (
                bytes.get(i + 1).map(|b| hex(*b)),
                bytes.get(i + 2).map(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
