//! One admin API request through the daemon's own router, in this process, with the configured
//! token: what every operator command is made of.

use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::http::AppState;

/// What a command produced: an API answer to print.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Runs one admin API request in-process.
pub async fn call(
    state: &Arc<AppState>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let (status, bytes) = send(state, method, path, body, "application/json").await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

/// A CSV answer, printed as is.
pub async fn call_csv(state: &Arc<AppState>, path: &str) -> anyhow::Result<Answer> {
    let (status, bytes) = send(state, Method::GET, path, None, "text/csv").await?;
    let body = if status == 200 {
        json!({"csv": String::from_utf8_lossy(&bytes)})
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer { status, body })
}

/// One request through the admin router with the configured token; the status and raw body.
pub async fn send(
    state: &Arc<AppState>,
    method: Method,
    path: &str,
    body: Option<Value>,
    accept: &str,
) -> anyhow::Result<(u16, axum::body::Bytes)> {
    let token = state
        .tokens()
        .first()
        .context("no admin token is configured")?
        .expose()
        .to_string();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept)
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })?;
    let response = crate::http::router(state.clone())
        .oneshot(request)
        .await
        .context("the request failed")?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await?;
    Ok((status, bytes))
}

pub fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                format!(
                    "{k}={}",
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}
