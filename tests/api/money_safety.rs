//! Money that cannot be charged twice or left unresolved: every path that charges a card sees
//! every other charge in flight; the gateway's answers are classified in one place (a 429 is not
//! a decline, a 400 is no card's fault); a resend is the same request byte for byte; an outage
//! longer than any retry budget ends with every charge resolved.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::charges::{
    billed, billed_with, card_customer, charge_keys, invoice, pis_for, show, wait_for,
};
use crate::helpers::*;
use crate::support::stripe_gateway::{FailMode, StripeGateway};

/// PaymentIntents that moved money for an invoice.
fn succeeded_for(gateway: &StripeGateway, invoice_id: &str) -> usize {
    pis_for(gateway, invoice_id)
        .iter()
        .filter(|pi| pi["status"] == "succeeded")
        .count()
}

/// Every succeeded PaymentIntent of a balance charge (metadata `customer_id`).
fn succeeded_balance_charges(gateway: &StripeGateway, customer_id: &str) -> usize {
    gateway
        .payment_intents()
        .into_iter()
        .filter(|pi| pi["metadata"]["customer_id"] == customer_id && pi["status"] == "succeeded")
        .count()
}

async fn customer_view(d: &Daemon, id: &str) -> Value {
    let (status, c) = d.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(status, 200, "{c}");
    c
}

async fn emails_of(d: &Daemon, invoice_id: &str, template: &str) -> usize {
    let (_, list) = d.get(&format!("/v1/emails?invoice_id={invoice_id}")).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["template"] == template)
        .count()
}

/// Waits (real time) and checks meanwhile that the clock does not claim to be ready.
async fn not_ready_for(d: &Daemon, how_long: Duration) {
    let until = std::time::Instant::now() + how_long;
    while std::time::Instant::now() < until {
        let (_, clock) = d.get("/v1/clock").await;
        assert_eq!(
            clock["status"], "advancing",
            "ready while a charge is unresolved"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A customer whose first automatic charge of `amount` was declined (a retry is scheduled a day
/// later) and whose default card is now one that works: (customer, invoice).
async fn declined_once(d: &Daemon, amount: &str) -> (String, String) {
    let cus = card_customer(d, "pm_card_chargeDeclinedInsufficientFunds", true).await;
    let inv = invoice(d, &cus, amount, true).await;
    let id = inv["id"].as_str().unwrap().to_string();
    let inv = wait_for(d, &id, |i| {
        i["attempts"].as_array().is_some_and(|a| {
            a.first()
                .is_some_and(|x| x["outcome"] == "failed" && x["next_attempt_at"].is_string())
        })
    })
    .await;
    assert_eq!(inv["status"], "open", "{inv}");
    let (status, pm) = d
        .post(
            &format!("/v1/customers/{cus}/payment_methods"),
            json!({"gateway": "stripe", "token": "pm_card_visa", "default": true}),
        )
        .await;
    assert_eq!(status, 201, "{pm}");
    (cus, id)
}

both!(
    a_manual_charge_whose_answer_is_lost_holds_off_the_scheduled_retry,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let (_cus, id) = declined_once(d, "80.00").await;
        // The operator charges now; the gateway charges, and its answer is lost.
        gateway.fail_next_after_charge(FailMode::Timeout(Duration::from_secs(20)));
        let (status, answer) = d
            .post(&format!("/v1/invoices/{id}/charge"), json!({}))
            .await;
        assert_eq!(status, 202, "{answer}");
        // ... and stays lost: the gateway is down for a while.
        gateway.set_outage(Some(FailMode::ServerError));
        let (status, answer) = d
            .post(&format!("/v1/invoices/{id}/charge"), json!({}))
            .await;
        assert_eq!(
            status, 409,
            "a second charge while one is unresolved: {answer}"
        );
        assert_eq!(answer["error"]["code"], "charge_in_progress");
        // The day of the scheduled retry comes: it must not be sent while the manual charge is
        // unresolved.
        let (status, _) = d
            .post("/v1/clock/advance", json!({"to": "2027-01-03T00:00:00Z"}))
            .await;
        assert_eq!(status, 202);
        not_ready_for(d, Duration::from_secs(4)).await;
        // Attempt 1 was declined, attempt 2 is the scheduled retry, 3 the operator's.
        assert!(
            !charge_keys(&gateway).contains(&format!("settled:{id}:2")),
            "the retry was sent while the manual charge was in flight: {:?}",
            charge_keys(&gateway)
        );
        gateway.set_outage(None);
        let inv = wait_for(d, &id, |i| i["status"] == "paid").await;
        d.wait_clock_ready(Duration::from_secs(60)).await;
        assert_eq!(succeeded_for(&gateway, &id), 1, "charged once");
        assert_eq!(inv["amount_paid"], "80.00", "{inv}");
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
        let cus = inv["customer_id"].as_str().unwrap();
        assert_eq!(customer_view(d, cus).await["credit_balance"], "0.00");
        assert!(!charge_keys(&gateway).contains(&format!("settled:{id}:2")));
    }
);

both!(
    a_balance_charge_in_flight_holds_off_every_charge_of_its_invoices,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        let a = invoice(d, &cus, "30.00", false).await;
        let b = invoice(d, &cus, "20.00", false).await;
        let (a, b) = (
            a["id"].as_str().unwrap().to_string(),
            b["id"].as_str().unwrap().to_string(),
        );
        gateway.fail_next_after_charge(FailMode::Timeout(Duration::from_secs(20)));
        let (status, answer) = d
            .post(&format!("/v1/customers/{cus}/charge_balance"), json!({}))
            .await;
        assert_eq!(status, 202, "{answer}");
        gateway.set_outage(Some(FailMode::ServerError));
        // Every other way to charge these invoices is refused or waits.
        for id in [&a, &b] {
            let (status, answer) = d
                .post(&format!("/v1/invoices/{id}/charge"), json!({}))
                .await;
            assert_eq!(status, 409, "{answer}");
            let (status, answer) = d.post(&format!("/v1/invoices/{id}/void"), json!({})).await;
            assert_eq!(status, 409, "{answer}");
        }
        let (status, answer) = d
            .post(&format!("/v1/customers/{cus}/charge_balance"), json!({}))
            .await;
        assert_eq!(status, 409, "{answer}");
        gateway.set_outage(None);
        for id in [&a, &b] {
            wait_for(d, id, |i| i["status"] == "paid").await;
        }
        d.wait_clock_ready(Duration::from_secs(60)).await;
        assert_eq!(succeeded_balance_charges(&gateway, &cus), 1);
        assert_eq!(gateway.payment_intent_count(), 1, "one charge in all");
        let c = customer_view(d, &cus).await;
        assert_eq!(c["outstanding"], "0.00", "{c}");
        assert_eq!(c["credit_balance"], "0.00", "{c}");
    }
);

both!(
    two_balance_charges_at_once_send_one_charge,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", false).await;
        invoice(d, &cus, "40.00", false).await;
        invoice(d, &cus, "60.00", false).await;
        gateway.set_latency(Duration::from_millis(400));
        let path = format!("/v1/customers/{cus}/charge_balance");
        let answers = futures::future::join_all((0..4).map(|_| d.post(&path, json!({})))).await;
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{answers:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 409),
            "{answers:?}"
        );
        gateway.set_latency(Duration::ZERO);
        d.wait_clock_ready(Duration::from_secs(60)).await;
        assert_eq!(succeeded_balance_charges(&gateway, &cus), 1);
        let c = customer_view(d, &cus).await;
        assert_eq!(c["outstanding"], "0.00", "{c}");
        assert_eq!(c["credit_balance"], "0.00", "{c}");
    }
);

both!(
    a_rate_limited_charge_is_asked_again_not_declined,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        gateway.fail_next_before(FailMode::RateLimited);
        let inv = invoice(d, &cus, "12.00", true).await;
        let id = inv["id"].as_str().unwrap().to_string();
        let inv = wait_for(d, &id, |i| i["status"] == "paid").await;
        d.wait_clock_ready(Duration::from_secs(60)).await;
        let attempts = inv["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "no dunning step spent: {inv}");
        assert_eq!(attempts[0]["outcome"], "succeeded");
        assert_eq!(emails_of(d, &id, "payment_failed").await, 0);
        assert!(
            charge_keys(&gateway)
                .iter()
                .all(|k| *k == format!("settled:{id}:1"))
        );
        assert_eq!(succeeded_for(&gateway, &id), 1);
    }
);

both!(
    a_refused_resend_of_an_unknown_charge_is_looked_up_not_failed,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        // Charged, answer lost; then the resend is refused with a 400.
        gateway.fail_next_after_charge(FailMode::ServerError);
        let inv = invoice(d, &cus, "64.00", true).await;
        let id = inv["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pis_for(&gateway, &id).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never charged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gateway.fail_next_before(FailMode::Rejected);
        let inv = wait_for(d, &id, |i| i["status"] == "paid").await;
        d.wait_clock_ready(Duration::from_secs(60)).await;
        let attempts = inv["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{inv}");
        assert_eq!(attempts[0]["outcome"], "succeeded", "{inv}");
        assert_eq!(succeeded_for(&gateway, &id), 1);
        assert!(
            gateway
                .requests()
                .iter()
                .any(|r| r.path == "/v1/payment_intents/search"),
            "looked up by its metadata"
        );
        assert_eq!(emails_of(d, &id, "payment_failed").await, 0);
    }
);

both!(
    a_request_the_gateway_rejects_is_no_card_decline,
    |backend| async move {
        // A process: the test reads its own metrics.
        let (gateway, w) = billed_with(backend, &[], DaemonOptions::default().process()).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        // An operator's charge: refused by the gateway as a bad request.
        let manual = invoice(d, &cus, "9.00", false).await;
        let manual = manual["id"].as_str().unwrap().to_string();
        gateway.fail_next_before(FailMode::Rejected);
        let (status, answer) = d
            .post(&format!("/v1/invoices/{manual}/charge"), json!({}))
            .await;
        assert_eq!(status, 422, "not a decline: {answer}");
        assert_eq!(answer["error"]["code"], "gateway_refused", "{answer}");
        assert!(answer["error"].get("decline_code").is_none(), "{answer}");
        // An automatic one: failed, no retry, no payment-failed email.
        gateway.fail_next_before(FailMode::Rejected);
        let auto = invoice(d, &cus, "11.00", true).await;
        let auto = auto["id"].as_str().unwrap().to_string();
        wait_for(d, &auto, |i| {
            i["attempts"]
                .as_array()
                .is_some_and(|a| a.first().is_some_and(|x| x["outcome"] == "failed"))
        })
        .await;
        d.wait_clock_ready(Duration::from_secs(60)).await;
        let inv = show(d, &auto).await;
        let attempts = inv["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{inv}");
        assert_eq!(attempts[0]["decline_code"], "rejected", "{inv}");
        assert!(attempts[0]["next_attempt_at"].is_null(), "{inv}");
        assert_eq!(inv["status"], "open", "{inv}");
        for id in [&manual, &auto] {
            assert_eq!(emails_of(d, id, "payment_failed").await, 0, "{id}");
            assert_eq!(succeeded_for(&gateway, id), 0);
        }
        // The operator fixes what was wrong and charges again: it goes through.
        let (status, answer) = d
            .post(&format!("/v1/invoices/{auto}/charge"), json!({}))
            .await;
        assert_eq!(status, 200, "{answer}");
        let text = d
            .http
            .get(d.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let rejected: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("settled_charges_total{") && l.contains("outcome=\"rejected\"")
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert_eq!(rejected, 2.0, "{text}");
    }
);

both!(
    a_resend_is_the_same_request_byte_for_byte,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        // The test gateway compares a resent request's parameters in order, as strict emulators
        // do: metadata in another order is an idempotency_error, and the charge would stay
        // unknown.
        for n in 0..5 {
            gateway.fail_next_after_charge(FailMode::ServerError);
            let inv = invoice(d, &cus, &format!("{}.00", 10 + n), true).await;
            let id = inv["id"].as_str().unwrap().to_string();
            wait_for(d, &id, |i| i["status"] == "paid").await;
            let sent: Vec<_> = gateway
                .requests()
                .into_iter()
                .filter(|r| r.idempotency_key.as_deref() == Some(&format!("settled:{id}:1")))
                .collect();
            assert_eq!(sent.len(), 2, "sent, then resent once");
            assert_eq!(sent[0].params, sent[1].params);
            assert_eq!(succeeded_for(&gateway, &id), 1);
        }
    }
);

both!(
    a_gateway_outage_longer_than_any_retry_budget_ends_with_every_charge_resolved,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        gateway.set_outage(Some(FailMode::ServerError));
        let mut ids = Vec::new();
        for n in 0..4 {
            let inv = invoice(d, &cus, &format!("{}.00", 20 + n), true).await;
            ids.push(inv["id"].as_str().unwrap().to_string());
        }
        // Longer than the queue's retries of a job ever lasted: nothing is given up, and the
        // clock never says ready while charges are unresolved.
        not_ready_for(d, Duration::from_secs(12)).await;
        gateway.set_outage(None);
        for id in &ids {
            wait_for(d, id, |i| i["status"] == "paid").await;
        }
        d.wait_clock_ready(Duration::from_secs(60)).await;
        for id in &ids {
            assert_eq!(succeeded_for(&gateway, id), 1, "{id}");
            let inv = show(d, id).await;
            assert_eq!(inv["attempts"].as_array().unwrap().len(), 1, "{inv}");
        }
    }
);
