//! Saved payment methods: the gateway's token and what the gateway tells about the card, never
//! a number. The only writer of `payment_methods`.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Db, Result, Tx, ms, on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct PaymentMethodRow {
    pub id: String,
    pub customer_id: String,
    pub gateway: String,
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    pub is_default: bool,
    pub created_at: i64,
}

const PM_COLUMNS: &str =
    "id, customer_id, gateway, token, brand, last4, exp_month, exp_year, is_default, created_at";

pub async fn insert(tx: &mut Tx, pm: &PaymentMethodRow, make_default: bool) -> Result<()> {
    on_tx!(tx, conn => {
        if make_default {
            sqlx::query("UPDATE payment_methods SET is_default = FALSE WHERE customer_id = $1 AND is_default")
                .bind(&pm.customer_id)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO payment_methods (id, customer_id, gateway, token, brand, last4, exp_month, \
             exp_year, is_default, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&pm.id)
        .bind(&pm.customer_id)
        .bind(&pm.gateway)
        .bind(&pm.token)
        .bind(&pm.brand)
        .bind(&pm.last4)
        .bind(pm.exp_month)
        .bind(pm.exp_year)
        .bind(make_default)
        .bind(pm.created_at)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

pub async fn list(db: &Db, customer_id: &str) -> Result<Vec<PaymentMethodRow>> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND removed_at IS NULL ORDER BY created_at, id"
    );
    Ok(
        on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).fetch_all(p).await?),
    )
}

pub async fn get(db: &Db, customer_id: &str, id: &str) -> Result<Option<PaymentMethodRow>> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL"
    );
    Ok(
        on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).bind(id).fetch_optional(p).await?),
    )
}

pub async fn default_of(db: &Db, customer_id: &str) -> Result<Option<PaymentMethodRow>> {
    let sql = format!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE customer_id = $1 AND is_default AND removed_at IS NULL"
    );
    Ok(
        on_db!(db, p => sqlx::query_as::<_, PaymentMethodRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(customer_id).fetch_optional(p).await?),
    )
}

pub async fn set_default(db: &Db, customer_id: &str, id: &str) -> Result<bool> {
    let mut tx = db.begin().await?;
    let changed = on_tx!(&mut tx, conn => {
        sqlx::query("UPDATE payment_methods SET is_default = FALSE WHERE customer_id = $1 AND is_default")
            .bind(customer_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE payment_methods SET is_default = TRUE WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL",
        )
        .bind(customer_id)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    if changed == 1 {
        tx.commit().await?;
        Ok(true)
    } else {
        Ok(false)
    }
}

pub async fn remove(db: &Db, customer_id: &str, id: &str, now: DateTime<Utc>) -> Result<bool> {
    on_db!(db, p => {
        Ok(sqlx::query(
            "UPDATE payment_methods SET removed_at = $3, is_default = FALSE \
             WHERE customer_id = $1 AND id = $2 AND removed_at IS NULL",
        )
        .bind(customer_id)
        .bind(id)
        .bind(ms(now))
        .execute(p)
        .await?
        .rows_affected() == 1)
    })
}

/// A card's brand and last 4, by our id (what a receipt shows).
pub async fn card(tx: &mut Tx, id: &str) -> Result<Option<(String, String)>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as("SELECT brand, last4 FROM payment_methods WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *c)
            .await?
    }))
}

/// The brand and last 4 of the customer's default card, if it has one that is not removed.
pub async fn default_card(tx: &mut Tx, customer_id: &str) -> Result<Option<(String, String)>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT brand, last4 FROM payment_methods WHERE customer_id = $1 AND is_default \
             AND removed_at IS NULL",
        )
        .bind(customer_id)
        .fetch_optional(&mut *c)
        .await?
    }))
}
