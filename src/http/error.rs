//! One error type for every handler. User errors say what was wrong; unexpected ones answer an
//! opaque 500 (or 503 when the database is away) and log the cause chain instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request could not be read (not JSON, bad query string).
    #[error("{0}")]
    Malformed(String),
    /// 401: no or wrong bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the object's state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 408: the body did not arrive in time.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// 413
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 422: well-formed but invalid.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// 402: the card was declined (the gateway's decline code says why).
    #[error("{message}")]
    Declined {
        decline_code: String,
        message: String,
    },
    /// 502: the payment gateway refused or failed.
    #[error("{0}")]
    Gateway(String),
    /// 503 with its own code: not ready yet, no answer in time, too busy.
    #[error("{message}")]
    Busy { code: &'static str, message: String },
    /// 503: storage unavailable.
    #[error("the database is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500
    #[error("an unexpected error occurred")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 naming the field.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        ApiError::Invalid {
            code: "invalid_request",
            message: format!("{field}: {problem}"),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound(format!("no {what} with id {id}"))
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Declined { .. } => (StatusCode::PAYMENT_REQUIRED, "card_declined"),
            ApiError::Gateway(_) => (StatusCode::BAD_GATEWAY, "gateway_error"),
            ApiError::Busy { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Unexpected(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(err: crate::store::Error) -> Self {
        if err.is_unavailable() {
            ApiError::Unavailable(err.into())
        } else {
            ApiError::Unexpected(anyhow::Error::new(err).context("database query failed"))
        }
    }
}

impl From<crate::billing::Error> for ApiError {
    fn from(err: crate::billing::Error) -> Self {
        use crate::billing::Error;
        use settled_jobs::gateway::GatewayError;
        match err {
            Error::Store(e) => e.into(),
            Error::Conflict { code, message } => ApiError::Conflict { code, message },
            Error::Invalid { field, message } => ApiError::invalid(&field, message),
            Error::NotFound(message) => ApiError::NotFound(message),
            Error::Gateway(GatewayError::Declined {
                decline_code,
                message,
                ..
            }) => ApiError::Declined {
                decline_code: decline_code.unwrap_or_default(),
                message,
            },
            Error::Gateway(GatewayError::NotConfigured) => {
                ApiError::conflict("gateway_not_configured", "no payment gateway is configured")
            }
            Error::Gateway(GatewayError::Invalid { message, param }) => ApiError::Invalid {
                code: "gateway_refused",
                message: match param {
                    Some(p) => format!("the gateway refused {p}: {message}"),
                    None => format!("the gateway refused the request: {message}"),
                },
            },
            Error::Gateway(GatewayError::Unknown(m)) => {
                tracing::warn!(error = %m, "gateway call failed");
                ApiError::Gateway("the payment gateway did not answer; try again".into())
            }
            Error::Later(m) => ApiError::Unavailable(anyhow::anyhow!(m)),
            Error::WaitingFor(pi) => {
                ApiError::Unavailable(anyhow::anyhow!("the payment of {pi} is not recorded yet"))
            }
            Error::Permanent(m) => ApiError::Unexpected(anyhow::anyhow!(m)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            ApiError::Unexpected(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let mut body = json!({"error": {"code": code, "message": self.to_string()}});
        if let ApiError::Declined { decline_code, .. } = &self {
            body["error"]["decline_code"] = json!(decline_code);
        }
        (status, Json(body)).into_response()
    }
}
