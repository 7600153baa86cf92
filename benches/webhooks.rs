//! Benchmark: signed Stripe webhooks fired at the real daemon (HTTP intake, signature check,
//! durable storage with its process_event job) at a fixed concurrency with unique event ids, on
//! SQLite and on PostgreSQL; beside it, in the same run, `pgbench` at the same concurrency on a
//! one-row-insert script against a scratch PostgreSQL database, or the same inserts committed one
//! at a time into a scratch SQLite file (WAL, synchronous=FULL): the machine's ceiling for one
//! durable single-row insert per request. Prints accepted events/s and p50/p99 latency.
//! Each backend runs twice: `http` (intake alone, as a process with `daemon.role = "http"`) and
//! `all` (workers processing the events meanwhile; it also prints how many were processed within
//! a minute of the first delivery).
//! `cargo bench --bench webhooks` sends 60,000 per run (BENCH_WEBHOOKS changes it,
//! BENCH_CONCURRENCY the concurrency, 32; BENCH_ROLES and BENCH_BACKENDS pick runs); under
//! `cargo test` it runs a small smoke pass so the benchmark keeps working.

use std::time::{Duration, Instant};

mod common;

use common::load;

use settled::app::Application;
use settled::config::Config;
use settled::store::on_db;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_bench_0123456789abcdef";

fn deliveries(n: usize, run: &str) -> Vec<load::Delivery> {
    (0..n)
        .map(|i| {
            let body = serde_json::json!({
                "id": format!("evt_{run}_{i:08}"),
                "object": "event",
                "type": "payment_intent.succeeded",
                "created": 1_800_000_000,
                "livemode": false,
                "data": {"object": {"id": format!("pi_{run}_{i:08}"), "object": "payment_intent",
                    "amount": 1999, "amount_received": 1999, "currency": "usd", "status": "succeeded",
                    "metadata": {"invoice_id": "in_unknown"}}}
            })
            .to_string();
            load::stripe_delivery(&body, SECRET)
        })
        .collect()
}

async fn daemon_run(
    backend: &str,
    n: usize,
    concurrency: usize,
    role: &str,
    drain: Duration,
) -> load::Figures {
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(backend, "webhooks", dir.path()).await;
    let env = vec![
        ("SETTLED__DATABASE__URL".to_string(), url.clone()),
        (
            "SETTLED__DAEMON__STATE_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("SETTLED__DAEMON__ROLE".to_string(), role.to_string()),
        (
            "SETTLED__SERVER__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        (
            "SETTLED__ADMIN__TOKENS".to_string(),
            "[\"bench-admin-token-0123456789abcdef\"]".to_string(),
        ),
        (
            "SETTLED__STRIPE__WEBHOOK_SECRETS".to_string(),
            format!("[\"{SECRET}\"]"),
        ),
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
    let addr = format!("127.0.0.1:{port}");
    // A short warm-up, so start-up work (the first connections, the writers) is not measured.
    load::fire(&addr, deliveries(concurrency * 4, "warmup"), concurrency).await;
    let started = Instant::now();
    let figures = load::fire(&addr, deliveries(n, "run"), concurrency).await;
    let stored: i64 = on_db!(&state.billing.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events WHERE event_id LIKE 'evt_run_%'").fetch_one(p).await.unwrap());
    assert_eq!(stored as usize, n, "every accepted event is stored");
    println!(
        "webhooks/{backend} ({role}): {n} events at concurrency {concurrency}: {:.0} accepted events/s, p50 {:.1} ms, p99 {:.1} ms",
        figures.rate, figures.p50_ms, figures.p99_ms
    );
    if role == "all" {
        // Processing runs behind the answers: how far it got, waiting at most `drain` for the rest.
        let processed = |db: settled::store::Db| async move {
            let n: i64 = on_db!(&db, p => sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events WHERE status <> 'received' AND event_id LIKE 'evt_run_%'").fetch_one(p).await.unwrap());
            n as usize
        };
        let all = n;
        let mut done = processed(state.billing.db.clone()).await;
        while done < all && started.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(200)).await;
            done = processed(state.billing.db.clone()).await;
        }
        println!(
            "webhooks/{backend} ({role}): {done} of {all} events processed {:.1} s after the first delivery = {:.0} processed events/s",
            started.elapsed().as_secs_f64(),
            done as f64 / started.elapsed().as_secs_f64()
        );
    }
    stop.cancel();
    let _ = handle.await;
    common::drop_database(&url).await;
    figures
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_WEBHOOKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 60_000 } else { 200 });
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let drain = Duration::from_secs(if benching { 60 } else { 30 });
    let roles = std::env::var("BENCH_ROLES").unwrap_or_else(|_| "http,all".into());
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for backend in backends.split(',') {
            for role in roles.split(',') {
                // The ceiling is measured right before each run: other load on the machine moves it.
                let ceiling =
                    common::ceiling(backend, concurrency, if benching { 5 } else { 1 }).await;
                let figures = daemon_run(backend, n, concurrency, role, drain).await;
                println!(
                    "webhooks/{backend} ({role}): {:.2}x the {backend} ceiling",
                    figures.rate / ceiling
                );
            }
        }
    });
}
