//! What every money workflow is handed: the database, the clock, the gateways, the mailer and
//! the settings. Nothing else is reachable from here (no HTTP, no runner), so a workflow can be
//! called the same way from a request, a job or a test.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use settled_jobs::clock::Clock;
use settled_jobs::mailer::Mailer;

use crate::config::Config;
use crate::gateway::Gateways;
use crate::store::Db;

pub struct Billing {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub gateways: Gateways,
    pub mailer: Arc<dyn Mailer>,
    pub config: Arc<Config>,
}

impl Billing {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// How many times a job is tried before it is left failed for the operator.
    pub fn max_attempts(&self) -> u32 {
        self.config.jobs.max_attempts
    }

    /// The most items one batch of a kind of work takes: `jobs.batch_size`, or fewer where the
    /// kind sets its own bound `most`.
    pub fn batch_size(&self, most: usize) -> usize {
        self.config.jobs.batch_size.clamp(1, most)
    }
}
