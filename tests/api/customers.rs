//! Customers, billing contacts and saved payment methods.

use serde_json::json;

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::StripeGateway;

both!(
    customers_are_created_read_updated_and_found_by_billing_contact,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let (status, a) = d
        .post(
            "/v1/customers",
            json!({"email": "ops@acme.example", "name": "Acme", "currency": "usd", "timezone": "America/New_York",
                   "billing_emails": ["ap@acme.example", "cfo@acme.example"], "auto_charge": false}),
        )
        .await;
        assert_eq!(status, 201, "{a}");
        assert!(a["id"].as_str().unwrap().starts_with("cus_"));
        assert_eq!(a["currency"], "USD");
        assert_eq!(
            a["billing_emails"],
            json!(["ap@acme.example", "cfo@acme.example"])
        );
        assert_eq!(a["auto_charge"], false);
        assert_eq!(a["credit_balance"], "0.00");
        assert_eq!(a["outstanding"], "0.00");
        let (status, b) = d
            .post(
                "/v1/customers",
                json!({"email": "ap@acme.example", "name": "Acme GmbH", "currency": "EUR"}),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(
            b["billing_emails"],
            json!(["ap@acme.example"]),
            "defaults to the email"
        );
        assert_eq!(b["timezone"], "UTC");

        let (status, found) = d.get("/v1/customers?billing_email=AP@acme.example").await;
        assert_eq!(status, 200);
        let mut ids: Vec<&str> = found["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        ids.sort();
        let mut expected = vec![a["id"].as_str().unwrap(), b["id"].as_str().unwrap()];
        expected.sort();
        assert_eq!(ids, expected, "one contact, several accounts");

        let id = a["id"].as_str().unwrap();
        let (status, patched) = d
        .patch(&format!("/v1/customers/{id}"), json!({"name": "Acme Inc", "auto_charge": true, "billing_emails": ["billing@acme.example"]}))
        .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["name"], "Acme Inc");
        assert_eq!(patched["auto_charge"], true);
        let (_, found) = d.get("/v1/customers?billing_email=cfo@acme.example").await;
        assert_eq!(
            found["data"].as_array().unwrap().len(),
            0,
            "the contact list was replaced"
        );
        let (status, _) = d.get("/v1/customers/cus_missing").await;
        assert_eq!(status, 404);
        let (_, page) = d.get("/v1/customers?limit=1").await;
        assert_eq!(page["data"].as_array().unwrap().len(), 1);
        assert_eq!(page["has_more"], true);
    }
);

both!(
    bad_customer_input_is_refused_and_changes_nothing,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cases = [
            (
                json!({"email": "not-an-address", "name": "A", "currency": "USD"}),
                422,
                "email",
            ),
            (
                json!({"email": "a@example.com", "name": "A", "currency": "XXX"}),
                422,
                "currency",
            ),
            (
                json!({"email": "a@example.com", "name": "A", "currency": "USD", "timezone": "Nowhere/City"}),
                422,
                "timezone",
            ),
            (
                json!({"email": "a@example.com", "name": "A", "currency": "USD", "billing_emails": ["ok@example.com", "bad"]}),
                422,
                "billing_emails[1]",
            ),
            (
                json!({"email": "a@example.com", "name": "A", "currency": "USD", "auto_charge": "yes"}),
                422,
                "auto_charge",
            ),
            (
                json!({"email": "a@example.com", "name": "A", "currency": "USD", "auto_charg": true}),
                422,
                "auto_charg",
            ),
            (
                json!({"email": "a@example.com", "currency": "USD"}),
                422,
                "name",
            ),
        ];
        for (body, want, field) in cases {
            let (status, answer) = d.post("/v1/customers", body).await;
            assert_eq!(status, want, "{answer}");
            assert!(
                answer["error"]["message"].as_str().unwrap().contains(field),
                "{field}: {answer}"
            );
        }
        let r = d
            .http
            .post(d.url("/v1/customers"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let (_, list) = d.get("/v1/customers").await;
        assert_eq!(list["data"].as_array().unwrap().len(), 0);
    }
);

both!(
    payment_methods_are_saved_by_token_with_details_from_the_gateway,
    |backend| async move {
        let gateway = StripeGateway::start().await;
        // A process, so its log can be searched for the card number it must never hold.
        let options = DaemonOptions::default()
            .process()
            .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
            .env("SETTLED__STRIPE__API_BASE", gateway.base_url());
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let customer = d.customer("USD").await;
        let path = format!("/v1/customers/{customer}/payment_methods");

        let (status, visa) = d
            .post(&path, json!({"gateway": "stripe", "token": "pm_card_visa"}))
            .await;
        assert_eq!(status, 201, "{visa}\n{}", d.log_text());
        assert!(visa["id"].as_str().unwrap().starts_with("spm_"));
        assert!(visa["token"].as_str().unwrap().starts_with("pm_"));
        assert_eq!(visa["brand"], "visa");
        assert_eq!(visa["last4"], "4242");
        assert_eq!(visa["default"], true);
        assert!(visa["exp_year"].as_i64().unwrap() > 2026);
        let (_, c) = d.get(&format!("/v1/customers/{customer}")).await;
        assert!(
            c["gateway_customer_id"]
                .as_str()
                .unwrap()
                .starts_with("cus_"),
            "created at the gateway on first use"
        );

        let (status, mc) = d
            .post(
                &path,
                json!({"gateway": "stripe", "token": "pm_card_mastercard", "default": false}),
            )
            .await;
        assert_eq!(status, 201, "{mc}");
        assert_eq!(mc["last4"], "4444");
        assert_eq!(mc["default"], false);
        let mc_id = mc["id"].as_str().unwrap();
        let (status, now_default) = d.post(&format!("{path}/{mc_id}/default"), json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(now_default["default"], true);
        let (_, list) = d.get(&path).await;
        let defaults: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["default"] == true)
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(defaults, vec![mc_id], "exactly one default");

        // Card data never enters the daemon.
        let requests_before = gateway.requests().len();
        for body in [
            json!({"gateway": "stripe", "token": "pm_card_visa", "number": "4242424242424242"}),
            json!({"gateway": "stripe", "token": "pm_card_visa", "cvc": "123"}),
            json!({"gateway": "stripe", "token": "4242 4242 4242 4242"}),
            // Deeper, and as a JSON number, where a typed parse would echo it in its error.
            json!({"gateway": "stripe", "token": "pm_card_visa", "default": 4242424242424242u64}),
            json!({"gateway": "stripe", "token": "pm_card_visa", "meta": {"pan": ["4242424242424242"]}}),
        ] {
            let (status, answer) = d.post(&path, body).await;
            assert_eq!(status, 422, "{answer}");
            assert_eq!(answer["error"]["code"], "card_data_refused");
            assert!(!answer.to_string().contains("4242424242424242"), "{answer}");
        }
        // A control character in any text is refused, naming the field, and nothing is made.
        for (body, field) in [
            (
                json!({"email": "nul@example.com", "name": "Ac\u{0}me", "currency": "USD"}),
                "name",
            ),
            (
                json!({"email": "bell@example.com", "name": "Acme", "currency": "USD",
                       "billing_emails": ["a@example.com", "b\u{7}@example.com"]}),
                "billing_emails[1]",
            ),
        ] {
            let (status, answer) = d.post("/v1/customers", body).await;
            assert_eq!(status, 422, "{answer}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(field), "{answer}");
            assert!(message.contains("control character"), "{answer}");
        }
        let (_, found) = d.get("/v1/customers?billing_email=nul@example.com").await;
        assert!(
            found["data"].as_array().is_none_or(|a| a.is_empty()),
            "{found}"
        );
        // Amounts are capped so that no sum of them overflows: the largest twice still adds up.
        let rich = d.customer("USD").await;
        for (amount, status) in [
            ("1000000000000.00", 201),
            ("1000000000000.00", 201),
            ("1000000000000.01", 422),
            ("92233720368547758.07", 422),
        ] {
            let (got, answer) = d
                .post(
                    "/v1/credit_notes",
                    json!({"customer_id": rich, "amount": amount, "currency": "USD",
                           "reason": "goodwill"}),
                )
                .await;
            assert_eq!(got, status, "{amount}: {answer}");
        }
        let (status, view) = d.get(&format!("/v1/customers/{rich}")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["credit_balance"], "2000000000000.00", "{view}");
        let (status, answer) = d
            .post(
                &path,
                json!({"gateway": "stripe", "token": "pm_does_not_exist"}),
            )
            .await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(
            gateway.requests().len(),
            requests_before + 1,
            "refused bodies never reach the gateway"
        );
        assert!(
            !d.log_text().contains("4242424242424242"),
            "card numbers are never logged"
        );

        let (status, _) = d.delete(&format!("{path}/{mc_id}")).await;
        assert_eq!(status, 200);
        let (_, list) = d.get(&path).await;
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
    }
);
