//! Where SQLite and PostgreSQL need different text for the same thing: row locks, the job
//! queue's table, and lists of stored names. Everything else is written once.

use settled_jobs::status::InvoiceStatus;

use super::{Db, Tx};

impl Tx {
    /// ` FOR NO KEY UPDATE` where the backend has row locks; SQLite's write transactions are
    /// already exclusive (BEGIN IMMEDIATE), so it needs none. (The lock an UPDATE takes: it
    /// serialises writers of the row but, unlike `FOR UPDATE`, lets another transaction insert
    /// rows referring to it, whose foreign-key check only shares the key.)
    /// The order locks are taken in is in the `store` module's description.
    pub fn lock_rows(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR NO KEY UPDATE",
        }
    }

    /// ` FOR NO KEY UPDATE OF alias`: locks only that table's rows of a join (PostgreSQL).
    pub fn lock_rows_of(&self, alias: &str) -> String {
        match self {
            Tx::Sqlite(_) => String::new(),
            Tx::Postgres(_) => format!(" FOR NO KEY UPDATE OF {alias}"),
        }
    }

    /// ` FOR NO KEY UPDATE SKIP LOCKED`: a claim of due work that passes over rows another batch
    /// has claimed (PostgreSQL). SQLite's write transaction is the only one, so it needs none.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR NO KEY UPDATE SKIP LOCKED",
        }
    }

    /// [`Tx::skip_locked`] for one table of a join.
    pub fn skip_locked_of(&self, alias: &str) -> String {
        match self {
            Tx::Sqlite(_) => String::new(),
            Tx::Postgres(_) => format!(" FOR NO KEY UPDATE OF {alias} SKIP LOCKED"),
        }
    }

    /// Marks a point to return to when one item of a batch fails, so its batch can go on.
    pub async fn savepoint(&mut self) -> super::Result<()> {
        self.raw("SAVEPOINT item").await
    }

    /// Undoes what the transaction did since [`Tx::savepoint`], keeping the rest.
    pub async fn rollback_to_savepoint(&mut self) -> super::Result<()> {
        self.raw("ROLLBACK TO SAVEPOINT item").await?;
        self.raw("RELEASE SAVEPOINT item").await
    }

    /// Keeps what the transaction did since [`Tx::savepoint`].
    pub async fn release_savepoint(&mut self) -> super::Result<()> {
        self.raw("RELEASE SAVEPOINT item").await
    }

    async fn raw(&mut self, sql: &'static str) -> super::Result<()> {
        match self {
            Tx::Sqlite(t) => {
                sqlx::query(sql).execute(&mut **t).await?;
            }
            Tx::Postgres(t) => {
                sqlx::query(sql).execute(&mut **t).await?;
            }
        }
        Ok(())
    }

    /// The job queue's table (apalis's own: `Jobs` on SQLite, `apalis.jobs` on PostgreSQL).
    pub fn queue_table(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "Jobs",
            Tx::Postgres(_) => "apalis.jobs",
        }
    }
}

impl Db {
    /// The job queue's table on this backend.
    pub fn queue_table(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "Jobs",
            Db::Postgres(_) => "apalis.jobs",
        }
    }
}

/// `('open', 'partially_paid', 'past_due')`: the invoice statuses that still expect money, as
/// an SQL list.
pub fn collectible() -> String {
    names(&InvoiceStatus::COLLECTIBLE.map(InvoiceStatus::as_str))
}

/// `('a', 'b')` for a list of fixed names (never user input).
pub fn names(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|n| format!("'{n}'")).collect();
    format!("({})", quoted.join(", "))
}
