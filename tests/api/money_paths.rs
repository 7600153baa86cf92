//! Money paths that must neither lose nor invent a cent: a retainer invoice however it is paid,
//! a refund of money already spent, a retainer refund with a gateway that fails, loses its
//! answer or reports first, lost disputes, refunds that have not succeeded, money in the wrong
//! currency, and an operator's request sent twice.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::credits::assert_ledger;
use crate::gateway_events::{
    card_customer, deliver, invoice, payments_of, portal_payment, portal_payment_in, settle, show,
    world,
};
use crate::helpers::*;
use crate::support::stripe_gateway::{FailMode, Fault, StripeGateway};

async fn balances(d: &Daemon, id: &str) -> (String, String, String) {
    let (_, c) = d.get(&format!("/v1/customers/{id}")).await;
    (
        c["outstanding"].as_str().unwrap().to_string(),
        c["credit_balance"].as_str().unwrap().to_string(),
        c["retainer_balance"].as_str().unwrap().to_string(),
    )
}

fn owed(outstanding: &str, credit: &str, retainer: &str) -> (String, String, String) {
    (outstanding.into(), credit.into(), retainer.into())
}

async fn retainer_invoice(d: &Daemon, customer: &str, amount: &str, due: Option<&str>) -> String {
    let mut body = json!({"customer_id": customer, "kind": "retainer",
                          "items": [{"description": "Retainer", "unit_amount": amount}]});
    if let Some(due) = due {
        body["due_at"] = json!(due);
    }
    let (status, inv) = d.post("/v1/invoices", body).await;
    assert_eq!(status, 201, "{inv}");
    inv["id"].as_str().unwrap().to_string()
}

/// A charge of `pi` as Stripe's `charge.refunded` event carries it, listing `refunds`.
fn refunded_charge(pi: &Value, amount_refunded: i64, refunds: Vec<Value>) -> Value {
    json!({"id": pi["latest_charge"], "object": "charge", "payment_intent": pi["id"],
           "amount": pi["amount"], "amount_refunded": amount_refunded, "currency": "usd",
           "refunded": Some(amount_refunded) == pi["amount"].as_i64(),
           "refunds": {"object": "list", "data": refunds}})
}

/// A customer with two retainer deposits paid at the gateway, 100.00 then 50.00:
/// (customer, PaymentIntent of the first, of the second).
async fn two_deposits(gateway: &StripeGateway, d: &Daemon) -> (String, Value, Value) {
    let (cus, gcus, token) = card_customer(d, false).await;
    let first = retainer_invoice(d, &cus, "100.00", None).await;
    let pi1 = portal_payment(gateway, &gcus, &token, 10_000, Some(&first)).await;
    deliver(
        d,
        &gateway.event_json("payment_intent.succeeded", pi1.clone()),
    )
    .await;
    settle(d).await;
    // A day later: the second deposit is the newer one.
    d.advance("2027-01-02T00:00:00Z").await;
    let second = retainer_invoice(d, &cus, "50.00", None).await;
    let pi2 = portal_payment(gateway, &gcus, &token, 5_000, Some(&second)).await;
    deliver(
        d,
        &gateway.event_json("payment_intent.succeeded", pi2.clone()),
    )
    .await;
    settle(d).await;
    assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "150.00"));
    (cus, pi1, pi2)
}

both!(
    a_retainer_invoice_paid_by_credit_makes_its_deposit_and_a_late_fee_is_no_deposit,
    |backend| async move {
        let options = DaemonOptions::default()
            .env("SETTLED__BILLING__LATE_FEE_AMOUNT", "\"5.00\"")
            .env("SETTLED__BILLING__LATE_FEE_DAYS", "1");
        let w = World::start_with(backend, options).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let (status, cn) = d
            .post(
                "/v1/credit_notes",
                json!({"customer_id": cus, "amount": "100.00", "currency": "USD", "reason": "goodwill"}),
            )
            .await;
        assert_eq!(status, 201, "{cn}");
        // Credit pays the whole retainer invoice: the deposit is made all the same.
        let paid_by_credit = retainer_invoice(d, &cus, "100.00", None).await;
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(show(d, &paid_by_credit).await["status"], "paid");
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "100.00"));
        // A retainer invoice paid late, with its late fee: the fee is income, not deposit.
        let late = retainer_invoice(d, &cus, "50.00", Some("2027-01-05T00:00:00Z")).await;
        d.advance("2027-01-10T00:00:00Z").await;
        let inv = show(d, &late).await;
        assert_eq!(inv["amount_due"], "55.00", "{inv}");
        let (status, p) = d
            .post(
                &format!("/v1/invoices/{late}/payments"),
                json!({"amount": "55.00", "method": "wire", "reference": "W-1"}),
            )
            .await;
        assert_eq!(status, 201, "{p}");
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "150.00"));
        // A retainer invoice is never paid from the retainer itself.
        let third = retainer_invoice(d, &cus, "10.00", None).await;
        let (status, answer) = d
            .post(
                &format!("/v1/customers/{cus}/retainer/apply"),
                json!({"invoice_id": third}),
            )
            .await;
        assert!(status == 409 || status == 422, "{status} {answer}");
        assert_eq!(show(d, &third).await["amount_due"], "10.00");
        assert_ledger(d).await;
    }
);

both!(
    refunding_an_overpayment_whose_credit_was_spent_takes_it_back_from_what_it_paid,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, gcus, token) = card_customer(d, false).await;
        let first = invoice(d, &cus, "60.00").await;
        // 100 paid toward a 60 invoice: 40 becomes credit ...
        let pi = portal_payment(&gateway, &gcus, &token, 10_000, Some(&first)).await;
        deliver(
            d,
            &gateway.event_json("payment_intent.succeeded", pi.clone()),
        )
        .await;
        settle(d).await;
        assert_eq!(balances(d, &cus).await, owed("0.00", "40.00", "0.00"));
        // ... and is spent on the next invoice.
        let second = invoice(d, &cus, "40.00").await;
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(show(d, &second).await["status"], "paid");
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "0.00"));
        // The whole payment is refunded at the gateway.
        let refund = json!({"id": "re_all", "object": "refund", "amount": 10_000,
                            "status": "succeeded", "metadata": {}});
        deliver(
            d,
            &gateway.event_json(
                "charge.refunded",
                refunded_charge(&pi, 10_000, vec![refund]),
            ),
        )
        .await;
        settle(d).await;
        assert_eq!(show(d, &first).await["amount_due"], "60.00");
        let second = show(d, &second).await;
        assert_eq!(second["amount_due"], "40.00", "{second}");
        assert_eq!(second["status"], "open", "{second}");
        assert_eq!(balances(d, &cus).await, owed("100.00", "0.00", "0.00"));
        assert_ledger(d).await;
    }
);

both!(
    a_retainer_refund_whose_second_part_fails_keeps_the_first_and_gives_the_rest_back,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, pi1, pi2) = two_deposits(&gateway, d).await;
        // Newest deposit first: its refund goes through; the older one's is refused.
        gateway.queue_refund_faults(vec![None, Some(Fault::Before(FailMode::Rejected))]);
        let (status, answer) = d
            .post(
                &format!("/v1/customers/{cus}/retainer/refund"),
                json!({"amount": "150.00"}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "partially_failed", "{answer}");
        let refunds = gateway.refunds();
        assert_eq!(refunds.len(), 1, "{refunds:?}");
        assert_eq!(refunds[0]["payment_intent"], pi2["id"]);
        d.wait_clock_ready(Duration::from_secs(30)).await;
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "100.00"));
        let payments = payments_of(d, &cus).await;
        let of = |pi: &Value| {
            payments
                .iter()
                .find(|p| p["gateway_payment_id"] == pi["id"])
                .unwrap()
                .clone()
        };
        assert_eq!(of(&pi2)["amount_refunded"], "50.00");
        assert_eq!(of(&pi1)["amount_refunded"], "0.00");
        assert_ledger(d).await;
    }
);

both!(
    a_retainer_refund_whose_answer_is_lost_is_asked_again_and_counted_once,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _pi1, pi2) = two_deposits(&gateway, d).await;
        gateway.queue_refund_faults(vec![Some(Fault::After(FailMode::ServerError))]);
        let (status, answer) = d
            .post(
                &format!("/v1/customers/{cus}/retainer/refund"),
                json!({"amount": "30.00"}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "pending", "{answer}");
        // The refunds' drain asks again under the same key.
        d.wait_clock_ready(Duration::from_secs(60)).await;
        let refunds = gateway.refunds();
        assert_eq!(refunds.len(), 1, "{refunds:?}");
        let keys: Vec<String> = gateway
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/refunds")
            .map(|r| r.idempotency_key.unwrap_or_default())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], keys[1]);
        // The gateway's event about the same refund changes nothing.
        deliver(
            d,
            &gateway.event_json(
                "charge.refunded",
                refunded_charge(&pi2, 3_000, refunds.clone()),
            ),
        )
        .await;
        settle(d).await;
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "120.00"));
        let p = payments_of(d, &cus)
            .await
            .into_iter()
            .find(|p| p["gateway_payment_id"] == pi2["id"])
            .unwrap();
        assert_eq!(p["amount_refunded"], "30.00", "{p}");
        assert_ledger(d).await;
    }
);

both!(
    a_refund_reported_by_webhook_before_its_answer_is_recorded_once,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _pi1, pi2) = two_deposits(&gateway, d).await;
        // The refund is made; its answer comes 6 s late, after the daemon gave up waiting.
        gateway.queue_refund_faults(vec![Some(Fault::After(FailMode::Timeout(
            Duration::from_secs(6),
        )))]);
        let (status, answer) = d
            .post(
                &format!("/v1/customers/{cus}/retainer/refund"),
                json!({"amount": "20.00"}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "pending", "{answer}");
        let refunds = gateway.refunds();
        assert_eq!(refunds.len(), 1);
        deliver(
            d,
            &gateway.event_json("charge.refunded", refunded_charge(&pi2, 2_000, refunds)),
        )
        .await;
        settle(d).await;
        let p = payments_of(d, &cus)
            .await
            .into_iter()
            .find(|p| p["gateway_payment_id"] == pi2["id"])
            .unwrap();
        assert_eq!(p["amount_refunded"], "20.00", "{p}");
        let (_, payment) = d
            .get(&format!("/v1/payments/{}", p["id"].as_str().unwrap()))
            .await;
        let listed = payment["refunds"].as_array().cloned().unwrap_or_default();
        assert_eq!(listed.len(), 1, "{payment}");
        assert_eq!(listed[0]["status"], "succeeded", "{payment}");
        assert_eq!(balances(d, &cus).await, owed("0.00", "0.00", "130.00"));
        assert_ledger(d).await;
    }
);

both!(
    a_slow_refund_holds_no_lock_while_it_waits,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, _pi1, _pi2) = two_deposits(&gateway, d).await;
        gateway.set_latency(Duration::from_secs(3));
        let path = format!("/v1/customers/{cus}/retainer/refund");
        let refund = d.post(&path, json!({"amount": "10.00"}));
        let other = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let (status, c) = d
                .post(
                    "/v1/customers",
                    json!({"email": "b@example.com", "name": "B", "currency": "USD"}),
                )
                .await;
            (status, c, started.elapsed())
        };
        let ((status, answer), (other_status, c, took)) = tokio::join!(refund, other);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(other_status, 201, "{c}");
        assert!(
            took < Duration::from_secs(2),
            "a write waited {took:?} for the refund's call"
        );
        gateway.set_latency(Duration::ZERO);
        assert_ledger(d).await;
    }
);

both!(
    a_lost_dispute_reverses_the_payment_once,
    |backend| async move {
        let (gateway, w) = world(backend).await;
        let d = &w.daemon;
        let (cus, gcus, token) = card_customer(d, false).await;
        let inv = invoice(d, &cus, "80.00").await;
        let pi = portal_payment(&gateway, &gcus, &token, 8000, Some(&inv)).await;
        deliver(
            d,
            &gateway.event_json("payment_intent.succeeded", pi.clone()),
        )
        .await;
        settle(d).await;
        assert_eq!(show(d, &inv).await["status"], "paid");
        let dispute = |status: &str| {
            json!({"id": "du_lost", "object": "dispute", "charge": pi["latest_charge"],
                   "payment_intent": pi["id"], "amount": 8000, "currency": "usd",
                   "reason": "fraudulent", "status": status})
        };
        deliver(
            d,
            &gateway.event_json("charge.dispute.created", dispute("needs_response")),
        )
        .await;
        let lost = gateway.event_json("charge.dispute.closed", dispute("lost"));
        deliver(d, &lost).await;
        settle(d).await;
        let i = show(d, &inv).await;
        assert_eq!(i["status"], "open", "{i}");
        assert_eq!(i["amount_due"], "80.00", "{i}");
        assert_eq!(payments_of(d, &cus).await[0]["status"], "disputed");
        assert_eq!(balances(d, &cus).await, owed("80.00", "0.00", "0.00"));
        // Told again (a replay): nothing moves twice.
        let (_, events) = d.get("/v1/webhook_events?limit=100").await;
        let closed = events["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "charge.dispute.closed")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _) = d
            .post(&format!("/v1/webhook_events/{closed}/replay"), json!({}))
            .await;
        assert_eq!(status, 200);
        settle(d).await;
        assert_eq!(show(d, &inv).await["amount_due"], "80.00");
        assert_eq!(balances(d, &cus).await, owed("80.00", "0.00", "0.00"));
        assert_ledger(d).await;
    }
);

both!(only_refunds_that_succeeded_count, |backend| async move {
    let (gateway, w) = world(backend).await;
    let d = &w.daemon;
    let (cus, gcus, token) = card_customer(d, false).await;
    let inv = invoice(d, &cus, "50.00").await;
    let pi = portal_payment(&gateway, &gcus, &token, 5000, Some(&inv)).await;
    deliver(
        d,
        &gateway.event_json("payment_intent.succeeded", pi.clone()),
    )
    .await;
    settle(d).await;
    let refund = |status: &str| {
        json!({"id": "re_slow", "object": "refund", "amount": 2000, "status": status,
                   "metadata": {}})
    };
    for status in ["pending", "failed", "canceled"] {
        deliver(
            d,
            &gateway.event_json(
                "charge.refunded",
                refunded_charge(&pi, 0, vec![refund(status)]),
            ),
        )
        .await;
        settle(d).await;
        assert_eq!(show(d, &inv).await["amount_due"], "0.00", "{status}");
    }
    deliver(
        d,
        &gateway.event_json(
            "charge.refunded",
            refunded_charge(&pi, 2000, vec![refund("succeeded")]),
        ),
    )
    .await;
    settle(d).await;
    assert_eq!(show(d, &inv).await["amount_due"], "20.00");
    assert_ledger(d).await;
});

both!(
    money_in_another_currency_than_its_invoice_is_refused_with_a_reason,
    |backend| async move {
        let (_gateway, w) = world(backend).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let inv = invoice(d, &cus, "25.00").await;
        let body = json!({"type": "payment.received",
                          "data": {"invoice_id": inv, "amount": "25.00", "currency": "EUR",
                                   "reference": "TRF-9"}})
        .to_string();
        crate::gateway_events::deliver_standard(d, "msg_eur_1", &body).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let event = loop {
            let (_, list) = d.get("/v1/webhook_events?source=bank").await;
            let e = list["data"][0].clone();
            if e["status"] == "failed" {
                break e;
            }
            assert!(Instant::now() < deadline, "{list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            event["error"].as_str().unwrap_or("").contains("EUR"),
            "{event}"
        );
        assert_eq!(show(d, &inv).await["amount_due"], "25.00");
        assert_eq!(balances(d, &cus).await, owed("25.00", "0.00", "0.00"));
        assert!(payments_of(d, &cus).await.is_empty());
        assert_ledger(d).await;
    }
);

both!(
    an_operators_request_sent_twice_under_one_key_is_done_once,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let (_, inv) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "items": [{"description": "Work", "unit_amount": "90.00"}]}),
            )
            .await;
        let id = inv["id"].as_str().unwrap();
        let path = format!("/v1/invoices/{id}/payments");
        let body = json!({"amount": "40.00", "method": "wire", "reference": "W-77"});
        let send = |body: Value, key: &'static str| {
            let path = path.clone();
            async move {
                let r = d
                    .http
                    .post(d.url(&path))
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let replayed = r.headers().get("idempotent-replayed").is_some();
                let status = r.status().as_u16();
                let json: Value = r.json().await.unwrap_or(Value::Null);
                (status, json, replayed)
            }
        };
        let (s1, first, replayed1) = send(body.clone(), "wire-77").await;
        assert_eq!(s1, 201, "{first}");
        assert!(!replayed1);
        let (s2, second, replayed2) = send(body.clone(), "wire-77").await;
        assert_eq!(s2, 201, "{second}");
        assert!(replayed2, "the first answer, replayed");
        assert_eq!(first["id"], second["id"]);
        let (s3, reused, _) = send(
            json!({"amount": "50.00", "method": "wire", "reference": "W-77"}),
            "wire-77",
        )
        .await;
        assert_eq!(s3, 422, "{reused}");
        assert_eq!(reused["error"]["code"], "idempotency_key_reused");
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
        assert_eq!(show(d, id).await["amount_due"], "50.00");
        // Without a key, a second request is a second payment, as asked.
        let (s4, _, _) = send(body.clone(), "wire-78").await;
        assert_eq!(s4, 201);
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 2);
        // A refused request stores nothing: the same key works once the request is right.
        let (s5, bad, _) = send(
            json!({"amount": "4O.00", "method": "wire", "reference": "W-79"}),
            "wire-79",
        )
        .await;
        assert_eq!(s5, 422, "{bad}");
        let (s6, good, replayed) = send(
            json!({"amount": "1.00", "method": "wire", "reference": "W-79"}),
            "wire-79",
        )
        .await;
        assert_eq!(s6, 201, "{good}");
        assert!(!replayed);
        // A key no gateway would take is refused as such.
        let long: &'static str = Box::leak("k".repeat(300).into_boxed_str());
        let (s7, refused, _) = send(body.clone(), long).await;
        assert_eq!(s7, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_idempotency_key");
        assert_ledger(d).await;
    }
);

both!(
    isk_counts_whole_kronur_and_crosses_to_stripe_in_its_hundredths,
    |backend| async move {
        let (gateway, world) = world(backend).await;
        let d = &world.daemon;
        let (status, c) = d
            .post(
                "/v1/customers",
                json!({"email": "is@example.com", "name": "Reykjavik ehf", "currency": "ISK"}),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        let cus = c["id"].as_str().unwrap().to_string();
        let (status, pm) = d
            .post(
                &format!("/v1/customers/{cus}/payment_methods"),
                json!({"gateway": "stripe", "token": "pm_card_visa"}),
            )
            .await;
        assert_eq!(status, 201, "{pm}");
        // ISO 4217 gives the krona no minor unit: a fraction is refused and nothing is made.
        let (status, refused) = d
            .post(
                "/v1/invoices",
                json!({"customer_id": cus, "items": [{"description": "Work", "unit_amount": "1500.50"}]}),
            )
            .await;
        assert_eq!(status, 422, "{refused}");
        let id = invoice(d, &cus, "1500").await;
        assert_eq!(show(d, &id).await["amount_due"], "1500");

        let (status, charged) = d
            .post(&format!("/v1/invoices/{id}/charge"), json!({}))
            .await;
        assert!(status == 200 || status == 201, "{status}: {charged}");
        let sent = gateway
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/payment_intents")
            .collect::<Vec<_>>();
        assert_eq!(sent.len(), 1);
        let param = |k: &str| {
            sent[0]
                .params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            param("amount").as_deref(),
            Some("150000"),
            "Stripe's ISK hundredths"
        );
        assert_eq!(param("currency").as_deref(), Some("isk"));
        let inv = show(d, &id).await;
        assert_eq!(inv["status"], "paid", "{inv}");
        assert_eq!(inv["amount_paid"], "1500");

        // A payment made at Stripe arrives in hundredths and settles whole kronur.
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        let gcus = c["gateway_customer_id"].as_str().unwrap().to_string();
        let token = pm["token"].as_str().unwrap().to_string();
        let second = invoice(d, &cus, "500").await;
        let pi = portal_payment_in(&gateway, &gcus, &token, 50_000, "isk", Some(&second)).await;
        assert_eq!(pi["currency"], "isk");
        deliver(d, &gateway.event_json("payment_intent.succeeded", pi)).await;
        settle(d).await;
        let inv = show(d, &second).await;
        assert_eq!(inv["status"], "paid", "{inv}");
        assert_eq!(inv["amount_paid"], "500");

        // An operator's refund of 200 kronur asks Stripe for 20000.
        let payment = payments_of(d, &cus)
            .await
            .into_iter()
            .find(|p| p["invoice_id"] == id.as_str())
            .expect("the charge's payment")["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, refund) = d
            .post(
                &format!("/v1/payments/{payment}/refunds"),
                json!({"amount": "200"}),
            )
            .await;
        assert_eq!(status, 201, "{refund}");
        let refunds = gateway.refunds();
        assert_eq!(refunds.len(), 1);
        assert_eq!(refunds[0]["amount"], 20_000, "{}", refunds[0]);
        assert_eq!(show(d, &id).await["amount_due"], "200");
        assert_ledger(d).await;
    }
);
