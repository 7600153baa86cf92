//! Storage: rows and queries, nothing else. Every statement the daemon runs lives under this
//! folder, one module per table (the only module that writes it), over SQLite or PostgreSQL. SQL
//! is written once with `$N` placeholders (both backends accept them) and instants as BIGINT
//! milliseconds; the `on_db!`/`on_tx!` macros expand a body once per backend so the same code is
//! type-checked against each driver, and `dialect` holds the few places where the two differ.
//!
//! Locks are taken in one order everywhere: the work item a transaction claims or records (a
//! charge attempt, a stored event; claims skip what another holds, so they never wait), then the
//! customer, then its invoices by id, then the rows hanging off them (payments, balances). A
//! batch over several customers takes them in id order. On PostgreSQL they are `FOR NO KEY
//! UPDATE` row locks; SQLite's write transactions are exclusive from their first statement (BEGIN
//! IMMEDIATE), so the same code needs none there.

pub mod audit;
pub mod balances;
pub mod bulk;
pub mod charge_attempts;
pub mod customers;
pub mod dialect;
pub mod emails;
pub mod error;
pub mod idempotency_keys;
pub mod invoices;
pub mod ledger;
pub mod pages;
pub mod payment_methods;
pub mod payments;
pub mod portal;
pub mod queue;
pub mod refunds;
pub mod settings;
pub mod subscriptions;
#[cfg(test)]
pub mod testing;
pub mod webhook_events;
pub mod work_failures;

pub use error::{Error, Result};

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::{Config, DatabaseKind};

/// One migration applied by [`Db::migrate_reporting`].
#[derive(Debug, Clone)]
pub struct MigrationApplied {
    /// "settled" or "job queue".
    pub history: &'static str,
    pub version: i64,
    pub description: String,
    /// 1-based position among the migrations this run applies, and their number.
    pub index: usize,
    pub total: usize,
    pub took: Duration,
}

/// A pool on one of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// An open write transaction on one of the two backends.
pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A SQLite write transaction and its turn at the database's writer gate.
///
/// SQLite has one writer. Left to itself, a writer that finds the lock taken sleeps in SQLite's
/// busy handler (1 ms, growing to 100 ms between tries), so a drain that commits and at once
/// begins its next batch takes the lock again and again while intake's writer sleeps: intake
/// starves past its answer deadline. Writers of this process therefore queue at a FIFO gate per
/// database file and take the lock in turn; SQLite's busy handler still arbitrates between
/// processes. Dereferences to the connection, as a transaction does.
pub struct SqliteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for SqliteTx {
    type Target = sqlx::SqliteConnection;

    fn deref(&self) -> &sqlx::SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.tx
    }
}

/// The writer gate of one SQLite database file in this process.
fn sqlite_gate(pool: &SqlitePool) -> Arc<tokio::sync::Mutex<()>> {
    static GATES: std::sync::OnceLock<
        std::sync::Mutex<
            std::collections::HashMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>,
        >,
    > = std::sync::OnceLock::new();
    let file = pool.connect_options().get_filename().to_path_buf();
    GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(file)
        .or_default()
        .clone()
}

/// How long a writer waits for its turn before it goes to SQLite's own busy handling anyway:
/// the same bound as the busy timeout, so a writer never waits longer than it did without
/// the gate.
const GATE_WAIT: Duration = Duration::from_secs(30);

/// Runs `$body` with `$p` bound to the backend's pool; the body is compiled once per backend.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($p) => $body,
            $crate::store::Db::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction's connection (`&mut *tx`).
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            $crate::store::Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

pub use crate::{on_db, on_tx};

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.tx.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Rolls back explicitly, so the write lock (SQLite) is released before the next
    /// transaction rather than when the connection is next used.
    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.tx.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }
}

impl Db {
    /// Opens the configured database. Connections are made lazily, so an unreachable database does
    /// not stop start-up: `/readyz` says 503 and work resumes once it answers.
    pub fn open(config: &Config) -> anyhow::Result<Db> {
        Self::open_sized(config, config.database.max_connections)
    }

    /// How `database.max_connections` is split: the job queue's pool (claims, acknowledgements,
    /// heartbeats) gets a third, at least 2; the rest serves requests and the jobs' own work.
    pub fn pool_shares(config: &Config) -> (u32, u32) {
        let total = config.database.max_connections.max(4);
        let queue = (total / 3).max(2);
        (total - queue, queue)
    }

    /// The same database with a pool of `max_connections` (the job queue's own pool takes a share
    /// of `database.max_connections`; see `runner`).
    pub fn open_sized(config: &Config, max_connections: u32) -> anyhow::Result<Db> {
        let timeout = Duration::from_secs(config.database.connect_timeout_seconds.max(1));
        match config.database_kind()? {
            DatabaseKind::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!("cannot create the database folder {}", parent.display())
                    })?;
                }
                Ok(Db::Sqlite(sqlite_pool(&path, max_connections, timeout)?))
            }
            DatabaseKind::Postgres(url) => {
                let options = PgConnectOptions::from_str(&url)
                    .context("database.url is not a valid postgres url")?
                    .application_name("settled");
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options);
                Ok(Db::Postgres(pool))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// A write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE) so two
    /// writers wait on the busy timeout instead of failing on a lock upgrade. Inside a request
    /// served under an Idempotency-Key, the transaction first writes the key's row
    /// (`idempotency_keys`), so the key is stored exactly when an effect is.
    pub async fn begin(&self) -> Result<Tx> {
        let mut tx = match self {
            Db::Sqlite(p) => {
                let turn = tokio::time::timeout(GATE_WAIT, sqlite_gate(p).lock_owned())
                    .await
                    .ok();
                Tx::Sqlite(SqliteTx {
                    tx: p.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: turn,
                })
            }
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        };
        idempotency_keys::claim_in(&mut tx).await?;
        Ok(tx)
    }

    /// True when the database answers a query.
    pub async fn ping(&self) -> bool {
        let probe =
            async { on_db!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ())) };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(()))
        )
    }

    /// The application's and the job queue's migrators with their history tables, in the order
    /// they run. The queue keeps its own history table so the two histories never confuse each
    /// other (both ignore the other's versions).
    fn migrators(&self) -> [(sqlx::migrate::Migrator, &'static str, &'static str); 2] {
        let (mut app, mut queue, queue_table) = match self {
            Db::Sqlite(_) => (
                app_migrator_sqlite(),
                apalis_sqlite::SqliteStorage::migrations(),
                "_apalis_migrations",
            ),
            Db::Postgres(_) => {
                let mut queue = apalis_postgres::PostgresStorage::migrations();
                queue.create_schema("apalis");
                (app_migrator_postgres(), queue, "apalis._apalis_migrations")
            }
        };
        app.set_ignore_missing(true);
        queue.dangerous_set_table_name(queue_table);
        queue.set_ignore_missing(true);
        [
            (app, "_sqlx_migrations", "settled"),
            (queue, queue_table, "job queue"),
        ]
    }

    /// True when every migration this binary knows is applied: the application's and the job
    /// queue's (the queue's run second, so checking only ours would report ready too early).
    pub async fn migrations_applied(&self) -> bool {
        for (migrator, table, _) in self.migrators() {
            let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE version = $1 AND success");
            let found: Result<i64, sqlx::Error> = on_db!(self, p => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).bind(latest).fetch_one(p).await
            });
            if !matches!(found, Ok(1)) {
                return false;
            }
        }
        true
    }

    /// Applies the application's and the job queue's migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrate_reporting(|_| {}).await
    }

    /// Migrations not yet applied, in the order they will run: (which history, version,
    /// description). A history table that does not exist yet means none of its versions are.
    pub async fn pending_migrations(&self) -> Vec<(&'static str, i64, String)> {
        let mut pending = Vec::new();
        for (migrator, table, label) in self.migrators() {
            let sql = format!("SELECT version FROM {table} WHERE success");
            let applied: Vec<i64> = on_db!(self, p => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(p).await
            })
            .unwrap_or_default();
            pending.extend(
                migrator
                    .iter()
                    .filter(|m| !m.migration_type.is_down_migration())
                    .filter(|m| !applied.contains(&m.version))
                    .map(|m| (label, m.version, m.description.to_string())),
            );
        }
        pending
    }

    /// Every migration this binary knows with whether it is applied: (which history, version,
    /// description, applied), in the order they run.
    pub async fn migration_status(&self) -> Vec<(&'static str, i64, String, bool)> {
        let pending = self.pending_migrations().await;
        let mut all = Vec::new();
        for (migrator, _, label) in self.migrators() {
            for m in migrator
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
            {
                let waiting = pending
                    .iter()
                    .any(|(l, v, _)| *l == label && *v == m.version);
                all.push((label, m.version, m.description.to_string(), !waiting));
            }
        }
        all
    }

    /// A consistent copy of a SQLite database into a new file at `path` (`VACUUM INTO`), taken
    /// while the daemon runs. PostgreSQL is backed up with pg_dump instead (see the README).
    pub async fn backup_to(&self, path: &Path) -> anyhow::Result<()> {
        let Db::Sqlite(pool) = self else {
            anyhow::bail!("only a SQLite database is copied by settled backup");
        };
        anyhow::ensure!(!path.exists(), "{} exists already", path.display());
        let target = path
            .to_str()
            .context("the backup path is not valid UTF-8")?
            .replace('\'', "''");
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO '{target}'")))
            .execute(pool)
            .await
            .with_context(|| format!("cannot write the backup to {}", path.display()))?;
        Ok(())
    }

    /// Applies every pending migration one at a time, calling `report` after each one (what
    /// `settled migrate` shows progress with), then checks the whole history as `run` does.
    pub async fn migrate_reporting(
        &self,
        mut report: impl FnMut(&MigrationApplied),
    ) -> anyhow::Result<()> {
        let pending = self.pending_migrations().await;
        let total = pending.len();
        let migrators = self.migrators();
        for (index, (label, version, description)) in pending.into_iter().enumerate() {
            let Some((migrator, _, _)) = migrators.iter().find(|(_, _, l)| *l == label) else {
                continue;
            };
            let started = std::time::Instant::now();
            on_db!(self, p => migrator.run_to(version, p).await).with_context(|| {
                format!("applying the {label} migration {version} ({description}) failed")
            })?;
            report(&MigrationApplied {
                history: label,
                version,
                description,
                index: index + 1,
                total,
                took: started.elapsed(),
            });
        }
        // Nothing is left to apply; this validates checksums of what was applied before.
        for (migrator, _, label) in &migrators {
            on_db!(self, p => migrator.run(p).await)
                .with_context(|| format!("applying the {label} migrations failed"))?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        on_db!(self, p => p.close().await)
    }
}

fn app_migrator_sqlite() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

fn app_migrator_postgres() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

fn sqlite_pool(path: &Path, max: u32, timeout: Duration) -> anyhow::Result<SqlitePool> {
    // Every connection gets the pragmas, not just the first one (the queue's own setup only sets
    // them on one pooled connection).
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(max.max(2))
        .acquire_timeout(timeout.max(Duration::from_secs(10)))
        .connect_lazy_with(options))
}

/// `$from, $from+1, ...`: `n` numbered placeholders for an `IN (...)` list.
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The real wall clock in milliseconds: for leases, backoff and the gateway's key memory, which
/// have nothing to do with billing time (the daemon's clock may be a manual one).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, the stored form of every instant.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant a stored BIGINT names.
pub fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}
