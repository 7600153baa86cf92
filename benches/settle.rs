//! Benchmark: payment events that settle real invoices. N customers' recurring invoices are
//! generated first (each with its invoice email sent to a local SMTP server); then a signed
//! `payment_intent.succeeded` for each invoice is fired at the daemon from 32 keep-alive
//! connections, as a portal's payments would arrive. Measured from the first delivery to the
//! last event applied: each one a payment recorded, its invoice paid, its ledger rows and its
//! receipt email written (the receipts go out to the SMTP server meanwhile, and the figure of
//! all of them sent is printed too). Beside it, the backend's one-row-commit ceiling measured in
//! the same run.
//!
//! `cargo bench --bench settle` runs 20,000 (BENCH_EVENTS changes it, BENCH_BACKENDS picks
//! backends); under `cargo test` it runs a small smoke pass so the benchmark keeps working.

mod common;

#[path = "../tests/support/smtp.rs"]
mod smtp;

use std::time::{Duration, Instant};

use common::load;
use settled::app::Application;
use settled::config::Config;
use settled::store::{Db, on_db};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_bench_0123456789abcdef";
const CONCURRENCY: usize = 32;

async fn count(db: &Db, sql: &'static str) -> usize {
    let n: i64 = on_db!(db, p => sqlx::query_scalar(sql).fetch_one(p).await.unwrap());
    n as usize
}

/// One signed `payment_intent.succeeded` per invoice, for its total, as Stripe sends it for a
/// payment made in a portal (metadata naming the invoice).
fn deliveries(invoices: &[(String, i64)]) -> Vec<load::Delivery> {
    invoices
        .iter()
        .enumerate()
        .map(|(i, (invoice, total))| {
            let body = serde_json::json!({
                "id": format!("evt_settle_{i:08}"),
                "object": "event",
                "type": "payment_intent.succeeded",
                "created": 1_800_000_000,
                "livemode": false,
                "data": {"object": {"id": format!("pi_settle_{i:08}"), "object": "payment_intent",
                    "amount": total, "amount_received": total, "currency": "usd",
                    "status": "succeeded", "metadata": {"invoice_id": invoice}}}
            })
            .to_string();
            load::stripe_delivery(&body, SECRET)
        })
        .collect()
}

async fn run(backend: &str, n: usize) -> f64 {
    let smtp = smtp::SmtpServer::start_counting().await;
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(backend, "settle", dir.path()).await;
    let env = vec![
        ("SETTLED__DATABASE__URL".to_string(), url.clone()),
        (
            "SETTLED__DAEMON__STATE_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        (
            "SETTLED__SERVER__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        ("SETTLED__CLOCK__MODE".to_string(), "manual".to_string()),
        (
            "SETTLED__CLOCK__START".to_string(),
            "2027-01-01T00:00:00Z".to_string(),
        ),
        (
            "SETTLED__ADMIN__TOKENS".to_string(),
            "[\"bench-token-0123456789abcdef0123456789\"]".to_string(),
        ),
        (
            "SETTLED__STRIPE__WEBHOOK_SECRETS".to_string(),
            format!("[\"{SECRET}\"]"),
        ),
        ("SETTLED__EMAIL__SMTP_URL".to_string(), smtp.url()),
        ("SETTLED__LOG__LEVEL".to_string(), "warn".to_string()),
    ];
    let config = Config::load_from(None, env).expect("config");
    let app = Application::build(config).await.expect("build");
    let port = app.port();
    let state = app.state();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    while !state.billing.db.migrations_applied().await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = state.billing.db.clone();

    // The book: N open invoices, each already emailed.
    common::seed_subscriptions(&db, n).await;
    let to = chrono::DateTime::parse_from_rfc3339("2027-02-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    settled::store::settings::set(&db, settled::store::settings::CLOCK, &to.to_rfc3339())
        .await
        .unwrap();
    state.manual_clock.as_ref().unwrap().advance_to(to).unwrap();
    state.scheduler.mark_advanced();
    while count(&db, "SELECT COUNT(*) FROM emails WHERE status = 'sent'").await < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let invoices: Vec<(String, i64)> = on_db!(&db, p => sqlx::query_as("SELECT id, total FROM invoices WHERE status = 'open' ORDER BY id").fetch_all(p).await.unwrap());
    assert_eq!(invoices.len(), n, "one open invoice per subscription");
    let deliveries = deliveries(&invoices);

    // The payments arrive.
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let intake = load::fire(&addr, deliveries, CONCURRENCY).await;
    let accepted = started.elapsed();
    let settled = loop {
        if count(
            &db,
            "SELECT COUNT(*) FROM webhook_events WHERE status <> 'received'",
        )
        .await
            >= n
        {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let receipts = |status: &'static str| {
        let db = db.clone();
        async move {
            if status == "any" {
                count(
                    &db,
                    "SELECT COUNT(*) FROM emails WHERE template = 'receipt'",
                )
                .await
            } else {
                count(
                    &db,
                    "SELECT COUNT(*) FROM emails WHERE template = 'receipt' AND status = 'sent'",
                )
                .await
            }
        }
    };
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'"
        )
        .await,
        n,
        "every event applied"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM payments").await,
        n,
        "one payment per event"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM invoices WHERE status = 'paid'").await,
        n,
        "every invoice paid"
    );
    assert_eq!(receipts("any").await, n, "one receipt written per payment");
    while receipts("sent").await < n {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = started.elapsed();
    let rate = n as f64 / settled.as_secs_f64();
    println!(
        "settle/{backend}: {n} payment events accepted in {:.2} s ({:.0}/s, p99 {:.1} ms); all applied (payment, invoice paid, ledger, receipt written) {:.2} s after the first delivery = {rate:.0} events/s; receipts sent to a local SMTP server after {:.2} s ({:.0}/s)",
        accepted.as_secs_f64(),
        intake.rate,
        intake.p99_ms,
        settled.as_secs_f64(),
        sent.as_secs_f64(),
        n as f64 / sent.as_secs_f64()
    );
    stop.cancel();
    let _ = handle.await;
    common::drop_database(&url).await;
    rate
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 20_000 } else { 200 });
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let ceiling = common::ceiling(backend, CONCURRENCY, if benching { 5 } else { 1 }).await;
            let rate = run(backend, n).await;
            println!(
                "settle/{backend}: {:.2}x the {backend} one-row-commit ceiling",
                rate / ceiling
            );
        }
    });
}
