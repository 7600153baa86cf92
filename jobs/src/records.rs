//! The records the billing core decides about, as the daemon's storage hands them over: a
//! subscription read under its lock, an invoice about to be written. The storage itself is the
//! daemon's (`src/store`); the core never reaches a database.

use chrono::{DateTime, Utc};

use crate::invoice::{CatchUp, ItemSpec, Line, ScheduleSpec};
use crate::status::InvoiceKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer or the transaction failed: try again later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read: retrying will not help.
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Paused,
    Canceled,
}

/// A subscription as the billing core sees it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<ItemSpec>,
    pub schedule: ScheduleSpec,
    pub auto_charge: bool,
    pub net_days: u32,
    pub catch_up: CatchUp,
    pub status: SubscriptionStatus,
    pub next_period_start: Option<DateTime<Utc>>,
}

/// An invoice to write: totals are already exact; the store numbers it when it finalises.
#[derive(Debug, Clone)]
pub struct NewInvoice {
    pub id: String,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    pub kind: InvoiceKind,
    pub currency: String,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub lines: Vec<Line>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub auto_charge: bool,
    pub due_at: DateTime<Utc>,
    /// None: finalise at once; Some(t): stay a draft until t.
    pub finalize_at: Option<DateTime<Utc>>,
}
