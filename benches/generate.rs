//! Benchmark: generate the invoices of N subscriptions that all fall due at once, through the real
//! path (sweep, queue, generate_invoice jobs, gapless numbering), on SQLite and on PostgreSQL.
//! Prints invoices per second. `cargo bench --bench generate` runs 100,000 (BENCH_SUBSCRIPTIONS
//! changes it, BENCH_BACKENDS=postgres runs one backend); under `cargo test` it runs a small smoke
//! pass so the benchmark keeps working.

mod common;

#[path = "../tests/support/smtp.rs"]
mod smtp;

use std::time::{Duration, Instant};

use settled::app::Application;
use settled::config::Config;
use settled::store::on_db;
use tokio_util::sync::CancellationToken;

async fn run(backend: &str, n: usize) -> f64 {
    // The invoice emails go to a local SMTP server (BENCH_MAIL=file: the file transport).
    let smtp = match std::env::var("BENCH_MAIL").as_deref() {
        Ok("file") => None,
        _ => Some(smtp::SmtpServer::start_counting().await),
    };
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(backend, "gen", dir.path()).await;
    // Defaults throughout; BENCH_CONCURRENCY sets jobs.concurrency to compare.
    let concurrency = std::env::var("BENCH_CONCURRENCY").ok();
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
    ];
    if let Some(c) = &concurrency {
        env.push(("SETTLED__JOBS__CONCURRENCY".to_string(), c.clone()));
    }
    if let Some(smtp) = &smtp {
        env.push(("SETTLED__EMAIL__SMTP_URL".to_string(), smtp.url()));
    }
    let config = Config::load_from(None, env).expect("config");
    let app = Application::build(config).await.expect("build");
    let state = app.state();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    while !state.billing.db.migrations_applied().await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::seed_subscriptions(&state.billing.db, n).await;
    let to = chrono::DateTime::parse_from_rfc3339("2027-02-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    settled::store::settings::set(
        &state.billing.db,
        settled::store::settings::CLOCK,
        &to.to_rfc3339(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    state.manual_clock.as_ref().unwrap().advance_to(to).unwrap();
    state.scheduler.mark_advanced();
    let mut written = None;
    loop {
        let count: i64 = on_db!(&state.billing.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM invoices").fetch_one(p).await.unwrap());
        if count as usize >= n && written.is_none() {
            written = Some(started.elapsed());
        }
        // Done when every invoice email is out too (to the SMTP server, or the file transport's
        // STATE_DIR/mail).
        let sent: i64 = on_db!(&state.billing.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'sent'").fetch_one(p).await.unwrap());
        if written.is_some() && sent as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let written = written.unwrap();
    let rate = n as f64 / elapsed.as_secs_f64();
    if let Some(smtp) = &smtp {
        assert!(
            smtp.accepted_count() >= n,
            "the SMTP server got every invoice email"
        );
    }
    println!(
        "generate/{backend}: {n} invoices written in {:.2} s ({:.0}/s), with their emails sent {} in {:.2} s = {rate:.0} invoices/s end to end (jobs.concurrency {})",
        written.as_secs_f64(),
        n as f64 / written.as_secs_f64(),
        if smtp.is_some() {
            "to a local SMTP server"
        } else {
            "to .eml files"
        },
        elapsed.as_secs_f64(),
        concurrency.as_deref().unwrap_or("default")
    );
    stop.cancel();
    let _ = handle.await;
    common::drop_database(&url).await;
    rate
}

fn main() {
    // RUST_LOG=settled=debug shows the daemon's log (batches written, sweeps, worker restarts).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_SUBSCRIPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 100_000 } else { 200 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    rt.block_on(async {
        for backend in backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            let ceiling = common::ceiling(backend, 32, if benching { 5 } else { 1 }).await;
            let rate = run(backend, n).await;
            println!(
                "generate/{backend}: {:.2}x the {backend} one-row-commit ceiling",
                rate / ceiling
            );
        }
    });
}
