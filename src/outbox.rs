//! The email outbox: one row per message, written in the same transaction as the event that causes
//! it, unique on (template, subject object, attempt), and a send_email job enqueued beside it.
//!
//! Every function here takes the caller's open transaction; none of them sends anything.

use chrono::{DateTime, Utc};

use crate::store::Tx;

/// An invoice was finalised: send it to every billing contact.
pub async fn invoice_issued(
    _tx: &mut Tx,
    _invoice_id: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// A payment was recorded (card, webhook or offline): a receipt.
pub async fn receipt(
    _tx: &mut Tx,
    _payment_id: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// An automatic charge failed and dunning will try again at `next_attempt_at`.
pub async fn payment_failed(
    _tx: &mut Tx,
    _invoice_id: &str,
    _attempt: i64,
    _next_attempt_at: Option<DateTime<Utc>>,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// Dunning gave up: the invoice is past due.
pub async fn final_notice(
    _tx: &mut Tx,
    _invoice_id: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// A refund was recorded.
pub async fn refund(
    _tx: &mut Tx,
    _refund_id: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}

/// A credit note was issued.
pub async fn credit_note(
    _tx: &mut Tx,
    _credit_note_id: &str,
    _now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    Ok(())
}
