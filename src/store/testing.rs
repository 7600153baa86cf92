//! A fresh, migrated database for unit tests on either backend, dropped afterwards.

use super::Db;
use crate::config::Config;

pub struct TestDb {
    pub db: Db,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
                    }
                });
            })
            .join();
        }
    }
}

/// A new database: PostgreSQL (on SETTLED_TEST_POSTGRES) when `postgres`, else a SQLite file.
pub async fn open(postgres: bool) -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = if postgres {
        use sqlx::Connection;
        let admin = std::env::var("SETTLED_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("settled_unit_{}", ulid::Ulid::generate()).to_lowercase();
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL is required for the tests");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap().to_string();
        (format!("{base}/{name}"), Some((admin, name)))
    } else {
        (
            format!("sqlite://{}", dir.path().join("t.db").display()),
            None,
        )
    };
    let config = Config::load_from(None, [("SETTLED__DATABASE__URL".to_string(), url)]).unwrap();
    let db = Db::open(&config).unwrap();
    db.migrate().await.unwrap();
    TestDb { db, _dir: dir, pg }
}

/// Runs one statement of a test's own (fixtures, or a fault to provoke), panicking on error.
pub async fn exec(db: &Db, sql: &str) {
    super::on_db!(db, p => {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(p).await.unwrap();
    });
}

/// Reads rows with a test's own query.
pub async fn rows<T>(db: &Db, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + Send
        + Unpin,
{
    super::on_db!(db, p => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(p).await.unwrap()
    })
}
