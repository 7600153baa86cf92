//! The load generator of the webhook benchmarks: signed deliveries prepared before the clock
//! starts, fired from keep-alive connections by a plain HTTP/1.1 client that costs the machine
//! little.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signed Stripe delivery of `body` to `/webhooks/stripe`, as raw HTTP/1.1 bytes.
pub fn stripe_delivery(body: &str, secret: &str) -> Delivery {
    let request = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nStripe-Signature: {}\r\nContent-Length: {}\r\n\r\n{body}",
        sign(body, secret),
        body.len()
    );
    Delivery {
        request: request.into_bytes(),
    }
}

/// A `Stripe-Signature` header for `body` under `secret`, stamped now.
pub fn sign(body: &str, secret: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct Figures {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// One signed delivery, prepared before the clock starts (as pgbench's script is).
pub struct Delivery {
    pub request: Vec<u8>,
}

/// Reads one HTTP/1.1 response from a keep-alive connection; returns its status.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status line");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())
                        .flatten()
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return status;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends the deliveries from `concurrency` keep-alive connections (a plain HTTP/1.1 client, so
/// the load generator costs little of the machine); every one must be answered 200.
pub async fn fire(addr: &str, deliveries: Vec<Delivery>, concurrency: usize) -> Figures {
    use tokio::io::AsyncWriteExt;
    let n = deliveries.len();
    let deliveries = Arc::new(deliveries);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let deliveries = deliveries.clone();
            let next = next.clone();
            let addr = addr.to_string();
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(8192);
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= deliveries.len() {
                        return latencies;
                    }
                    let sent = Instant::now();
                    stream
                        .write_all(&deliveries[i].request)
                        .await
                        .expect("send");
                    let status = read_response(&mut stream, &mut buf).await;
                    assert_eq!(status, 200, "a delivery was not accepted");
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Figures {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}
