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
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rejection) => {
                return Err(
                    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::TooLarge(0)
                    } else if body_timed_out(&rejection) {
                        ApiError::BodyTimeout
                    } else {
                        ApiError::Malformed(rejection.body_text())
                    },
                );
            }
        };
        parse(&bytes).map(ApiJson)
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
