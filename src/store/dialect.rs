//! Where SQLite and PostgreSQL need different text for the same thing: row locks, the job
//! queue's table, and lists of stored names. Everything else is written once.

use settled_jobs::status::InvoiceStatus;

use super::{Db, Tx};

impl Tx {
    /// ` FOR UPDATE` where the backend has row locks; SQLite's write transactions are already
    /// exclusive (BEGIN IMMEDIATE), so it needs none.
    pub fn lock_rows(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => " FOR UPDATE",
        }
    }

    /// ` FOR UPDATE OF alias`: locks only that table's rows of a join (PostgreSQL).
    pub fn lock_rows_of(&self, alias: &str) -> String {
        match self {
            Tx::Sqlite(_) => String::new(),
            Tx::Postgres(_) => format!(" FOR UPDATE OF {alias}"),
        }
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
