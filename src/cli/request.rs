//! One admin API request, the stuff every operator command is made of: either through the
//! daemon's own router in this process against the configured database (with a token of the
//! command's own), or over HTTP to a running daemon (`--url`, the token from `--token-file` or
//! `$SETTLED_TOKEN`), so an operator needs no database credentials.

use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::config::Secret;
use crate::http::AppState;

/// Where admin requests go.
pub enum Target {
    /// The router in this process, over the configured database.
    Local(Arc<AppState>),
    /// A running daemon's admin API.
    Remote {
        base: String,
        token: Secret,
        client: reqwest::Client,
    },
}

impl Target {
    /// A running daemon at `base` (`http://127.0.0.1:8080`), asked with `token`.
    pub fn remote(base: &str, token: Secret) -> anyhow::Result<Target> {
        let base = base.trim_end_matches('/').to_string();
        url::Url::parse(&base).with_context(|| format!("--url {base:?} is not a URL"))?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Target::Remote {
            base,
            token,
            client,
        })
    }

    /// The in-process state, when the command runs against the database itself.
    pub fn local(&self) -> Option<&Arc<AppState>> {
        match self {
            Target::Local(state) => Some(state),
            Target::Remote { .. } => None,
        }
    }
}

/// What a command produced: an API answer to print.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Runs one admin API request.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    let (status, bytes) = send(target, method, path, body, "application/json").await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

/// A CSV answer, printed as is.
pub async fn call_csv(target: &Target, path: &str) -> anyhow::Result<Answer> {
    let (status, bytes) = send(target, Method::GET, path, None, "text/csv").await?;
    let body = if status == 200 {
        json!({"csv": String::from_utf8_lossy(&bytes)})
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer { status, body })
}

/// One request through the admin API; the status and raw body.
pub async fn send(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
    accept: &str,
) -> anyhow::Result<(u16, axum::body::Bytes)> {
    let path = format!("/v1{}", path.strip_prefix("/v1").unwrap_or(path));
    match target {
        Target::Local(state) => send_local(state, method, &path, body, accept).await,
        Target::Remote {
            base,
            token,
            client,
        } => {
            let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
                .context("an HTTP method reqwest does not know")?;
            let mut request = client
                .request(method, format!("{base}{path}"))
                .bearer_auth(token.expose())
                .header(header::ACCEPT.as_str(), accept);
            if let Some(b) = body {
                request = request
                    .header(header::CONTENT_TYPE.as_str(), "application/json")
                    .body(b.to_string());
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("no answer from the daemon at {base}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .bytes()
                .await
                .with_context(|| format!("the daemon at {base} broke off its answer"))?;
            Ok((status, axum::body::Bytes::from(bytes.to_vec())))
        }
    }
}

async fn send_local(
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
        .secret
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
