//! What an operator watches: `/metrics` after a scripted run (generation, a charge, a decline, a
//! webhook, emails) holds each counter at exactly the expected value, and the log of the same run
//! holds no secret, token, card number or webhook body.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::both;
use crate::helpers::*;
use crate::support::stripe_gateway::StripeGateway;

const API_KEY: &str = "sk_test_metrics_5b0d7c1e9a";
const CARD_NUMBER: &str = "4242424242424242";
/// Sits in the webhook's body only: finding it in the log would mean the body was logged.
const BODY_MARKER: &str = "body-marker-7f3e2a91";

/// One scrape: every series by name and its labels.
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    async fn of(d: &Daemon) -> Scrape {
        let r = d.http.get(d.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = r.text().await.unwrap();
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name_labels, value) = line.rsplit_once(' ').expect(line);
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            let labels: BTreeMap<String, String> = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            series.insert((name.to_string(), labels), value.parse().expect(line));
        }
        Scrape(series)
    }

    /// The value of one series; None when it does not exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.get(&(name.to_string(), labels)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }

    /// Sum over every series of `name` (whatever their labels).
    fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, l)| l.get(label).cloned())
            .collect()
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn card_customer(d: &Daemon, name: &str, token: &str) -> String {
    let (status, c) = d
        .post(
            "/v1/customers",
            json!({"email": format!("{name}@example.com"), "name": name, "currency": "USD"}),
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

async fn post_webhook(d: &Daemon, body: &str, signature: &str) -> u16 {
    d.http
        .post(d.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A daemon pointed at a fresh test gateway, run through: a subscription billed by a clock
/// advance and charged automatically, a one-off invoice whose on-demand charge is declined for
/// insufficient funds, one Stripe webhook delivered twice plus one with a bad signature, a card
/// number refused at the API, and every email the invoices and the payment cause.
async fn scripted_run(backend: Backend, extra: &[(&str, &str)]) -> (StripeGateway, World) {
    let gateway = StripeGateway::start().await;
    let mut options = DaemonOptions::default()
        .process()
        .env("SETTLED__STRIPE__API_KEY", API_KEY)
        .env("SETTLED__STRIPE__API_BASE", gateway.base_url())
        .env(
            "SETTLED__STRIPE__WEBHOOK_SECRETS",
            format!("[\"{}\"]", gateway.webhook_secret()),
        )
        // No upcoming-charge reminder: the emails are the invoices' and the receipt.
        .env("SETTLED__EMAIL__REMINDER_DAYS", "0");
    for (k, v) in extra {
        options = options.env(k, *v);
    }
    let w = World::start_with(backend, options).await;
    let d = &w.daemon;

    // Generation and an automatic charge that succeeds.
    let paying = card_customer(d, "paying", "pm_card_visa").await;
    let (status, sub) = d
        .post(
            "/v1/subscriptions",
            json!({"customer_id": paying, "schedule": {"every": "month"},
                   "start_at": "2027-01-15T00:00:00Z",
                   "items": [{"description": "Hosting", "quantity": "1", "unit_amount": "49.00"}]}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    d.advance("2027-01-15T00:00:00Z").await;
    let invoices = d.invoices(&format!("customer_id={paying}")).await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    let (_, inv) = d
        .get(&format!(
            "/v1/invoices/{}",
            invoices[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(inv["status"], "paid", "{inv}\n{}", d.log_text());

    // A decline, on demand.
    let declining = card_customer(d, "declining", "pm_card_chargeDeclinedInsufficientFunds").await;
    let (status, inv) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": declining, "auto_charge": false,
                   "items": [{"description": "Consulting", "quantity": "1", "unit_amount": "20.00"}]}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    let (status, answer) = d
        .post(
            &format!("/v1/invoices/{}/charge", inv["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 402, "{answer}");
    assert_eq!(
        answer["error"]["decline_code"], "insufficient_funds",
        "{answer}"
    );

    // A card number is refused and goes nowhere.
    let (status, answer) = d
        .post(
            &format!("/v1/customers/{declining}/payment_methods"),
            json!({"gateway": "stripe", "token": "pm_card_visa", "number": CARD_NUMBER, "cvc": "123"}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");

    // One webhook, delivered twice, and a forgery.
    let body = gateway.event_json(
        "customer.updated",
        json!({"id": "cus_gw_metrics", "object": "customer", "description": BODY_MARKER}),
    );
    let signature = gateway.sign(&body, now_secs());
    assert_eq!(post_webhook(d, &body, &signature).await, 200);
    assert_eq!(post_webhook(d, &body, &signature).await, 200);
    let forged = format!("t={},v1={}", now_secs(), "0".repeat(64));
    assert_eq!(post_webhook(d, &body, &forged).await, 400);

    d.wait_clock_ready(Duration::from_secs(60)).await;
    (gateway, w)
}

both!(metrics_count_a_scripted_run_exactly, |backend| async move {
    let (_gateway, w) = scripted_run(backend, &[]).await;
    let d = &w.daemon;
    let m = Scrape::of(d).await;

    // Generation.
    assert_eq!(m.value("settled_invoices_generated_total", &[]), 1.0);
    assert_eq!(m.get("settled_periods_skipped_total", &[]), None);
    // Charges: one automatic success, one decline with its code, the amount received.
    assert_eq!(
        m.value(
            "settled_charges_total",
            &[("outcome", "succeeded"), ("decline_code", "none")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "settled_charges_total",
            &[
                ("outcome", "declined"),
                ("decline_code", "insufficient_funds")
            ]
        ),
        1.0
    );
    assert_eq!(m.total("settled_charges_total"), 2.0);
    assert_eq!(
        m.value("settled_charged_amount_minor_total", &[("currency", "USD")]),
        4900.0
    );
    assert_eq!(m.total("settled_charged_amount_minor_total"), 4900.0);
    // Webhooks: stored once, the second delivery a duplicate, the forgery refused.
    assert_eq!(
        m.value("settled_webhooks_received_total", &[("source", "stripe")]),
        1.0
    );
    assert_eq!(
        m.value("settled_webhooks_duplicate_total", &[("source", "stripe")]),
        1.0
    );
    assert_eq!(
        m.value(
            "settled_webhooks_refused_total",
            &[("source", "stripe"), ("reason", "signature")]
        ),
        1.0
    );
    assert_eq!(m.total("settled_webhooks_refused_total"), 1.0);
    assert_eq!(
        m.value(
            "settled_events_processed_total",
            &[("type", "other"), ("outcome", "ignored")]
        ),
        1.0
    );
    assert_eq!(m.total("settled_events_processed_total"), 1.0);
    // Emails: two invoices and one receipt, none failed; the outbox agrees.
    assert_eq!(
        m.value("settled_emails_sent_total", &[("template", "invoice")]),
        1.0 + 1.0
    );
    assert_eq!(
        m.value("settled_emails_sent_total", &[("template", "receipt")]),
        1.0
    );
    assert_eq!(m.total("settled_emails_sent_total"), 3.0);
    assert_eq!(m.total("settled_emails_failed_total"), 0.0);
    assert_eq!(m.total("settled_emails_retried_total"), 0.0);
    let (_, outbox) = d.get("/v1/emails?status=sent").await;
    assert_eq!(outbox["data"].as_array().unwrap().len(), 3, "{outbox}");
    let mail_files = std::fs::read_dir(d.state_dir.join("mail")).unwrap().count();
    assert_eq!(mail_files, 3, "one .eml per email");

    // Work: each item taken once by a drain of its kind. The on-demand charge is sent by its
    // request and never offered to the drain; the automatic one is.
    for (kind, items) in [
        ("generate_invoice", 1.0),
        ("process_event", 1.0),
        ("send_email", 3.0),
        ("charge_invoice", 1.0),
    ] {
        assert_eq!(
            m.value("settled_work_items_total", &[("kind", kind)]),
            items,
            "{kind}"
        );
        assert!(
            m.value(
                "settled_work_batch_duration_seconds_count",
                &[("kind", kind)]
            ) >= 1.0,
            "{kind}"
        );
    }
    assert_eq!(m.total("settled_work_items_total"), 6.0);
    // Nothing is left: every kind reports nothing pending and nothing set aside.
    for kind in [
        "generate_invoice",
        "finalize_invoice",
        "charge_invoice",
        "process_event",
        "send_email",
        "apply_late_fee",
        "remind_upcoming_charge",
        "send_statement",
    ] {
        assert_eq!(
            m.value("settled_work_pending", &[("kind", kind)]),
            0.0,
            "{kind}"
        );
        assert_eq!(
            m.value("settled_work_set_aside", &[("kind", kind)]),
            0.0,
            "{kind}"
        );
        assert_eq!(
            m.value("settled_work_set_aside_oldest_seconds", &[("kind", kind)]),
            0.0,
            "{kind}"
        );
    }
    // The queue only starts drains; none is left failed.
    assert_eq!(m.value("settled_jobs_failed", &[("kind", "drain")]), 0.0);
    // HTTP by route template, never by path.
    let http = "settled_http_request_duration_seconds_count";
    assert_eq!(
        m.value(
            http,
            &[
                ("method", "POST"),
                ("route", "/v1/customers"),
                ("status", "201")
            ]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            http,
            &[
                ("method", "POST"),
                ("route", "/v1/invoices/{id}/charge"),
                ("status", "402")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            http,
            &[
                ("method", "POST"),
                ("route", "/v1/customers/{id}/payment_methods"),
                ("status", "422")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            http,
            &[
                ("method", "POST"),
                ("route", "/webhooks/stripe"),
                ("status", "200")
            ]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            http,
            &[
                ("method", "POST"),
                ("route", "/webhooks/stripe"),
                ("status", "400")
            ]
        ),
        1.0
    );
    for route in m.label_values(http, "route") {
        assert!(
            !route.contains("cus_") && !route.contains("in_") && !route.contains("sub_"),
            "an id in a route label: {route}"
        );
    }
    // Pools and the database, read at scrape time.
    assert_eq!(m.value("settled_database_up", &[]), 1.0);
    // Each pool's own maximum, within database.max_connections (10 by default).
    for pool in ["main", "queue"] {
        let max = m.value("settled_db_pool_max_connections", &[("pool", pool)]);
        assert!((1.0..=10.0).contains(&max), "{pool}: {max}");
    }
    assert!(
        m.get(
            "settled_db_pool_connections",
            &[("pool", "main"), ("state", "idle")]
        )
        .is_some()
    );
    assert!(
        m.get(
            "settled_db_pool_connections",
            &[("pool", "queue"), ("state", "in_use")]
        )
        .is_some()
    );
    // No label anywhere holds an id (ours and the gateway's are a prefix and 14+ characters).
    for (name, labels) in m.0.keys() {
        for value in labels.values() {
            for prefix in ["cus_", "sub_", "in_", "whe_", "em_", "evt_", "pi_", "spm_"] {
                assert!(
                    !(value.starts_with(prefix) && value.len() >= prefix.len() + 14),
                    "{name} has an id in a label: {value}"
                );
            }
        }
    }
});

both!(
    the_log_of_a_scripted_run_holds_no_secret_token_card_or_webhook_body,
    |backend| async move {
        // Everything at debug, as an operator chasing a problem would run it.
        let (gateway, w) = scripted_run(backend, &[("RUST_LOG", "debug")]).await;
        let log = w.daemon.log_text();
        assert!(
            log.lines().count() > 50,
            "the run logged little; the check would prove nothing:\n{log}"
        );
        assert!(log.contains("invoices generated"), "{log}");
        let secret = gateway.webhook_secret();
        for (what, needle) in [
            ("the Stripe API key", API_KEY),
            ("the admin token", TOKEN),
            ("the webhook secret", secret.as_str()),
            (
                "the webhook secret's key",
                secret.trim_start_matches("whsec_"),
            ),
            ("a card number", CARD_NUMBER),
            ("the webhook body", BODY_MARKER),
        ] {
            assert!(!log.contains(needle), "{what} is in the log");
        }
    }
);

/// The journald form: what `log.format = "auto"` writes when stderr is the journal.
#[test]
fn journald_lines_carry_a_priority_and_no_colour_or_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal.log");
    let status = std::process::Command::new(binary())
        .arg("migrate")
        .env_clear()
        .env("SETTLED__DAEMON__STATE_DIR", dir.path())
        .env("SETTLED__LOG__FORMAT", "journald")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('<')).collect();
    assert!(lines.len() > 3, "{text}");
    for line in &lines {
        let prio = &line[..3];
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&prio), "{line}");
        assert!(!line.contains('\u{1b}'), "no colours: {line}");
        assert!(
            !line.contains("2026-") && !line.contains("2027-"),
            "no timestamp: {line}"
        );
    }
}
