//! The listener on the internet: a client that sends its headers too slowly is cut off, idle
//! connections by the thousand do not stop a webhook from being answered, a connection over the
//! limit gets a clear 503 at once, and a body that trickles in is refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both;
use crate::helpers::*;
use crate::support::sha256::stripe_header;

const SECRET: &str = "whsec_listener_71c3e0a9";

fn addr(d: &Daemon) -> String {
    d.base.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (or `within` passes); what arrived and whether it closed.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

fn signed_event(id: &str) -> (String, String) {
    let now = chrono::Utc::now().timestamp();
    let body = json!({"id": id, "object": "event", "api_version": "2024-06-20", "created": now,
        "type": "customer.created", "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "cus_gw1", "object": "customer"}}})
    .to_string();
    let sig = stripe_header(SECRET, now, &body);
    (body, sig)
}

both!(
    a_client_slow_with_its_headers_is_cut_off_and_idle_ones_do_not_block_a_webhook,
    |backend| async move {
        let w = World::start_with(
            backend,
            DaemonOptions::default()
                .env("SETTLED__SERVER__HEADER_READ_TIMEOUT_SECONDS", "1")
                .env(
                    "SETTLED__STRIPE__WEBHOOK_SECRETS",
                    format!("[\"{SECRET}\"]"),
                ),
        )
        .await;
        let d = &w.daemon;
        // Half a request, then nothing: closed after the header timeout, never answered 200.
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr(d)).await.unwrap();
        slow.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-")
            .await
            .unwrap();
        let (got, closed) = read_to_close(&mut slow, Duration::from_secs(5)).await;
        assert!(closed, "still open after 5 s: {got:?}");
        assert!(!got.contains(" 200 "), "{got}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );

        // A thousand connections that send nothing.
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(TcpStream::connect(addr(d)).await.unwrap());
        }
        let (body, sig) = signed_event("evt_idle_crowd");
        let answered = Instant::now();
        let r = d
            .http
            .post(d.url("/webhooks/stripe"))
            .header("stripe-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            answered.elapsed() < Duration::from_secs(2),
            "{:?}",
            answered.elapsed()
        );
        // And the idle ones are let go after the header timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, closed) = read_to_close(&mut idle[0], Duration::from_secs(3)).await;
        assert!(closed, "an idle connection is kept for ever");
    }
);

both!(
    a_connection_over_the_limit_gets_503_at_once_and_a_trickling_body_408,
    |backend| async move {
        let w = World::start_with(
            backend,
            DaemonOptions::default()
                .env("SETTLED__SERVER__MAX_CONNECTIONS", "4")
                .env("SETTLED__SERVER__HEADER_READ_TIMEOUT_SECONDS", "30")
                .env("SETTLED__SERVER__BODY_READ_TIMEOUT_SECONDS", "1"),
        )
        .await;
        let d = &w.daemon;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(addr(d)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr(d)).await.unwrap();
        let (got, closed) = read_to_close(&mut extra, Duration::from_secs(3)).await;
        assert!(closed, "{got}");
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        let json_start = got.find('{').expect("a JSON body");
        let body: Value = serde_json::from_str(&got[json_start..]).unwrap();
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A body promised and sent a byte at a time, slower than the deadline allows.
        let mut trickle = TcpStream::connect(addr(d)).await.unwrap();
        let head = format!(
            "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        trickle.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (got, _) = read_to_close(&mut trickle, Duration::from_secs(5)).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(started.elapsed() < Duration::from_secs(4));
        // Nothing was made of it, and the daemon serves the next request as ever.
        let (status, list) = d.get("/v1/customers").await;
        assert_eq!(status, 200);
        assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    }
);
