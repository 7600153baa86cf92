//! What every handler is handed: the money workflows' context, the runner's sweep (to nudge it
//! and to ask whether the clock's work is done), the manual clock when there is one, and the
//! admin tokens.

use std::sync::Arc;

use settled_jobs::clock::ManualClock;

use crate::billing::Billing;
use crate::config::Secret;
use crate::runner::Scheduler;

pub struct AppState {
    pub billing: Arc<Billing>,
    pub scheduler: Arc<Scheduler>,
    pub manual_clock: Option<Arc<ManualClock>>,
    pub tokens: Vec<Secret>,
    /// Set once the database answers and its migrations are applied; until then the admin API
    /// and webhook intake answer 503 `not_ready`.
    pub ready: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }
}
