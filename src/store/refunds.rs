//! Refunds: money given back on a payment. The only writer of `refunds`, unique on the gateway's
//! refund id, so a refund heard twice (our own call and its webhook) is one row.

use chrono::{DateTime, Utc};

use super::{Result, Tx, ms, on_tx};

#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    pub id: &'a str,
    pub payment_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub gateway: &'a str,
    /// The gateway's refund id (re_...), None for one made by other means.
    pub gateway_refund_id: Option<&'a str>,
    pub to_credit: bool,
    pub reason: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// Inserts the refund unless its gateway refund id is recorded already; returns whether it was
/// new.
pub async fn insert(tx: &mut Tx, r: &NewRefund<'_>) -> Result<bool> {
    let inserted = on_tx!(tx, c => {
        sqlx::query(
            "INSERT INTO refunds (id, payment_id, amount, currency, gateway, gateway_refund_id, to_credit, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (gateway, gateway_refund_id) DO NOTHING",
        )
        .bind(r.id)
        .bind(r.payment_id)
        .bind(r.amount)
        .bind(r.currency)
        .bind(r.gateway)
        .bind(r.gateway_refund_id)
        .bind(r.to_credit)
        .bind(r.reason)
        .bind(ms(r.at))
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    Ok(inserted > 0)
}

/// A refund as an email describes it: (id, payment id, amount, currency, to credit, reason, at).
pub type RefundFacts = (String, String, i64, String, bool, Option<String>, i64);

pub async fn get_in(tx: &mut Tx, id: &str) -> Result<Option<RefundFacts>> {
    Ok(on_tx!(tx, c => {
        sqlx::query_as(
            "SELECT id, payment_id, amount, currency, to_credit, reason, at FROM refunds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *c)
        .await?
    }))
}
