//! Auto-charge, dunning, on-demand and balance charges against the Stripe-compatible test gateway.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::{FailMode, StripeGateway};

/// A daemon on a fresh database, pointed at a fresh test gateway.
pub(crate) async fn billed(backend: Backend, extra: &[(&str, &str)]) -> (StripeGateway, World) {
    billed_with(backend, extra, DaemonOptions::default()).await
}

/// [`billed`] starting from `options` (a test that kills the daemon asks for a process).
pub(crate) async fn billed_with(
    backend: Backend,
    extra: &[(&str, &str)],
    options: DaemonOptions,
) -> (StripeGateway, World) {
    let gateway = StripeGateway::start().await;
    let mut options = options
        .env("SETTLED__STRIPE__API_KEY", "sk_test_settled")
        .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
        .env("SETTLED__STRIPE__REQUEST_TIMEOUT_SECONDS", "2");
    for (k, v) in extra {
        options = options.env(k, *v);
    }
    let w = World::start_with(backend, options).await;
    (gateway, w)
}

/// A USD customer with `token` saved as its default card.
pub(crate) async fn card_customer(d: &Daemon, token: &str, auto_charge: bool) -> String {
    let (status, c) = d
        .post(
            "/v1/customers",
            json!({"email": "ap@example.com", "name": "Card Co", "currency": "USD",
                   "auto_charge": auto_charge}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let (status, pm) = d
        .post(
            &format!("/v1/customers/{id}/payment_methods"),
            json!({"gateway": "stripe", "token": token, "default": true}),
        )
        .await;
    assert_eq!(status, 201, "{pm}");
    id
}

pub(crate) async fn invoice(d: &Daemon, customer: &str, amount: &str, auto_charge: bool) -> Value {
    let (status, inv) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "auto_charge": auto_charge,
                   "items": [{"description": "Consulting", "quantity": "1", "unit_amount": amount}]}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    inv
}

pub(crate) async fn show(d: &Daemon, id: &str) -> Value {
    let (status, inv) = d.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(status, 200, "{inv}");
    inv
}

/// PaymentIntent create requests the daemon sent, per Idempotency-Key.
pub(crate) fn charge_keys(gateway: &StripeGateway) -> Vec<String> {
    gateway
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/payment_intents")
        .map(|r| r.idempotency_key.unwrap_or_default())
        .collect()
}

pub(crate) fn pis_for(gateway: &StripeGateway, invoice_id: &str) -> Vec<Value> {
    gateway
        .payment_intents()
        .into_iter()
        .filter(|pi| pi["metadata"]["invoice_id"] == invoice_id)
        .collect()
}

pub(crate) async fn wait_for(d: &Daemon, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let inv = show(d, id).await;
        if pred(&inv) {
            return inv;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "invoice never reached the expected state: {inv}\n{}",
                d.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both!(
    an_auto_charged_invoice_is_paid_on_the_first_try,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        let inv = invoice(d, &cus, "123.45", true).await;
        let id = inv["id"].as_str().unwrap();
        d.wait_clock_ready(Duration::from_secs(30)).await;
        let inv = show(d, id).await;
        assert_eq!(inv["status"], "paid", "{inv}");
        assert_eq!(inv["amount_paid"], "123.45");
        assert_eq!(inv["amount_due"], "0.00");
        assert_eq!(inv["attempts"].as_array().unwrap().len(), 1, "{inv}");
        assert_eq!(inv["attempts"][0]["outcome"], "succeeded");
        assert_eq!(inv["attempts"][0]["attempt"], 1);
        assert_eq!(inv["payments"].as_array().unwrap().len(), 1);
        let pay = &inv["payments"][0];
        assert_eq!(pay["amount"], "123.45");
        assert_eq!(pay["method"], "card");
        assert_eq!(pay["brand"], "visa");
        assert_eq!(pay["last4"], "4242");

        let pis = pis_for(&gateway, id);
        assert_eq!(pis.len(), 1, "one PaymentIntent");
        let pi = &pis[0];
        assert_eq!(pi["amount"], 12345);
        assert_eq!(pi["currency"], "usd");
        assert_eq!(pi["status"], "succeeded");
        assert_eq!(pi["metadata"]["attempt"], "1");
        assert_eq!(pay["gateway_payment_id"], pi["id"]);
        let create = gateway
            .requests()
            .into_iter()
            .find(|r| r.path == "/v1/payment_intents")
            .unwrap();
        assert_eq!(
            create.idempotency_key.as_deref(),
            Some(format!("settled:{id}:1").as_str())
        );
        let params: HashMap<_, _> = create.params.iter().cloned().collect();
        assert_eq!(params.get("confirm").map(String::as_str), Some("true"));
        assert_eq!(params.get("off_session").map(String::as_str), Some("true"));
        assert!(
            params
                .get("customer")
                .is_some_and(|c| c.starts_with("cus_"))
        );
        assert!(
            params
                .get("payment_method")
                .is_some_and(|c| c.starts_with("pm_"))
        );

        let (_, payments) = d.get(&format!("/v1/payments?customer_id={cus}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 1);
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        assert_eq!(c["outstanding"], "0.00");
    }
);

both!(
    a_lost_answer_is_resolved_with_the_same_key,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", true).await;
        // The gateway charges, then answers 500; the next charge times out after charging.
        gateway.fail_next_after_charge(FailMode::ServerError);
        let first = invoice(d, &cus, "10.00", true).await;
        let first_id = first["id"].as_str().unwrap();
        wait_for(d, first_id, |i| i["status"] == "paid").await;
        gateway.fail_next_after_charge(FailMode::Timeout(Duration::from_secs(4)));
        let second = invoice(d, &cus, "20.00", true).await;
        let second_id = second["id"].as_str().unwrap();
        let inv = wait_for(d, second_id, |i| i["status"] == "paid").await;
        d.wait_clock_ready(Duration::from_secs(30)).await;
        for id in [first_id, second_id] {
            assert_eq!(pis_for(&gateway, id).len(), 1, "one PaymentIntent for {id}");
            let keys: Vec<String> = charge_keys(&gateway)
                .into_iter()
                .filter(|k| k.contains(id))
                .collect();
            assert!(keys.len() >= 2, "asked again: {keys:?}");
            assert!(
                keys.iter().all(|k| *k == format!("settled:{id}:1")),
                "{keys:?}"
            );
            let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
            assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
        }
        assert_eq!(inv["amount_paid"], "20.00");
        assert_eq!(inv["attempts"].as_array().unwrap().len(), 1, "{inv}");
    }
);

both!(
    a_daemon_killed_between_the_charge_and_its_commit_charges_once,
    |backend| async move {
        let extra = [("SETTLED__JOBS__HEARTBEAT_SECONDS", "1")];
        let (gateway, mut w) =
            billed_with(backend, &extra, DaemonOptions::default().process()).await;
        let cus = card_customer(&w.daemon, "pm_card_visa", true).await;
        // The gateway charges and then holds its answer; the daemon dies waiting for it.
        gateway.fail_next_after_charge(FailMode::Timeout(Duration::from_secs(20)));
        let inv = invoice(&w.daemon, &cus, "42.00", true).await;
        let id = inv["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pis_for(&gateway, &id).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never charged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.daemon.signal(libc::SIGKILL);
        w.daemon.wait_exit(Duration::from_secs(10)).expect("killed");
        let env: Vec<(String, String)> = w.daemon.env().to_vec();
        let mut options = DaemonOptions {
            manual_clock: None,
            with_token: false,
            ..DaemonOptions::default()
        };
        options.env = env;
        w.daemon = Daemon::start(w.dir.path(), &w.db.url, options.process()).await;
        let d = &w.daemon;
        let inv = wait_for(d, &id, |i| i["status"] == "paid").await;
        assert_eq!(pis_for(&gateway, &id).len(), 1, "one PaymentIntent");
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
        assert_eq!(inv["amount_paid"], "42.00");
        assert!(
            charge_keys(&gateway)
                .iter()
                .all(|k| *k == format!("settled:{id}:1"))
        );
    }
);

both!(
    a_declining_card_walks_the_retry_schedule_then_the_invoice_is_past_due,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_chargeDeclinedInsufficientFunds", true).await;
        let inv = invoice(d, &cus, "50.00", true).await;
        let id = inv["id"].as_str().unwrap();
        d.wait_clock_ready(Duration::from_secs(30)).await;
        // retry_days = [1, 3, 5, 7], each counted from the failed attempt's scheduled time.
        let schedule = [
            ("2027-01-01T00:00:00Z", Some("2027-01-02T00:00:00Z")),
            ("2027-01-02T00:00:00Z", Some("2027-01-05T00:00:00Z")),
            ("2027-01-05T00:00:00Z", Some("2027-01-10T00:00:00Z")),
            ("2027-01-10T00:00:00Z", Some("2027-01-17T00:00:00Z")),
            ("2027-01-17T00:00:00Z", None),
        ];
        for (n, (at, next)) in schedule.iter().enumerate() {
            if n > 0 {
                // Just before the due time nothing happens; at it, the attempt runs.
                let before = chrono::DateTime::parse_from_rfc3339(at).unwrap()
                    - chrono::Duration::seconds(1);
                d.advance(&before.to_rfc3339()).await;
                assert_eq!(show(d, id).await["attempts"].as_array().unwrap().len(), n);
                d.advance(at).await;
            }
            let inv = show(d, id).await;
            let attempts = inv["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), n + 1, "{inv}");
            let a = &attempts[n];
            assert_eq!(a["attempt"], n as i64 + 1);
            assert_eq!(a["at"], *at);
            assert_eq!(a["outcome"], "failed");
            assert_eq!(a["decline_code"], "insufficient_funds");
            assert_eq!(a["next_attempt_at"].as_str(), *next, "{a}");
            assert_eq!(inv["next_attempt_at"].as_str(), *next);
            let expected = if next.is_some() { "open" } else { "past_due" };
            assert_eq!(inv["status"], expected);
        }
        d.advance("2027-03-01T00:00:00Z").await;
        let inv = show(d, id).await;
        assert_eq!(inv["status"], "past_due");
        assert_eq!(inv["amount_due"], "50.00");
        let keys = charge_keys(&gateway);
        let expected: Vec<String> = (1..=5).map(|n| format!("settled:{id}:{n}")).collect();
        assert_eq!(keys, expected, "one request per attempt, each its own key");
    }
);

both!(
    a_hard_decline_stops_dunning_and_auto_charge_off_never_charges,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let lost = card_customer(d, "pm_card_visa_chargeDeclinedLostCard", true).await;
        let inv = invoice(d, &lost, "30.00", true).await;
        let lost_inv = inv["id"].as_str().unwrap().to_string();

        // Auto-charge off on the customer, on the invoice, and switched off after scheduling.
        let off = card_customer(d, "pm_card_visa", false).await;
        let off_inv = invoice(d, &off, "30.00", true).await;
        let on = card_customer(d, "pm_card_visa", true).await;
        let manual_inv = invoice(d, &on, "30.00", false).await;

        let (status, sub) = d
            .post(
                "/v1/subscriptions",
                json!({"customer_id": off, "items": [{"description": "Plan", "unit_amount": "9.00"}],
                       "schedule": {"every": "month"}}),
            )
            .await;
        assert_eq!(status, 201, "{sub}");
        d.advance("2027-03-15T00:00:00Z").await;

        let inv = show(d, &lost_inv).await;
        assert_eq!(inv["status"], "past_due", "{inv}");
        assert_eq!(inv["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(inv["attempts"][0]["decline_code"], "lost_card");
        assert!(inv["attempts"][0]["next_attempt_at"].is_null());
        assert!(inv["next_attempt_at"].is_null());
        assert_eq!(pis_for(&gateway, &lost_inv).len(), 1);

        for id in [
            off_inv["id"].as_str().unwrap(),
            manual_inv["id"].as_str().unwrap(),
        ] {
            let inv = show(d, id).await;
            assert_eq!(inv["status"], "open", "{inv}");
            assert!(inv["attempts"].as_array().unwrap().is_empty());
        }
        let generated = d.invoices(&format!("customer_id={off}")).await;
        assert_eq!(generated.len(), 4, "one-off + three monthly invoices");
        assert_eq!(
            gateway.payment_intent_count(),
            1,
            "only the lost card was ever charged"
        );
    }
);

both!(
    charging_on_demand_takes_partial_amounts_and_refuses_bad_requests,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", false).await;
        let other = card_customer(d, "pm_card_mastercard", false).await;
        let (_, other_pms) = d
            .get(&format!("/v1/customers/{other}/payment_methods"))
            .await;
        let other_pm = other_pms["data"][0]["id"].as_str().unwrap().to_string();
        let no_card = d.customer("USD").await;
        let inv = invoice(d, &cus, "100.00", false).await;
        let id = inv["id"].as_str().unwrap();
        let bare = invoice(d, &no_card, "5.00", false).await;
        let charge = format!("/v1/invoices/{id}/charge");

        let before = gateway.requests().len();
        for (body, status, what) in [
            (json!({"amount": "100.01"}), 422, "more than due"),
            (json!({"amount": "0"}), 422, "zero"),
            (json!({"amount": "-5.00"}), 422, "negative"),
            (json!({"amount": 5}), 422, "a JSON number"),
            (json!({"amount": "1.234"}), 422, "too many decimals"),
            (json!({"currency": "EUR"}), 422, "another currency"),
            (
                json!({"payment_method_id": other_pm}),
                422,
                "another customer's card",
            ),
            (json!({"surprise": true}), 422, "unknown field"),
        ] {
            let (s, body) = d.post(&charge, body).await;
            assert_eq!(s, status, "{what}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        let (s, body) = d
            .post(
                &format!("/v1/invoices/{}/charge", bare["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(s, 409, "no default method: {body}");
        assert_eq!(body["error"]["code"], "no_payment_method");
        assert_eq!(
            gateway.requests().len(),
            before,
            "nothing reached the gateway"
        );
        assert_eq!(show(d, id).await["attempts"].as_array().unwrap().len(), 0);

        let (s, inv) = d.post(&charge, json!({"amount": "40.00"})).await;
        assert_eq!(s, 200, "{inv}");
        assert_eq!(inv["status"], "partially_paid");
        assert_eq!(inv["amount_paid"], "40.00");
        assert_eq!(inv["amount_due"], "60.00");
        assert_eq!(inv["attempts"][0]["automatic"], false);
        let (s, inv) = d.post(&charge, json!({})).await;
        assert_eq!(s, 200, "{inv}");
        assert_eq!(inv["status"], "paid");
        assert_eq!(inv["amount_due"], "0.00");
        assert_eq!(inv["payments"].as_array().unwrap().len(), 2);
        let (s, body) = d.post(&charge, json!({})).await;
        assert_eq!(s, 409, "paid: {body}");
        assert_eq!(pis_for(&gateway, id).len(), 2);

        // A declined on-demand charge is a 402 carrying the decline code.
        let declining = card_customer(d, "pm_card_chargeCustomerFail", false).await;
        let dinv = invoice(d, &declining, "7.00", false).await;
        let (s, body) = d
            .post(
                &format!("/v1/invoices/{}/charge", dinv["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(s, 402, "{body}");
        assert_eq!(body["error"]["code"], "card_declined");
        assert_eq!(body["error"]["decline_code"], "generic_decline");
        let dinv = show(d, dinv["id"].as_str().unwrap()).await;
        assert_eq!(dinv["status"], "open");
        assert_eq!(dinv["attempts"][0]["outcome"], "failed");
    }
);

both!(
    the_whole_balance_is_charged_once_and_allocated_oldest_due_first,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", false).await;
        let mut ids = Vec::new();
        for (amount, due) in [
            ("30.00", "2027-01-20T00:00:00Z"),
            ("10.00", "2027-01-05T00:00:00Z"),
            ("20.00", "2027-01-10T00:00:00Z"),
        ] {
            let (status, inv) = d
                .post(
                    "/v1/invoices",
                    json!({"customer_id": cus, "due_at": due,
                           "items": [{"description": "Work", "unit_amount": amount}]}),
                )
                .await;
            assert_eq!(status, 201, "{inv}");
            ids.push(inv["id"].as_str().unwrap().to_string());
        }
        // Part of the oldest is already paid on demand.
        let (s, _) = d
            .post(
                &format!("/v1/invoices/{}/charge", ids[1]),
                json!({"amount": "4.00"}),
            )
            .await;
        assert_eq!(s, 200);
        let (s, body) = d
            .post(
                &format!("/v1/customers/{cus}/charge_balance"),
                json!({"currency": "EUR"}),
            )
            .await;
        assert_eq!(s, 422, "{body}");
        let (s, pay) = d
            .post(&format!("/v1/customers/{cus}/charge_balance"), json!({}))
            .await;
        assert_eq!(s, 200, "{pay}");
        assert_eq!(pay["amount"], "56.00");
        assert!(pay["invoice_id"].is_null());
        for id in &ids {
            let inv = show(d, id).await;
            assert_eq!(inv["status"], "paid", "{inv}");
        }
        let balance_pis: Vec<Value> = gateway
            .payment_intents()
            .into_iter()
            .filter(|pi| pi["metadata"]["customer_id"] == cus.as_str())
            .collect();
        assert_eq!(balance_pis.len(), 1);
        assert_eq!(balance_pis[0]["amount"], 5600);
        let (s, body) = d
            .post(&format!("/v1/customers/{cus}/charge_balance"), json!({}))
            .await;
        assert_eq!(s, 409, "nothing left: {body}");
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        assert_eq!(c["outstanding"], "0.00");
        assert_eq!(c["credit_balance"], "0.00");
    }
);

both!(
    a_late_fee_is_added_once_to_an_overdue_invoice,
    |backend| async move {
        let extra = [
            ("SETTLED__BILLING__LATE_FEE_AMOUNT", "\"5.00\""),
            ("SETTLED__BILLING__LATE_FEE_PERCENT", "\"1.5\""),
            ("SETTLED__BILLING__LATE_FEE_DAYS", "10"),
        ];
        let (_gateway, w) = billed(backend, &extra).await;
        let d = &w.daemon;
        let cus = d.customer("USD").await;
        let inv = invoice(d, &cus, "123.45", false).await;
        let id = inv["id"].as_str().unwrap();
        d.advance("2027-01-10T23:59:59Z").await;
        assert_eq!(show(d, id).await["total"], "123.45", "not late yet");
        d.advance("2027-01-11T00:00:00Z").await;
        let inv = show(d, id).await;
        // 5.00 + 1.5 % of 123.45 (1.85175 → 1.85)
        assert_eq!(inv["total"], "130.30", "{inv}");
        assert_eq!(inv["amount_due"], "130.30");
        let lines = inv["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["kind"], "late_fee");
        assert_eq!(lines[1]["amount"], "6.85");
        d.advance("2027-03-01T00:00:00Z").await;
        assert_eq!(show(d, id).await["total"], "130.30", "never twice");
        let (_, c) = d.get(&format!("/v1/customers/{cus}")).await;
        assert_eq!(c["outstanding"], "130.30");
    }
);

/// Two daemons on one PostgreSQL database share the queue: every invoice is charged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_never_charge_an_attempt_twice() {
    let (gateway, w) = billed(Backend::Postgres, &[]).await;
    gateway.set_latency(Duration::from_millis(30));
    let env: Vec<(String, String)> = w.daemon.env().to_vec();
    let mut options = DaemonOptions {
        manual_clock: None,
        with_token: false,
        ..DaemonOptions::default()
    };
    options.env = env;
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = Daemon::start(twin_dir.path(), &w.db.url, options).await;
    let d = &w.daemon;
    let mut ids = Vec::new();
    for n in 0..6 {
        let cus = card_customer(d, "pm_card_visa", true).await;
        for k in 0..5 {
            let amount = format!("{}.{:02}", 10 + n, k);
            let daemon = if k % 2 == 0 { d } else { &twin };
            let inv = invoice(daemon, &cus, &amount, true).await;
            ids.push(inv["id"].as_str().unwrap().to_string());
        }
    }
    for id in &ids {
        wait_for(d, id, |i| i["status"] == "paid").await;
    }
    d.wait_clock_ready(Duration::from_secs(30)).await;
    twin.wait_clock_ready(Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(pis_for(&gateway, id).len(), 1, "one PaymentIntent for {id}");
        let (_, payments) = d.get(&format!("/v1/payments?invoice_id={id}")).await;
        assert_eq!(payments["data"].as_array().unwrap().len(), 1);
    }
    let keys = charge_keys(&gateway);
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        keys.len(),
        unique.len(),
        "no attempt was sent twice: {keys:?}\n{}\n{}",
        d.log_text(),
        twin.log_text()
    );
    assert_eq!(keys.len(), ids.len());
}

both!(
    the_cli_charges_invoices_and_lists_payments,
    |backend| async move {
        let (gateway, w) = billed(backend, &[]).await;
        let d = &w.daemon;
        let cus = card_customer(d, "pm_card_visa", false).await;
        let inv = invoice(d, &cus, "80.00", false).await;
        let id = inv["id"].as_str().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(binary())
                .args(args)
                .envs(d.env().iter().cloned())
                .env("RUST_LOG", "error")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, _, err) = run(&["invoices", "charge", id, "--amount", "90.00"]);
        assert_eq!(code, Some(3), "refused: {err}");
        assert!(err.contains("more than"), "{err}");
        assert_eq!(gateway.payment_intent_count(), 0);
        let (code, out, err) = run(&["--json", "invoices", "charge", id, "--amount", "30.00"]);
        assert_eq!(code, Some(0), "{err}");
        let charged: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(charged["status"], "partially_paid");
        assert_eq!(charged["amount_due"], "50.00");
        let (code, out, err) = run(&["customers", "charge-balance", &cus]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("50.00"), "{out}");
        let (code, out, err) = run(&["payments", "list", "--invoice", id]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("30.00") && out.contains("50.00"), "{out}");
        assert_eq!(show(d, id).await["status"], "paid");
    }
);
