//! The listener: accepts connections and serves the router over HTTP/1.1 with the limits a
//! daemon on the internet needs (`[server]` in the configuration):
//!
//! - `header_read_timeout_seconds`: a client must send a request's headers within this time, on
//!   a new connection and between requests on a kept-alive one (a slow or idle client is cut off);
//! - `body_read_timeout_seconds`: a request body must arrive within this time (a 408 otherwise);
//! - `request_timeout_seconds`: an answer is given within this time (503 `timeout` otherwise);
//! - `max_connections`: connections served at once; one more is answered 503 `overloaded` at
//!   once and closed, so a flood of connections costs a socket each, never memory or a task.
//!
//! On shutdown it stops accepting, lets requests in progress finish and closes idle connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiError;
use crate::config::ServerConfig;

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub request: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn of(server: &ServerConfig) -> Limits {
        Limits {
            header_read: Duration::from_secs(server.header_read_timeout_seconds.max(1)),
            body_read: Duration::from_secs(server.body_read_timeout_seconds.max(1)),
            request: Duration::from_secs(server.request_timeout_seconds.max(1)),
            max_connections: server.max_connections.max(1),
        }
    }
}

/// The answer to a connection over the limit: written whole, then the connection is closed.
fn overloaded() -> Vec<u8> {
    let body =
        r#"{"error":{"code":"overloaded","message":"too many connections; try again shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Applies the request and body deadlines around the router.
pub fn with_deadlines(app: Router, limits: Limits) -> Router {
    app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read,
    ))
    .layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(limits.request, next.run(req)).await {
                Ok(response) => response,
                Err(_) => ApiError::Busy {
                    code: "timeout",
                    message: format!(
                        "no answer within {} s; the request may be retried",
                        limits.request.as_secs()
                    ),
                }
                .into_response(),
            }
        },
    ))
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = with_deadlines(app, limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file handles or a connection reset before it was taken: not fatal; a
                // short pause keeps a loop on EMFILE from spinning.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            connections.spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(&overloaded()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
            continue;
        };
        // The peer's address, for handlers that need it (the portal's sign-in rate limit).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone().into_service::<hyper::body::Incoming>(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
