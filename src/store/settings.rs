//! Small durable settings (the manual clock's position) in the `settings` table, its only writer.

use super::{Db, Result, on_db};

/// The settings key that keeps the manual clock's position across restarts.
pub const CLOCK: &str = "manual_clock_now";

pub async fn get(db: &Db, key: &str) -> Result<Option<String>> {
    Ok(on_db!(db, p => {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(p)
            .await?
    }))
}

pub async fn set(db: &Db, key: &str, value: &str) -> Result<()> {
    on_db!(db, p => {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(p)
        .await?;
    });
    Ok(())
}
