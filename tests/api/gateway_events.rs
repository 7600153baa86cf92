//! What gateway events do to the books: payments from a portal's "Pay Now", partial and excess
//! payments, the same payment told by our charge reply and by its webhook, duplicates delivered
//! concurrently, out-of-order pairs, refunds, disputes and bank transfers.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::both;
use crate::credits::assert_ledger;
use crate::helpers::*;
use crate::support::sha256::{hmac_sha256, stripe_header};
use crate::support::stripe_gateway::StripeGateway;

const SECRET: &str = "whsec_events_3b9d0c1e7a5f";
const BANK_SECRET: &str = "whsec_YmFuay1zZWNyZXQtZm9yLXRlc3RzLTEyMzQ1Ng==";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) async fn world(backend: Backend) -> (StripeGateway, World) {
    let gateway = StripeGateway::start().await;
    let options = DaemonOptions::default()
        .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
        .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
        .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "3")
        .env(
            "SETTLED__STRIPE__WEBHOOK_SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env(
            "SETTLED__STANDARD_WEBHOOKS__SOURCES__BANK__SECRETS",
            format!("[\"{BANK_SECRET}\"]"),
        );
    (gateway, World::start_with(backend, options).await)
}

/// A customer with a card saved at the gateway; returns (customer, gateway customer, card token).
pub(crate) async fn card_customer(d: &Daemon, auto_charge: bool) -> (String, String, String) {
    let (status, c) = d
        .post(
            "/v1/customers",
            json!({"email": "ap@example.com", "name": "Portal Co", "currency": "USD", "auto_charge": auto_charge}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let (status, pm) = d
        .post(
            &format!("/v1/customers/{id}/payment_methods"),
            json!({"gateway": "stripe", "token": "pm_card_visa"}),
        )
        .await;
    assert_eq!(status, 201, "{pm}");
    let (_, c) = d.get(&format!("/v1/customers/{id}")).await;
    (
        id,
        c["gateway_customer_id"].as_str().unwrap().to_string(),
        pm["token"].as_str().unwrap().to_string(),
    )
}

pub(crate) async fn invoice(d: &Daemon, customer: &str, amount: &str) -> String {
    let (status, inv) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "items": [{"description": "Work", "unit_amount": amount}]}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    inv["id"].as_str().unwrap().to_string()
}

/// A payment made at the gateway outside the daemon (a portal's "Pay Now").
pub(crate) async fn portal_payment(
    gateway: &StripeGateway,
    customer: &str,
    token: &str,
    amount: i64,
    invoice_id: Option<&str>,
) -> Value {
    portal_payment_in(gateway, customer, token, amount, "usd", invoice_id).await
}

/// [`portal_payment`] in another currency; `amount` as Stripe counts it.
pub(crate) async fn portal_payment_in(
    gateway: &StripeGateway,
    customer: &str,
    token: &str,
    amount: i64,
    currency: &str,
    invoice_id: Option<&str>,
) -> Value {
    let mut form = vec![
        ("amount", amount.to_string()),
        ("currency", currency.to_string()),
        ("customer", customer.to_string()),
        ("payment_method", token.to_string()),
        ("confirm", "true".to_string()),
    ];
    if let Some(inv) = invoice_id {
        form.push(("metadata[invoice_id]", inv.to_string()));
    }
    let pi: Value = reqwest::Client::new()
        .post(format!("{}/v1/payment_intents", gateway.base_url()))
        .bearer_auth("sk_test_portal")
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pi["status"], "succeeded", "{pi}");
    pi
}

/// Delivers a signed Standard Webhooks message from the `bank` source; expects 200.
pub(crate) async fn deliver_standard(d: &Daemon, webhook_id: &str, body: &str) {
    let key = BASE64
        .decode(BANK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let ts = now_secs().to_string();
    let sig = format!(
        "v1,{}",
        BASE64.encode(hmac_sha256(
            &key,
            format!("{webhook_id}.{ts}.{body}").as_bytes()
        ))
    );
    let r = d
        .http
        .post(d.url("/webhooks/standard/bank"))
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", &ts)
        .header("webhook-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// Delivers as Stripe does: a 503 (storage slower than intake's answer deadline on a busy
/// machine) is delivered again, a little later.
pub(crate) async fn deliver(d: &Daemon, body: &str) {
    for _ in 0..20 {
        let r = d
            .http
            .post(d.url("/webhooks/stripe"))
            .header("stripe-signature", stripe_header(SECRET, now_secs(), body))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        return;
    }
    panic!("intake answered 503 twenty times");
}

/// Waits until every stored event is processed (or ignored) and all work is done.
pub(crate) async fn settle(d: &Daemon) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = d.get("/v1/webhook_events?limit=1000").await;
        let events = list["data"].as_array().cloned().unwrap_or_default();
        if events
            .iter()
            .all(|e| e["status"] == "processed" || e["status"] == "ignored")
        {
            d.wait_clock_ready(Duration::from_secs(60)).await;
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "events not processed: {events:?}\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn show(d: &Daemon, id: &str) -> Value {
    d.get(&format!("/v1/invoices/{id}")).await.1
}

pub(crate) async fn payments_of(d: &Daemon, customer: &str) -> Vec<Value> {
    let (_, p) = d.get(&format!("/v1/payments?customer_id={customer}")).await;
    p["data"].as_array().unwrap().clone()
}

both!(
    a_portal_payment_delivered_five_times_at_once_is_one_payment,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, gcus, token) = card_customer(d, false).await;
        let inv = invoice(d, &cus, "100.00").await;
        // Part first: partially paid with the right amount due.
        let pi = portal_payment(&gateway, &gcus, &token, 3000, Some(&inv)).await;
        let body = gateway.event_json("payment_intent.succeeded", pi);
        let deliveries: Vec<_> = (0..5).map(|_| deliver(d, &body)).collect();
        futures::future::join_all(deliveries).await;
        let events = settle(d).await;
        assert_eq!(events.len(), 1, "stored once");
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "partially_paid");
        assert_eq!(i["amount_paid"], "30.00");
        assert_eq!(i["amount_due"], "70.00");
        assert_eq!(payments_of(d, &cus).await.len(), 1);
        let (_, receipts) = d
            .get(&format!("/v1/emails?customer_id={cus}&template=receipt"))
            .await;
        assert_eq!(
            receipts["data"].as_array().unwrap().len(),
            1,
            "one receipt: {receipts}"
        );
        // Then more than the rest: paid, and the excess is credit.
        let pi = portal_payment(&gateway, &gcus, &token, 9000, Some(&inv)).await;
        deliver(d, &gateway.event_json("payment_intent.succeeded", pi)).await;
        settle(d).await;
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "paid");
        assert_eq!(i["amount_paid"], "100.00");
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        assert_eq!(c["credit_balance"], "20.00");
        // Money with no invoice from a known gateway customer: unapplied credit.
        let pi = portal_payment(&gateway, &gcus, &token, 500, None).await;
        deliver(d, &gateway.event_json("payment_intent.succeeded", pi)).await;
        settle(d).await;
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        assert_eq!(c["credit_balance"], "25.00");
        assert_eq!(payments_of(d, &cus).await.len(), 3);
        // An invoice nobody knows is stored and marked with the reason.
        let mut pi = portal_payment(&gateway, &gcus, &token, 100, Some("in_unknown")).await;
        pi["customer"] = Value::Null;
        deliver(d, &gateway.event_json("payment_intent.succeeded", pi)).await;
        let events = settle(d).await;
        let ignored: Vec<&Value> = events.iter().filter(|e| e["status"] == "ignored").collect();
        assert_eq!(ignored.len(), 1, "{events:?}");
        assert!(ignored[0]["error"].as_str().unwrap().contains("in_unknown"));
        assert_ledger(d).await;
    }
);

both!(
    our_charge_reply_and_its_webhook_make_one_payment_and_a_late_failure_changes_nothing,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _, _) = card_customer(d, true).await;
        let (status, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "auto_charge": true,
                       "items": [{"description": "Work", "unit_amount": "42.00"}]}),
            )
            .await;
        assert_eq!(status, 201);
        let id = inv["id"].as_str().unwrap();
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(show(d, id).await["status"], "paid");
        let pi = gateway.payment_intents().pop().unwrap();
        deliver(
            d,
            &gateway.event_json("payment_intent.succeeded", pi.clone()),
        )
        .await;
        // A failure for the same PaymentIntent arriving after its success.
        let mut failed = pi.clone();
        failed["status"] = json!("requires_payment_method");
        failed["last_payment_error"] = json!({"type": "card_error", "code": "card_declined",
                                              "decline_code": "generic_decline", "message": "declined"});
        deliver(
            d,
            &gateway.event_json("payment_intent.payment_failed", failed),
        )
        .await;
        settle(d).await;
        let i = show(d, id).await;
        assert_eq!(i["status"], "paid", "{i}");
        assert_eq!(i["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(i["attempts"][0]["outcome"], "succeeded");
        assert_eq!(payments_of(d, &cus).await.len(), 1, "one payment");
        assert_ledger(d).await;
    }
);

both!(
    refunds_reopen_invoices_even_when_they_overtake_their_payment,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, gcus, token) = card_customer(d, false).await;
        let inv = invoice(d, &cus, "80.00").await;
        let pi = portal_payment(&gateway, &gcus, &token, 8000, Some(&inv)).await;
        let pi_id = pi["id"].as_str().unwrap().to_string();
        let charge = pi["latest_charge"].as_str().unwrap().to_string();
        let refunded = |amount: i64, refunds: Value| {
            json!({"id": charge, "object": "charge", "payment_intent": pi_id, "amount": 8000,
                   "amount_refunded": amount, "currency": "usd", "refunded": amount == 8000,
                   "refunds": {"object": "list", "data": refunds}})
        };
        // The refund's event comes first; the payment's after it.
        let refund_body = gateway.event_json(
            "charge.refunded",
            refunded(
                3000,
                json!([{"id": "re_part1", "object": "refund", "amount": 3000}]),
            ),
        );
        deliver(d, &refund_body).await;
        // Longer than the job's own retries last: the payment's arrival wakes the waiting refund.
        tokio::time::sleep(Duration::from_secs(10)).await;
        deliver(d, &gateway.event_json("payment_intent.succeeded", pi)).await;
        settle(d).await;
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "partially_paid", "{i}");
        assert_eq!(i["amount_due"], "30.00");
        let p = &payments_of(d, &cus).await[0];
        assert_eq!(p["status"], "partially_refunded");
        assert_eq!(p["amount_refunded"], "30.00");
        // The rest refunded; the first refund is listed again and not counted twice.
        deliver(
            d,
            &gateway.event_json(
                "charge.refunded",
                refunded(
                    8000,
                    json!([{"id": "re_part2", "object": "refund", "amount": 5000},
                           {"id": "re_part1", "object": "refund", "amount": 3000}]),
                ),
            ),
        )
        .await;
        settle(d).await;
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "open");
        assert_eq!(i["amount_due"], "80.00");
        assert_eq!(payments_of(d, &cus).await[0]["status"], "refunded");
        // A dispute marks the payment; closing it won puts it back.
        let dispute = |status: &str| {
            json!({"id": "dp_1", "object": "dispute", "charge": charge, "payment_intent": pi_id,
                   "amount": 8000, "currency": "usd", "reason": "fraudulent", "status": status})
        };
        deliver(
            d,
            &gateway.event_json("charge.dispute.created", dispute("needs_response")),
        )
        .await;
        settle(d).await;
        assert_eq!(payments_of(d, &cus).await[0]["status"], "disputed");
        deliver(
            d,
            &gateway.event_json("charge.dispute.closed", dispute("won")),
        )
        .await;
        settle(d).await;
        assert_eq!(payments_of(d, &cus).await[0]["status"], "refunded");
        assert_ledger(d).await;
    }
);

both!(
    a_bank_transfer_from_a_standard_webhooks_source_records_a_payment_once,
    |backend| async move {
        let (_gateway, w) = world(backend).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let inv = invoice(d, &cus, "250.00").await;
        let number = show(d, &inv).await["number"].as_str().unwrap().to_string();
        let body = json!({"type": "payment.received",
                          "data": {"invoice_number": number, "amount": "100.00", "currency": "USD",
                                   "reference": "SEPA-778"}})
        .to_string();
        let key = BASE64
            .decode(BANK_SECRET.strip_prefix("whsec_").unwrap())
            .unwrap();
        let ts = now_secs().to_string();
        for _ in 0..2 {
            let sig = format!(
                "v1,{}",
                BASE64.encode(hmac_sha256(
                    &key,
                    format!("msg_bank_1.{ts}.{body}").as_bytes()
                ))
            );
            let r = d
                .http
                .post(d.url("/webhooks/standard/bank"))
                .header("webhook-id", "msg_bank_1")
                .header("webhook-timestamp", &ts)
                .header("webhook-signature", sig)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        settle(d).await;
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "partially_paid", "{i}");
        assert_eq!(i["amount_due"], "150.00");
        let payments = payments_of(d, &cus).await;
        assert_eq!(payments.len(), 1);
        assert_eq!(payments[0]["gateway"], "bank");
        assert_eq!(payments[0]["method"], "bank_transfer");
        assert_eq!(payments[0]["reference"], "SEPA-778");
        // A replay by the operator changes nothing.
        let (_, list) = d.get("/v1/webhook_events?limit=10").await;
        let id = list["data"][0]["id"].as_str().unwrap();
        let (status, _) = d
            .post(&format!("/v1/webhook_events/{id}/replay"), json!({}))
            .await;
        assert_eq!(status, 200);
        settle(d).await;
        assert_eq!(payments_of(d, &cus).await.len(), 1);
        assert_ledger(d).await;
    }
);
