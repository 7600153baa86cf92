//! Benchmark: charge N open invoices that all fall due at once, through the real path (sweep,
//! queue, charge_invoice jobs, one PaymentIntent each, payment recorded) against the local
//! Stripe-compatible gateway answering after a realistic latency. Prints charges per second
//! beside the backend's one-row-commit ceiling measured in the same run, on SQLite and on
//! PostgreSQL, with the default configuration.
//!
//! `cargo bench --bench charge` runs 10,000 at 300 ms (BENCH_INVOICES, BENCH_LATENCY_MS and
//! BENCH_CONCURRENCY change that, BENCH_BACKENDS=postgres runs one backend); under `cargo test` it
//! runs a small smoke pass.

mod common;

#[path = "../tests/support/stripe_gateway.rs"]
#[allow(unused_imports)]
mod stripe_gateway;

use std::time::{Duration, Instant};

use settled::app::Application;
use settled::config::Config;
use settled::store::{Db, on_db};
use stripe_gateway::StripeGateway;
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A customer at the gateway holding `n` saved cards (one per customer of the daemon's book,
/// each a card of its own), as the daemon would have created them.
async fn gateway_customer(gateway: &StripeGateway, n: usize) -> (String, Vec<String>) {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    let base = gateway.base_url();
    let customer: serde_json::Value = http
        .post(format!("{base}/v1/customers"))
        .bearer_auth("sk_test_bench")
        .form(&[("email", "bench@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cus = customer["id"].as_str().unwrap().to_string();
    let tokens = futures::stream::iter(0..n)
        .map(|_| {
            let (http, base, cus) = (http.clone(), base.clone(), cus.clone());
            async move {
                let pm: serde_json::Value = http
                    .post(format!("{base}/v1/payment_methods/pm_card_visa/attach"))
                    .bearer_auth("sk_test_bench")
                    .form(&[("customer", cus.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                pm["id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    (cus, tokens)
}

/// N open auto-charge invoices of N customers (a book of accounts, each customer with its saved
/// card), each with its first attempt scheduled for `due`. The customers share one customer at
/// the gateway, which holds the card.
async fn seed(db: &Db, n: usize, gateway_customer: &str, tokens: &[String], due: i64) {
    let created = due - 86_400_000;
    for chunk_start in (0..n).step_by(400) {
        let count = (n - chunk_start).min(400);
        let mut customers = String::from(
            "INSERT INTO customers (id, email, name, currency, timezone, gateway_customer_id, created_at, updated_at) VALUES ",
        );
        let mut methods = String::from(
            "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, exp_year, is_default, created_at) VALUES ",
        );
        let mut invoices = String::from(
            "INSERT INTO invoices (id, number, customer_id, kind, status, currency, subtotal, tax, total, amount_due, auto_charge, due_at, finalized_at, created_at, updated_at) VALUES ",
        );
        let mut attempts = String::from(
            "INSERT INTO charge_attempts (id, invoice_id, customer_id, attempt, idempotency_key, amount, currency, automatic, status, scheduled_at) VALUES ",
        );
        for i in 0..count {
            let k = chunk_start + i;
            if i > 0 {
                customers.push_str(", ");
                methods.push_str(", ");
                invoices.push_str(", ");
                attempts.push_str(", ");
            }
            customers.push_str(&format!(
                "('cus_bench{k:07}', 'bench{k}@example.com', 'Bench {k}', 'USD', 'UTC', $3, $2, $2)"
            ));
            methods.push_str(&format!(
                "('spm_bench{k:07}', 'cus_bench{k:07}', 'stripe', '{}', 'visa', '4242', 12, 2034, TRUE, $1)",
                tokens[k]
            ));
            invoices.push_str(&format!(
                "('in_bench{k:07}', 'BENCH-{k:07}', 'cus_bench{k:07}', 'standard', 'open', 'USD', 1999, 0, 1999, 1999, TRUE, $1, $2, $2, $2)"
            ));
            attempts.push_str(&format!(
                "('ca_bench{k:07}', 'in_bench{k:07}', 'cus_bench{k:07}', 1, 'settled:in_bench{k:07}:1', 1999, 'USD', TRUE, 'pending', $1)"
            ));
        }
        // Each statement binds only the parameters it names, in order.
        let customers = customers.replace("$3", "$1");
        on_db!(db, p => {
            sqlx::query(sqlx::AssertSqlSafe(customers.as_str())).bind(gateway_customer).bind(created).execute(p).await.expect("customers");
            sqlx::query(sqlx::AssertSqlSafe(methods.as_str())).bind(created).execute(p).await.expect("payment methods");
        });
        on_db!(db, p => {
            sqlx::query(sqlx::AssertSqlSafe(invoices.as_str())).bind(due).bind(created).execute(p).await.expect("invoices");
            sqlx::query(sqlx::AssertSqlSafe(attempts.as_str())).bind(due).execute(p).await.expect("attempts");
        });
    }
}

async fn run(backend: &str, n: usize, latency: Duration, concurrency: Option<usize>) -> f64 {
    let gateway = StripeGateway::start().await;
    let (gateway_customer, tokens) = gateway_customer(&gateway, n).await;
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(backend, "charge", dir.path()).await;
    let mut env = vec![
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
            "[\"bench-admin-token-0123456789abcdef\"]".to_string(),
        ),
        (
            "SETTLED__STRIPE__API_KEY".to_string(),
            "sk_test_bench".to_string(),
        ),
        ("SETTLED__STRIPE__API_BASE".to_string(), gateway.base_url()),
    ];
    if let Some(c) = concurrency {
        env.push(("SETTLED__JOBS__CONCURRENCY".to_string(), c.to_string()));
    }
    let config = Config::load_from(None, env).expect("config");
    let app = Application::build(config).await.expect("build");
    let state = app.state();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    while !state.billing.db.migrations_applied().await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to = chrono::DateTime::parse_from_rfc3339("2027-02-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    seed(
        &state.billing.db,
        n,
        &gateway_customer,
        &tokens,
        to.timestamp_millis(),
    )
    .await;
    settled::store::settings::set(
        &state.billing.db,
        settled::store::settings::CLOCK,
        &to.to_rfc3339(),
    )
    .await
    .unwrap();
    gateway.set_latency(latency);
    let started = Instant::now();
    state.manual_clock.as_ref().unwrap().advance_to(to).unwrap();
    state.scheduler.mark_advanced();
    loop {
        let paid: i64 = on_db!(&state.billing.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM invoices WHERE status = 'paid'").fetch_one(p).await.unwrap());
        if paid as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    let payments: i64 = on_db!(&state.billing.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM payments").fetch_one(p).await.unwrap());
    assert_eq!(payments as usize, n, "one payment per invoice");
    assert_eq!(
        gateway.payment_intent_count(),
        n,
        "one PaymentIntent per invoice"
    );
    println!(
        "charge/{backend}: {n} charges in {:.2} s = {rate:.0} charges/s (gateway latency {} ms, jobs.concurrency {})",
        elapsed.as_secs_f64(),
        latency.as_millis(),
        concurrency.map_or("default".to_string(), |c| c.to_string())
    );
    stop.cancel();
    let _ = handle.await;
    common::drop_database(&url).await;
    rate
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n = env_or("BENCH_INVOICES", if benching { 10_000 } else { 100 });
    let latency = Duration::from_millis(env_or("BENCH_LATENCY_MS", 300));
    // Defaults throughout; BENCH_CONCURRENCY sets jobs.concurrency to compare.
    let concurrency: Option<usize> = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
        for backend in backends.split(',') {
            let ceiling = common::ceiling(backend.trim(), 32, if benching { 5 } else { 1 }).await;
            let rate = run(backend.trim(), n, latency, concurrency).await;
            println!(
                "charge/{backend}: {:.2}x the {backend} one-row-commit ceiling; the gateway's bound is {:.0}/s per call in flight",
                rate / ceiling,
                1.0 / latency.as_secs_f64()
            );
        }
    });
}
