//! SIGHUP: a rotated webhook signing secret and a new admin token are taken without a restart,
//! while a charge is in flight, and that charge finishes; a configuration that does not load
//! changes nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::sha256::stripe_header;
use crate::support::stripe_gateway::StripeGateway;

const OLD_TOKEN: &str = "old-admin-token-5b0c9e1d7a3f4e2b8c6d";
const NEW_TOKEN: &str = "new-admin-token-9e8d7c6b5a4f3e2d1c0b";
const CAROL_OLD: &str = "carol-before-0123456789abcdef01234567";
const CAROL_NEW: &str = "carol-after-0123456789abcdef012345678";
const OLD_SECRET: &str = "whsec_before_rotation_1a2b3c";
const NEW_SECRET: &str = "whsec_after_rotation_4d5e6f";

async fn as_admin(d: &Daemon, token: &str, path: &str) -> u16 {
    d.http
        .get(d.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn deliver(d: &Daemon, secret: &str, id: &str) -> u16 {
    let now = chrono::Utc::now().timestamp();
    let body = json!({"id": id, "object": "event", "api_version": "2024-06-20", "created": now,
        "type": "customer.created", "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "cus_gw1", "object": "customer"}}})
    .to_string();
    d.http
        .post(d.url("/webhooks/stripe"))
        .header("stripe-signature", stripe_header(secret, now, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_log(d: &Daemon, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "never logged {needle:?}:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both!(
    sighup_takes_rotated_secrets_and_tokens_while_a_charge_is_in_flight,
    |backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("admin-tokens");
        let secrets = dir.path().join("webhook-secrets");
        std::fs::write(&tokens, format!("{OLD_TOKEN}\n")).unwrap();
        std::fs::write(&secrets, format!("{OLD_SECRET}\n")).unwrap();
        let carol = dir.path().join("carol-token");
        std::fs::write(&carol, format!("{CAROL_OLD}\n")).unwrap();
        let gateway = StripeGateway::start().await;
        let options = DaemonOptions {
            with_token: false,
            ..DaemonOptions::default()
        }
        .env("SETTLED__ADMIN__TOKENS_FILE", tokens.display().to_string())
        .env(
            "SETTLED__ADMIN__TOKENS",
            format!(
                "[{{name = \"carol\", token_file = {:?}}}]",
                carol.display().to_string()
            ),
        )
        .env(
            "SETTLED__STRIPE__WEBHOOK_SECRETS_FILE",
            secrets.display().to_string(),
        )
        .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
        .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
        .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "10")
        .process();
        let mut w = World::start_with(backend, options).await;
        assert_eq!(deliver(&w.daemon, OLD_SECRET, "evt_before").await, 200);

        // A customer with a card and an invoice, charged while the gateway is slow.
        let admin = |path: &str, body: Value| {
            let d = &w.daemon;
            let req = d.http.post(d.url(path)).bearer_auth(OLD_TOKEN).json(&body);
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (status, c) = admin(
            "/v1/customers",
            json!({"email": "ap@example.com", "name": "Co", "currency": "USD"}),
        )
        .await;
        assert_eq!(status, 201, "{c}");
        let cus = c["id"].as_str().unwrap().to_string();
        let (status, pm) = admin(
            &format!("/v1/customers/{cus}/payment_methods"),
            json!({"gateway": "stripe", "token": "pm_card_visa"}),
        )
        .await;
        assert_eq!(status, 201, "{pm}");
        let (status, inv) = admin(
            "/v1/invoices",
            json!({"customer_id": cus, "items": [{"description": "Work", "unit_amount": "25.00"}]}),
        )
        .await;
        assert_eq!(status, 201, "{inv}");
        let id = inv["id"].as_str().unwrap().to_string();
        gateway.set_latency(Duration::from_secs(3));
        let charge = {
            let d = &w.daemon;
            d.http
                .post(d.url(&format!("/v1/invoices/{id}/charge")))
                .bearer_auth(OLD_TOKEN)
                .json(&json!({}))
                .send()
        };
        let charging = tokio::spawn(charge);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Rotate both, and tell the daemon.
        std::fs::write(&tokens, format!("{NEW_TOKEN}\n")).unwrap();
        std::fs::write(&secrets, format!("{NEW_SECRET}\n")).unwrap();
        std::fs::write(&carol, format!("{CAROL_NEW}\n")).unwrap();
        w.daemon.signal(libc::SIGHUP);
        wait_log(
            &w.daemon,
            "reloaded: admin tokens and webhook signing secrets",
            1,
        )
        .await;
        let d = &w.daemon;
        assert_eq!(as_admin(d, NEW_TOKEN, "/v1/customers").await, 200);
        assert_eq!(as_admin(d, OLD_TOKEN, "/v1/customers").await, 401);
        assert_eq!(as_admin(d, CAROL_NEW, "/v1/customers").await, 200);
        assert_eq!(as_admin(d, CAROL_OLD, "/v1/customers").await, 401);
        assert_eq!(deliver(d, NEW_SECRET, "evt_after").await, 200);
        assert_eq!(deliver(d, OLD_SECRET, "evt_old_secret").await, 400);

        // The charge in flight finished as if nothing happened.
        let r = charging.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        let paid: Value = r.json().await.unwrap();
        assert_eq!(paid["status"], "paid", "{paid}");

        // A reload that cannot be read changes nothing, and the daemon keeps running.
        std::fs::remove_file(&tokens).unwrap();
        w.daemon.signal(libc::SIGHUP);
        wait_log(&w.daemon, "reload refused", 1).await;
        let d = &w.daemon;
        assert_eq!(as_admin(d, NEW_TOKEN, "/v1/customers").await, 200);
        assert!(w.daemon.wait_exit(Duration::from_millis(200)).is_none());
    }
);
