//! The OpenAPI document as an operator gets it, and the answers that checking the daemon against
//! it (schemathesis, `scripts/api-fuzz`) found wrong.

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;

both!(
    the_document_is_served_to_the_admin_only_and_is_what_the_cli_prints,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let anonymous = d.http.get(d.url("/v1/openapi.json")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let served = d
            .http
            .get(d.url("/v1/openapi.json"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(
            served.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let served: Value = served.json().await.unwrap();
        assert_eq!(served["openapi"], "3.1.0");
        let printed = std::process::Command::new(binary())
            .arg("openapi")
            .env_clear()
            .output()
            .expect("settled openapi");
        assert!(printed.status.success());
        let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON on stdout");
        assert_eq!(served, printed);
        let ops = &served["paths"]["/v1/customers"];
        assert_eq!(ops["post"]["operationId"], "create_customer");
        assert!(served["paths"]["/webhooks/standard/{source}"]["post"].is_object());
    }
);

both!(
    listing_subscriptions_by_a_status_there_is_not_is_refused,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let (status, body) = d.get("/v1/subscriptions?status=AAA").await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("status:")
        );
        let (status, body) = d.get("/v1/subscriptions?status=paused").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"], json!([]));
    }
);

both!(
    an_oversized_body_is_refused_in_the_error_format_on_every_route,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("EUR").await;
        // Over `server.max_body_bytes` (64 KiB), sent without an Idempotency-Key so the route's
        // own extractor meets it: these read the raw body (an empty one is allowed, or it is
        // scanned for card data before it is parsed).
        let big = format!("{{\"amount\": \"{}\"}}", "1".repeat(70_000));
        for path in [
            format!("/v1/customers/{customer}/charge_balance"),
            format!("/v1/customers/{customer}/payment_methods"),
            "/v1/invoices/in_000000000000000000000000/charge".to_string(),
            "/v1/customers".to_string(),
        ] {
            let r = d
                .http
                .post(d.url(&path))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(big.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 413, "{path}");
            assert_eq!(
                r.headers()["content-type"].to_str().unwrap(),
                "application/json",
                "{path}"
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "body_too_large", "{path}");
        }
    }
);

both!(
    a_nul_in_a_query_string_or_an_id_is_refused_before_it_reaches_storage,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        for path in [
            "/v1/payments?customer_id=cus_1&starting_after=%00",
            "/v1/invoices?customer_id=%01abc",
            "/v1/webhook_events?source=bank%00",
        ] {
            let (status, body) = d.get(path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(body["error"]["code"], "malformed_request", "{path}");
        }
        for path in [
            "/v1/customers/cus_%00abc",
            "/v1/jobs/charge_invoice:ca_%00",
            "/v1/webhook_events/whe_%FF%FE",
        ] {
            let (status, body) = d.get(path).await;
            assert_eq!(status, 404, "{path}: {body}");
            assert_eq!(body["error"]["code"], "not_found", "{path}");
        }
        // With an Idempotency-Key the path would be stored with the key: refused before that.
        let r = d
            .http
            .post(d.url("/v1/subscriptions/sub_%00/pause"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "nul-path")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // The daemon still answers normally afterwards.
        let (status, body) = d.get("/v1/payments?limit=5").await;
        assert_eq!(status, 200, "{body}");
    }
);
