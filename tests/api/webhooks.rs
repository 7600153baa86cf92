//! Gateway webhooks: signed intake (Stripe and Standard Webhooks), refusals that store nothing and
//! are counted, duplicates, durability across SIGKILL, processing once, and replays.
//!
//! Signatures are made with the hand-written HMAC-SHA256 in tests/support/sha256.rs (cross-checked
//! with `openssl`), never with the crates the daemon verifies with, plus fixed vectors published
//! by Stripe and by the Standard Webhooks project.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::sha256::{hmac_sha256, stripe_header, to_hex};

const SECRET: &str = "whsec_current_5c1c8a0e4f7b4d2a9e3f";
const OLD_SECRET: &str = "whsec_previous_0f9e8d7c6b5a4938";

/// Stripe's own fixed vector, from stripe-dotnet `src/StripeTests/Services/Events/EventUtilityTest.cs`
/// (secret `webhook_secret`, timestamp 1533204620) and its fixture
/// `src/StripeTests/Resources/event_test_signature.json`, whose trailing newline is signed too.
const STRIPE_VECTOR_SECRET: &str = "webhook_secret";
const STRIPE_VECTOR_HEADER: &str = "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";
const STRIPE_VECTOR_BODY: &str = "{\n  \"id\": \"evt_123\",\n  \"object\": \"event\",\n  \"account\": \"acct_123\",\n  \"api_version\": \"2017-05-25\",\n  \"created\": 1533204620,\n  \"data\": {\n    \"object\": {\n      \"id\": \"cus_123\",\n      \"object\": \"customer\",\n      \"created\": 123456789,\n      \"email\": \"test@stripe.com\",\n      \"livemode\": false,\n      \"metadata\": {}\n    }\n  },\n  \"livemode\": false,\n  \"pending_webhooks\": 1,\n  \"request\": {\n    \"id\": \"req_123\",\n    \"idempotency_key\": \"idempotency-key-123\"\n  },\n  \"type\": \"customer.created\"\n}\n";

/// The Standard Webhooks reference vector, from standard-webhooks/standard-webhooks
/// `libraries/go/webhook_test.go` (`TestWebhookSign`).
const SW_VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_VECTOR_TIMESTAMP: &str = "1614265330";
const SW_VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
const SW_VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// Far enough to accept the published vectors' 2018 and 2021 timestamps.
const CENTURY: &str = "3153600000";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn stripe_secrets(options: DaemonOptions, secrets: &[&str]) -> DaemonOptions {
    options.env(
        "SETTLED__STRIPE__WEBHOOK_SECRETS",
        serde_json::to_string(secrets).unwrap(),
    )
}

fn event_body(id: &str, kind: &str) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now_secs(),
        "type": kind,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "cus_gw123", "object": "customer", "email": "ada@example.com"}}
    })
    .to_string()
}

/// Posts a raw body to the Stripe intake with an optional `Stripe-Signature`.
async fn post_stripe(d: &Daemon, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut req = d
        .http
        .post(d.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_signed(d: &Daemon, secret: &str, body: &str) -> (u16, Value) {
    post_stripe(d, body, Some(&stripe_header(secret, now_secs(), body))).await
}

/// `webhook-signature` for a Standard Webhooks delivery, computed independently.
fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &str) -> String {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!("{id}.{timestamp}.{body}");
    format!("v1,{}", BASE64.encode(hmac_sha256(&key, signed.as_bytes())))
}

async fn post_standard(
    d: &Daemon,
    source: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut req = d
        .http
        .post(d.url(&format!("/webhooks/standard/{source}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every stored event, newest first.
async fn events(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = d
        .get(&format!("/v1/webhook_events?limit=1000{query}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().cloned().unwrap()
}

/// The value of one series in `/metrics` (0 when it does not exist yet).
async fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let found: BTreeMap<String, String> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        if found == wanted {
            return value.parse().unwrap();
        }
    }
    0.0
}

async fn refused(d: &Daemon, source: &str, reason: &str) -> f64 {
    metric(
        d,
        "settled_webhooks_refused_total",
        &[("source", source), ("reason", reason)],
    )
    .await
}

/// Waits until the event has left `received`, and returns it.
async fn wait_processed(d: &Daemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = d.get(&format!("/v1/webhook_events/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] != "received" {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "event never processed: {body}\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both!(
    a_signed_stripe_event_is_stored_answered_and_then_processed,
    |backend| async move {
        // The test's HMAC agrees with an outside implementation before it is trusted.
        let body = event_body("evt_openssl_check", "customer.created");
        let signed = format!("1700000000.{body}");
        let ours = to_hex(&hmac_sha256(SECRET.as_bytes(), signed.as_bytes()));
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac", SECRET, "-hex"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), signed.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let openssl = String::from_utf8_lossy(&out.stdout);
        assert!(
            openssl.trim().ends_with(&ours),
            "openssl {openssl} vs ours {ours}"
        );

        let w = World::start_with(
            backend,
            stripe_secrets(DaemonOptions::default().process(), &[SECRET]),
        )
        .await;
        let d = &w.daemon;
        let body = event_body("evt_first", "customer.created");
        let (status, answer) = post_signed(d, SECRET, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicate"], false);
        let id = answer["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("whe_"), "{answer}");

        let event = wait_processed(d, &id).await;
        assert_eq!(event["status"], "ignored", "{event}");
        assert_eq!(event["source"], "stripe");
        assert_eq!(event["event_id"], "evt_first");
        assert_eq!(event["type"], "customer.created");
        assert!(
            event["error"]
                .as_str()
                .unwrap()
                .contains("customer.created")
        );
        assert!(event["processed_at"].is_string(), "{event}");
        assert_eq!(event["replays"], 0);
        assert_eq!(event["payload"]["id"], "evt_first");

        assert_eq!(events(d, "&status=ignored").await.len(), 1);
        assert_eq!(events(d, "&status=received").await.len(), 0);
        let (status, _) = d.get("/v1/webhook_events?status=bogus").await;
        assert_eq!(status, 422);
        let (status, _) = d.get("/v1/webhook_events/whe_nope").await;
        assert_eq!(status, 404);
        assert_eq!(
            metric(
                d,
                "settled_webhooks_received_total",
                &[("source", "stripe")]
            )
            .await,
            1.0
        );
        assert_eq!(
            metric(
                d,
                "settled_events_processed_total",
                &[("type", "other"), ("outcome", "ignored")]
            )
            .await,
            1.0
        );
    }
);

both!(
    stripes_published_signature_vector_is_accepted,
    |backend| async move {
        let options = stripe_secrets(DaemonOptions::default().process(), &[STRIPE_VECTOR_SECRET])
            .env("SETTLED__STRIPE__WEBHOOK_TOLERANCE_SECONDS", CENTURY);
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        // The independent HMAC reproduces Stripe's published signature.
        assert_eq!(
            stripe_header(STRIPE_VECTOR_SECRET, 1533204620, STRIPE_VECTOR_BODY),
            STRIPE_VECTOR_HEADER.rsplit_once(",v0=").unwrap().0
        );
        let (status, answer) = post_stripe(d, STRIPE_VECTOR_BODY, Some(STRIPE_VECTOR_HEADER)).await;
        assert_eq!(status, 200, "{answer}");
        let event = wait_processed(d, answer["id"].as_str().unwrap()).await;
        assert_eq!(event["event_id"], "evt_123");
        assert_eq!(event["type"], "customer.created");
        // Without the signed trailing newline the same header no longer matches.
        let (status, answer) =
            post_stripe(d, STRIPE_VECTOR_BODY.trim_end(), Some(STRIPE_VECTOR_HEADER)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature");
        assert_eq!(events(d, "").await.len(), 1);
        assert_eq!(refused(d, "stripe", "signature").await, 1.0);
    }
);

both!(
    rotated_secrets_both_verify_and_a_removed_one_is_refused,
    |backend| async move {
        let options = stripe_secrets(DaemonOptions::default().process(), &[OLD_SECRET, SECRET]);
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let (status, a) =
            post_signed(d, OLD_SECRET, &event_body("evt_old", "customer.created")).await;
        assert_eq!(status, 200, "{a}");
        let (status, b) = post_signed(d, SECRET, &event_body("evt_new", "customer.created")).await;
        assert_eq!(status, 200, "{b}");
        // A header carrying both signatures (Stripe sends one per active secret) verifies too.
        let body = event_body("evt_both", "customer.created");
        let t = now_secs();
        let header = format!(
            "{},{}",
            stripe_header(OLD_SECRET, t, &body),
            stripe_header(SECRET, t, &body).split_once(',').unwrap().1
        );
        let (status, c) = post_stripe(d, &body, Some(&header)).await;
        assert_eq!(status, 200, "{c}");

        // The old secret is removed from the config: what it signs is refused.
        let World { dir, db, daemon } = w;
        tokio::task::spawn_blocking(move || daemon.stop(Duration::from_secs(20)))
            .await
            .unwrap();
        let options = stripe_secrets(DaemonOptions::default().process(), &[SECRET]);
        let d = Daemon::start(dir.path(), &db.url, options).await;
        let (status, answer) = post_signed(
            &d,
            OLD_SECRET,
            &event_body("evt_old_again", "customer.created"),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature");
        let (status, answer) =
            post_signed(&d, SECRET, &event_body("evt_new_again", "customer.created")).await;
        assert_eq!(status, 200, "{answer}");
        let stored: Vec<String> = events(&d, "")
            .await
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(stored.len(), 4, "{stored:?}");
        assert!(!stored.contains(&"evt_old_again".to_string()));
        assert_eq!(refused(&d, "stripe", "signature").await, 1.0);
        drop(d);
        drop(db);
    }
);

both!(
    bad_stripe_deliveries_are_refused_counted_and_store_nothing,
    |backend| async move {
        let options = stripe_secrets(DaemonOptions::default().process(), &[SECRET])
            .env("SETTLED__STRIPE__WEBHOOK_MAX_BODY_BYTES", "4096");
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let good = event_body("evt_bad_cases", "customer.created");
        let now = now_secs();
        let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
            ("no header", good.clone(), None, 400, "invalid_signature"),
            (
                "garbage header",
                good.clone(),
                Some("garbage".into()),
                400,
                "invalid_signature",
            ),
            (
                "no v1",
                good.clone(),
                Some(format!("t={now}")),
                400,
                "invalid_signature",
            ),
            (
                "no t",
                good.clone(),
                Some(
                    stripe_header(SECRET, now, &good)
                        .split_once(',')
                        .unwrap()
                        .1
                        .to_string(),
                ),
                400,
                "invalid_signature",
            ),
            (
                "wrong secret",
                good.clone(),
                Some(stripe_header("whsec_not_ours", now, &good)),
                400,
                "invalid_signature",
            ),
            (
                "expired",
                good.clone(),
                Some(stripe_header(SECRET, now - 400, &good)),
                400,
                "timestamp_out_of_tolerance",
            ),
            (
                "future",
                good.clone(),
                Some(stripe_header(SECRET, now + 400, &good)),
                400,
                "timestamp_out_of_tolerance",
            ),
            (
                "not json",
                "not json at all".into(),
                Some(stripe_header(SECRET, now, "not json at all")),
                400,
                "invalid_body",
            ),
            (
                "no id",
                r#"{"type":"customer.created"}"#.into(),
                Some(stripe_header(SECRET, now, r#"{"type":"customer.created"}"#)),
                400,
                "invalid_body",
            ),
            (
                "no type",
                r#"{"id":"evt_x"}"#.into(),
                Some(stripe_header(SECRET, now, r#"{"id":"evt_x"}"#)),
                400,
                "invalid_body",
            ),
            (
                "numeric id",
                r#"{"id":5,"type":"customer.created"}"#.into(),
                Some(stripe_header(
                    SECRET,
                    now,
                    r#"{"id":5,"type":"customer.created"}"#,
                )),
                400,
                "invalid_body",
            ),
        ];
        for (label, body, header, status, code) in &cases {
            let (got, answer) = post_stripe(d, body, header.as_deref()).await;
            assert_eq!(got, *status, "{label}: {answer}");
            assert_eq!(answer["error"]["code"], *code, "{label}: {answer}");
            assert!(answer["error"]["message"].is_string(), "{label}: {answer}");
        }
        // Over the limit: 413, even though the signature is right.
        let padding = "x".repeat(5000);
        let big = json!({"id": "evt_big", "type": "customer.created", "pad": padding}).to_string();
        let (status, answer) = post_signed(d, SECRET, &big).await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(answer["error"]["code"], "body_too_large");

        assert!(events(d, "").await.is_empty(), "refusals stored nothing");
        assert_eq!(refused(d, "stripe", "signature").await, 5.0);
        assert_eq!(refused(d, "stripe", "timestamp").await, 2.0);
        assert_eq!(refused(d, "stripe", "body").await, 4.0);
        assert_eq!(refused(d, "stripe", "too_large").await, 1.0);
        assert_eq!(
            metric(
                d,
                "settled_webhooks_received_total",
                &[("source", "stripe")]
            )
            .await,
            0.0
        );

        // Within the tolerance, a little old is fine.
        let (status, answer) =
            post_stripe(d, &good, Some(&stripe_header(SECRET, now - 250, &good))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(events(d, "").await.len(), 1);
    }
);

both!(
    without_a_configured_secret_stripe_deliveries_are_refused,
    |backend| async move {
        let w = World::start_with(backend, DaemonOptions::default().process()).await;
        let d = &w.daemon;
        let body = event_body("evt_unconfigured", "customer.created");
        let (status, answer) = post_signed(d, SECRET, &body).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "webhook_secret_not_configured");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("stripe.webhook_secrets"),
            "{answer}"
        );
        assert!(events(d, "").await.is_empty());
        assert_eq!(refused(d, "stripe", "no_secret").await, 1.0);
    }
);

both!(
    the_same_event_delivered_five_times_at_once_is_stored_and_processed_once,
    |backend| async move {
        let w = World::start_with(
            backend,
            stripe_secrets(DaemonOptions::default().process(), &[SECRET]),
        )
        .await;
        let d = &w.daemon;
        let body = event_body("evt_five_times", "customer.created");
        let header = stripe_header(SECRET, now_secs(), &body);
        let answers =
            futures::future::join_all((0..5).map(|_| post_stripe(d, &body, Some(&header)))).await;
        for (status, answer) in &answers {
            assert_eq!(*status, 200, "{answer}");
        }
        let new: Vec<&Value> = answers
            .iter()
            .map(|(_, a)| a)
            .filter(|a| a["duplicate"] == false)
            .collect();
        assert_eq!(new.len(), 1, "{answers:?}");
        let id = new[0]["id"].as_str().unwrap();
        for (_, a) in &answers {
            assert_eq!(a["id"], id, "duplicates name the stored event");
        }
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let stored = events(d, "").await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0]["status"], "ignored");
        assert_eq!(
            metric(
                d,
                "settled_webhooks_duplicate_total",
                &[("source", "stripe")]
            )
            .await,
            4.0
        );
        assert_eq!(
            metric(
                d,
                "settled_events_processed_total",
                &[("type", "other"), ("outcome", "ignored")]
            )
            .await,
            1.0,
            "processed once"
        );
        assert_eq!(
            metric(d, "settled_work_items_total", &[("kind", "process_event")]).await,
            1.0,
            "taken by a drain once"
        );
        let (_, jobs) = d.get("/v1/jobs").await;
        assert_eq!(jobs["data"].as_array().unwrap().len(), 0, "{jobs}");
    }
);

/// A daemon with the `bank` source. A process: these tests count refusals in its own metrics.
fn standard_options(secret: &str) -> DaemonOptions {
    DaemonOptions::default().process().env(
        "SETTLED__STANDARD_WEBHOOKS__SOURCES__BANK__SECRETS",
        format!("[\"{secret}\"]"),
    )
}

both!(
    standard_webhooks_reference_vector_and_independent_signatures_verify,
    |backend| async move {
        let options = standard_options(SW_VECTOR_SECRET)
            .env("SETTLED__STANDARD_WEBHOOKS__TOLERANCE_SECONDS", CENTURY);
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        // The independent HMAC reproduces the published signature.
        assert_eq!(
            standard_signature(
                SW_VECTOR_SECRET,
                SW_VECTOR_ID,
                SW_VECTOR_TIMESTAMP,
                SW_VECTOR_BODY
            ),
            SW_VECTOR_SIGNATURE
        );
        // The published message verifies; its body has no "type", so it is refused as a body
        // (not as a signature) and nothing is stored.
        let (status, answer) = post_standard(
            d,
            "bank",
            &[
                ("webhook-id", SW_VECTOR_ID),
                ("webhook-timestamp", SW_VECTOR_TIMESTAMP),
                ("webhook-signature", SW_VECTOR_SIGNATURE),
            ],
            SW_VECTOR_BODY,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_body");
        assert_eq!(refused(d, "bank", "body").await, 1.0);
        assert_eq!(refused(d, "bank", "signature").await, 0.0);

        // A bank transfer notice signed independently, alongside a signature by another key.
        let body = json!({"type": "transfer.noticed", "data": {"reference": "TRX-1"}}).to_string();
        let ts = now_secs().to_string();
        let sig = standard_signature(SW_VECTOR_SECRET, "msg_bank_1", &ts, &body);
        let header = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {sig}");
        let headers = [
            ("webhook-id", "msg_bank_1"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", header.as_str()),
        ];
        let (status, answer) = post_standard(d, "bank", &headers, &body).await;
        assert_eq!(status, 200, "{answer}");
        let (status, again) = post_standard(d, "bank", &headers, &body).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["duplicate"], true);
        let event = wait_processed(d, answer["id"].as_str().unwrap()).await;
        assert_eq!(event["source"], "bank");
        assert_eq!(event["event_id"], "msg_bank_1");
        assert_eq!(event["type"], "transfer.noticed");
        assert_eq!(event["status"], "ignored");
        assert_eq!(events(d, "&source=bank").await.len(), 1);
        assert_eq!(
            metric(d, "settled_webhooks_received_total", &[("source", "bank")]).await,
            1.0
        );
        assert_eq!(
            metric(d, "settled_webhooks_duplicate_total", &[("source", "bank")]).await,
            1.0
        );
    }
);

both!(
    bad_standard_webhook_deliveries_are_refused_counted_and_store_nothing,
    |backend| async move {
        let secret = format!("whsec_{}", BASE64.encode(b"bank-signing-key-0123456789"));
        let options =
            standard_options(&secret).env("SETTLED__STANDARD_WEBHOOKS__MAX_BODY_BYTES", "2048");
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let body = json!({"type": "payment.received", "data": {"invoice_number": "INV-1", "amount": "1.00", "currency": "USD", "reference": "r"}}).to_string();
        let now = now_secs();
        let ts = now.to_string();
        let good = standard_signature(&secret, "msg_1", &ts, &body);

        let (status, answer) = post_standard(
            d,
            "nosuch",
            &[
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &good),
            ],
            &body,
        )
        .await;
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"]["code"], "unknown_source");
        assert_eq!(refused(d, "unknown", "unknown_source").await, 1.0);

        let old = (now - 400).to_string();
        let future = (now + 400).to_string();
        let old_sig = standard_signature(&secret, "msg_1", &old, &body);
        let future_sig = standard_signature(&secret, "msg_1", &future, &body);
        let other_key = standard_signature("whsec_b3RoZXI=", "msg_1", &ts, &body);
        let not_json_sig = standard_signature(&secret, "msg_1", &ts, "{nope");
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
        let cases: Vec<Case> = vec![
            (
                "no id",
                vec![("webhook-timestamp", &ts), ("webhook-signature", &good)],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "no timestamp",
                vec![("webhook-id", "msg_1"), ("webhook-signature", &good)],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "no signature",
                vec![("webhook-id", "msg_1"), ("webhook-timestamp", &ts)],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "malformed signature",
                vec![
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", "v1 nothing"),
                ],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "other key",
                vec![
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &other_key),
                ],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "signed id differs",
                vec![
                    ("webhook-id", "msg_2"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &good),
                ],
                &body,
                400,
                "invalid_signature",
            ),
            (
                "expired",
                vec![
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &old),
                    ("webhook-signature", &old_sig),
                ],
                &body,
                400,
                "timestamp_out_of_tolerance",
            ),
            (
                "future",
                vec![
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &future),
                    ("webhook-signature", &future_sig),
                ],
                &body,
                400,
                "timestamp_out_of_tolerance",
            ),
            (
                "not json",
                vec![
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &not_json_sig),
                ],
                "{nope",
                400,
                "invalid_body",
            ),
        ];
        for (label, headers, body, status, code) in &cases {
            let (got, answer) = post_standard(d, "bank", headers, body).await;
            assert_eq!(got, *status, "{label}: {answer}");
            assert_eq!(answer["error"]["code"], *code, "{label}: {answer}");
        }
        let big = json!({"type": "payment.received", "pad": "x".repeat(3000)}).to_string();
        let big_sig = standard_signature(&secret, "msg_big", &ts, &big);
        let (status, answer) = post_standard(
            d,
            "bank",
            &[
                ("webhook-id", "msg_big"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &big_sig),
            ],
            &big,
        )
        .await;
        assert_eq!(status, 413, "{answer}");

        assert!(events(d, "").await.is_empty(), "refusals stored nothing");
        assert_eq!(refused(d, "bank", "signature").await, 6.0);
        assert_eq!(refused(d, "bank", "timestamp").await, 2.0);
        assert_eq!(refused(d, "bank", "body").await, 1.0);
        assert_eq!(refused(d, "bank", "too_large").await, 1.0);
    }
);

both!(
    an_event_answered_before_a_sigkill_is_processed_after_restart,
    |backend| async move {
        // HTTP only: the answer is given, nothing processes the event.
        let options = stripe_secrets(DaemonOptions::default().process(), &[SECRET])
            .env("SETTLED__DAEMON__ROLE", "http");
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let mut ids = Vec::new();
        for n in 0..2 {
            let (status, answer) = post_signed(
                d,
                SECRET,
                &event_body(&format!("evt_kill_{n}"), "customer.created"),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            ids.push(answer["id"].as_str().unwrap().to_string());
        }
        for e in events(d, "").await {
            assert_eq!(e["status"], "received", "{e}");
            assert!(e["processed_at"].is_null());
        }
        let World {
            dir,
            db,
            mut daemon,
        } = w;
        daemon.signal(libc::SIGKILL);
        assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());

        // Whatever the queue holds is lost as well: the sweep must find the events in their own
        // table.
        match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query("DELETE FROM Jobs")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query("DELETE FROM apalis.jobs")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }

        let options = stripe_secrets(DaemonOptions::default(), &[SECRET]);
        let d = Daemon::start(dir.path(), &db.url, options).await;
        for id in &ids {
            let event = wait_processed(&d, id).await;
            assert_eq!(event["status"], "ignored", "{event}");
            assert!(event["processed_at"].is_string(), "{event}");
        }
        assert_eq!(events(&d, "").await.len(), 2);
        drop(d);
        drop(db);
    }
);

both!(
    replays_through_the_api_and_the_cli_rerun_processing_idempotently,
    |backend| async move {
        let w = World::start_with(
            backend,
            stripe_secrets(DaemonOptions::default().process(), &[SECRET]),
        )
        .await;
        let d = &w.daemon;
        let (status, answer) =
            post_signed(d, SECRET, &event_body("evt_replayed", "customer.created")).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["id"].as_str().unwrap().to_string();
        let first = wait_processed(d, &id).await;
        assert_eq!(first["status"], "ignored");

        let (status, replayed) = d
            .post(&format!("/v1/webhook_events/{id}/replay"), json!({}))
            .await;
        assert_eq!(status, 200, "{replayed}");
        assert_eq!(replayed["replays"], 1);
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let after_api = wait_processed(d, &id).await;
        assert_eq!(after_api["status"], "ignored", "{after_api}");
        assert_eq!(after_api["replays"], 1);

        let cli = |args: &[&str]| {
            let out = std::process::Command::new(binary())
                .args(args)
                .env("SETTLED__DATABASE__URL", &d.database_url)
                .env("SETTLED__DAEMON__STATE_DIR", &d.state_dir)
                .env("SETTLED__ADMIN__TOKENS", format!("[\"{TOKEN}\"]"))
                .env("SETTLED__CLOCK__MODE", "manual")
                .env("SETTLED__CLOCK__START", "2027-01-01T00:00:00Z")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, out, err) = cli(&["webhooks", "replay", &id, "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let replayed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(replayed["replays"], 2);
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let after_cli = wait_processed(d, &id).await;
        assert_eq!(after_cli["status"], "ignored", "{after_cli}");

        // Still one event; each replay ran processing once more, under its own job.
        let stored = events(d, "").await;
        assert_eq!(stored.len(), 1);
        assert_eq!(
            metric(
                d,
                "settled_events_processed_total",
                &[("type", "other"), ("outcome", "ignored")]
            )
            .await,
            3.0
        );
        assert_eq!(
            metric(d, "settled_work_items_total", &[("kind", "process_event")]).await,
            3.0,
            "the delivery and each replay taken once"
        );
        let (_, jobs) = d.get("/v1/jobs").await;
        assert_eq!(jobs["data"].as_array().unwrap().len(), 0, "{jobs}");

        let (code, out, err) = cli(&["webhooks", "list", "--status", "ignored"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&id) && out.contains("evt_replayed"), "{out}");
        let (code, out, err) = cli(&["webhooks", "show", &id, "--json"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["replays"], 2);
        let (code, _, _) = cli(&["webhooks", "replay", "whe_missing"]);
        assert_eq!(code, Some(4));
        let (code, _, _) = cli(&["webhooks", "list", "--status", "bogus"]);
        assert_eq!(code, Some(3));
    }
);

/// Runs statements against the daemon's database from outside (to make storage refuse).
async fn exec_on(backend: Backend, url: &str, statements: &[&str]) {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            for s in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*s))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            for s in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(*s))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        }
    }
}

both!(
    a_delivery_storage_refuses_is_answered_503_and_stored_when_delivered_again,
    |backend| async move {
        let w =
            World::start_with(backend, stripe_secrets(DaemonOptions::default(), &[SECRET])).await;
        let d = &w.daemon;
        let refuse: &[&str] = match backend {
            Backend::Sqlite => &["CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_events \
                 WHEN NEW.event_id = 'evt_refused' BEGIN SELECT RAISE(ABORT, 'storage refuses'); END"],
            Backend::Postgres => &[
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN \
                 IF NEW.event_id = 'evt_refused' THEN RAISE EXCEPTION 'storage refuses'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_one BEFORE INSERT ON webhook_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_one()",
            ],
        };
        exec_on(backend, &d.database_url, refuse).await;
        let refused_body = event_body("evt_refused", "customer.created");
        // Delivered together with others: only the refused one fails.
        let bodies: Vec<String> = (0..4)
            .map(|n| event_body(&format!("evt_alongside_{n}"), "customer.created"))
            .chain([refused_body.clone()])
            .collect();
        let answers =
            futures::future::join_all(bodies.iter().map(|b| post_signed(d, SECRET, b))).await;
        for (i, (status, answer)) in answers.iter().enumerate() {
            let expected = if i == 4 { 503 } else { 200 };
            assert_eq!(*status, expected, "{i}: {answer}");
        }
        assert_eq!(answers[4].1["error"]["code"], "unavailable");
        let stored = events(d, "").await;
        assert_eq!(stored.len(), 4, "{stored:?}");
        assert!(stored.iter().all(|e| e["event_id"] != "evt_refused"));

        // Storage is back: the gateway's next delivery is stored and processed.
        let restore: &[&str] = match backend {
            Backend::Sqlite => &["DROP TRIGGER refuse_one"],
            Backend::Postgres => &["DROP TRIGGER refuse_one ON webhook_events"],
        };
        exec_on(backend, &d.database_url, restore).await;
        let (status, answer) = post_signed(d, SECRET, &refused_body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicate"], false);
        let event = wait_processed(d, answer["id"].as_str().unwrap()).await;
        assert_eq!(event["status"], "ignored");
    }
);

both!(
    bodies_processing_could_not_read_are_refused_at_the_door,
    |backend| async move {
        let w =
            World::start_with(backend, stripe_secrets(DaemonOptions::default(), &[SECRET])).await;
        let d = &w.daemon;
        // Nested deeper than the JSON reader goes.
        let deep = format!(
            "{{\"id\": \"evt_deep\", \"type\": \"customer.created\", \"data\": {{\"object\": {}1{}}}}}",
            "[".repeat(130),
            "]".repeat(130)
        );
        let (status, answer) = post_signed(d, SECRET, &deep).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_body");
        // A NUL in the event id (no text column stores it).
        let nul = event_body("evt_nulX", "customer.created").replace("evt_nulX", "evt_nul\\u0000x");
        assert!(nul.contains("evt_nul\\u0000x"), "{nul}");
        let (status, answer) = post_signed(d, SECRET, &nul).await;
        assert_eq!(status, 400, "{answer}");
        // A PaymentIntent whose id is not a string: it could never be told apart from another.
        let odd = json!({"id": "evt_odd", "object": "event", "type": "payment_intent.succeeded",
                         "data": {"object": {"id": 42, "object": "payment_intent",
                                             "amount_received": 100, "currency": "usd"}}})
        .to_string();
        let (status, answer) = post_signed(d, SECRET, &odd).await;
        assert_eq!(status, 400, "{answer}");
        assert!(events(d, "").await.is_empty(), "nothing stored");
        // A body just within the limits is taken.
        let fine = format!(
            "{{\"id\": \"evt_fine\", \"type\": \"customer.created\", \"data\": {{\"object\": {}1{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        let (status, answer) = post_signed(d, SECRET, &fine).await;
        assert_eq!(status, 200, "{answer}");
    }
);

both!(
    a_delivery_the_database_cannot_take_is_answered_503_within_seconds,
    |backend| async move {
        let w =
            World::start_with(backend, stripe_secrets(DaemonOptions::default(), &[SECRET])).await;
        let d = &w.daemon;
        // Something holds the table the events go into (a long migration, a stuck session).
        let body = event_body("evt_blocked", "customer.created");
        let started;
        let (status, answer) = match backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&w.db.url).await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                started = Instant::now();
                let answer = post_signed(d, SECRET, &body).await;
                tx.rollback().await.unwrap();
                answer
            }
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&w.db.url).await.unwrap();
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                started = Instant::now();
                let answer = post_signed(d, SECRET, &body).await;
                sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
                answer
            }
        };
        let took = started.elapsed();
        assert_eq!(status, 503, "{answer}");
        assert!(took < Duration::from_secs(4), "answered after {took:?}");
        // Delivered again once the database takes writes: stored once.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, answer) = post_signed(d, SECRET, &body).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{answer}");
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(events(d, "").await.len(), 1);
    }
);
