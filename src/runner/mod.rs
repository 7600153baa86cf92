//! The job runner: apalis workers on the configured database (`workers`), which run one drain
//! job per kind of work (`dispatch`, `drain`), and the sweep that starts drains of whatever is due
//! and answers the manual clock's "ready" (`scheduler`).

pub mod dispatch;
pub mod drain;
pub mod retention;
pub mod scheduler;
pub mod workers;

use std::sync::Arc;

use settled_jobs::clock::ManualClock;

use crate::billing::Billing;

pub use scheduler::Scheduler;
pub use workers::{Workers, start};

/// What the workers run with: the money workflows, the drains, the sweep.
pub struct Runner {
    pub billing: Arc<Billing>,
    pub drainers: Arc<drain::Drainers>,
    pub scheduler: Arc<Scheduler>,
}

impl Runner {
    pub fn new(billing: Arc<Billing>, manual: Option<Arc<ManualClock>>) -> Runner {
        let drainers = Arc::new(drain::Drainers::new(billing.clone()));
        Runner {
            scheduler: Arc::new(Scheduler::new(billing.clone(), manual, drainers.clone())),
            drainers,
            billing,
        }
    }
}
