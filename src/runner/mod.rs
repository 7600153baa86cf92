//! The job runner: apalis workers on the configured database (`workers`), the sweep that finds
//! due work and enqueues it (`scheduler`), which workflow runs each job (`dispatch`), and the
//! invoice writer that batches generate_invoice jobs (`writer`).

pub mod dispatch;
pub mod scheduler;
pub mod workers;
pub mod writer;

use std::sync::Arc;

use settled_jobs::clock::ManualClock;

use crate::billing::Billing;

pub use scheduler::Scheduler;
pub use workers::{Workers, start};

/// What the workers run with: the money workflows, the sweep, the invoice writer.
pub struct Runner {
    pub billing: Arc<Billing>,
    pub scheduler: Arc<Scheduler>,
    pub writer: writer::InvoiceWriter,
}

impl Runner {
    pub fn new(billing: Arc<Billing>, manual: Option<Arc<ManualClock>>) -> Runner {
        Runner {
            scheduler: Arc::new(Scheduler::new(billing.clone(), manual)),
            writer: writer::InvoiceWriter::new(billing.clone()),
            billing,
        }
    }
}
