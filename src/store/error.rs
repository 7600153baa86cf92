//! The one error storage returns, whatever the backend: the driver's error wrapped, with the
//! questions callers ask of it answered here and nowhere else (is it worth retrying, is the
//! database away, did a unique key refuse the row).

/// A failed query or transaction on either backend.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] sqlx::Error);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stored row that does not say what it should (a value a column cannot hold, a record
    /// the daemon's rules refuse to read).
    pub fn corrupt(message: impl Into<String>) -> Error {
        Error(sqlx::Error::Protocol(message.into()))
    }

    /// The database cannot be reached or the pool has no connection to give: answer 503 and
    /// try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.0,
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
        ) || self.is_contention()
    }

    /// Contention that outlasted the busy timeout, a lock conflict, a serialization failure or
    /// a deadlock victim: the same statement may well succeed when tried again.
    pub fn is_contention(&self) -> bool {
        match &self.0 {
            sqlx::Error::Database(db) => matches!(
                db.code().as_deref(),
                // SQLite: SQLITE_BUSY, SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT; PostgreSQL:
                // serialization_failure, deadlock_detected.
                Some("5" | "6" | "517" | "40001" | "40P01")
            ),
            _ => false,
        }
    }

    /// A unique key refused the row: the natural key is taken already.
    pub fn is_unique_violation(&self) -> bool {
        match &self.0 {
            sqlx::Error::Database(db) => db.is_unique_violation(),
            _ => false,
        }
    }

    /// True when the error says something about the data written (a constraint, a value that
    /// does not encode) rather than about the database's state.
    pub fn blames_the_data(&self) -> bool {
        match &self.0 {
            sqlx::Error::Database(db) => !matches!(db.kind(), sqlx::error::ErrorKind::Other),
            sqlx::Error::Encode(_)
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Protocol(_) => true,
            _ => false,
        }
    }

    /// The statement found no row where the caller required one.
    pub fn is_not_found(&self) -> bool {
        matches!(self.0, sqlx::Error::RowNotFound)
    }

    /// A required row is missing: the transaction must not commit.
    pub fn not_found() -> Error {
        Error(sqlx::Error::RowNotFound)
    }
}
