//! Several daemons on one database: an HTTP-intake-only daemon (`daemon.role = "http"`, behind a
//! load balancer in production) and a workers-only daemon (`daemon.role = "worker"`) share one
//! PostgreSQL database and its queue. PostgreSQL only: SQLite is the single-node embedded default,
//! and several processes on one SQLite file is not a deployment this supports.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::support::sha256::stripe_header;

const SECRET: &str = "whsec_roles_8c2f41d7";

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The value of a series in a daemon's `/metrics` (0 when absent).
async fn metric(d: &Daemon, series: &str) -> f64 {
    let text = d
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

async fn wait_until<F, Fut>(what: &str, logs: &[&Daemon], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        if Instant::now() > deadline {
            let text: Vec<String> = logs.iter().map(|d| d.log_text()).collect();
            panic!("{what} did not happen in time:\n{}", text.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_daemon_and_a_worker_daemon_share_one_postgres_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let options = |role: &str| {
        DaemonOptions::default()
            .process()
            .env("SETTLED__DAEMON__ROLE", role)
            .env(
                "SETTLED__STRIPE__WEBHOOK_SECRETS",
                format!("[\"{SECRET}\"]"),
            )
    };
    let intake = Daemon::start(&dir.path().join("intake"), &db.url, options("http")).await;
    let worker = Daemon::start(&dir.path().join("worker"), &db.url, options("worker")).await;
    let both = [&intake, &worker];

    // The worker serves health, readiness and metrics only; the intake the whole HTTP surface.
    let (status, _) = worker.get("/v1/customers").await;
    assert_eq!(status, 404, "no admin API on a worker");
    let r = worker
        .http
        .post(worker.url("/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no webhook intake on a worker");
    let r = worker
        .http
        .get(worker.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A webhook taken by the intake is processed by the worker.
    let body = json!({
        "id": "evt_roles_1", "object": "event", "api_version": "2024-06-20",
        "created": now_secs(), "type": "customer.created", "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "cus_gw_roles", "object": "customer"}}
    })
    .to_string();
    let r = intake
        .http
        .post(intake.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", stripe_header(SECRET, now_secs(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let event: Value = r.json().await.unwrap();
    let event_id = event["id"].as_str().unwrap().to_string();
    wait_until("processing the webhook", &both, || async {
        let (_, e) = intake.get(&format!("/v1/webhook_events/{event_id}")).await;
        e["status"] == "ignored"
    })
    .await;

    // A subscription created through the intake is billed by the worker, for the period that
    // starts now and, after the clock moves, for the next one.
    let customer = intake.customer("USD").await;
    let (status, sub) = intake
        .post(
            "/v1/subscriptions",
            json!({"customer_id": customer, "schedule": {"every": "month"},
                   "start_at": "2027-01-01T00:00:00Z",
                   "items": [{"description": "Plan", "quantity": "1", "unit_amount": "10.00"}]}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    wait_until("the first invoice", &both, || async {
        intake.invoices("").await.len() == 1
    })
    .await;
    intake.advance("2027-02-01T00:00:00Z").await;
    let invoices = intake.invoices("").await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    for inv in &invoices {
        assert_eq!(inv["status"], "open", "{inv}");
    }

    // The work ran in the worker, never in the intake.
    let generated = "settled_work_items_total{kind=\"generate_invoice\"}";
    let processed = "settled_work_items_total{kind=\"process_event\"}";
    assert_eq!(metric(&worker, generated).await, 2.0);
    assert_eq!(metric(&worker, processed).await, 1.0);
    assert_eq!(
        metric(&worker, "settled_invoices_generated_total").await,
        2.0
    );
    assert_eq!(metric(&intake, generated).await, 0.0);
    assert_eq!(metric(&intake, processed).await, 0.0);
    assert_eq!(
        metric(
            &intake,
            "settled_webhooks_received_total{source=\"stripe\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &worker,
            "settled_webhooks_received_total{source=\"stripe\"}"
        )
        .await,
        0.0
    );
    let intake_log = intake.log_text();
    assert!(!intake_log.contains("\"job done\""), "{intake_log}");
    assert!(worker.log_text().contains(&event_id));

    let worker_status = worker.stop(Duration::from_secs(20));
    assert!(worker_status.success(), "{worker_status:?}");
    let intake_status = intake.stop(Duration::from_secs(20));
    assert!(intake_status.success(), "{intake_status:?}");
    drop(db);
}
