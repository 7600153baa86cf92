//! systemd integration: READY=1 once serving, WATCHDOG=1 while the runtime is healthy, STOPPING=1
//! on shutdown. Without NOTIFY_SOCKET every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::billing::Billing;
use crate::runner::Scheduler;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        // systemd sets WATCHDOG_PID to the main process; accept its absence for wrappers that omit it.
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { enabled, watchdog }
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, state)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// Pings at half the watchdog interval, but only while the database answers and the job runner
    /// shows signs of life, so systemd restarts a wedged daemon instead of trusting a live thread.
    /// The database is asked over a connection of the watchdog's own (a pool of one, beside
    /// `database.max_connections`), so a main pool saturated by a catch-up cannot withhold the
    /// ping while the database itself answers.
    pub fn spawn_watchdog(
        &self,
        billing: Arc<Billing>,
        scheduler: Arc<Scheduler>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let interval = self.watchdog? / 2;
        if !self.enabled {
            return None;
        }
        let stale_after = (interval * 4).max(Duration::from_secs(10));
        let own = match crate::store::Db::open_sized(&billing.config, 1) {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the watchdog shares the main pool"
                );
                billing.db.clone()
            }
        };
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        own.close().await;
                        return;
                    }
                    _ = tokio::time::sleep(interval) => {}
                }
                let db_ok = own.ping().await;
                let runner_ok = !billing.config.daemon.role.runs_workers()
                    || scheduler.alive_within(stale_after);
                if db_ok && runner_ok {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        db_ok,
                        runner_ok,
                        "health check failed; withholding the watchdog ping"
                    );
                }
            }
        }))
    }
}
