//! What the benchmarks share: a fresh database per run on either backend, dropped afterwards.

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
