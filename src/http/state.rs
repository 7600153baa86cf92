//! What every handler is handed: the money workflows' context, the runner's sweep (to nudge it
//! and to ask whether the clock's work is done), the manual clock when there is one, and the
//! admin tokens.

use std::sync::Arc;

use settled_jobs::clock::ManualClock;

use crate::billing::Billing;
use crate::config::{AdminToken, Secret};
use crate::runner::Scheduler;

pub struct AppState {
    pub billing: Arc<Billing>,
    pub scheduler: Arc<Scheduler>,
    pub manual_clock: Option<Arc<ManualClock>>,
    /// The admin tokens with their names; replaced on reload (SIGHUP).
    pub tokens: std::sync::RwLock<Vec<AdminToken>>,
    /// The token `/metrics` requires, if any; replaced on reload.
    pub metrics_token: std::sync::RwLock<Option<Secret>>,
    /// The gauges `/metrics` reads from the database, kept for a few seconds so scrapes do not
    /// query it each time.
    pub metrics_cache: crate::metrics::GaugeCache,
    /// Webhook intake, once its routes are built (so a reload reaches its secrets).
    pub intake: std::sync::OnceLock<Arc<crate::http::webhooks::intake::Intake>>,
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

    /// The admin tokens at this moment.
    pub fn tokens(&self) -> Vec<AdminToken> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The token `/metrics` requires at this moment.
    pub fn metrics_token(&self) -> Option<Secret> {
        self.metrics_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes new secrets from a freshly read configuration: admin tokens, the metrics token and
    /// webhook signing secrets. Work in progress is not touched; the next request sees the new
    /// ones.
    pub fn reload_secrets(
        &self,
        tokens: Vec<AdminToken>,
        metrics_token: Option<Secret>,
        config: &crate::config::Config,
    ) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        *self
            .metrics_token
            .write()
            .unwrap_or_else(|p| p.into_inner()) = metrics_token;
        if let Some(intake) = self.intake.get() {
            intake.reload(config);
        }
    }
}
