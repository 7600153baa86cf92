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
}
