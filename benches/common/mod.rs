//! What the benchmarks share: a fresh database per run on either backend, dropped afterwards;
//! the machine's ceiling beside which figures are read; a book of subscriptions; the webhook
//! load generator (`load`).

pub mod load;

/// The PostgreSQL server the benchmarks create their databases on.
pub fn postgres_admin() -> String {
    std::env::var("SETTLED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin_exec(sql: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin())
        .await
        .expect("postgres");
    sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql))
        .await
        .expect("admin statement");
}

/// A database URL for a fresh, empty database named after `label` and this process.
pub async fn fresh_database(backend: &str, label: &str, dir: &std::path::Path) -> String {
    if backend == "sqlite" {
        return format!("sqlite://{}", dir.join("bench.db").display());
    }
    let name = format!("settled_bench_{label}_{}", std::process::id());
    admin_exec(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    admin_exec(format!("CREATE DATABASE {name}")).await;
    let admin = postgres_admin();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin);
    format!("{base}/{name}")
}

/// Drops a PostgreSQL database made by [`fresh_database`] (SQLite files go with their folder).
pub async fn drop_database(url: &str) {
    if let Some(name) = url
        .strip_prefix("postgres://")
        .and_then(|u| u.rsplit_once('/'))
        .map(|(_, n)| n.to_string())
    {
        admin_exec(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
}

/// The SQLite ceiling beside which the daemon's SQLite figures are read: `concurrency` tasks
/// each committing one single-row INSERT (a body the size of a webhook event) per transaction,
/// WAL and `synchronous = FULL`, for `seconds`, into a scratch file in `dir`. Prints and returns
/// commits per second.
#[allow(dead_code)]
pub async fn sqlite_ceiling(dir: &std::path::Path, concurrency: usize, seconds: u64) -> f64 {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let options = SqliteConnectOptions::new()
        .filename(dir.join("ceiling.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(concurrency as u32)
        .connect_with(options)
        .await
        .expect("sqlite");
    sqlx::query("CREATE TABLE ceiling (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let body = "x".repeat(400);
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let pool = pool.clone();
            let done = done.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while std::time::Instant::now() < until {
                    sqlx::query("INSERT INTO ceiling (event_id, body) VALUES ($1, $2)")
                        .bind(format!("evt_{c}_{i}"))
                        .bind(&body)
                        .execute(&pool)
                        .await
                        .unwrap();
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = done.load(Ordering::Relaxed) as f64 / seconds as f64;
    println!(
        "sqlite ceiling: one single-row INSERT per commit (WAL, synchronous=FULL) at concurrency {concurrency}: {rate:.0} commits/s"
    );
    pool.close().await;
    rate
}

/// The PostgreSQL ceiling: pgbench, `concurrency` clients, each transaction one single-row
/// INSERT (a body the size of a webhook event) committed on its own, for `seconds`, against a
/// scratch database. Prints and returns transactions per second.
#[allow(dead_code)]
pub async fn pgbench_ceiling(concurrency: usize, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database("postgres", "pgbench", dir.path()).await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::Executor::execute(
            &mut conn,
            "CREATE TABLE ceiling (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)",
        )
        .await
        .unwrap();
    }
    let script = dir.path().join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO ceiling (event_id, body) VALUES ('evt_' || :client_id || '_' || nextval('ceiling_id_seq'), repeat('x', 400));\n",
    )
    .unwrap();
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &concurrency.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
            &script.display().to_string(),
            &url,
        ])
        .output()
        .expect("pgbench is installed (it ships with PostgreSQL)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("pgbench printed tps");
    println!(
        "pgbench ceiling: one single-row INSERT per transaction at concurrency {concurrency}: {tps:.0} tps"
    );
    drop_database(&url).await;
    tps
}

/// The ceiling of `backend`, measured now.
#[allow(dead_code)]
pub async fn ceiling(backend: &str, concurrency: usize, seconds: u64) -> f64 {
    if backend == "sqlite" {
        let dir = tempfile::tempdir().unwrap();
        sqlite_ceiling(dir.path(), concurrency, seconds).await
    } else {
        pgbench_ceiling(concurrency, seconds).await
    }
}

/// `n` customers, each with a billing contact and one monthly subscription (19.99 plus 20 % tax)
/// whose first period starts 2027-02-01, all due at once when the clock gets there.
#[allow(dead_code)]
pub async fn seed_subscriptions(db: &settled::store::Db, n: usize) {
    let start = chrono::DateTime::parse_from_rfc3339("2027-02-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let created = chrono::DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let items = r#"[{"description":"Plan","quantity":"1","unit_amount":1999,"tax_rate":"0.20"}]"#;
    let schedule =
        r#"{"every":"month","interval":1,"anchor":"2027-02-01T00:00:00Z","timezone":"UTC"}"#;
    // One customer per subscription, each with a billing contact, as a real book of accounts has:
    // every invoice is written, emailed and counted in its own customer's balance.
    for chunk_start in (0..n).step_by(500) {
        let count = (n - chunk_start).min(500);
        let mut customers = String::from(
            "INSERT INTO customers (id, email, name, currency, timezone, created_at, updated_at) VALUES ",
        );
        let mut contacts = String::from(
            "INSERT INTO customer_billing_emails (customer_id, position, email) VALUES ",
        );
        let mut subscriptions = String::from(
            "INSERT INTO subscriptions (id, customer_id, currency, items, schedule, timezone, start_at, next_period_start, created_at, updated_at) VALUES ",
        );
        for i in 0..count {
            let k = chunk_start + i;
            let sep = if i > 0 { ", " } else { "" };
            customers.push_str(&format!(
                "{sep}('cus_bench{k:07}', 'billing{k}@example.com', 'Customer {k}', 'USD', 'UTC', $1, $1)"
            ));
            contacts.push_str(&format!(
                "{sep}('cus_bench{k:07}', 0, 'billing{k}@example.com')"
            ));
            subscriptions.push_str(&format!(
                "{sep}('sub_bench{k:07}', 'cus_bench{k:07}', 'USD', $1, $2, 'UTC', $3, $3, $4, $4)"
            ));
        }
        settled::store::on_db!(db, p => {
            sqlx::query(sqlx::AssertSqlSafe(customers.as_str())).bind(created).execute(p).await.expect("customers");
            sqlx::query(sqlx::AssertSqlSafe(contacts.as_str())).execute(p).await.expect("contacts");
            sqlx::query(sqlx::AssertSqlSafe(subscriptions.as_str())).bind(items).bind(schedule).bind(start).bind(created).execute(p).await.expect("subscriptions");
        });
    }
}
