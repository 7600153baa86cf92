//! Small durable settings (the manual clock's position) in the `settings` table.

use super::{Db, on_db};

pub async fn get(db: &Db, key: &str) -> Result<Option<String>, sqlx::Error> {
    on_db!(db, p => {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(p)
            .await
    })
}

pub async fn set(db: &Db, key: &str, value: &str) -> Result<(), sqlx::Error> {
    on_db!(db, p => {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(p)
        .await
        .map(|_| ())
    })
}
