//! The money workflows: what happens to the books when an invoice is finalised, a card is
//! charged, a payment or refund arrives, credit or a retainer is applied. Each is a function of
//! the [`Billing`] context and, where it writes, the caller's open transaction; the rules come
//! from `settled_jobs`, the rows from `store`, and the emails they cause go into `outbox` in the
//! same transaction. No network call is made while a transaction is open: a charge commits its
//! attempt first, calls the gateway, then records the outcome in a new transaction.

pub mod charges;
pub mod context;
pub mod credits;
pub mod customers;
pub mod deposits;
pub mod dunning;
pub mod error;
pub mod gateway_events;
pub mod generation;
pub mod invoices;
pub mod ledger;
pub mod payments;
pub mod portal;
pub mod refunds;
pub mod reminders;
pub mod retainers;
pub mod statements;
pub mod work;

pub use context::Billing;
pub use error::{Error, Result};

#[cfg(test)]
pub mod testing {
    //! A context over a test database, on a manual clock, with no gateway and mail into a
    //! temporary folder.

    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use settled_jobs::clock::ManualClock;

    use super::Billing;
    use crate::config::Config;
    use crate::gateway::Gateways;
    use crate::store::Db;

    pub fn billing(db: &Db, now: DateTime<Utc>) -> Billing {
        let dir = std::env::temp_dir().join(format!("settled-test-{}", ulid::Ulid::generate()));
        let config = Config::load_from(
            None,
            [(
                "SETTLED__DAEMON__STATE_DIR".to_string(),
                dir.display().to_string(),
            )],
        )
        .unwrap();
        let mailer = crate::mail::LettreMailer::from_config(&config).unwrap();
        Billing {
            db: db.clone(),
            clock: Arc::new(ManualClock::new(now)),
            gateways: Gateways::default(),
            mailer: Arc::new(mailer),
            config: Arc::new(config),
        }
    }
}
